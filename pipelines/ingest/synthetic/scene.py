"""Scene specification: the resolved generator config and the deterministic, render-free scene ground truth.

Each scene draws from its own generator ``default_rng([seed, scene_index])``, so a scene does not depend on how
many other scenes are generated, nor on ``--first-scene-index``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field

import numpy as np

from pipelines.ingest.synthetic.language import QUESTION_FAMILIES
from pipelines.ingest.synthetic.render import BoxSet
from pipelines.ingest.synthetic.room import Room, generate_room
from pipelines.ingest.synthetic.trajectory import (
    SIZE_PRESETS,
    LoopTrajectory,
    SizePreset,
    invalid_frame_indices,
)

GENERATOR_VERSION = 2
LAYOUTS = ("sens", "export", "posed_images", "video")
SPLITS = ("train", "val")


@dataclass(frozen=True)
class SyntheticConfig:
    """Resolved generator configuration (saved in ``annotations/synthetic_manifest.json``).

    Attributes:
        out: output root, local path or URI.
        num_scenes: number of scenes to generate.
        seed: base random seed.
        size: ``small`` (tests) or ``scannet`` (1296x968 colour, 640x480 depth).
        num_frames: frames per scene; 0 means the size preset's default.
        first_scene_index: index of the first scene (``scene%04d_00``).
        layouts: which frame layouts to write (subset of ``LAYOUTS``).
        num_invalid_frames: frames whose pose is written as ``-inf`` (ScanNet's lost tracking).
        jpeg_quality: JPEG quality of colour frames.
        fps: frame rate of the stream (timestamps and video).
        gop: H.264 keyframe interval of the video layout.
        val_every: every ``val_every``-th scene, starting at index 1, goes to the val split.
        descriptions_per_object: ScanRefer descriptions per object.
        class_probability: probability that each furniture class is present in a room (independently per class,
            so that whether a class is present cannot be told from its name).
        question_families: ScanQA question families written (subset of ``QUESTION_FAMILIES``).
        situated_questions: write the SQA3D files (situated questions).
        overwrite: regenerate scenes even when their completion marker matches.
    """

    out: str
    num_scenes: int
    seed: int = 0
    size: str = "small"
    num_frames: int = 0
    first_scene_index: int = 0
    layouts: tuple[str, ...] = LAYOUTS
    num_invalid_frames: int = 2
    jpeg_quality: int = 95
    fps: int = 30
    gop: int = 30
    val_every: int = 4
    descriptions_per_object: int = 2
    class_probability: float = 0.5
    question_families: tuple[str, ...] = QUESTION_FAMILIES
    situated_questions: bool = True
    overwrite: bool = False
    generator_version: int = field(default=GENERATOR_VERSION)

    def __post_init__(self) -> None:
        if self.num_scenes < 1:
            raise ValueError(f"num_scenes must be >= 1, got {self.num_scenes}")
        if self.size not in SIZE_PRESETS:
            raise ValueError(f"size must be one of {sorted(SIZE_PRESETS)}, got {self.size!r}")
        if self.num_frames < 0 or self.num_frames == 1:
            raise ValueError(f"num_frames must be 0 (preset default) or >= 2, got {self.num_frames}")
        if self.first_scene_index < 0 or self.first_scene_index + self.num_scenes > 10000:
            raise ValueError("scene indices must lie in [0, 9999] (scene%04d_00)")
        unknown = set(self.layouts) - set(LAYOUTS)
        if unknown or not self.layouts:
            raise ValueError(f"layouts must be a non-empty subset of {LAYOUTS}, got {self.layouts}")
        if self.num_invalid_frames < 0:
            raise ValueError(f"num_invalid_frames must be >= 0, got {self.num_invalid_frames}")
        if not 1 <= self.jpeg_quality <= 95:
            raise ValueError(f"jpeg_quality must be in [1, 95], got {self.jpeg_quality}")
        if self.fps < 1 or self.gop < 1 or self.val_every < 2 or self.descriptions_per_object < 1:
            raise ValueError("fps, gop and descriptions_per_object must be >= 1 and val_every >= 2")
        if not 0.0 < self.class_probability <= 1.0:
            raise ValueError(f"class_probability must be in (0, 1], got {self.class_probability}")
        unknown_families = set(self.question_families) - set(QUESTION_FAMILIES)
        if unknown_families:
            raise ValueError(f"question_families must be a subset of {QUESTION_FAMILIES}, got {self.question_families}")

    @classmethod
    def tiny(cls, out: str) -> SyntheticConfig:
        """Two small scenes (one train, one val) of 24 frames: the unit-test preset."""
        return cls(out=out, num_scenes=2, size="small", num_frames=24)

    @property
    def preset(self) -> SizePreset:
        return SIZE_PRESETS[self.size]

    @property
    def frames_per_scene(self) -> int:
        return self.num_frames or self.preset.num_frames

    def scene_indices(self) -> range:
        return range(self.first_scene_index, self.first_scene_index + self.num_scenes)

    def split_of(self, scene_index: int) -> str:
        return "val" if scene_index % self.val_every == 1 else "train"

    def fingerprint(self) -> str:
        """Hash of every field that shapes a scene's files (not ``out``, the scene count, ``overwrite`` or which
        questions are written: the annotation files are rewritten on every run anyway)."""
        ignored = ("out", "num_scenes", "overwrite", "question_families", "situated_questions")
        shaping = {k: v for k, v in dataclasses.asdict(self).items() if k not in ignored}
        shaping.pop("first_scene_index")
        return hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]


def scene_id_of(index: int) -> str:
    return f"scene{index:04d}_00"


@dataclass(frozen=True)
class SceneSpec:
    """Everything about one scene except the rendered pixels.

    Attributes:
        index: scene index.
        room: room geometry, objects and axis alignment.
        poses_aligned: ``[N, 4, 4]`` true camera-to-world poses in the aligned frame.
        poses_raw: ``[N, 4, 4]`` poses in the raw frame as written (``-inf`` for invalid frames).
        invalid: indices of frames written with ``-inf`` poses.
    """

    index: int
    room: Room
    poses_aligned: np.ndarray
    poses_raw: np.ndarray
    invalid: tuple[int, ...]

    @property
    def scene_id(self) -> str:
        return self.room.scene_id

    def box_set(self) -> BoxSet:
        lo, hi, owner_index = self.room.boxes()
        ids = np.array([o.object_id for o in self.room.objects])[owner_index]
        rgb = np.array([self.room.objects[i].rgb for i in owner_index], dtype=np.float64)
        return BoxSet(lo, hi, ids, rgb)


def build_scene(config: SyntheticConfig, index: int) -> SceneSpec:
    """Deterministically build scene ``index`` (room, trajectory, invalid frames) without rendering."""
    rng = np.random.default_rng([config.seed, index])
    trajectory = LoopTrajectory(phase=float(rng.uniform(0.0, 2.0 * np.pi)))
    room = generate_room(rng, scene_id_of(index), trajectory.clearance_samples, config.class_probability)
    aligned = trajectory.poses(room.extent, config.frames_per_scene)
    raw = np.linalg.inv(room.axis_alignment)[None] @ aligned
    invalid = invalid_frame_indices(config.frames_per_scene, config.num_invalid_frames)
    raw[invalid] = -np.inf
    return SceneSpec(index, room, aligned, raw, tuple(invalid))
