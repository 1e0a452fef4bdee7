"""CLI: ``python -m pipelines.eval --model URI --data URI --tasks ...`` (also under ``ray job submit --``), or
``--predictions FILE`` instead of ``--model`` to score an existing prediction file without a model."""

from __future__ import annotations

import dataclasses
import logging
import sys

from pipelines.config import CliParser, InputError, alias, print_config, run_cli
from pipelines.eval.config import SPEC, EvalJobConfig
from pipelines.eval.external import PREDICTION_FORMATS
from pipelines.eval.predictions import TASKS
from pipelines.eval.proposals import PROPOSAL_FORMATS

PROG = "python -m pipelines.eval"
EPILOG = """\
examples:
  python -m pipelines.eval --model outputs/stage2/model --data s3://bucket/clips/val \\
      --tasks scanqa,sqa3d,scanrefer,multi3drefer,scan2cap,reconstruction --out outputs/eval/run1
  python -m pipelines.eval --model models:/vidllm/3 --data s3://bucket/clips/val \\
      --annotations s3://bucket/annotations --split val --mlflow-uri http://mlflow:5000 --num-gpus 1
  ray job submit --address http://HEAD:8265 -- python -m pipelines.eval --model models:/vidllm/3 ...
  python -m pipelines.eval --model models:/vidllm/3 --data s3://bucket/clips/val --tasks scanrefer,scan2cap \
      --proposals s3://bucket/scannet_val_pred_box.json --proposals-format video3dllm
  python -m pipelines.eval --predictions outputs/eval/run1/predictions/predictions.jsonl --data s3://bucket/clips/val
  python -m pipelines.eval --predictions pred.json --predictions-format scanrefer --data s3://bucket/clips/val

Protocols: grounding boxes are scored as predicted (free_form) and, with --proposals, snapped to the instance
proposals (proposals); Scan2Cap captions the ground-truth boxes (gt_boxes) and, with --proposals, every proposal
(proposals, the paper's protocol). Every number in results.json, metrics.json, summary.md and MLflow names its
protocol (docs/evaluation.md).

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
    io.add_argument("--model",
                    help="exported checkpoint in HF layout: local dir, file:// or s3:// URI (downloaded to a cache), "
                         "models:/<name>/<version> | models:/<name>@<alias> from the MLflow registry, or "
                         "runs:/<run_id>/model | mlflow-run:<run_id>")
    io.add_argument("--predictions",
                    help="instead of --model: score this prediction file (no model, no Ray) against the ground truth "
                         "of --data")
    io.add_argument("--predictions-format", choices=PREDICTION_FORMATS, default="vidllm",
                    help="format of --predictions (default: vidllm, the predictions.jsonl an evaluation writes)")
    io.add_argument("--proposals",
                    help="instance proposals (file or folder URI): adds the 'proposals' protocol to grounding and "
                         "captioning")
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
          help="cap on questions/queries/objects per task and scene (taken round robin over question "
               "families, target objects and eval types)")
    group.add_argument("--all-queries", action="store_true",
                       help="score every question/query/object of each scene (drops a config's or --tiny's cap)")
    alias(group, "--clip-index", "clip_index", type=int, help="which clip of each scene to evaluate (default: the first)")
    alias(group, "--no-meteor", "protocol.meteor", const=False, help="skip METEOR (needs Java); its keys are then absent")
    alias(group, "--no-plots", "plots", const=False, help="do not draw plots")
    alias(group, "--cache-dir", "cache_dir", help="local cache for downloaded checkpoints (default: the system temp dir)")
    alias(group, "--proposals-format", "proposals_format", choices=PROPOSAL_FORMATS,
          help="format of --proposals (default: the config's, vidllm)")
    alias(group, "--proposals-scans-root", "proposals_scans_root",
          help="ScanNet root with scans/<scene_id>/ meshes (mask proposal formats)")
    return p


def resolve_config(args) -> EvalJobConfig:
    """Preset or config file, then ``--set`` and the shortcut flags in command-line order; ``--all-queries`` drops
    the cap and ``--proposals`` adds the ``proposals`` protocol to grounding and captioning."""
    config = SPEC.resolve(args)
    if args.all_queries:
        config = config.replace(max_queries_per_task=None)
    if args.proposals:
        proto = config.protocol
        config = config.replace(
            proposals=args.proposals,
            protocol=dataclasses.replace(
                proto, grounding_protocols=tuple(dict.fromkeys((*proto.grounding_protocols, "proposals"))),
                captioning_protocols=tuple(dict.fromkeys((*proto.captioning_protocols, "proposals")))))
    return config


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv), PROG)


def _main(argv: list[str] | None) -> int:
    from pipelines.eval.job import DataSourceError
    from pipelines.eval.predictions import PredictionFormatError
    from pipelines.eval.proposals import ProposalFormatError
    from pipelines.eval.run import format_summary, run_evaluation, score_predictions
    from pipelines.tracking import bound_http_retries

    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.model is None) == (args.predictions is None):
        parser.error("give exactly one of --model (run a model) and --predictions (score a prediction file)")
    try:
        config = resolve_config(args)
    except ValueError as err:  # a combination __post_init__ refuses after --proposals
        raise InputError(str(err)) from None
    if args.print_config:
        print_config(config)
        return 0
    bound_http_retries()
    if args.dry_run:
        return _dry_run(args, config)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Scoring a file, a ValueError is the file disagreeing with the ground truth (a key the split lacks, a
    # repeated prediction): the user's input, one line. In a model run it would be a bug and keeps its traceback.
    bad_input: tuple[type[Exception], ...] = (DataSourceError, ProposalFormatError)
    try:
        if args.predictions is not None:
            bad_input = (*bad_input, PredictionFormatError, FileNotFoundError, ValueError)
            result = score_predictions(args.predictions, args.data, args.out, config, args.predictions_format,
                                       annotations_uri=args.annotations, tracking_uri=args.mlflow_uri)
        else:
            result = run_evaluation(args.model, args.data, args.out, config, annotations_uri=args.annotations,
                                    tracking_uri=args.mlflow_uri, ray_address=args.ray_address)
    except bad_input as err:
        raise InputError(str(err)) from None
    print(format_summary(result))
    return 0


def _dry_run(args, config: EvalJobConfig) -> int:
    """Check the shards, the model (its config.json only) or prediction file, annotations and output; start nothing."""
    from pipelines import preflight
    from pipelines.artifacts import read_model_config
    from pipelines.eval.job import DataSourceError, plan_clips

    try:
        clips = plan_clips(args.data, config.clip_index)
    except DataSourceError as err:
        raise InputError(str(err)) from None
    if args.model is not None:
        read_model_config(args.model, args.mlflow_uri, flag="--model")
    else:
        preflight.readable(args.predictions, "--predictions", "prediction file", "check the path")
    for flag, uri in (("--annotations", args.annotations), ("--proposals", args.proposals)):
        if uri:
            preflight.readable(uri, flag, "input", "check the path")
    preflight.writable(args.out, "--out")
    print_config(config)
    count = sum(len(shard["keys"]) for shard in clips)
    print(f"dry run: config valid, {count} clips to evaluate, {args.model or args.predictions} found; nothing was "
          "started", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
