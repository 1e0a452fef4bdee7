"""The teachers job: CLIP shards (from a manifest) -> Ray Data actor pools -> TRAINING shards + manifest.

Pipeline (one row per clip):

1. ``map_batches(ShardReader)`` actors read the CLIP shards listed in the manifest (never a listing) and emit the
   clips still to do: the clip's encoded fields as one tar blob plus its decoded frames (output resolution).
2. ``map_batches(GeometryUDF)`` actor pool: the DINOv2-with-registers teacher, loaded once per actor; emits the
   encoded ``teacher_geo`` fields (fp16 or int8: compact through the object store).
3. ``map_batches(SemanticUDF)`` actor pool: the CLIP vision teacher; emits ``teacher_sem``.
4. ``map_batches(ClipStager)`` actors write ``<out>/_staging/<key>.tar`` (clip fields + teacher fields).

Then the shared deterministic packing (:mod:`pipelines.manifest`) writes ``train-NNNNNN.tar`` in sorted scene-id
order and the manifest last. Each model call sees exactly one clip's frames, so a clip's outputs do not depend on
which clips Ray happened to batch together, and a resumed run reproduces the same bytes on the same hardware.
A clip whose stored fields cannot be decoded is quarantined; model/runtime errors fail the job.

Reading and writing run in small long-lived actor pools (``io_concurrency`` x ``io_num_cpus``), not tasks: while
the teacher actors hold most of a node's CPUs, Ray retires idle task workers within a second, and each short task
then paid a fresh worker's start-up. The teacher modules (torch, transformers) are imported inside the teacher
actors only, so the I/O actors start light.
"""

from __future__ import annotations

import contextlib
import json
import logging
import posixpath
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from pipelines import manifest as mf
from pipelines import storage
from pipelines.ingest.job import init_ray, ray_shard_builder
from pipelines.schema import (
    TRAIN_SHARD_PREFIX,
    SchemaError,
    config_hash,
    decode_frames,
    encode_teacher_geo,
    encode_teacher_sem,
    group_members,
    iter_tar_samples,
    json_bytes,
    read_tar,
    sample_members,
    split_key,
    write_tar,
)
from pipelines.teachers.config import TeacherPoolConfig, TeachersConfig

log = logging.getLogger(__name__)


class ShardReader:
    """Ray Data actor: streams the to-do clips of each CLIP shard, one clip per output batch (teachers start on
    the first clip of a shard, not after the whole shard)."""

    def __call__(self, batch: dict[str, np.ndarray]) -> Iterator[dict[str, list]]:
        for uri, todo_json in zip(batch["uri"], batch["todo"], strict=True):
            todo = set(json.loads(todo_json))
            with storage.open_uri(uri, "rb") as stream:
                yield from _todo_clips(iter_tar_samples(stream, uri), todo)


def _todo_clips(samples: Iterator[dict[str, Any]], todo: set[str]) -> Iterator[dict[str, list]]:
    """One single-row batch per clip in ``todo``: its encoded fields as a tar blob plus its decoded frames."""
    for sample in samples:
        key = sample["__key__"]
        if key not in todo:
            continue
        try:
            frames = decode_frames(sample, key)
            error = ""
        except SchemaError as err:
            frames, error = np.zeros((0, 1, 1, 3), np.uint8), f"{type(err).__name__}\t{err}"
        yield {"key": [key], "scene_id": [split_key(key)[0]], "sample": [write_tar(sample_members(sample))],
               "frames": [frames], "error": [error]}


class GeometryUDF:
    """Ray Data actor: the geometry teacher, loaded once in ``__init__``."""

    def __init__(self, path: str, cache_dir: str, dtype: str, num_gpus: float, token_codec: str,
                 architecture: str):
        from pipelines.teachers.geometry import GeometryTeacher

        self.teacher = GeometryTeacher(path, cache_dir, dtype=dtype, num_gpus=num_gpus, architecture=architecture)
        self.token_codec, self.dtype = token_codec, dtype

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        geo = []
        for frames, error in zip(batch["frames"], batch["error"], strict=True):
            if error:
                geo.append(b"")
                continue
            tokens = self.teacher(np.asarray(frames))
            h, w = np.asarray(frames).shape[1:3]
            info = {"patch_grid": list(self.teacher.patch_grid(h, w)), "geo_dim": self.teacher.hidden_size,
                    "patch_size": self.teacher.patch_size, "geometry_dtype": self.dtype}
            fields = encode_teacher_geo(tokens, self.token_codec)
            geo.append(write_tar(sorted(fields.items()) + [("geo_info.json", json_bytes(info))]))
        return {**batch, "geo": geo}


