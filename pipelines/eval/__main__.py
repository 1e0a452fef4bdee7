"""CLI: ``python -m pipelines.eval --model URI --data URI --tasks ...`` (also under ``ray job submit --``)."""

from __future__ import annotations

import logging
import sys

from pipelines.config import CliParser, InputError, alias, print_config, run_cli
from pipelines.eval.config import SPEC, EvalJobConfig
from pipelines.eval.predictions import TASKS

PROG = "python -m pipelines.eval"
EPILOG = """\
examples:
  python -m pipelines.eval --model outputs/stage2/model --data s3://bucket/clips/val \\
      --tasks scanqa,sqa3d,scanrefer,multi3drefer,scan2cap,reconstruction --out outputs/eval/run1
  python -m pipelines.eval --model models:/vidllm/3 --data s3://bucket/clips/val \\
      --annotations s3://bucket/annotations --split val --mlflow-uri http://mlflow:5000 --num-gpus 1
  ray job submit --address http://HEAD:8265 -- python -m pipelines.eval --model models:/vidllm/3 ...

Boxes: the model grounds in its first-camera metric frame; predictions are mapped to ScanNet's axis-aligned frame
with the clip's ground-truth first pose and axisAlignment (evaluation only, see pipelines/eval/job.py).
Exit status: 0 when the results are written (also when MLflow is unreachable: a warning says so), 2 for bad
arguments or inputs (the message names the URI).
"""


def build_parser() -> CliParser:
    p = CliParser(
        prog=PROG,
        description=(
            "Evaluate a Vid-LLM checkpoint on 3D-language benchmarks and reconstruction with Ray Data batch "
            "inference: one clip per scene from the shards of --data, every prompt of the requested tasks "
            "answered by model actors, predictions written to <out>/predictions/, scored by the evaluation "
            "harness into <out>/results.json + metrics.json + summary.md + plots, and logged as one MLflow run "
            "linked to the model. The resolved config is saved as <out>/eval_config.json."
        ),
        epilog=EPILOG + "\n" + SPEC.describe(),
    )
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--model", required=True,
                    help="exported checkpoint in HF layout: local dir, file:// or s3:// URI (downloaded to a cache), "
                         "models:/<name>/<version> | models:/<name>@<alias> from the MLflow registry, or "
                         "runs:/<run_id>/model | mlflow-run:<run_id>")
    io.add_argument("--data", required=True,
                    help="evaluation shards: a manifest.json URI or the directory of an ingest/teachers job")
    io.add_argument("--annotations",
                    help="benchmark annotations root (ScanQA/SQA3D/ScanRefer/Multi3DRefer JSONs); replaces the "
                         "annotation entries carried by the shards")
    io.add_argument("--out", default="outputs/eval", help="output directory or URI (default: outputs/eval)")
    io.add_argument("--mlflow-uri",
                    help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db)")
    io.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    io.add_argument("--dry-run", action="store_true",
                    help="check the config, the shards and that the model exists (its config only is read), print "
                    "the resolved config; start nothing, write nothing")
    group = SPEC.add_arguments(p)
    group.add_argument("--tiny", dest="config", action="append_const", const="tiny", help="same as --config tiny")
    alias(group, "--tasks", "tasks", convert=lambda text: [t.strip() for t in text.split(",") if t.strip()],
          help=f"comma-separated subset of {','.join(TASKS)} (default: all of them)")
    alias(group, "--split", "split", choices=("train", "val", "test"),
          help="score only annotation entries of this split (default: every entry of the scenes)")
    alias(group, "--experiment", "experiment", help="MLflow experiment name (default: vidllm-eval)")
    alias(group, "--batch-size", "batch_size", type=int, help="clips per batch handed to a model actor")
    alias(group, "--concurrency", "concurrency", type=int, help="number of model actors")
    alias(group, "--num-gpus", "num_gpus", type=float, help="GPUs per model actor (0 = CPU)")
    alias(group, "--max-queries", "max_queries_per_task", type=int,
          help="cap on questions/queries/objects per task and scene")
    alias(group, "--clip-index", "clip_index", type=int, help="which clip of each scene to evaluate (default: the first)")
    alias(group, "--no-meteor", "protocol.meteor", const=False, help="skip METEOR (needs Java); its keys are then absent")
    alias(group, "--no-plots", "plots", const=False, help="do not draw plots")
    alias(group, "--cache-dir", "cache_dir", help="local cache for downloaded checkpoints (default: the system temp dir)")
    return p


def resolve_config(args) -> EvalJobConfig:
    """Preset or config file, then ``--set`` and the shortcut flags in command-line order."""
    return SPEC.resolve(args)


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv), PROG)


def _main(argv: list[str] | None) -> int:
    from pipelines.eval.job import DataSourceError
    from pipelines.eval.run import format_summary, run_evaluation
    from pipelines.tracking import bound_http_retries

    args = build_parser().parse_args(argv)
    config = resolve_config(args)
    if args.print_config:
        print_config(config)
        return 0
    bound_http_retries()
    if args.dry_run:
        from pipelines import preflight
        from pipelines.artifacts import read_model_config
        from pipelines.eval.job import plan_clips

        try:
            clips = plan_clips(args.data, config.clip_index)
        except DataSourceError as err:
            raise InputError(str(err)) from None
        read_model_config(args.model, args.mlflow_uri, flag="--model")
        if args.annotations:
            preflight.readable(args.annotations, "--annotations", "annotations root", "check the path")
        preflight.writable(args.out, "--out")
        print_config(config)
        count = sum(len(shard["keys"]) for shard in clips)
        print(f"dry run: config valid, {count} clips to evaluate, model {args.model} found; nothing was started",
              file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        result = run_evaluation(args.model, args.data, args.out, config, annotations_uri=args.annotations,
                                tracking_uri=args.mlflow_uri, ray_address=args.ray_address)
    except DataSourceError as err:
        raise InputError(str(err)) from None
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
