"""CLI: ``python -m pipelines.teachers --clips <manifest URI> --out <URI> --geometry-teacher P --semantic-teacher P``."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from pipelines.teachers.config import TeacherPoolConfig, TeachersConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.teachers",
        description=(
            "Compute frozen-teacher targets for every clip of a CLIP manifest with Ray Data actor pools: the "
            "geometry teacher (HF Dinov2WithRegistersModel folder, VGGT-1B's encoder) gives patch tokens per "
            "frame, the semantic teacher (HF CLIPVisionModel folder, CLIP ViT-L/14-336) pooled features per "
            "frame. Writes train-NNNNNN.tar (clip fields + teacher fields), quarantine.json and manifest.json "
            "(last) under --out; resumable and idempotent. The resolved config is saved as <out>/config.json."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--clips", required=True, help="CLIP manifest URI (or the ingest output directory)")
    p.add_argument("--out", required=True, help="output directory: local path, file:// or s3:// URI")
    p.add_argument("--geometry-teacher", help="local path or URI of the geometry teacher's HF folder")
    p.add_argument("--semantic-teacher", help="local path or URI of the semantic teacher's HF folder")
    p.add_argument("--config", help="JSON file with TeachersConfig fields; flags override it")
    p.add_argument("--token-codec", choices=("fp16", "int8"), help="storage of geometry patch tokens (default int8)")
    p.add_argument("--num-gpus", type=float, help="GPUs per teacher actor (both pools)")
    p.add_argument("--batch-size", type=int, help="clips per actor call (both pools)")
    p.add_argument("--concurrency", type=int, help="actors per teacher pool")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), help="teacher compute dtype")
    p.add_argument("--io-concurrency", type=int, help="shard-reading actors (and as many clip-writing actors)")
    p.add_argument("--io-num-cpus", type=float, help="CPUs per shard-reading / clip-writing actor")
    p.add_argument("--target-shard-mb", type=float, help="target training-shard size in MB")
    p.add_argument("--cache-dir", help="local cache for teacher folders downloaded from object storage")
    p.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    return p


def resolve_config(args: argparse.Namespace) -> TeachersConfig:
    top = {"geometry_teacher": args.geometry_teacher, "semantic_teacher": args.semantic_teacher,
           "token_codec": args.token_codec, "cache_dir": args.cache_dir,
           "io_concurrency": args.io_concurrency, "io_num_cpus": args.io_num_cpus,
           "target_shard_bytes": int(args.target_shard_mb * 1024**2) if args.target_shard_mb else None}
    top = {k: v for k, v in top.items() if v is not None}
    config = TeachersConfig.from_json_file(args.config, **top) if args.config else TeachersConfig(**top)
    pool = {"num_gpus": args.num_gpus, "batch_size": args.batch_size, "concurrency": args.concurrency,
            "dtype": args.dtype}
    pool = {k: v for k, v in pool.items() if v is not None}
    if pool:
        config = dataclasses.replace(
            config,
            geometry=TeacherPoolConfig(**{**dataclasses.asdict(config.geometry), **pool}),
            semantic=TeacherPoolConfig(**{**dataclasses.asdict(config.semantic), **pool}),
        )
    return config


def main(argv: list[str] | None = None) -> int:
    from pipelines.teachers.architecture import TeacherArchitectureError
    from pipelines.teachers.job import run_teachers

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        manifest = run_teachers(args.clips, args.out, resolve_config(args), ray_address=args.ray_address)
    except (TeacherArchitectureError, FileNotFoundError) as err:  # a wrong or missing teacher folder or input
        print(f"python -m pipelines.teachers: error: {err}", file=sys.stderr)
        return 2
    return 0 if manifest.summary.get("clips_written", 0) > 0 or not manifest.summary.get("clips") else 1


if __name__ == "__main__":
    sys.exit(main())
