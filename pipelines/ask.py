"""``vidllm ask``: ask one video a question, ground a description or caption a box, with the model in this process.

    vidllm ask room.mp4 "how many chairs are there?" --model exports/vidllm
    vidllm ask room.mp4 --ground "the chair next to the door" --model exports/vidllm --out room.ply
    vidllm ask room.mp4 --caption 0.4 0.1 2.0 0.5 0.9 0.5 --model exports/vidllm --json

No Ray and no server: the video is sampled exactly as the HTTP endpoint samples it (``num_frames`` frames,
uniformly, centre-cropped and resized to the model's input size; :func:`pipelines.serve.video_input.sample_clip`)
and prompted through the checkpoint's own processor (prompt and chat template, :class:`model.VidLLMProcessor`),
so the same video, model and frame size give the same answer here and over HTTP. Boxes are axis-aligned,
``centre`` + full ``size`` in metres in the scene's first-camera frame (OpenCV axes: x right, y down, z forward).

What a local file may be (:func:`local_limits`): the endpoint's per-request limits guard a server shared by many
clients (upload size, duration, a 4K frame size, 30 s of decoding); here the video is the user's own file on the
user's own machine, so any length, any decode time and frames up to 8K (7680x4320) are read. Containers are still
opened through the same allow-list (MP4/MOV family, Matroska/WebM), which keeps FFmpeg from following playlists to
other files. A video needs at least 2 frames (one view reconstructs nothing); with fewer distinct frames than
``--num-frames`` the sampled frames repeat, as over HTTP.

``--out scene.ply`` writes the reconstruction with the boxes in one binary little-endian PLY file:

* ``element vertex``: first the N reconstructed points (``float x, y, z`` metres, ``uchar red, green, blue``),
  then 8 corner vertices per box;
* ``element edge``: 12 edges per box (``int vertex1, vertex2``, ``uchar red, green, blue``), the box wireframes;
  grounded boxes are amber (255, 176, 0), the ``--caption`` box magenta (255, 61, 242);
* ``comment box <i> <kind> centre <x y z> size <dx dy dz> [score <s>]`` per box, in edge order.

PLY's ``edge`` element is the standard way to store line geometry beside points: MeshLab and CloudCompare draw
the wireframes, Open3D reads them with ``read_line_set`` and the points with ``read_point_cloud``.

Exit status: 0 on success, 2 with one line on stderr for a bad input (missing or unreadable video, missing or
invalid model, bad ``--out`` or box), checked before anything is written.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

PROG = "vidllm ask"
GROUND_RGB = (255, 176, 0)
CAPTION_RGB = (255, 61, 242)


class AskError(Exception):
    """An input ``vidllm ask`` cannot use; printed as one line, exit status 2."""


@dataclass(frozen=True)
class AskBox:
    """One box of the output: ``center``/``size`` metres (first-camera frame), ``score`` for grounded boxes."""

    kind: str  # "ground" or "caption"
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "center": list(self.center), "size": list(self.size)}
        if self.score is not None:
            out["score"] = self.score
        return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Answer a question about a video, ground a description (3D boxes) or caption a 3D box, "
        "running Vid-LLM in this process (no Ray, no server). At least one of QUESTION, --ground, --caption.",
        epilog=__doc__.split("\n\n", 2)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("video", help="local video file (any container/codec PyAV decodes: MP4/H.264, WebM/VP9, ...)")
    p.add_argument("question", nargs="?", help="question about the scene")
    p.add_argument("--ground", metavar="DESCRIPTION", help="describe one object; prints its boxes, best first")
    p.add_argument("--caption", nargs=6, type=float, metavar=("X", "Y", "Z", "W", "H", "D"),
                   help="caption the box with centre X Y Z and size W H D (metres, first-camera frame)")
    p.add_argument("--model", required=True,
                   help="exported checkpoint directory (config.json + model.safetensors + tokenizer files)")
    p.add_argument("--out", type=Path, help="write the point cloud with the boxes to this .ply file")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    p.add_argument("--num-frames", type=int, default=32, help="frames sampled uniformly from the video (default 32)")
    p.add_argument("--top-k", type=int, default=5, help="grounded boxes printed, best first (default 5)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="longest answer or caption, tokens (default 32)")
    p.add_argument("--max-points", type=int, default=500_000, help="most points in --out (default 500000)")
    p.add_argument("--frame-size", type=int, default=0,
                   help="side of the square frames the model is fed, pixels (default 0: the encoder's image_size; "
                        "use the size the model was trained and is served at)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--dtype", choices=("auto", "bf16", "fp32"), default="auto",
                   help="weight dtype (default auto: bf16 on cuda, fp32 on cpu)")
    return p


def _check_args(args: argparse.Namespace) -> None:
    """Every check that needs neither the model nor the decoded video (so that mistakes cost no model load)."""
    if args.question is None and args.ground is None and args.caption is None:
        raise AskError("nothing to ask: give a QUESTION, --ground DESCRIPTION or --caption X Y Z W H D")
    for name, text in (("QUESTION", args.question), ("--ground", args.ground)):
        if text is not None and not text.strip():
            raise AskError(f"{name} is empty")
    if args.caption is not None:
        if not all(math.isfinite(v) for v in args.caption):
            raise AskError("--caption: all six values must be finite numbers")
        if not all(v > 0 for v in args.caption[3:]):
            raise AskError("--caption: the size W H D must be > 0 metres")
    for name in ("num_frames", "top_k", "max_new_tokens", "max_points"):
        if getattr(args, name) < 1:
            raise AskError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.frame_size < 0:
        raise AskError(f"--frame-size must be 0 (the encoder's image_size) or a side in pixels, got {args.frame_size}")
    video = Path(args.video)
    if not video.exists():
        raise AskError(f"video {args.video}: no such file")
    if not video.is_file():
        raise AskError(f"video {args.video}: not a file")
    if args.out is not None:
        if args.out.suffix.lower() != ".ply":
            raise AskError(f"--out {args.out}: the output is a PLY file; give a name ending in .ply")
        if not args.out.parent.is_dir():
            raise AskError(f"--out {args.out}: directory {args.out.parent} does not exist")
        if args.out.is_dir():
            raise AskError(f"--out {args.out}: is a directory; give a file name ending in .ply")


def _read_video(path: str) -> bytes:
    """The video's bytes, after checking that a video stream can be found in them."""
    from pipelines.scenes.errors import SceneDataError
    from pipelines.scenes.video import probe

    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise AskError(f"video {path}: cannot be read ({exc.strerror or exc})") from exc
    if not data:
        raise AskError(f"video {path}: the file is empty")
    try:
        probe(data)
    except SceneDataError as exc:
        raise AskError(f"video {path}: not a decodable video ({exc.problem})") from exc
    return data


