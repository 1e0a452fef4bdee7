"""Typed, validated configuration of the teachers job (CLIP shards -> TRAINING shards), loaded by
:mod:`pipelines.config`.

Every field changes the training shards except those declared :func:`~pipelines.config.scheduling` (actor
resources and counts, clips per model call: each call sees one clip's frames, the download cache, keeping the
staging area), so :meth:`TeachersConfig.hash` covers any new field.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from pipelines import config as pconfig
from pipelines.config import scheduling
from pipelines.schema import TOKEN_CODECS, config_hash

DTYPES = ("auto", "float32", "float16", "bfloat16")
#: HF model classes the geometry teacher can be (``config.json``'s ``model_type`` must match, checked before the
#: job starts): VGGT-1B's encoder has 4 registers; a plain DINOv2 (e.g. the installable DINOv2-S) has none.
GEOMETRY_ARCHITECTURES = {"Dinov2WithRegistersModel": ("dinov2_with_registers",), "Dinov2Model": ("dinov2",)}
#: The semantic teacher is a CLIP vision tower: a ``CLIPVisionModel`` folder, or a full ``CLIPModel`` one (its
#: vision tower is loaded).
SEMANTIC_ARCHITECTURES = {"CLIPVisionModel": ("clip_vision_model", "clip")}
#: How a frame is fitted to CLIP's square input (see :mod:`pipelines.teachers.semantic`); both show CLIP every
#: pixel the student pools.
SEMANTIC_VIEWS = ("pad", "interpolate")


@dataclass(frozen=True)
class TeacherPoolConfig:
    """Resources of one teacher's Ray Data actor pool.

    Attributes:
        num_gpus: GPUs per actor (0 = CPU). A fraction lets a geometry and a semantic actor share each GPU
            (0.5 each: every GPU runs both models, so it stays busy whichever pool has work).
        num_cpus: CPUs per actor.
        batch_size: clips per ``map_batches`` call; each call runs the model on all their frames at once.
        concurrency: number of actors in the pool; 0 (default) sizes it from the cluster when the job starts
            (:meth:`TeachersConfig.resolve_pools`): a GPU pool gets its share of the cluster's GPUs, a CPU pool
            one actor.
        dtype: compute dtype of the model; ``auto`` (default) is ``bfloat16`` for GPU actors and ``float32`` for
            CPU ones (use ``float16`` on GPUs without bf16). Outputs are stored as float16 either way.
    """

    num_gpus: float = scheduling(0.0)
    num_cpus: float = scheduling(1.0)
    batch_size: int = scheduling(1)
    concurrency: int = scheduling(0)
    dtype: str = "auto"

    def __post_init__(self) -> None:
        if self.num_gpus < 0 or self.num_cpus < 0 or self.batch_size < 1 or self.concurrency < 0:
            raise ValueError("num_gpus/num_cpus/concurrency must be >= 0 and batch_size >= 1")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {DTYPES}, got {self.dtype!r}")

    @property
    def compute_dtype(self) -> str:
        """The dtype the model runs in: ``dtype``, with ``auto`` resolved from ``num_gpus``."""
        if self.dtype != "auto":
            return self.dtype
        return "bfloat16" if self.num_gpus > 0 else "float32"


@dataclass(frozen=True)
class TeachersConfig:
    """Teacher models, their pools, and how outputs are stored.

    Attributes:
        geometry_teacher: local path or URI of an HF ``Dinov2WithRegistersModel`` folder (VGGT-1B's encoder;
            ``vidllm weights convert-vggt`` writes one from a VGGT checkpoint).
        semantic_teacher: local path or URI of an HF ``CLIPVisionModel`` folder (CLIP ViT-L/14-336).
        geometry: actor pool of the geometry teacher.
        semantic: actor pool of the semantic teacher.
        token_codec: storage of geometry patch tokens, ``int8`` (default: half the bytes of ``fp16``, and no effect on
            Stage 1 beyond run-to-run noise in ``bench/bench_codec.py``) or ``fp16``; see :mod:`pipelines.schema`.
        target_shard_bytes: a training shard is closed before it would exceed this (a scene is never split).
        cache_dir: local directory where teacher folders on object storage are downloaded (per node); empty =
            the artifact cache of :mod:`pipelines.artifacts` in the node's temporary directory.
        io_num_cpus: CPUs of each shard-reading and each clip-writing actor.
        io_concurrency: shard-reading actors, and as many clip-writing actors. They are long-lived, like the
            teacher actors: Ray retires idle task workers on a node whose CPUs the teachers hold, and a short
            reading or writing task would then pay a fresh worker's start-up (~1 s of CPU) for milliseconds of work.
        keep_staging: keep ``<out>/_staging`` after the manifest is written.
        geometry_architecture: the geometry teacher's HF class, a key of :data:`GEOMETRY_ARCHITECTURES`
            (``Dinov2Model`` for a plain DINOv2 such as the installable DINOv2-S). A folder of another
            architecture is refused before the job starts.
        semantic_architecture: the semantic teacher's HF class, a key of :data:`SEMANTIC_ARCHITECTURES`.
        semantic_view: how each frame is fitted to CLIP's square input, one of :data:`SEMANTIC_VIEWS`: ``pad``
            (default; the whole frame resized to fit, centred, padded with CLIP's mean colour, as LLaVA's ``pad``
            aspect mode) or ``interpolate`` (the whole frame at its own aspect, CLIP's position embeddings
            interpolated). The student pools the whole frame, so the teacher must see all of it too.
    """

    geometry_teacher: str = ""
    semantic_teacher: str = ""
    geometry: TeacherPoolConfig = TeacherPoolConfig()
    semantic: TeacherPoolConfig = TeacherPoolConfig()
    token_codec: str = "int8"
    target_shard_bytes: int = 1024**3
    cache_dir: str = scheduling("")
    io_num_cpus: float = scheduling(0.25)
    io_concurrency: int = scheduling(1)
    keep_staging: bool = scheduling(False)
    geometry_architecture: str = "Dinov2WithRegistersModel"
    semantic_architecture: str = "CLIPVisionModel"
    semantic_view: str = "pad"

    def __post_init__(self) -> None:
        missing = [name for name in ("geometry_teacher", "semantic_teacher") if not getattr(self, name)]
        if missing:
            raise ValueError(f"{' and '.join(missing)} (local path or URI of an HF folder) required: "
                             + ", ".join(f"--{m.replace('_', '-')} URI" for m in missing))
        if self.token_codec not in TOKEN_CODECS:
            raise ValueError(f"token_codec must be one of {TOKEN_CODECS}, got {self.token_codec!r}")
        if self.target_shard_bytes < 1 or self.io_num_cpus <= 0 or self.io_concurrency < 1:
            raise ValueError("target_shard_bytes, io_num_cpus and io_concurrency must be positive")
        for name, value, known in (("geometry_architecture", self.geometry_architecture, GEOMETRY_ARCHITECTURES),
                                   ("semantic_architecture", self.semantic_architecture, SEMANTIC_ARCHITECTURES),
                                   ("semantic_view", self.semantic_view, SEMANTIC_VIEWS)):
            if value not in known:
                raise ValueError(f"{name} must be one of {sorted(known)}, got {value!r}")

    @classmethod
    def tiny(cls, geometry_teacher: str, semantic_teacher: str) -> TeachersConfig:
        """Test preset (:func:`tiny`) with the two teacher folders."""
        return SPEC.from_dict({**tiny(), "geometry_teacher": geometry_teacher, "semantic_teacher": semantic_teacher})

    @classmethod
    def gpu(cls, geometry_teacher: str, semantic_teacher: str) -> TeachersConfig:
        """GPU preset (:func:`gpu`) with the two teacher folders."""
        return SPEC.from_dict({**gpu(), "geometry_teacher": geometry_teacher, "semantic_teacher": semantic_teacher})

    def resolve_pools(self, cluster: dict[str, float]) -> TeachersConfig:
        """This config with every automatic (0) pool concurrency filled in for ``cluster`` (Ray's resources).

        GPU pools split the cluster's GPUs evenly: a pool of ``g`` GPUs per actor gets ``floor(G / (k * g))`` actors
        when ``k`` pools use GPUs (at least one). A CPU pool gets one actor. Explicit concurrencies are kept.
        """
        pools = {"geometry": self.geometry, "semantic": self.semantic}
        gpu_pools = sum(1 for p in pools.values() if p.num_gpus > 0)
        gpus = float(cluster.get("GPU", 0.0))
        resolved = {
            name: pool if pool.concurrency else replace(pool, concurrency=max(
                1, math.floor(gpus / (gpu_pools * pool.num_gpus) + 1e-9) if pool.num_gpus > 0 else 1))
            for name, pool in pools.items()
        }
        return replace(self, **resolved)

    def pool_resources(self) -> dict[str, float]:
        """CPUs and GPUs that all actor pools hold at once (teachers, shard readers, clip writers); automatic
        concurrencies count as one actor (see :meth:`resolve_pools`)."""
        teachers = (self.geometry, self.semantic)
        return {"CPU": sum(max(p.concurrency, 1) * p.num_cpus for p in teachers)
                + 2 * self.io_concurrency * self.io_num_cpus,
                "GPU": sum(max(p.concurrency, 1) * p.num_gpus for p in teachers)}

    def to_dict(self) -> dict[str, Any]:
        return pconfig.to_dict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> TeachersConfig:
        return SPEC.from_dict(raw)

    def hash(self) -> str:
        """Resume hash: every field except the scheduling ones (:func:`pipelines.config.content_hash`), plus the
        dtype each model runs in (``auto`` resolves from ``num_gpus``, a scheduling field, and changes the outputs)."""
        fields = pconfig.hashed_fields(self)
        for pool in ("geometry", "semantic"):
            fields[pool]["dtype"] = getattr(self, pool).compute_dtype
        return config_hash(fields)


def tiny() -> dict[str, Any]:
    """The ``tiny`` preset: CPU actors (all four pools fit a 2-CPU Ray), 2 clips per batch, 128 KB shards, fp16
    tokens (near-exact, so tests compare them with the teacher's own output tightly)."""
    pool = {"batch_size": 2, "num_cpus": 0.5, "concurrency": 1}
    return {"geometry": pool, "semantic": pool, "target_shard_bytes": 128 * 1024, "token_codec": "fp16"}


def gpu() -> dict[str, Any]:
    """The ``gpu`` preset: both teachers on every GPU (0.5 GPU and 1 CPU per actor, bf16), pool sizes from the
    cluster (:meth:`TeachersConfig.resolve_pools`); 4 shard readers and 4 clip writers of 1 CPU each (frames are
    decoded in the readers)."""
    pool = {"num_gpus": 0.5, "num_cpus": 1, "batch_size": 1}
    return {"geometry": pool, "semantic": pool, "io_concurrency": 4, "io_num_cpus": 1}


SPEC = pconfig.ConfigSpec(TeachersConfig, "teachers", {"default": dict, "tiny": tiny, "gpu": gpu})