class SemanticUDF:
    """Ray Data actor: the semantic teacher, loaded once in ``__init__``."""

    def __init__(self, path: str, cache_dir: str, dtype: str, num_gpus: float, view: str, architecture: str):
        from pipelines.teachers.semantic import SemanticTeacher

        self.teacher = SemanticTeacher(path, cache_dir, dtype=dtype, num_gpus=num_gpus, view=view,
                                       architecture=architecture)
        self.dtype = dtype

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        sem, info = [], []
        for frames, error in zip(batch["frames"], batch["error"], strict=True):
            frames = np.asarray(frames)
            if error:
                sem.append(np.zeros((0, 1), np.float32))
                info.append("{}")
                continue
            sem.append(self.teacher(frames).astype(np.float32))
            info.append(json.dumps({"semantic_view": self.teacher.view(*frames.shape[1:3]),
                                    "semantic_dtype": self.dtype}))
        out = {k: v for k, v in batch.items() if k != "frames"}  # frames are not needed downstream
        return {**out, "sem": sem, "sem_info": info}


def stage_training_clip(key: str, sample_tar: bytes, geo_tar: bytes, sem: np.ndarray, error: str,
                        out: str, teacher_info: dict[str, Any], token_codec: str,
                        sem_info: str = "{}") -> dict[str, Any]:
    """Write one clip's TRAINING sample (or its quarantine record) to the staging area."""
    scene_id = split_key(key)[0]
    if error:
        error_type, _, reason = error.partition("\t")
        mf.write_quarantine_record(out, key, mf.QuarantineRecord(scene_id, key, error_type, reason))
        return {"key": key, "status": "quarantined", "bytes": 0, "frames": 0}
    sample = group_members(read_tar(sample_tar))[0]
    geo_members = dict(read_tar(geo_tar))
    info = {**teacher_info, **json.loads(geo_members.pop("geo_info.json")), **json.loads(sem_info),
            "sem_dim": int(sem.shape[-1])}
    sample.update(encode_teacher_sem(sem, info, token_codec))
    sample.update(geo_members)
    data = write_tar(sample_members(sample))
    mf.put_atomic(mf.staging_uri(out, key), data)
    return {"key": key, "status": "staged", "bytes": len(data), "frames": int(len(sem))}


class ClipStager:
    """Ray Data actor: writes each clip's TRAINING sample (or quarantine record) to the staging area."""

    def __init__(self, out: str, teacher_info: dict[str, Any], token_codec: str):
        self.out, self.teacher_info, self.token_codec = out, teacher_info, token_codec

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows = [
            stage_training_clip(k, s, g, np.asarray(m), e, self.out, self.teacher_info, self.token_codec, i)
            for k, s, g, m, e, i in zip(batch["key"], batch["sample"], batch["geo"], batch["sem"], batch["error"],
                                        batch["sem_info"], strict=True)
        ]
        return {name: [r[name] for r in rows] for name in ("key", "status", "bytes", "frames")}


def _pool_kwargs(pool: TeacherPoolConfig) -> dict[str, Any]:
    import ray

    return {"batch_size": pool.batch_size, "compute": ray.data.ActorPoolStrategy(size=pool.concurrency),
            "num_gpus": pool.num_gpus, "num_cpus": pool.num_cpus}


def _io_pool_kwargs(config: TeachersConfig) -> dict[str, Any]:
    import ray

    return {"compute": ray.data.ActorPoolStrategy(size=config.io_concurrency), "num_cpus": config.io_num_cpus}