def load_model(model: str, device: str, dtype: str = "auto"):
    """Load ``(VidLLM, VidLLMProcessor)`` from an exported checkpoint: the one place ``vidllm ask`` resolves a
    model. ``dtype``: ``auto`` (bf16 on CUDA, fp32 otherwise), ``bf16`` or ``fp32``."""
    import os

    from pipelines.artifacts import load_model_and_processor, resolve_model
    from pipelines.serve.config import DTYPES

    try:
        checkpoint = resolve_model(model, os.environ.get("MLFLOW_TRACKING_URI")).local_dir
    except FileNotFoundError as exc:
        raise AskError(str(exc)) from exc
    try:
        weights = DTYPES[dtype] or ("bfloat16" if device.startswith("cuda") else "float32")
        return load_model_and_processor(checkpoint, device, weights)
    except Exception as exc:  # noqa: BLE001 - any failure to load is one line naming the checkpoint and the cause
        raise AskError(f"--model {model}: cannot load the checkpoint ({type(exc).__name__}: {exc})") from exc


#: Largest frame of a local video: 8K UHD.
LOCAL_MAX_FRAME_PIXELS = 7680 * 4320
#: Fewest frames of a local video: one view reconstructs nothing.
LOCAL_MIN_FRAMES = 2


def local_limits(num_frames: int, size_bytes: int):
    """The :class:`~pipelines.serve.config.LimitsConfig` a local file is sampled under (see the module docstring):
    no size, duration, decode-time or decoded-bytes bound, frames up to 8K, at least 2 frames, the endpoint's
    container allow-list."""
    from pipelines.scenes.decode_budget import DecodeBudget
    from pipelines.serve.config import LimitsConfig

    unbounded = 2**62
    return LimitsConfig(max_upload_bytes=max(size_bytes, 1), max_duration_s=float(unbounded),
                        max_source_frames=unbounded, min_source_frames=LOCAL_MIN_FRAMES, num_frames=num_frames,
                        decode=DecodeBudget(max_frame_pixels=LOCAL_MAX_FRAME_PIXELS, max_frames=unbounded,
                                            max_decoded_bytes=unbounded, max_decode_s=None))


