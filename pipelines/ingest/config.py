"""Typed, validated configuration of the ingest job (scenes -> CLIP shards), loaded by :mod:`pipelines.config`.

Every field changes the shards except those declared :func:`~pipelines.config.scheduling` (how many CPUs, tasks
and scenes per task, whether the staging area is kept), so :meth:`IngestConfig.hash` covers any new field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipelines import config as pconfig
from pipelines.config import scheduling
from pipelines.scenes.decode_budget import DecodeBudget
from pipelines.schema import DEPTH_CODECS, FRAME_CODECS

LAYOUTS = ("auto", "sens", "export", "posed_images", "video")


@dataclass(frozen=True)
class IngestConfig:
    """How scenes become clips and shards.

    Attributes:
        frames_per_clip: frames S per clip (paper: 32, uniform over the valid-pose frames).
        clips_per_scene: clips K per scene. With ``stride == 0`` clip ``k`` samples the whole scene uniformly at
            phase ``(k + 0.5) / K`` of the sampling interval; with ``stride > 0`` clips are windows of S valid
            frames ``stride`` apart, spread evenly over the scene.
        stride: spacing (in valid frames) inside a windowed clip; 0 selects uniform whole-scene sampling.
        min_valid_frames: a scene with fewer valid-pose frames is quarantined (at least ``frames_per_clip``;
            0, the default, means ``frames_per_clip``).
        resize_to: length in pixels of the image side named by ``resize_side`` after resizing (518), before the
            centre crop.
        resize_side: which side ``resize_to`` sets: ``short`` (default: 1296x968 -> 686x518) or ``long``
            (-> 518x378, the paper's frame size, with 55 % of the patches, so half the teacher-token bytes).
        patch_multiple: the crop makes H and W multiples of this (the ViT patch size, 14).
        frame_codec: ``jpeg`` (default, see :mod:`pipelines.schema`) or ``npy`` (lossless).
        jpeg_quality: JPEG quality for the ``jpeg`` codec.
        depth_codec: ``zlib`` (default, lossless, ~7x smaller) or ``npy``.
        target_shard_bytes: a shard is closed before it would exceed this (a scene is never split).
        layout: scene layout passed to the reader (``auto`` detects it per scene).
        write_sens_index: write a sidecar index (frame offsets + poses) next to each ``.sens`` the first time it is
            read, so later ingests of the scene fetch one range per sampled frame instead of the whole file
            (needs write access to the dataset; without it the scene is still read, with a warning).
        num_cpus_per_task: CPUs Ray reserves per scene task (decode + resize run inside the task).
        concurrency: maximum concurrent scene tasks (None = as many as CPUs allow).
        scenes_per_task: at most this many scenes are staged one after the other by one Ray task (fewer when the
            tasks would otherwise be fewer than the cluster's CPUs). Small synthetic scenes take tens of
            milliseconds, and a task per scene left the cores waiting on Ray Data's scheduling (192 scenes on 2
            CPUs: 13.6 s per task-per-scene vs 9.3 s with 8 per task); a scene's failure stays its own either way.
        keep_staging: keep ``<out>/_staging`` after the manifest is written (debugging).
        decode: the decode budget of every scene video (frame size, frames, decoded bytes, wall time, allowed
            containers); a video over it is quarantined with ``DecodeBudgetError``. Its wall-time limit is off by
            default: a limit met or missed depending on the cluster's load would make the shards depend on it.
    """

    frames_per_clip: int = 32
    clips_per_scene: int = 1
    stride: int = 0
    min_valid_frames: int = 0
    resize_to: int = 518
    resize_side: str = "short"
    patch_multiple: int = 14
    frame_codec: str = "jpeg"
    jpeg_quality: int = 95
    depth_codec: str = "zlib"
    target_shard_bytes: int = 512 * 1024**2
    layout: str = "auto"
    write_sens_index: bool = scheduling(False)
    num_cpus_per_task: float = scheduling(1.0)
    concurrency: int | None = scheduling(None)
    scenes_per_task: int = scheduling(8)
    keep_staging: bool = scheduling(False)
    decode: DecodeBudget = field(default_factory=DecodeBudget)

    def __post_init__(self) -> None:
        if self.min_valid_frames == 0:
            object.__setattr__(self, "min_valid_frames", self.frames_per_clip)
        if self.frames_per_clip < 1 or self.clips_per_scene < 1 or self.stride < 0:
            raise ValueError("frames_per_clip and clips_per_scene must be >= 1 and stride >= 0")
        if self.min_valid_frames < self.frames_per_clip:
            raise ValueError(
                f"min_valid_frames ({self.min_valid_frames}) must be >= frames_per_clip ({self.frames_per_clip})"
            )
        if self.patch_multiple < 1 or self.resize_to < self.patch_multiple:
            raise ValueError(f"resize_to {self.resize_to} must be >= patch_multiple {self.patch_multiple} >= 1")
        if self.resize_side not in ("short", "long"):
            raise ValueError(f"resize_side must be 'short' or 'long', got {self.resize_side!r}")
        if self.frame_codec not in FRAME_CODECS:
            raise ValueError(f"frame_codec must be one of {FRAME_CODECS}, got {self.frame_codec!r}")
        if self.depth_codec not in DEPTH_CODECS:
            raise ValueError(f"depth_codec must be one of {DEPTH_CODECS}, got {self.depth_codec!r}")
        if not 1 <= self.jpeg_quality <= 100:
            raise ValueError(f"jpeg_quality must be in [1, 100], got {self.jpeg_quality}")
        if self.target_shard_bytes < 1:
            raise ValueError("target_shard_bytes must be positive")
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        if self.num_cpus_per_task <= 0 or (self.concurrency is not None and self.concurrency < 1):
            raise ValueError("num_cpus_per_task must be > 0 and concurrency >= 1")
        if self.scenes_per_task < 1:
            raise ValueError(f"scenes_per_task must be >= 1, got {self.scenes_per_task}")

    @classmethod
    def tiny(cls) -> IngestConfig:
        """Test preset: 6-frame clips at 56 px, lossless frames, 64 KB shards."""
        return cls(**tiny())

    def to_dict(self) -> dict[str, Any]:
        return pconfig.to_dict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> IngestConfig:
        return SPEC.from_dict(raw)

    def hash(self) -> str:
        """Resume hash: every field except the scheduling ones (:func:`pipelines.config.content_hash`)."""
        return pconfig.content_hash(self)


def tiny() -> dict[str, Any]:
    """The ``tiny`` preset: 6-frame clips at 56 px, lossless frames, 64 KB shards (tests and smoke runs)."""
    return {"frames_per_clip": 6, "resize_to": 56, "frame_codec": "npy", "target_shard_bytes": 64 * 1024}


SPEC = pconfig.ConfigSpec(IngestConfig, "ingest", {"default": dict, "tiny": tiny})
