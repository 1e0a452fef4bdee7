"""Run the Vid-LLM HTTP service on Ray Serve.

Examples:

    # Tiny CPU model exported with save_pretrained, local Ray, http://127.0.0.1:8000/docs
    python -m pipelines.serve --model /tmp/vidllm-tiny --preset tiny

    # Production: a registered MLflow model version on a GPU cluster, scene videos from one bucket prefix
    MLFLOW_TRACKING_URI=http://mlflow:5000 python -m pipelines.serve --model models:/vidllm/7 \\
        --ray-address auto --allowed-prefix s3://scenes/uploads/ --auth-token-env VIDLLM_API_TOKEN

    # Local Ray with Serve's HAProxy ingress, as the cluster manifests run it (needs the haproxy binary)
    python -m pipelines.serve --model /tmp/vidllm-tiny --preset tiny --ingress haproxy

    # Write the equivalent Serve config file (for `serve run` or a KubeRay RayService serveConfigV2) and exit
    python -m pipelines.serve --model s3://models/vidllm/v7 --export-serve-config serve_config.yaml

The resolved configuration is written to ``<run-dir>/serve_config.resolved.json`` before the app starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from pipelines.artifacts import read_model_config
from pipelines.config import CliParser, UsageError, alias, print_config, run_cli
from pipelines.serve.config import SPEC, ServeConfig

logger = logging.getLogger("pipelines.serve")
PROG = "python -m pipelines.serve"

# Ray Serve reads these when it starts (in every Ray process), so they select the ingress of a Ray started here.
INGRESS_MODES: dict[str, dict[str, str]] = {
    "python": {},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}


def build_parser() -> CliParser:
    p = CliParser(
        prog=PROG,
        description="Serve Vid-LLM over HTTP (API v1, OpenAPI at /docs) with Ray Serve: a FastAPI ingress "
                    "deployment and an autoscaling, batching model deployment.",
        epilog=__doc__.split("Examples:", 1)[1].split("The resolved", 1)[0] + "\n" + SPEC.describe(),
    )
    run = p.add_argument_group("running")
    run.add_argument("--run-dir", type=Path, default=Path("serve_run"), help="where the resolved config is written")
    run.add_argument("--ray-address", help="Ray cluster address ('auto' to join a running cluster; default: local)")
    run.add_argument("--ingress", choices=sorted(INGRESS_MODES), default="python",
                     help="HTTP ingress of the local Ray this command starts: 'python' (Serve's proxy) or 'haproxy' "
                          "(Serve's high-throughput mode, as in infra/k8s/rayservice.yaml; needs the haproxy binary). "
                          "A cluster joined with --ray-address keeps the mode it was started with")
    run.add_argument("--export-serve-config", type=Path, metavar="PATH",
                     help="write a Serve config file (serve run / RayService) for this configuration and exit")
    run.add_argument("--dry-run", action="store_true",
                     help="check the config and that the model exists, print the resolved config, start nothing")
    group = SPEC.add_arguments(p)
    group.add_argument("--preset", dest="config", action="append", choices=("default", "tiny"),
                       help="same as --config default|tiny")
    alias(group, "--model", "model_uri", required=True,
          help="checkpoint in HF layout: local dir, s3:// (or other fsspec) URI, models:/<name>/<version>, "
               "models:/<name>@<alias> or runs:/<run_id>/model")
    alias(group, "--host", "http.host", help="HTTP bind address (default 127.0.0.1; 0.0.0.0 inside a container)")
    alias(group, "--port", "http.port", type=int, help="HTTP port (default 8000)")
    alias(group, "--allowed-prefix", "allowed_uri_prefixes", append=True, metavar="URI_PREFIX",
          help="object-store prefix /v1/scenes:from_uri may read (repeatable), e.g. s3://scenes/uploads/")
    alias(group, "--auth-token-env", "auth_token_env", help="environment variable holding the bearer token (enables auth)")
    alias(group, "--device", "device", choices=("cpu", "cuda"), help="torch device of the model replicas")
    alias(group, "--dtype", "dtype", choices=("auto", "bf16", "fp32"),
          help="weight dtype of the model replicas (default auto: bf16 on cuda, fp32 on cpu)")
    alias(group, "--frame-size", "limits.frame_size", type=int,
          help="side of the square frames the model is fed, pixels (default 0: the encoder's image_size)")
    alias(group, "--num-gpus", "model.num_gpus", type=float, help="GPUs per model replica")
    alias(group, "--min-replicas", "model.autoscaling.min_replicas", type=int,
          help="autoscaling lower bound of model replicas")
    alias(group, "--max-replicas", "model.autoscaling.max_replicas", type=int,
          help="autoscaling upper bound of model replicas")
    alias(group, "--max-batch-size", "model.max_batch_size", type=int, help="requests per model batch")
    alias(group, "--cache-bytes", "model.cache_bytes", type=int, help="scene-encoding cache per model replica, bytes")
    alias(group, "--model-cache-dir", "model_cache_dir",
          help="where remote checkpoints are downloaded (default: system temp dir)")
    return p


def resolve_config(args: argparse.Namespace) -> ServeConfig:
    """Presets and config files (``--config``/``--preset``), then ``--set`` and the flags in command-line order."""
    return SPEC.resolve(args)


def serve_config_file(cfg: ServeConfig) -> dict[str, Any]:
    """The Serve config file (``serve run FILE`` / RayService ``serveConfigV2``) equivalent to ``cfg``."""
    return {
        "proxy_location": "EveryNode",
        "http_options": cfg.http.to_serve(),
        "applications": [{
            "name": cfg.app_name,
            "route_prefix": cfg.route_prefix,
            "import_path": "pipelines.serve.app:app_builder",
            "args": cfg.to_dict(),
        }],
    }


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv), PROG)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    cfg = resolve_config(args)
    if args.print_config:
        print_config(cfg)
        return 0
    if args.export_serve_config is not None:
        args.export_serve_config.write_text(yaml.safe_dump(serve_config_file(cfg), sort_keys=False))
        print(f"wrote {args.export_serve_config}", file=sys.stderr)
        return 0
    if args.ingress != "python":
        if args.ray_address:
            raise UsageError(f"--ingress {args.ingress} applies to a Ray started by this command; a cluster joined "
                             "with --ray-address uses the mode it was started with (see infra/k8s/rayservice.yaml)")
        if shutil.which("haproxy") is None:
            raise UsageError("--ingress haproxy needs the haproxy binary on PATH (apt-get install -y haproxy)")
    # The model must exist before Ray starts: otherwise every replica fails to load it, one after the other.
    read_model_config(cfg.model_uri, os.environ.get("MLFLOW_TRACKING_URI"), flag="--model")
    if args.dry_run:
        print_config(cfg)
        print(f"dry run: config valid, model {cfg.model_uri} found; nothing was started", file=sys.stderr)
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.environ.update(INGRESS_MODES[args.ingress])
    args.run_dir.mkdir(parents=True, exist_ok=True)
    (args.run_dir / "serve_config.resolved.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    logger.info("resolved config: %s", json.dumps(cfg.to_dict()))

    import ray
    from ray import serve

    from pipelines.serve.app import build_app

    ray.init(address=args.ray_address, include_dashboard=False)
    serve.start(http_options=cfg.http.to_serve())
    logger.info("serving on http://%s:%d%s (docs at /docs)", cfg.http.host, cfg.http.port, cfg.route_prefix)
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=cfg.route_prefix, blocking=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