def _sample(data: bytes, path: str, num_frames: int, size: int) -> np.ndarray:
    """``[S, H, W, 3]`` uint8 frames, sampled as the HTTP endpoint samples them."""
    from pipelines.serve.errors import ApiError
    from pipelines.serve.video_input import SamplingSpec, sample_clip

    try:
        return sample_clip(data, SamplingSpec(num_frames, size, size), local_limits(num_frames, len(data))).frames
    except ApiError as exc:
        raise AskError(f"video {path}: {exc.detail}") from exc


def grounded_boxes(boxes: np.ndarray, scores: np.ndarray, top_k: int) -> list[AskBox]:
    """The usable boxes of one grounding output, best first: finite, with a positive volume, at most ``top_k``.

    Args:
        boxes: ``[Q, 6]`` centre + size, metres.
        scores: ``[Q]`` probabilities.
    """
    out = []
    for q in np.argsort(-scores, kind="stable"):
        box, score = boxes[q], float(scores[q])
        if np.isfinite(box).all() and (box[3:] > 0).all() and math.isfinite(score):
            out.append(AskBox("ground", tuple(map(float, box[:3])), tuple(map(float, box[3:])), score))
        if len(out) == top_k:
            break
    return out


def box_corners(box: AskBox) -> np.ndarray:
    """``[8, 3]`` corners; corner ``i`` has sign bits ``(i >> 2, i >> 1, i) & 1`` on (x, y, z)."""
    signs = np.array(list(itertools.product((-0.5, 0.5), repeat=3)))
    return np.asarray(box.center) + signs * np.asarray(box.size)


#: The 12 edges of a box as corner index pairs: corners that differ in exactly one sign bit.
BOX_EDGES = [(i, j) for i in range(8) for j in range(i + 1, 8) if bin(i ^ j).count("1") == 1]


def ply_with_boxes(xyz: np.ndarray, rgb: np.ndarray, boxes: Sequence[AskBox]) -> bytes:
    """Binary little-endian PLY: the points, 8 corner vertices per box, and 12 coloured edges per box.

    Args:
        xyz: ``[N, 3]`` float32 metres.
        rgb: ``[N, 3]`` uint8.
        boxes: drawn as wireframes, in this order.
    """
    from pipelines.serve.pointcloud import PLY_DTYPE

    n = len(xyz)
    vertices = np.empty(n + 8 * len(boxes), dtype=PLY_DTYPE)
    edge_dtype = np.dtype([("vertex1", "<i4"), ("vertex2", "<i4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")])
    edges = np.empty(12 * len(boxes), dtype=edge_dtype)
    corners = np.concatenate([box_corners(b) for b in boxes]) if boxes else np.zeros((0, 3))
    all_xyz = np.concatenate([np.asarray(xyz, np.float32), corners.astype(np.float32)])
    colours = [GROUND_RGB if b.kind == "ground" else CAPTION_RGB for b in boxes]
    all_rgb = np.concatenate([np.asarray(rgb, np.uint8), np.repeat(np.array(colours, np.uint8).reshape(-1, 3), 8, 0)])
    for i, name in enumerate(("x", "y", "z")):
        vertices[name] = all_xyz[:, i]
    for i, name in enumerate(("red", "green", "blue")):
        vertices[name] = all_rgb[:, i]
    comments = []
    for k, box in enumerate(boxes):
        base = n + 8 * k
        pairs = np.array(BOX_EDGES) + base
        edges["vertex1"][12 * k:12 * k + 12] = pairs[:, 0]
        edges["vertex2"][12 * k:12 * k + 12] = pairs[:, 1]
        for i, name in enumerate(("red", "green", "blue")):
            edges[name][12 * k:12 * k + 12] = colours[k][i]
        score = "" if box.score is None else f" score {box.score:.6f}"
        comments.append(f"comment box {k} {box.kind} centre {' '.join(f'{v:.6f}' for v in box.center)} "
                        f"size {' '.join(f'{v:.6f}' for v in box.size)}{score}\n")
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment Vid-LLM reconstruction, metres, first-camera frame\n"
        f"comment vertices 0..{n - 1} are points; then 8 corners per box; edges are box wireframes\n"
        + "".join(comments)
        + f"element vertex {len(vertices)}\n"
        "property float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\n"
        f"element edge {len(edges)}\n"
        "property int vertex1\nproperty int vertex2\nproperty uchar red\nproperty uchar green\nproperty uchar blue\n"
        "end_header\n"
    )
    return header.encode("ascii") + vertices.tobytes() + edges.tobytes()


