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
from pathlib import Path
from typing import Any

import yaml

from pipelines.serve.config import ServeConfig

logger = logging.getLogger("pipelines.serve")

# Ray Serve reads these when it starts (in every Ray process), so they select the ingress of a Ray started here.
INGRESS_MODES: dict[str, dict[str, str]] = {
    "python": {},
    "haproxy": {"RAY_SERVE_ENABLE_HA_PROXY": "1", "RAY_SERVE_THROUGHPUT_OPTIMIZED": "1"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.serve",
        description="Serve Vid-LLM over HTTP (API v1, OpenAPI at /docs) with Ray Serve: a FastAPI ingress "
                    "deployment and an autoscaling, batching model deployment.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples:", 1)[1].split("The resolved", 1)[0],
    )
    p.add_argument("--model", required=True,
                   help="checkpoint in HF layout: local dir, s3:// (or other fsspec) URI, or models:/<name>/<version>")
    p.add_argument("--preset", choices=("default", "tiny"), default="default",
                   help="starting configuration: 'default' (GPU replicas) or 'tiny' (CPU, small limits, short delays)")
    p.add_argument("--config", type=Path,
                   help="YAML/JSON file with ServeConfig fields (the 'args' of a Serve config file) applied on top")
    p.add_argument("--host", help="HTTP bind address (default 127.0.0.1; 0.0.0.0 inside a container)")
    p.add_argument("--port", type=int, help="HTTP port (default 8000)")
    p.add_argument("--allowed-prefix", action="append", default=None, metavar="URI_PREFIX",
                   help="object-store prefix /v1/scenes:from_uri may read (repeatable), e.g. s3://scenes/uploads/")
    p.add_argument("--auth-token-env", help="environment variable holding the bearer token (enables auth)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="torch device of the model replicas")
    p.add_argument("--num-gpus", type=float, help="GPUs per model replica")
    p.add_argument("--min-replicas", type=int, help="autoscaling lower bound of model replicas")
    p.add_argument("--max-replicas", type=int, help="autoscaling upper bound of model replicas")
    p.add_argument("--max-batch-size", type=int, help="requests per model batch")
    p.add_argument("--cache-bytes", type=int, help="scene-encoding cache per model replica, bytes")
    p.add_argument("--model-cache-dir", help="where remote checkpoints are downloaded (default: system temp dir)")
    p.add_argument("--run-dir", type=Path, default=Path("serve_run"), help="where the resolved config is written")
    p.add_argument("--ray-address", help="Ray cluster address ('auto' to join a running cluster; default: local)")
    p.add_argument("--ingress", choices=sorted(INGRESS_MODES), default="python",
                   help="HTTP ingress of the local Ray this command starts: 'python' (Serve's proxy) or 'haproxy' "
                        "(Serve's high-throughput mode, as in infra/k8s/rayservice.yaml; needs the haproxy binary). "
                        "A cluster joined with --ray-address keeps the mode it was started with")
    p.add_argument("--export-serve-config", type=Path, metavar="PATH",
                   help="write a Serve config file (serve run / RayService) for this configuration and exit")
    return p.parse_args(argv)


def _deep_update(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _deep_update(base[key], value)
        else:
            base[key] = value
    return base


def resolve_config(args: argparse.Namespace) -> ServeConfig:
    """Preset, then the config file, then individual flags (later wins)."""
    cfg = ServeConfig.tiny(args.model) if args.preset == "tiny" else ServeConfig(model_uri=args.model)
    data = cfg.to_dict()
    if args.config is not None:
        _deep_update(data, yaml.safe_load(args.config.read_text()) or {})
        data["model_uri"] = args.model
    overrides: dict[str, Any] = {
        "allowed_uri_prefixes": args.allowed_prefix, "auth_token_env": args.auth_token_env, "device": args.device,
        "model_cache_dir": args.model_cache_dir,
        "http": {"host": args.host, "port": args.port},
        "model": {"num_gpus": args.num_gpus, "max_batch_size": args.max_batch_size, "cache_bytes": args.cache_bytes,
                  "autoscaling": {"min_replicas": args.min_replicas, "max_replicas": args.max_replicas}},
    }

    def prune(d: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in d.items():
            v = prune(v) if isinstance(v, dict) else v
            if v is not None and v != {}:
                out[k] = v
        return out

    _deep_update(data, prune(overrides))
    return ServeConfig.from_dict(data)


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


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    cfg = resolve_config(args)
    if args.export_serve_config is not None:
        args.export_serve_config.write_text(yaml.safe_dump(serve_config_file(cfg), sort_keys=False))
        logger.info("wrote %s", args.export_serve_config)
        return
    if args.ingress != "python":
        if args.ray_address:
            raise SystemExit(f"--ingress {args.ingress} applies to a Ray started by this command; a cluster joined "
                             "with --ray-address uses the mode it was started with (see infra/k8s/rayservice.yaml)")
        if shutil.which("haproxy") is None:
            raise SystemExit("--ingress haproxy needs the haproxy binary on PATH (apt-get install -y haproxy)")
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


if __name__ == "__main__":
    main()
