"""Train Vid-LLM Stage 1 or Stage 2 with Ray Train + DeepSpeed, tracked in MLflow.

Examples::

    # Stage 1 (dual-teacher distillation) on a cluster, shards from the teachers job; check it first:
    python -m pipelines.train --stage 1 --config stage1 \\
        --set data.manifest_uri=s3://bucket/train-shards/manifest.json \\
        --set run.storage_path=s3://bucket/ray-results --set run.output_dir=s3://bucket/runs/stage1 \\
        --set model.llm.tokenizer_path=s3://bucket/weights/smollm2-135m-instruct \\
        --set tracking.tracking_uri=http://mlflow:5000 --dry-run

    # Stage 2 from Stage 1's MLflow run (its exported model artifact), or models:/name/version, or an export dir:
    python -m pipelines.train --stage 2 --config stage2 --set init_from=mlflow-run:<RUN_ID> ...

    # A tiny CPU run (2 workers, random tiny model):
    python -m pipelines.train --stage 1 --config tiny --set data.manifest_uri=out/teachers \\
        --set run.storage_path=out/ray --set run.output_dir=out/stage1

    # As a Ray job:
    ray job submit --address http://HEAD:8265 -- python -m pipelines.train --stage 1 --config run.yaml

The resolved config is written to ``<run.output_dir>/train_config.json`` and next to the exported model. Every run
first does the checks of ``--dry-run`` (inputs exist, token ids, frame and patch sizes, workers vs data) and stops
with one line per problem (exit status 2) before Ray starts; it also stops when this machine's disks cannot hold
the checkpoints and export the run writes there (a dry run prints that estimate without enforcing it).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence

from pipelines.config import CliParser, InputError, print_config, run_cli
from pipelines.train.config import PRESETS, resolve_config, spec

PROG = "python -m pipelines.train"


def build_parser() -> CliParser:
    parser = CliParser(
        prog=PROG,
        description="Train Vid-LLM with Ray Train V2 + DeepSpeed ZeRO. Stage 1 distils the geometry and semantic "
        "teachers into the encoder and adapter; Stage 2 starts from Stage 1's export, freezes the encoder and "
        "optimises reconstruction, metric depth, language and grounding jointly. What trains and the loss weights "
        "are the preset's (freeze.*, loss.*). Checkpoints go to Ray Train storage (a rerun with the same run.name "
        "resumes); the model is exported in HF layout to <run.output_dir>/model, logged to MLflow as a pyfunc "
        "model and registered.",
        epilog=__doc__.split("Examples::", 1)[1] + "\n" + spec().describe(),
    )
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True, help="training stage")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to connect to (default: RAY_ADDRESS, or the job's cluster, or a local one); "
                        "with --dry-run, the cluster whose resources the workers are checked against")
    parser.add_argument("--dry-run", action="store_true",
                        help="check everything and print the plan (parameters, trainable, memory per GPU, disk on "
                        "this machine) without training; exit status 2 with one line per problem")
    group = spec().add_arguments(parser)
    group.description = (f"Presets: {', '.join(sorted(PRESETS))}; or a YAML/JSON file holding the TrainConfig tree "
                         "(as written to train_config.json). Then --set overrides in order.")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    return run_cli(lambda: _main(argv), PROG)


def _cluster_resources(address: str | None) -> dict[str, float] | None:
    """The connected cluster's resources for ``--dry-run --ray-address`` (connects, starts nothing)."""
    if not address:
        return None
    import ray

    ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        return dict(ray.cluster_resources())
    finally:
        ray.shutdown()


def _main(argv: Sequence[str] | None) -> int:
    from pipelines.train.plan import check_run

    args = build_parser().parse_args(argv)
    cfg = resolve_config(args.config or [], args.config_overrides or [], stage=args.stage)
    if args.print_config:
        print_config(cfg)
        return 0
    plan = check_run(cfg, cfg.tracking.tracking_uri or None,
                     _cluster_resources(args.ray_address) if args.dry_run else None, disk=not args.dry_run)
    if args.dry_run:
        for line in plan.lines:
            print(line)
    if plan.problems:
        for problem in plan.problems[:-1]:
            print(f"{PROG}: error: {problem}", file=sys.stderr)
        raise InputError(plan.problems[-1])
    if args.dry_run:
        print("dry run: every check passed", file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    import ray

    from pipelines.train.launch import run_training

    if not ray.is_initialized():
        ray.init(address=args.ray_address)
    result = run_training(cfg)
    print(json.dumps({"run_id": result.run_id, "model_uri": result.model_uri, "model_version": result.model_version,
                      "tracking_uri": result.tracking_uri, "metrics": result.metrics}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
