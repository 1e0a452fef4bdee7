"""CLI: ``python -m pipelines.ingest --scenes <root|list|@file> --out <URI>`` (also under ``ray job submit --``)."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys

from pipelines.ingest.config import LAYOUTS, IngestConfig


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m pipelines.ingest",
        description=(
            "Turn ScanNet-format scenes into WebDataset CLIP shards with Ray Data: sample clips over valid-pose "
            "frames, decode and resize inside the workers, write clips-NNNNNN.tar + quarantine.json + "
            "manifest.json (last) under --out. Rerunning resumes after a crash and is a no-op once finished. "
            "The resolved config is saved as <out>/config.json and in the manifest."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--scenes", required=True,
                   help="dataset root (with scans/, posed_images/ or videos/), a directory of scene folders, a "
                        "comma-separated list of scene URIs, or @file with one scene URI per line")
    p.add_argument("--out", required=True, help="output directory: local path, file:// or s3:// URI")
    p.add_argument("--config", help="JSON file with IngestConfig fields; flags below override it")
    p.add_argument("--layout", choices=LAYOUTS, help="scene layout (default: the config's, 'auto')")
    p.add_argument("--annotations", help="annotations root (default: <scenes>/annotations when present)")
    p.add_argument("--frames-per-clip", type=int, help="frames per clip (paper: 32)")
    p.add_argument("--clips-per-scene", type=int, help="clips per scene")
    p.add_argument("--stride", type=int, help="0 = uniform over the scene; > 0 = windowed clips with this spacing")
    p.add_argument("--short-side", type=int, help="shorter image side after resizing (paper: 518)")
    p.add_argument("--resize-side", choices=("short", "long"),
                   help="which image side --short-side sets (long gives the paper's 518x378 for 4:3 frames)")
    p.add_argument("--frame-codec", choices=("jpeg", "npy"), help="how frames are stored")
    p.add_argument("--target-shard-mb", type=float, help="target shard size in MB")
    p.add_argument("--concurrency", type=int, help="maximum concurrent scene tasks")
    p.add_argument("--scenes-per-task", type=int, help="at most this many scenes staged one after the other by one Ray task")
    p.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    p.add_argument("--tiny", action="store_true", help="start from IngestConfig.tiny() (tests and smoke runs)")
    return p


def resolve_config(args: argparse.Namespace) -> IngestConfig:
    base = IngestConfig.from_json_file(args.config) if args.config else (
        IngestConfig.tiny() if args.tiny else IngestConfig()
    )
    overrides = {
        "layout": args.layout, "frames_per_clip": args.frames_per_clip, "clips_per_scene": args.clips_per_scene,
        "stride": args.stride, "short_side": args.short_side, "frame_codec": args.frame_codec,
        "resize_side": args.resize_side,
        "concurrency": args.concurrency, "scenes_per_task": args.scenes_per_task,
        "target_shard_bytes": int(args.target_shard_mb * 1024**2) if args.target_shard_mb else None,
    }
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "frames_per_clip" in overrides and base.min_valid_frames < overrides["frames_per_clip"]:
        overrides["min_valid_frames"] = overrides["frames_per_clip"]
    return dataclasses.replace(base, **overrides)


def main(argv: list[str] | None = None) -> int:
    from pipelines.ingest.job import run_ingest

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = resolve_config(args)
    manifest = run_ingest(args.scenes, args.out, config, annotations_uri=args.annotations,
                          ray_address=args.ray_address)
    return 0 if manifest.summary.get("scenes_written", 0) > 0 or not manifest.summary.get("scenes") else 1


if __name__ == "__main__":
    sys.exit(main())
