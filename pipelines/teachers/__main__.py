"""Compute frozen-teacher targets for every clip of a CLIP manifest with Ray Data actor pools.

Examples::

    python -m pipelines.teachers --clips s3://bucket/shards/clips --out s3://bucket/shards/train \\
        --geometry-teacher s3://bucket/weights/dinov2-large-reg --semantic-teacher s3://bucket/weights/clip-l-336 \\
        --config gpu
    python -m pipelines.teachers --clips out/clips --out out/train --config tiny \\
        --geometry-teacher teachers/geo --semantic-teacher teachers/sem --set semantic.concurrency=2

Also runs as ``vidllm teachers ...`` and under ``ray job submit -- python -m pipelines.teachers ...``.
"""

from __future__ import annotations

import logging
import sys

from pipelines import preflight
from pipelines.config import CliParser, alias, print_config, run_cli
from pipelines.teachers.config import DTYPES, SPEC, TeachersConfig

PROG = "python -m pipelines.teachers"
POOLS = ("geometry", "semantic")


def build_parser() -> CliParser:
    p = CliParser(
        prog=PROG,
        description=(
            "Compute frozen-teacher targets for every clip of a CLIP manifest with Ray Data actor pools: the "
            "geometry teacher (HF Dinov2WithRegistersModel folder, VGGT-1B's encoder) gives patch tokens per "
            "frame, the semantic teacher (HF CLIPVisionModel folder, CLIP ViT-L/14-336) pooled features per "
            "frame. Writes train-NNNNNN.tar (clip fields + teacher fields), quarantine.json and manifest.json "
            "(last) under --out; resumable and idempotent. The resolved config is saved as <out>/config.json."
        ),
        epilog=__doc__.split("Examples::", 1)[1] + "\n" + SPEC.describe(),
    )
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--clips", required=True, help="CLIP manifest URI (or the ingest output directory)")
    io.add_argument("--out", required=True, help="output directory: local path, file:// or s3:// URI")
    io.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    io.add_argument("--dry-run", action="store_true",
                    help="check the config and that the inputs exist, print the resolved config, write nothing")
    group = SPEC.add_arguments(p)
    alias(group, "--geometry-teacher", "geometry_teacher", help="local path or URI of the geometry teacher's HF folder")
    alias(group, "--semantic-teacher", "semantic_teacher", help="local path or URI of the semantic teacher's HF folder")
    alias(group, "--token-codec", "token_codec", choices=("fp16", "int8"), help="storage of geometry patch tokens")
    alias(group, "--num-gpus", [f"{pool}.num_gpus" for pool in POOLS], type=float,
          help="GPUs per teacher actor (both pools)")
    alias(group, "--batch-size", [f"{pool}.batch_size" for pool in POOLS], type=int,
          help="clips per actor call (both pools)")
    alias(group, "--concurrency", [f"{pool}.concurrency" for pool in POOLS], type=int,
          help="actors per teacher pool (both pools)")
    alias(group, "--dtype", [f"{pool}.dtype" for pool in POOLS], choices=DTYPES, help="teacher compute dtype")
    alias(group, "--io-concurrency", "io_concurrency", type=int,
          help="shard-reading actors (and as many clip-writing actors)")
    alias(group, "--io-num-cpus", "io_num_cpus", type=float, help="CPUs per shard-reading / clip-writing actor")
    alias(group, "--target-shard-mb", "target_shard_bytes", type=float, convert=lambda mb: int(mb * 1024**2),
          help="target training-shard size in MB")
    alias(group, "--cache-dir", "cache_dir", help="local cache for teacher folders downloaded from object storage")
    return p


def resolve_config(args) -> TeachersConfig:
    """The config of parsed arguments: preset or file, then ``--set`` and the shortcut flags in order."""
    return SPEC.resolve(args)


def check_inputs(args, config: TeachersConfig) -> None:
    """The clip manifest and both teacher folders exist, the folders hold the configured architectures, and the
    output can be written (before Ray starts)."""
    from pipelines.manifest import manifest_uri
    from pipelines.teachers.job import check_teachers

    manifest = args.clips if args.clips.endswith(".json") else manifest_uri(args.clips)
    preflight.readable(manifest, "--clips", "clip manifest", "run the ingest job first (or check the path)")
    for name in ("geometry_teacher", "semantic_teacher"):
        preflight.readable(getattr(config, name), f"--{name.replace('_', '-')}", "teacher model folder",
                           "give the local path or URI of an HF-layout folder")
    check_teachers(config)
    preflight.writable(args.out, "--out")


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv), PROG)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    config = resolve_config(args)
    if args.print_config:
        print_config(config)
        return 0
    check_inputs(args, config)
    if args.dry_run:
        print_config(config)
        print(f"dry run: config valid, inputs readable, {args.out} writable; nothing was written", file=sys.stderr)
        return 0
    from pipelines.teachers.job import run_teachers

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = run_teachers(args.clips, args.out, config, ray_address=args.ray_address)
    return 0 if manifest.summary.get("clips_written", 0) > 0 or not manifest.summary.get("clips") else 1


if __name__ == "__main__":
    sys.exit(main())
