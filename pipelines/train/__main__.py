"""Train Vid-LLM Stage 1 or Stage 2 with Ray Train + DeepSpeed, tracked in MLflow.

Examples::

    # Stage 1 (dual-teacher distillation) on a cluster, shards from the teachers job:
    python -m pipelines.train --stage 1 --config stage1 \\
        --set data.manifest_uri=s3://bucket/train-shards/manifest.json \\
        --set run.storage_path=s3://bucket/ray-results --set run.output_dir=s3://bucket/runs/stage1 \\
        --set tracking.tracking_uri=http://mlflow:5000

    # Stage 2 from Stage 1's MLflow run (its exported model artifact):
    python -m pipelines.train --stage 2 --config stage2 --set init_from=mlflow-run:<RUN_ID> ...

    # A tiny CPU run (2 workers, random tiny model):
    python -m pipelines.train --stage 1 --config tiny --set data.manifest_uri=out/teachers \\
        --set run.storage_path=out/ray --set run.output_dir=out/stage1

    # As a Ray job:
    ray job submit --address http://HEAD:8265 -- python -m pipelines.train --stage 1 --config run.yaml

The resolved config is written to ``<run.output_dir>/train_config.json`` and next to the exported model.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence

from pipelines.train.config import PRESETS, ConfigError, resolve_config


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.train",
        description="Train Vid-LLM with Ray Train V2 + DeepSpeed ZeRO. Stage 1 distils the geometry and semantic "
        "teachers into the encoder and adapter; Stage 2 starts from Stage 1's export, freezes the encoder and "
        "optimises reconstruction, metric depth, language and grounding jointly. Checkpoints go to Ray Train "
        "storage (a rerun with the same run.name resumes); the model is exported in HF layout to "
        "<run.output_dir>/model, logged to MLflow and registered.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__,
    )
    parser.add_argument("--stage", type=int, choices=(1, 2), required=True, help="training stage")
    parser.add_argument("--config", required=True,
                        help=f"preset name ({', '.join(sorted(PRESETS))}) or a JSON/YAML file with the TrainConfig "
                        "tree (as written to train_config.json)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="dotted override, value parsed as YAML, e.g. --set deepspeed.zero_stage=3 "
                        "--set data.task_mix='{qa: 1.0}' (repeatable)")
    parser.add_argument("--ray-address", default=None,
                        help="Ray cluster to connect to (default: RAY_ADDRESS, or the job's cluster, or a local one)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = resolve_config(args.config, args.overrides, stage=args.stage)
        if args.print_config:
            print(json.dumps(cfg.to_dict(), indent=1))
            return 0
        cfg.validate_for_run()
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
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
