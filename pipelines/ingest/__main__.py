"""Decode ScanNet-format scenes into WebDataset CLIP shards with Ray Data.

Examples::

    python -m pipelines.ingest --scenes s3://bucket/scannet --layout video --out s3://bucket/shards/clips
    python -m pipelines.ingest --scenes data/synthetic --out out/clips --config tiny --set stride=4
    python -m pipelines.ingest --scenes data/synthetic --out out/clips --dry-run   # check inputs, print the config

Also runs as ``vidllm ingest ...`` and under ``ray job submit -- python -m pipelines.ingest ...``.
"""

from __future__ import annotations

import logging
import sys

from pipelines import preflight
from pipelines.config import CliParser, InputError, alias, print_config, run_cli
from pipelines.ingest.config import LAYOUTS, SPEC, IngestConfig

PROG = "python -m pipelines.ingest"


def build_parser() -> CliParser:
    p = CliParser(
        prog=PROG,
        description=(
            "Turn ScanNet-format scenes into WebDataset CLIP shards with Ray Data: sample clips over valid-pose "
            "frames, decode and resize inside the workers, write clips-NNNNNN.tar + quarantine.json + "
            "manifest.json (last) under --out. Rerunning resumes after a crash and is a no-op once finished. "
            "The resolved config is saved as <out>/config.json and in the manifest."
        ),
        epilog=__doc__.split("Examples::", 1)[1] + "\n" + SPEC.describe(),
    )
    io = p.add_argument_group("inputs and outputs")
    io.add_argument("--scenes", required=True,
                    help="dataset root (with scans/, posed_images/ or videos/), a directory of scene folders, a "
                         "comma-separated list of scene URIs, or @file with one scene URI per line")
    io.add_argument("--out", required=True, help="output directory: local path, file:// or s3:// URI")
    io.add_argument("--annotations", help="annotations root (default: <scenes>/annotations when present)")
    io.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    io.add_argument("--dry-run", action="store_true",
                    help="check the config and that the inputs exist, print the resolved config, write nothing")
    group = SPEC.add_arguments(p)
    group.add_argument("--tiny", dest="config", action="append_const", const="tiny", help="same as --config tiny")
    alias(group, "--layout", "layout", choices=LAYOUTS, help="scene layout (auto detects it per scene)")
    alias(group, "--frames-per-clip", "frames_per_clip", type=int, help="frames per clip (paper: 32)")
    alias(group, "--clips-per-scene", "clips_per_scene", type=int, help="clips per scene")
    alias(group, "--stride", "stride", type=int, help="0 = uniform over the scene; > 0 = windowed clips this far apart")
    alias(group, "--resize-to", "resize_to", type=int, help="length of the image side --resize-side names (518)")
    alias(group, "--short-side", "resize_to", type=int, help="older name of --resize-to")
    alias(group, "--resize-side", "resize_side", choices=("short", "long"),
          help="which image side --resize-to sets (long gives the paper's 518x378 for 4:3 frames)")
    alias(group, "--frame-codec", "frame_codec", choices=("jpeg", "npy"), help="how frames are stored")
    alias(group, "--target-shard-mb", "target_shard_bytes", type=float, convert=lambda mb: int(mb * 1024**2),
          help="target shard size in MB")
    alias(group, "--concurrency", "concurrency", type=int, help="maximum concurrent scene tasks")
    alias(group, "--scenes-per-task", "scenes_per_task", type=int,
          help="at most this many scenes staged one after the other by one Ray task")
    return p


def resolve_config(args) -> IngestConfig:
    """The config of parsed arguments: preset or file, then ``--set`` and the shortcut flags in order."""
    return SPEC.resolve(args)


def check_inputs(args) -> None:
    """Every scene source and the annotations exist, and the output can be written (before anything starts)."""
    from pipelines import storage

    if args.scenes.startswith("@"):
        listing = args.scenes[1:]
        preflight.readable(listing, "--scenes", "scene list file", "give @FILE with one scene URI per line")
        sources = [line.strip() for line in storage.read_bytes(listing).decode().splitlines() if line.strip()]
    else:
        sources = [s.strip() for s in args.scenes.split(",") if s.strip()]
    if not sources:
        raise InputError(f"--scenes {args.scenes!r}: names no scene")
    for source in sources:
        preflight.readable(source, "--scenes", "scene source", "give a dataset root, a scene folder or @FILE")
    if args.annotations:
        preflight.readable(args.annotations, "--annotations", "annotations root", "check the path")
    preflight.writable(args.out, "--out")


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv), PROG)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    config = resolve_config(args)
    if args.print_config:
        print_config(config)
        return 0
    check_inputs(args)
    if args.dry_run:
        print_config(config)
        print(f"dry run: config valid, inputs readable, {args.out} writable; nothing was written", file=sys.stderr)
        return 0
    from pipelines.ingest.job import run_ingest

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    manifest = run_ingest(args.scenes, args.out, config, annotations_uri=args.annotations,
                          ray_address=args.ray_address)
    return 0 if manifest.summary.get("scenes_written", 0) > 0 or not manifest.summary.get("scenes") else 1


if __name__ == "__main__":
    sys.exit(main())
