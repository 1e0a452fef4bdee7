"""Tiny TRAINING shards for smoke tests and benchmarks, written through the shard contract (:mod:`pipelines.schema`).

Each clip shows a few coloured boxes (one flat colour per object, on a grey background) seen by a camera sliding
sideways; depth is the camera-to-plane distance; the teacher targets are a fixed random linear function of each
patch's mean colour (geometry tokens) and of the frame's mean colour (semantic feature), so a student can learn
them and a falling distillation loss means something. Annotations use the benchmark entry formats (ScanQA-style
QA with ``question``/``answers``, ScanRefer-style ``description``/``object_id``) with words of the tiny tokenizer.

    python -m pipelines.train.synthetic_shards OUT --clips 16 --shards 4
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence

import numpy as np

from pipelines import storage
from pipelines.manifest import Manifest, ShardRecord, manifest_uri, put_atomic
from pipelines.schema import (
    TRAIN_SHARD_PREFIX,
    ClipSample,
    config_hash,
    encode_clip_sample,
    encode_teacher_fields,
    sample_key,
    sample_members,
    shard_name,
    write_tar,
)

COLOURS = {"red": (220, 40, 40), "green": (40, 200, 60), "blue": (40, 60, 220), "yellow": (230, 220, 40)}
LABELS = ("chair", "table", "lamp", "box")


def _clip(scene_id: str, index: int, rng: np.random.Generator, frames: int, hw: tuple[int, int], patch: int,
          geo_proj: np.ndarray, sem_proj: np.ndarray) -> tuple[ClipSample, np.ndarray, np.ndarray]:
    n_obj = 2
    height, width = hw
    picks = rng.choice(len(LABELS), size=n_obj, replace=False)
    colours = rng.choice(list(COLOURS), size=n_obj, replace=False)
    rgb = np.full((frames, height, width, 3), 128, np.uint8)
    plane = float(rng.uniform(1.5, 3.0))
    for s in range(frames):
        shift = s  # pixels of sideways motion per frame
        for k in range(n_obj):
            x0 = (4 + 12 * k + shift) % (width - 8)
            y0 = 6 + 8 * k
            rgb[s, y0:y0 + 8, x0:x0 + 8] = COLOURS[colours[k]]
    depth = np.full((frames, height, width), plane, np.float32)
    f = float(width)
    intr = np.tile(np.array([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1]], np.float32), (frames, 1, 1))
    c2w = np.tile(np.eye(4), (frames, 1, 1))
    c2w[:, 0, 3] = np.arange(frames) * plane / f  # the image shift of one pixel per frame at the plane depth
    ext = np.linalg.inv(c2w)[:, :3, :].astype(np.float32)  # world = first camera (c2w[0] is the identity)
    objects = []
    for k in range(n_obj):
        centre = [float(0.3 * k - 0.2), float(0.2 * k - 0.1), plane]
        dims = [0.4, 0.4, 0.3 + 0.1 * k]
        objects.append({"object_id": k + 1, "label": LABELS[picks[k]], "center": centre, "size": dims,
                        "center_first_cam": centre, "size_first_cam": dims})
    names = [f"{colours[k]} {LABELS[picks[k]]}" for k in range(n_obj)]
    annotations = {
        "ScanQA": [{"question": f"what color is the {LABELS[picks[k]]}?", "answers": [str(colours[k])],
                    "object_ids": [k + 1], "scene_id": scene_id} for k in range(n_obj)]
        + [{"question": "how many objects are in the room?", "answers": ["two"], "object_ids": [1, 2],
            "scene_id": scene_id}],
        "ScanRefer": [{"description": f"this is a {names[k]}.", "object_id": str(k + 1),
                       "object_name": LABELS[picks[k]], "scene_id": scene_id, "ann_id": "0"} for k in range(n_obj)],
    }
    clip = ClipSample(
        key=sample_key(scene_id, index), frames=rgb, depth_m=depth, cam_to_world=c2w, extrinsics=ext,
        intrinsics=intr, boxes={"axis_alignment": np.eye(4).tolist(), "objects": objects}, annotations=annotations,
        meta={"scene_id": scene_id, "clip_index": index, "source": "synthetic-train-shards"})
    gh, gw = height // patch, width // patch
    pooled = rgb.reshape(frames, gh, patch, gw, patch, 3).mean(axis=(2, 4)).reshape(frames, gh * gw, 3) / 255.0
    teacher_geo = np.tanh((pooled - 0.5) @ geo_proj).astype(np.float32)  # [S, P, Cg]
    teacher_sem = np.tanh((rgb.reshape(frames, -1, 3).mean(1) / 255.0 - 0.5) @ sem_proj).astype(np.float32)
    return clip, teacher_geo, teacher_sem


def write_synthetic_shards(out: str, num_clips: int = 16, num_shards: int = 4, frames: int = 4, size: int = 28,
                           patch: int = 14, geo_dim: int = 48, sem_dim: int = 40, seed: int = 0,
                           width: int = 0, frame_codec: str = "npy") -> str:
    """Write ``num_clips`` training clips in ``num_shards`` shards plus ``manifest.json`` (last) under ``out``.

    Frames are ``size`` pixels high and ``width`` wide (``0``: square), stored with ``frame_codec`` (``npy``, or
    ``jpeg`` as the ingest stage writes them).

    Returns:
        The manifest URI.
    """
    width = width or size
    if size % patch or width % patch:
        raise ValueError(f"frame size {size}x{width} must be a multiple of the patch size {patch}")
    rng = np.random.default_rng(seed)
    geo_proj = rng.normal(size=(3, geo_dim)) * 2
    sem_proj = rng.normal(size=(3, sem_dim)) * 2
    config = {"num_clips": num_clips, "num_shards": num_shards, "frames": frames, "size": size, "width": width,
              "patch": patch, "geo_dim": geo_dim, "sem_dim": sem_dim, "seed": seed, "frame_codec": frame_codec}
    info = {"patch_grid": [size // patch, width // patch], "geo_dim": geo_dim, "sem_dim": sem_dim,
            "geometry": "synthetic-linear", "semantic": "synthetic-linear"}
    per_shard = np.array_split(np.arange(num_clips), num_shards)
    records = []
    for s, idx in enumerate(per_shard):
        members, keys, scenes = [], [], []
        for i in idx:
            scene_id = f"synth{int(i):04d}_00"
            clip, geo, sem = _clip(scene_id, 0, rng, frames, (size, width), patch, geo_proj, sem_proj)
            sample = {**encode_clip_sample(clip, frame_codec=frame_codec), **encode_teacher_fields(geo, sem, info)}
            members.extend(sample_members(sample))
            keys.append(clip.key)
            scenes.append(scene_id)
        data = write_tar(members)
        name = shard_name(TRAIN_SHARD_PREFIX, s)
        put_atomic(storage.join(out, name), data)
        records.append(ShardRecord(name=name, num_samples=len(keys), num_bytes=len(data),
                                   sha256=hashlib.sha256(data).hexdigest(), scenes=scenes, keys=keys))
    manifest = Manifest(kind="train", config=config, config_hash=config_hash(config), shards=records,
                        summary={"samples": num_clips, "shards": num_shards})
    put_atomic(manifest_uri(out), manifest.to_json())
    return manifest_uri(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.train.synthetic_shards",
                                     description="Write tiny synthetic TRAINING shards + manifest (tests, benchmarks).")
    parser.add_argument("out", help="output directory or URI")
    parser.add_argument("--clips", type=int, default=16, help="number of clips")
    parser.add_argument("--shards", type=int, default=4, help="number of shards")
    parser.add_argument("--frames", type=int, default=4, help="frames per clip")
    parser.add_argument("--size", type=int, default=28, help="frame height and width in pixels (multiple of 14)")
    args = parser.parse_args(argv)
    uri = write_synthetic_shards(args.out, args.clips, args.shards, args.frames, args.size)
    print(json.dumps({"manifest": uri}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
