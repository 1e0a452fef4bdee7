"""Generate synthetic ScanNet-format scenes with benchmark annotations.

Examples::

    # two tiny scenes for tests (160x120 colour, 80x60 depth, 32 frames)
    python -m pipelines.ingest.synthetic --scenes 2 --out /tmp/synth --seed 0 --size small
    # ScanNet-sized scenes straight to object storage (AWS_ENDPOINT_URL etc. from the environment)
    python -m pipelines.ingest.synthetic --scenes 10 --out s3://bucket/synthetic --seed 7 --size scannet

Re-running with the same arguments skips scenes that are already complete (marker in ``.synthetic_done/``) and
rewrites the annotation files; ``--overwrite`` regenerates everything (byte-identical, generation is deterministic).
The resolved configuration is saved in ``<out>/annotations/synthetic_manifest.json``.
"""

from __future__ import annotations

import argparse
import sys

from pipelines.ingest.synthetic.generate import generate
from pipelines.ingest.synthetic.language import QUESTION_FAMILIES
from pipelines.ingest.synthetic.scene import LAYOUTS, SyntheticConfig
from pipelines.ingest.synthetic.trajectory import SIZE_PRESETS


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.ingest.synthetic",
        description=(
            "Render procedural box rooms as ScanNet scenes (.sens, SensReader export, posed_images, H.264 video layout, "
            "_vh_clean_2.ply mesh, segments, aggregation, axisAlignment) with exact depth and poses, and derive "
            "ScanQA / SQA3D / ScanRefer / Multi3DRefer annotations from the scene content."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--scenes", type=int, required=True, help="number of scenes to generate")
    parser.add_argument(
        "--out", required=True, help="output root: local directory or URI such as s3://bucket/prefix"
    )
    parser.add_argument("--seed", type=int, required=True, help="base random seed (same seed -> same bytes)")
    sizes = ", ".join(
        f"{n}: colour {p.color.width}x{p.color.height}, depth {p.depth.width}x{p.depth.height}, {p.num_frames} frames"
        for n, p in SIZE_PRESETS.items()
    )
    parser.add_argument(
        "--size", choices=sorted(SIZE_PRESETS), default="small", help=f"sensor preset ({sizes})"
    )
    parser.add_argument(
        "--frames", type=int, default=0, help="frames per scene (0 = the size preset's default)"
    )
    parser.add_argument(
        "--first-scene-index", type=int, default=0, help="index of the first scene (scene%%04d_00)"
    )
    parser.add_argument(
        "--layouts", default=",".join(LAYOUTS), help=f"comma-separated subset of {','.join(LAYOUTS)} to write"
    )
    parser.add_argument(
        "--invalid-frames",
        type=int,
        default=2,
        help="frames written with -inf poses, as ScanNet does on lost tracking",
    )
    parser.add_argument("--jpeg-quality", type=int, default=95, help="JPEG quality of colour frames")
    parser.add_argument("--fps", type=int, default=30, help="stream frame rate (timestamps and video)")
    parser.add_argument("--gop", type=int, default=30, help="H.264 keyframe interval of the video layout")
    parser.add_argument(
        "--val-every", type=int, default=4, help="every N-th scene, starting at index 1, is val"
    )
    parser.add_argument(
        "--descriptions-per-object", type=int, default=2, help="ScanRefer descriptions per object"
    )
    parser.add_argument(
        "--class-probability",
        type=float,
        default=0.5,
        help="probability that each furniture class is present in a room (independently per class)",
    )
    parser.add_argument(
        "--question-families",
        default=",".join(QUESTION_FAMILIES),
        help=f"comma-separated ScanQA question families to write (subset of {','.join(QUESTION_FAMILIES)})",
    )
    parser.add_argument(
        "--no-situated", action="store_true", help="do not write SQA3D (situated) questions"
    )
    parser.add_argument("--overwrite", action="store_true", help="regenerate scenes even if already complete")
    return parser


def config_from_args(args: argparse.Namespace) -> SyntheticConfig:
    return SyntheticConfig(
        out=args.out,
        num_scenes=args.scenes,
        seed=args.seed,
        size=args.size,
        num_frames=args.frames,
        first_scene_index=args.first_scene_index,
        layouts=tuple(s.strip() for s in args.layouts.split(",") if s.strip()),
        num_invalid_frames=args.invalid_frames,
        jpeg_quality=args.jpeg_quality,
        fps=args.fps,
        gop=args.gop,
        val_every=args.val_every,
        descriptions_per_object=args.descriptions_per_object,
        class_probability=args.class_probability,
        question_families=tuple(f.strip() for f in args.question_families.split(",") if f.strip()),
        situated_questions=not args.no_situated,
        overwrite=args.overwrite,
    )


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except ValueError as exc:
        parser.error(str(exc))
    generate(config, log=lambda msg: print(msg, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
