"""Typed, validated configuration of the teachers job (CLIP shards -> TRAINING shards), loaded by
:mod:`pipelines.config`.

Every field changes the training shards except those declared :func:`~pipelines.config.scheduling` (actor
resources and counts, clips per model call: each call sees one clip's frames, the download cache, keeping the
staging area), so :meth:`TeachersConfig.hash` covers any new field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipelines import config as pconfig
from pipelines.config import scheduling
from pipelines.schema import TOKEN_CODECS

DTYPES = ("float32", "float16", "bfloat16")


@dataclass(frozen=True)
class TeacherPoolConfig:
    """Resources of one teacher's Ray Data actor pool.

    Attributes:
        num_gpus: GPUs per actor (0 = CPU).
        num_cpus: CPUs per actor.
        batch_size: clips per ``map_batches`` call; each call runs the model on all their frames at once.
        concurrency: number of actors in the pool.
        dtype: compute dtype of the model (``float16``/``bfloat16`` on GPUs); outputs are stored as float16.
    """

    num_gpus: float = scheduling(0.0)
    num_cpus: float = scheduling(1.0)
    batch_size: int = scheduling(1)
    concurrency: int = scheduling(1)
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if self.num_gpus < 0 or self.num_cpus < 0 or self.batch_size < 1 or self.concurrency < 1:
            raise ValueError("num_gpus/num_cpus must be >= 0 and batch_size/concurrency >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")


@dataclass(frozen=True)
class TeachersConfig:
    """Teacher models, their pools, and how outputs are stored.

    Attributes:
        geometry_teacher: local path or URI of an HF ``Dinov2WithRegistersModel`` folder (VGGT-1B's encoder).
        semantic_teacher: local path or URI of an HF ``CLIPVisionModel`` folder (CLIP ViT-L/14-336).
        geometry: actor pool of the geometry teacher.
        semantic: actor pool of the semantic teacher.
        token_codec: storage of geometry patch tokens, ``fp16`` (default; see :mod:`pipelines.schema`) or ``int8``.
        target_shard_bytes: a training shard is closed before it would exceed this (a scene is never split).
        cache_dir: local directory where teacher folders on object storage are downloaded (per node); empty =
            the artifact cache of :mod:`pipelines.artifacts` in the node's temporary directory.
        io_num_cpus: CPUs of each shard-reading and each clip-writing actor.
        io_concurrency: shard-reading actors, and as many clip-writing actors. They are long-lived, like the
            teacher actors: Ray retires idle task workers on a node whose CPUs the teachers hold, and a short
            reading or writing task would then pay a fresh worker's start-up (~1 s of CPU) for milliseconds of work.
        keep_staging: keep ``<out>/_staging`` after the manifest is written.
    """

    geometry_teacher: str = ""
    semantic_teacher: str = ""
    geometry: TeacherPoolConfig = TeacherPoolConfig()
    semantic: TeacherPoolConfig = TeacherPoolConfig()
    token_codec: str = "fp16"
    target_shard_bytes: int = 1024**3
    cache_dir: str = scheduling("")
    io_num_cpus: float = scheduling(0.25)
    io_concurrency: int = scheduling(1)
    keep_staging: bool = scheduling(False)

    def __post_init__(self) -> None:
        missing = [name for name in ("geometry_teacher", "semantic_teacher") if not getattr(self, name)]
        if missing:
            raise ValueError(f"{' and '.join(missing)} (local path or URI of an HF folder) required: "
                             + ", ".join(f"--{m.replace('_', '-')} URI" for m in missing))
        if self.token_codec not in TOKEN_CODECS:
            raise ValueError(f"token_codec must be one of {TOKEN_CODECS}, got {self.token_codec!r}")
        if self.target_shard_bytes < 1 or self.io_num_cpus <= 0 or self.io_concurrency < 1:
            raise ValueError("target_shard_bytes, io_num_cpus and io_concurrency must be positive")

    @classmethod
    def tiny(cls, geometry_teacher: str, semantic_teacher: str) -> TeachersConfig:
        """Test preset: CPU actors (all four pools fit a 2-CPU Ray), 2 clips per batch, 128 KB shards."""
        return SPEC.from_dict({**tiny(), "geometry_teacher": geometry_teacher, "semantic_teacher": semantic_teacher})

    def pool_resources(self) -> dict[str, float]:
        """CPUs and GPUs that all actor pools hold at once (teachers, shard readers, clip writers)."""
        teachers = (self.geometry, self.semantic)
        return {"CPU": sum(p.concurrency * p.num_cpus for p in teachers) + 2 * self.io_concurrency * self.io_num_cpus,
                "GPU": sum(p.concurrency * p.num_gpus for p in teachers)}

    def to_dict(self) -> dict[str, Any]:
        return pconfig.to_dict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TeachersConfig:
        return SPEC.from_dict(raw)

    def hash(self) -> str:
        """Resume hash: every field except the scheduling ones (:func:`pipelines.config.content_hash`)."""
        return pconfig.content_hash(self)


def tiny() -> dict[str, Any]:
    """The ``tiny`` preset: CPU actors (all four pools fit a 2-CPU Ray), 2 clips per batch, 128 KB shards."""
    pool = {"batch_size": 2, "num_cpus": 0.5}
    return {"geometry": pool, "semantic": pool, "target_shard_bytes": 128 * 1024}


SPEC = pconfig.ConfigSpec(TeachersConfig, "teachers", {"default": dict, "tiny": tiny})
