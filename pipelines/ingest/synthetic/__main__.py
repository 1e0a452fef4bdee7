"""Generate synthetic ScanNet-format scenes with benchmark annotations.

Examples::

    # two tiny scenes for tests (160x120 colour, 80x60 depth, 32 frames)
    python -m pipelines.ingest.synthetic --scenes 2 --out /tmp/synth --seed 0 --size small
    # ScanNet-sized scenes straight to object storage (AWS_ENDPOINT_URL etc. from the environment)
    python -m pipelines.ingest.synthetic --scenes 10 --out s3://bucket/synthetic --seed 7 --size scannet

Re-running with the same arguments skips scenes that are already complete (marker in ``.synthetic_done/``) and
rewrites the annotation files; ``--overwrite`` regenerates everything (byte-identical, generation is deterministic).
The resolved configuration is saved in ``<out>/annotations/synthetic_manifest.json``. The flags are shortcuts for
``--set`` keys of :class:`~pipelines.ingest.synthetic.scene.SyntheticConfig` (``--config`` takes a YAML/JSON file).
"""

from __future__ import annotations

import sys

from pipelines.config import CliParser, ConfigSpec, alias, print_config, run_cli
from pipelines.ingest.synthetic.generate import generate
from pipelines.ingest.synthetic.language import QUESTION_FAMILIES
from pipelines.ingest.synthetic.scene import LAYOUTS, SyntheticConfig
from pipelines.ingest.synthetic.trajectory import SIZE_PRESETS

PROG = "python -m pipelines.ingest.synthetic"


def tiny() -> dict:
    """The ``tiny`` preset: two small scenes (one train, one val) of 24 frames (tests)."""
    return {"num_scenes": 2, "size": "small", "num_frames": 24}


SPEC = ConfigSpec(SyntheticConfig, "synthetic", {"default": dict, "tiny": tiny})


def build_parser() -> CliParser:
    parser = CliParser(
        prog=PROG,
        description=(
            "Render procedural box rooms as ScanNet scenes (.sens, SensReader export, posed_images, H.264 video layout, "
            "_vh_clean_2.ply mesh, segments, aggregation, axisAlignment) with exact depth and poses, and derive "
            "ScanQA / SQA3D / ScanRefer / Multi3DRefer annotations from the scene content."
        ),
        epilog=SPEC.describe(),
    )
    group = SPEC.add_arguments(parser)
    alias(group, "--scenes", "num_scenes", type=int, help="number of scenes to generate")
    alias(group, "--out", "out", help="output root: local directory or URI such as s3://bucket/prefix")
    alias(group, "--seed", "seed", type=int, help="base random seed (same seed -> same bytes)")
    sizes = ", ".join(
        f"{n}: colour {p.color.width}x{p.color.height}, depth {p.depth.width}x{p.depth.height}, {p.num_frames} frames"
        for n, p in SIZE_PRESETS.items()
    )
    alias(group, "--size", "size", choices=sorted(SIZE_PRESETS), help=f"sensor preset ({sizes}; default small)")
    alias(group, "--frames", "num_frames", type=int, help="frames per scene (0 = the size preset's default)")
    alias(group, "--first-scene-index", "first_scene_index", type=int, help="index of the first scene (scene%%04d_00)")
    alias(group, "--layouts", "layouts", convert=lambda text: [s.strip() for s in text.split(",") if s.strip()],
          help=f"comma-separated subset of {','.join(LAYOUTS)} to write (default: all)")
    alias(group, "--invalid-frames", "num_invalid_frames", type=int,
          help="frames written with -inf poses, as ScanNet does on lost tracking (default 2)")
    alias(group, "--jpeg-quality", "jpeg_quality", type=int, help="JPEG quality of colour frames (default 95)")
    alias(group, "--fps", "fps", type=int, help="stream frame rate (timestamps and video; default 30)")
    alias(group, "--gop", "gop", type=int, help="H.264 keyframe interval of the video layout (default 30)")
    alias(group, "--val-every", "val_every", type=int, help="every N-th scene, starting at index 1, is val (default 4)")
    alias(group, "--descriptions-per-object", "descriptions_per_object", type=int,
          help="ScanRefer descriptions per object (default 2)")
    alias(group, "--class-probability", "class_probability", type=float,
          help="probability that each furniture class is present in a room (independently per class; default 0.5)")
    alias(group, "--question-families", "question_families",
          convert=lambda text: [s.strip() for s in text.split(",") if s.strip()],
          help=f"comma-separated ScanQA question families to write (subset of {','.join(QUESTION_FAMILIES)}; default: all)")
    alias(group, "--no-situated", "situated_questions", const=False, help="do not write SQA3D (situated) questions")
    alias(group, "--overwrite", "overwrite", const=True, help="regenerate scenes even if already complete")
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_cli(lambda: _main(argv), PROG)


def _main(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    config = SPEC.resolve(args)
    if args.print_config:
        print_config(config)
        return 0
    generate(config, log=lambda msg: print(msg, flush=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