def check_teachers(config: TeachersConfig) -> dict[str, str]:
    """Check both teacher folders' architectures from their ``config.json`` (nothing else is fetched).

    Folders given as MLflow registry or run URIs are checked by each teacher actor on its downloaded copy instead.

    Returns:
        ``{"geometry": label, "semantic": label}``: the random stand-in labels (``""`` for real weights or when
        the folder is checked later).

    Raises:
        TeacherArchitectureError: a folder is not the configured architecture (one line naming both).
        InputError: a folder has no ``config.json``.
    """
    from pipelines.artifacts import normalise
    from pipelines.teachers.architecture import check_architecture, standin_label

    labels = {}
    for role, uri, arch in (("geometry", config.geometry_teacher, config.geometry_architecture),
                            ("semantic", config.semantic_teacher, config.semantic_architecture)):
        if normalise(uri).startswith(("models:/", "runs:/")):
            labels[role] = ""
            continue
        labels[role] = standin_label(check_architecture(uri, role, arch))
        if labels[role]:
            log.warning("the %s teacher %s is a RANDOM stand-in (%s); its targets are labelled as such",
                        role, uri, labels[role])
    return labels


def warn_if_pools_do_not_fit(config: TeachersConfig) -> bool:
    """Log a warning (and return True) when the cluster cannot hold all the job's actor pools at once right now.

    Ray Data starts actor pools asynchronously and waits for resources without saying why: on a fixed-size
    cluster a pool that does not fit stalls the job. It is a warning, not an error, because on an autoscaling
    cluster the missing nodes may still join.
    """
    import ray

    have = ray.cluster_resources()
    need = config.resolve_pools(have).pool_resources()
    short = {k: v for k, v in need.items() if v > have.get(k, 0.0) + 1e-9}
    if short:
        log.warning(
            "the teacher and I/O actor pools need %s but the cluster has %s now; the job waits until nodes with "
            "the missing resources join. On a fixed-size cluster lower the pools' concurrency/num_cpus/num_gpus "
            "or io_concurrency/io_num_cpus.",
            ", ".join(f"{v:g} {k}" for k, v in need.items() if v),
            ", ".join(f"{have.get(k, 0.0):g} {k}" for k in need))
    return bool(short)


@contextlib.contextmanager
def _one_clip_per_block() -> Iterator[None]:
    """Datasets created inside cut every batch into one-row (one-clip) blocks.

    Ray Data packs a task's outputs into blocks of up to ``target_max_block_size`` (128 MiB): all clips of a shard
    would travel as one block, and the geometry pool, the semantic pool and the writers would run one after the
    other instead of side by side. A block per clip lets each stage hand a clip on as soon as it is done, so the
    stages overlap. The setting is sealed into the dataset when it is created, so it is restored right after.
    """
    import ray

    context = ray.data.DataContext.get_current()
    saved = context.target_max_block_size
    context.target_max_block_size = 1  # bytes: any batch is "full", and blocks are sliced down to single rows
    try:
        yield
    finally:
        context.target_max_block_size = saved


