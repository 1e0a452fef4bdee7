"""CLI: ``python -m pipelines.eval --model URI --data URI --tasks ...`` (also under ``ray job submit --``), or
``--predictions FILE`` instead of ``--model`` to score an existing prediction file without a model."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from pipelines.eval.config import EvalJobConfig
from pipelines.eval.external import PREDICTION_FORMATS
from pipelines.eval.predictions import TASKS
from pipelines.eval.proposals import PROPOSAL_FORMATS

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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.eval",
        description=(
            "Evaluate a Vid-LLM checkpoint on 3D-language benchmarks and reconstruction with Ray Data batch "
            "inference: one clip per scene from the shards of --data, every prompt of the requested tasks "
            "answered by model actors, predictions written to <out>/predictions/, scored by the evaluation "
            "harness into <out>/results.json + metrics.json + summary.md + plots, and logged as one MLflow run "
            "linked to the model. The resolved config is saved as <out>/eval_config.json."
        ),
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model",
                   help="exported checkpoint in HF layout: local dir, file:// or s3:// URI (downloaded to a cache), "
                        "or models:/<name>/<version> | models:/<name>@<alias> from the MLflow registry")
    p.add_argument("--predictions",
                   help="instead of --model: score this prediction file (no model, no Ray) against the ground truth "
                        "of --data")
    p.add_argument("--predictions-format", choices=PREDICTION_FORMATS, default="vidllm",
                   help="format of --predictions (default: vidllm, the predictions.jsonl an evaluation writes)")
    p.add_argument("--proposals",
                   help="instance proposals (file or folder URI): adds the 'proposals' protocol to grounding and "
                        "captioning")
    p.add_argument("--proposals-format", choices=PROPOSAL_FORMATS,
                   help="format of --proposals (default: the config's, vidllm)")
    p.add_argument("--proposals-scans-root",
                   help="ScanNet root with scans/<scene_id>/ meshes (mask proposal formats)")
    p.add_argument("--data", required=True,
                   help="evaluation shards: a manifest.json URI or the directory of an ingest/teachers job")
    p.add_argument("--tasks",
                   help=f"comma-separated subset of {','.join(TASKS)} (default: the config's, all of them)")
    p.add_argument("--annotations",
                   help="benchmark annotations root (ScanQA/SQA3D/ScanRefer/Multi3DRefer JSONs); replaces the "
                        "annotation entries carried by the shards")
    p.add_argument("--split", choices=("train", "val", "test"),
                   help="score only annotation entries of this split (default: every entry of the scenes)")
    p.add_argument("--out", default="outputs/eval", help="output directory or URI (default: outputs/eval)")
    p.add_argument("--mlflow-uri",
                   help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db)")
    p.add_argument("--experiment", help="MLflow experiment name (default: vidllm-eval)")
    p.add_argument("--config", help="JSON file with EvalJobConfig fields; the flags below override it")
    p.add_argument("--tiny", action="store_true", help="start from EvalJobConfig.tiny() (smoke runs)")
    p.add_argument("--batch-size", type=int, help="clips per batch handed to a model actor")
    p.add_argument("--concurrency", type=int, help="number of model actors")
    p.add_argument("--num-gpus", type=float, help="GPUs per model actor (0 = CPU)")
    p.add_argument("--max-queries", type=int,
                   help="cap on questions/queries/objects per task and scene (taken round robin over question "
                        "families, target objects and eval types)")
    p.add_argument("--all-queries", action="store_true",
                   help="score every question/query/object of each scene (drops a config's or --tiny's cap)")
    p.add_argument("--clip-index", type=int, help="which clip of each scene to evaluate (default: the first)")
    p.add_argument("--no-meteor", action="store_true", help="skip METEOR (needs Java); its keys are then absent")
    p.add_argument("--no-plots", action="store_true", help="do not draw plots")
    p.add_argument("--cache-dir", help="local cache for downloaded checkpoints (default: the system temp dir)")
    p.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    return p


def resolve_config(args: argparse.Namespace) -> EvalJobConfig:
    """Config file (or preset), then the flags that were given."""
    base = EvalJobConfig.from_json_file(args.config) if args.config else (
        EvalJobConfig.tiny() if args.tiny else EvalJobConfig()
    )
    changes = {
        "tasks": tuple(t.strip() for t in args.tasks.split(",") if t.strip()) if args.tasks else None,
        "split": args.split, "batch_size": args.batch_size, "concurrency": args.concurrency,
        "num_gpus": args.num_gpus, "max_queries_per_task": args.max_queries, "clip_index": args.clip_index,
        "cache_dir": args.cache_dir, "experiment": args.experiment,
        "plots": False if args.no_plots else None,
        "protocol": dataclasses.replace(base.protocol, meteor=False) if args.no_meteor else None,
    }
    config = base.replace(**{k: v for k, v in changes.items() if v is not None})
    if args.all_queries:
        config = config.replace(max_queries_per_task=None)
    if args.proposals:
        proto = config.protocol
        config = config.replace(
            proposals=args.proposals, proposals_format=args.proposals_format or config.proposals_format,
            proposals_scans_root=args.proposals_scans_root or config.proposals_scans_root,
            protocol=dataclasses.replace(
                proto, grounding_protocols=tuple(dict.fromkeys((*proto.grounding_protocols, "proposals"))),
                captioning_protocols=tuple(dict.fromkeys((*proto.captioning_protocols, "proposals")))))
    return config


def main(argv: list[str] | None = None) -> int:
    from pipelines.eval.job import DataSourceError
    from pipelines.eval.model_source import ModelSourceError
    from pipelines.eval.predictions import PredictionFormatError
    from pipelines.eval.proposals import ProposalFormatError
    from pipelines.eval.run import format_summary, run_evaluation, score_predictions
    from pipelines.tracking import bound_http_retries

    parser = build_parser()
    args = parser.parse_args(argv)
    if (args.model is None) == (args.predictions is None):
        parser.error("give exactly one of --model (run a model) and --predictions (score a prediction file)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = resolve_config(args)
    except ValueError as err:
        parser.error(str(err))
    bound_http_retries()
    # Scoring a file, a ValueError is the file disagreeing with the ground truth (a key the split lacks, a
    # repeated prediction): the user's input, one line. In a model run it would be a bug and keeps its traceback.
    bad_input: tuple[type[Exception], ...] = (ModelSourceError, DataSourceError, ProposalFormatError)
    try:
        if args.predictions is not None:
            bad_input = (*bad_input, PredictionFormatError, FileNotFoundError, ValueError)
            result = score_predictions(args.predictions, args.data, args.out, config, args.predictions_format,
                                       annotations_uri=args.annotations, tracking_uri=args.mlflow_uri)
        else:
            result = run_evaluation(args.model, args.data, args.out, config, annotations_uri=args.annotations,
                                    tracking_uri=args.mlflow_uri, ray_address=args.ray_address)
    except bad_input as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