def ask(args: argparse.Namespace) -> dict[str, Any]:
    """Run the requested tasks; returns ``{"answer", "caption", "boxes", "points"}`` (only those computed)."""
    _check_args(args)
    data = _read_video(args.video)
    model, processor = load_model(args.model, args.device, args.dtype)

    import torch

    size = args.frame_size or int(model.vidllm_config.encoder.dinov2["image_size"])
    if size % processor.patch_size:
        raise AskError(f"--frame-size {size} is not a multiple of the model's patch size {processor.patch_size}")
    frames = _sample(data, args.video, args.num_frames, size)
    device = torch.device(args.device)
    result: dict[str, Any] = {}
    boxes: list[AskBox] = []
    with torch.inference_mode():
        clip = processor.frames_to_tensor(torch.from_numpy(frames).to(device)[None]).to(model.dtype)  # [1, S, 3, H, W]
        scene = model.encode_scene(clip)
        if args.question is not None:
            result["answer"] = model.answer(scene, [args.question.strip()], processor,
                                            max_new_tokens=args.max_new_tokens)[0]
        if args.caption is not None:
            box = torch.tensor([args.caption], dtype=torch.float32, device=device)
            result["caption"] = model.caption(scene, box, processor, max_new_tokens=args.max_new_tokens)[0]
            boxes.append(AskBox("caption", tuple(args.caption[:3]), tuple(args.caption[3:])))
        if args.ground is not None:
            out = model.ground(scene, [args.ground.strip()], processor)
            found = grounded_boxes(out.boxes[0].float().cpu().numpy(), out.scores[0].float().cpu().numpy(), args.top_k)
            result["boxes"] = [b.to_dict() for b in found]
            boxes = found + boxes
    if args.out is not None:
        from pipelines.serve.pointcloud import backproject

        xyz, rgb = backproject(scene.depth[0].float().cpu().numpy(), scene.extrinsics[0].float().cpu().numpy(),
                               scene.intrinsics[0].float().cpu().numpy(), frames, args.max_points)
        args.out.write_bytes(ply_with_boxes(xyz, rgb, boxes))
        result["points"] = len(xyz)
    return result


def _print_text(result: dict[str, Any], out_path: Path | None) -> None:
    if "answer" in result:
        print(result["answer"])
    if "caption" in result:
        print(result["caption"])
    for i, box in enumerate(result.get("boxes", []), start=1):
        centre = ", ".join(f"{v:.3f}" for v in box["center"])
        size = ", ".join(f"{v:.3f}" for v in box["size"])
        print(f"box {i}: score {box['score']:.3f}  centre ({centre}) m  size ({size}) m")
    if out_path is not None:
        print(f"wrote {out_path} ({result['points']} points + boxes)", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = ask(args)
    except AskError as exc:
        print(f"{PROG}: error: {' '.join(str(exc).splitlines())}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        _print_text(result, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