def run_teachers(clips: str, out: str, config: TeachersConfig, ray_address: str | None = None,
                 progress: bool = True) -> mf.Manifest:
    """Compute teacher targets for every clip of the CLIP manifest ``clips``; resumable and idempotent.

    Both teacher folders are checked (:func:`check_teachers`) before anything else; automatic pool sizes are filled
    from the cluster (:meth:`TeachersConfig.resolve_pools`) once Ray is up.
    """
    import ray

    standins = check_teachers(config)
    out = out.rstrip("/")
    clip_manifest_uri = clips if clips.endswith(".json") else mf.manifest_uri(clips)
    clip_manifest = mf.read_manifest(clip_manifest_uri)
    if clip_manifest.kind != "clips":
        raise mf.ManifestError(clip_manifest_uri, f"expected a clips manifest, got kind {clip_manifest.kind!r}")
    cfg_dict = {**config.to_dict(), "clips_manifest": clip_manifest_uri,
                "clips_config_hash": clip_manifest.config_hash,
                "geometry_teacher_standin": standins["geometry"], "semantic_teacher_standin": standins["semantic"]}
    cfg_hash = config_hash({"teachers": config.hash(), "clips": clip_manifest.config_hash})
    if storage.exists(mf.manifest_uri(out)):
        manifest = mf.read_manifest(out)
        if manifest.config_hash != cfg_hash:
            raise mf.ManifestError(out, f"finished with config {manifest.config_hash}, this run has {cfg_hash}")
        mf.remove_staging(out)
        return manifest
    mf.check_config(out, cfg_dict, cfg_hash)
    started = time.perf_counter()
    staged, quarantined = mf.list_staged(out)
    base = posixpath.dirname(clip_manifest_uri)
    all_keys = [k for s in clip_manifest.shards for k in s.keys]
    work = []
    for record, uri in zip(clip_manifest.shards, mf.shard_uris(clip_manifest, base), strict=True):
        todo = [k for k in record.keys if k not in staged and k not in quarantined]
        if todo:
            work.append({"uri": uri, "todo": json.dumps(todo)})
    rows: list[dict[str, Any]] = []
    if work:
        init_ray(ray_address)
        warn_if_pools_do_not_fit(config)
        pools = config.resolve_pools(ray.cluster_resources())
        geo, sem = pools.geometry, pools.semantic
        log.info("teacher pools: geometry %d x (%g GPU, %g CPU, %s), semantic %d x (%g GPU, %g CPU, %s)",
                 geo.concurrency, geo.num_gpus, geo.num_cpus, geo.compute_dtype,
                 sem.concurrency, sem.num_gpus, sem.num_cpus, sem.compute_dtype)
        teacher_info = {"geometry_teacher": config.geometry_teacher, "semantic_teacher": config.semantic_teacher,
                        "geometry_architecture": config.geometry_architecture,
                        "clips_config_hash": clip_manifest.config_hash, "config_hash": cfg_hash,
                        **{f"{role}_teacher_standin": label for role, label in standins.items() if label}}
        geo_kwargs = {"path": config.geometry_teacher, "cache_dir": config.cache_dir, "dtype": geo.compute_dtype,
                      "num_gpus": geo.num_gpus, "token_codec": config.token_codec,
                      "architecture": config.geometry_architecture}
        sem_kwargs = {"path": config.semantic_teacher, "cache_dir": config.cache_dir, "dtype": sem.compute_dtype,
                      "num_gpus": sem.num_gpus, "view": config.semantic_view,
                      "architecture": config.semantic_architecture}
        with _one_clip_per_block():
            ds = ray.data.from_items(work, override_num_blocks=len(work))
        ds = (
            ds
            .map_batches(ShardReader, batch_size=1, **_io_pool_kwargs(config))
            .map_batches(GeometryUDF, fn_constructor_kwargs=geo_kwargs, **_pool_kwargs(geo))
            .map_batches(SemanticUDF, fn_constructor_kwargs=sem_kwargs, **_pool_kwargs(sem))
            .map_batches(ClipStager, batch_size=8, fn_constructor_kwargs={
                "out": out, "teacher_info": teacher_info, "token_codec": config.token_codec},
                **_io_pool_kwargs(config))
        )
        rows = list(ds.iter_rows())
    staged, quarantined = mf.list_staged(out)
    missing = sorted(set(all_keys) - set(staged) - set(quarantined))
    if missing:
        raise mf.ManifestError(out, f"clips neither staged nor quarantined: {missing[:10]}")
    units = [mf.staged_unit_from_uri(split_key(k)[0], staged[k]) for k in all_keys if k in staged]
    records = [mf.read_quarantine_record(quarantined[k]) for k in all_keys if k in quarantined]
    stage_seconds = time.perf_counter() - started
    manifest = mf.finalize(
        out, "train", TRAIN_SHARD_PREFIX, cfg_dict, cfg_hash, units, records, config.target_shard_bytes,
        summary={"clips": len(all_keys), "clips_written": len(units), "clips_quarantined": len(records),
                 "scenes": len({u.scene_id for u in units})},
        build=ray_shard_builder() if units and ray.is_initialized() else None, keep_staging=config.keep_staging,
    )
    # Timings describe this run only; they go to the printed summary, not into the (deterministic) manifest.
    frames = sum(r["frames"] for r in rows)
    manifest.summary.update({"seconds": round(time.perf_counter() - started, 2), "frames_this_run": frames,
                             "frames_per_s": round(frames / stage_seconds, 2) if stage_seconds > 0 else 0.0})
    if progress:
        print(mf.format_summary(manifest))
    return manifest
