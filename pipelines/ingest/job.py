"""The ingest job: scene URIs -> (Ray Data, decode inside the worker) -> staged scene tars -> CLIP shards + manifest.

Stages:

1. Discover scenes (a dataset root, a scene directory list, or a text file of URIs) and slice the annotation sets
   per scene on the driver (small JSON).
2. Ray Data ``map_batches`` over scene rows (``scenes_per_task`` per task, each staged on its own): open the
   scene, sample clips, decode ONLY the sampled frames, resize, and write ``<out>/_staging/<scene_id>.tar`` or a
   quarantine record. Only a small status row returns through the object store. Every exception of a scene is
   caught in the UDF and quarantined, so Ray's ``max_errored_blocks`` (which drops data silently) is never relied
   on. Scenes already staged are skipped.
3. Deterministic packing (Ray Data, one task per shard) of staged scenes in sorted scene-id order, then
   ``quarantine.json`` and ``manifest.json`` (last). See :mod:`pipelines.manifest` for the resume argument.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
import traceback
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from pipelines import manifest as mf
from pipelines import storage
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.sampling import (
    ResizePlan,
    boxes_payload,
    depth_sampling_map,
    relative_extrinsics,
    resample_depth,
    select_clip_frames,
)
from pipelines.scenes.errors import SceneDataError
from pipelines.schema import (
    CLIP_SHARD_PREFIX,
    ClipSample,
    encode_clip_sample,
    sample_key,
    sample_members,
    write_tar,
)

log = logging.getLogger(__name__)

LAYOUT_DIRS = {"sens": "scans", "export": "scans", "posed_images": "posed_images", "video": "videos"}
ANNOTATION_SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class SceneInput:
    """One scene to ingest: where its frames are, where its metadata is, and its annotation entries."""

    scene_id: str
    uri: str
    metadata_uri: str | None
    annotations: dict[str, list]


def _list_dirs(uri: str) -> list[str]:
    fs, path = storage.filesystem(uri)
    return sorted(posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False) if fs.isdir(p))


def discover_scenes(scenes: str | Sequence[str], layout: str = "auto") -> tuple[list[tuple[str, str]], str | None]:
    """``([(scene_id, scene_uri)], dataset_root or None)`` for a dataset root, a list of scene URIs, or a file.

    ``scenes`` may be: a dataset root holding ``scans/``, ``posed_images/`` or ``videos/`` (picked by ``layout``;
    ``auto`` prefers ``scans``); a directory whose subdirectories are scenes; a comma-separated list or Python
    list of scene directories; or ``@file`` naming a text file with one scene URI per line. EVERY subdirectory of
    the layout folder is an input, including broken ones, so that each ends in the shards or in quarantine.
    """
    if isinstance(scenes, str) and scenes.startswith("@"):
        with storage.open_uri(scenes[1:], "rt") as f:
            scenes = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    elif isinstance(scenes, str) and "," in scenes:
        scenes = [s for s in scenes.split(",") if s]
    if not isinstance(scenes, str):
        return sorted((scene_id_of(u), u.rstrip("/")) for u in scenes), None
    root = scenes.rstrip("/")
    if not storage.exists(root):
        raise FileNotFoundError(f"{root}: scene root does not exist")
    subdirs = set(_list_dirs(root))
    wanted = [LAYOUT_DIRS[layout]] if layout != "auto" else ["scans", "posed_images", "videos"]
    for sub in wanted:
        if sub in subdirs:
            base = storage.join(root, sub)
            # The export layout lives in scans/<id>/export (the SensReader convention of the scene readers).
            tail = ("export",) if layout == "export" else ()
            return [(sid, storage.join(base, sid, *tail)) for sid in _list_dirs(base)], root
    return [(sid, storage.join(root, sid)) for sid in sorted(subdirs)], None


def scene_id_of(uri: str) -> str:
    """Scene id of a scene URI: its folder name (the parent's for ``.../<id>/export``; the stem of a ``.sens``)."""
    parts = uri.rstrip("/").split("/")
    if parts[-1] == "export" and len(parts) > 1:
        return parts[-2]
    return parts[-1][: -len(".sens")] if parts[-1].endswith(".sens") else parts[-1]


def metadata_location(scene_id: str, uri: str, root: str | None) -> str | None:
    """The ``scans/<id>`` folder holding ``<id>.txt`` for a scene of any layout, or None (no boxes then)."""
    uri = uri.rstrip("/")
    parent = uri.rsplit("/", 1)[0] if "/" in uri else ""
    candidates = [storage.join(root, "scans", scene_id)] if root is not None else []
    candidates += [uri, parent]
    if parent.count("/") >= 1:  # <root>/<layout dir>/<id>: try the sibling <root>/scans/<id>
        candidates.append(storage.join(parent.rsplit("/", 1)[0], "scans", scene_id))
    for cand in candidates:
        if cand and storage.exists(storage.join(cand, f"{scene_id}.txt")):
            return cand
    return None


def scene_inputs(
    scenes: str | Sequence[str], layout: str = "auto", annotations_uri: str | None = None
) -> list[SceneInput]:
    """Discover scenes and attach each scene's metadata location and annotation entries."""
    found, root = discover_scenes(scenes, layout)
    if annotations_uri is None and root is not None and storage.exists(storage.join(root, "annotations")):
        annotations_uri = storage.join(root, "annotations")
    per_scene = load_scene_annotations(annotations_uri) if annotations_uri else {}
    inputs = []
    for scene_id, uri in found:
        meta = metadata_location(scene_id, uri, root)
        inputs.append(SceneInput(scene_id, uri, meta, per_scene.get(scene_id, {})))
    return inputs


def load_scene_annotations(root: str) -> dict[str, dict[str, list]]:
    """``{scene_id: {set_name: [entries]}}`` of every benchmark file present under an annotations root.

    Sets: ``scanqa``, ``sqa3d``, ``scanrefer``, ``scan2cap`` (ScanRefer grouped per object, the captioning
    references) and ``multi3drefer``; each entry gets its ``split``. Files are read with the strict readers of
    :mod:`pipelines.scenes.annotations`, so a malformed file fails the job (it is not per-scene bad input).
    """
    from pipelines.scenes import annotations as ann

    per_scene: dict[str, dict[str, list]] = {}

    def add(set_name: str, split: str, records: list) -> None:
        for rec in records:
            row = _jsonable(asdict(rec))
            row["split"] = split
            per_scene.setdefault(str(row["scene_id"]), {}).setdefault(set_name, []).append(row)

    for split in ANNOTATION_SPLITS:
        paths = ann.benchmark_paths(root, split)
        if storage.exists(paths["scanqa"]):
            add("scanqa", split, ann.read_scanqa(paths["scanqa"], with_answers=split != "test"))
        if storage.exists(paths["sqa3d_questions"]) and storage.exists(paths["sqa3d_annotations"]):
            add("sqa3d", split, ann.read_sqa3d(paths["sqa3d_questions"], paths["sqa3d_annotations"]))
        if storage.exists(paths["scanrefer"]):
            add("scanrefer", split, ann.read_scanrefer(paths["scanrefer"]))
            add("scan2cap", split, ann.read_scan2cap(paths["scanrefer"]))
        if storage.exists(paths["multi3drefer"]):
            add("multi3drefer", split, ann.read_multi3drefer(paths["multi3drefer"]))
    return per_scene


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def build_scene_clips(scene: SceneInput, config: IngestConfig, config_hash: str) -> list[ClipSample]:
    """Open one scene, sample its clips and decode/resize only the sampled frames (runs inside a Ray worker).

    Raises:
        SceneDataError: the scene's own data errors, typed (the caller quarantines the scene with that reason).
            Readers refuse frames of another size than the colour camera's (``FrameSizeMismatchError`` for
            videos), since resizing them would pair the pixels with intrinsics of another size.
    """
    from pipelines.scenes.metadata import read_scene_metadata
    from pipelines.scenes.open import open_scene
    from pipelines.scenes.types import SceneMetadata

    metadata = read_scene_metadata(scene.metadata_uri) if scene.metadata_uri else SceneMetadata(scene.scene_id)
    with open_scene(scene.uri, layout=config.layout, write_sens_index=config.write_sens_index,
                    decode_budget=config.decode) as reader:
        clips_idx = select_clip_frames(
            reader.valid, config.frames_per_clip, config.clips_per_scene, config.stride,
            config.min_valid_frames, scene.uri,
        )
        wanted = sorted({i for clip in clips_idx for i in clip})
        plan = ResizePlan.for_size(reader.color_intrinsics.width, reader.color_intrinsics.height,
                                   config.resize_to, config.patch_multiple, config.resize_side)
        k_out = plan.intrinsics(reader.color_intrinsics.matrix)
        depth_map = (
            depth_sampling_map(k_out, plan.out_w, plan.out_h, reader.depth_intrinsics)
            if reader.depth_intrinsics is not None else None
        )
        # Decode and shrink frame by frame: full-resolution frames never leave this function.
        small: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for frame in reader.read_frames(wanted):
            depth = (
                resample_depth(frame.depth_m, depth_map)
                if frame.depth_m is not None and depth_map is not None
                else np.zeros((plan.out_h, plan.out_w), np.float32)
            )
            small[frame.index] = (plan.image(frame.rgb), depth)
        poses, stamps, source_uri = reader.poses, reader.timestamps_s, reader.uri
        color_size = [reader.color_intrinsics.width, reader.color_intrinsics.height]
    clips = []
    for c, idx in enumerate(clips_idx):
        cam_to_world = poses[idx]
        clips.append(ClipSample(
            key=sample_key(scene.scene_id, c),
            frames=np.stack([small[i][0] for i in idx]),
            depth_m=np.stack([small[i][1] for i in idx]),
            cam_to_world=cam_to_world,
            extrinsics=relative_extrinsics(cam_to_world),
            intrinsics=np.repeat(k_out[None].astype(np.float32), len(idx), axis=0),
            boxes=boxes_payload(metadata, cam_to_world[0]),
            annotations=scene.annotations,
            meta={
                "scene_id": scene.scene_id, "clip_index": c, "num_clips": len(clips_idx),
                "frame_indices": idx, "timestamps_s": [float(stamps[i]) for i in idx],
                "source_uri": source_uri, "layout": config.layout, "config_hash": config_hash,
                "image_size": [plan.out_w, plan.out_h], "source_color_size": color_size,
            },
        ))
    return clips


def stage_scene(scene: SceneInput, out: str, config: IngestConfig, config_hash: str) -> dict[str, Any]:
    """Stage one scene: its clips as ``_staging/<scene_id>.tar``, or a quarantine record. Never raises for data."""
    started = time.perf_counter()
    try:
        clips = build_scene_clips(scene, config, config_hash)
        encoded = [encode_clip_sample(c, config.frame_codec, config.jpeg_quality, config.depth_codec) for c in clips]
        data = write_tar(m for sample in encoded for m in sample_members(sample))
        mf.put_atomic(mf.staging_uri(out, scene.scene_id), data)
        frames = sum(c.num_frames for c in clips)
        return {"scene_id": scene.scene_id, "status": "staged", "clips": len(clips), "frames": frames,
                "bytes": len(data), "error_type": "", "reason": "", "seconds": time.perf_counter() - started}
    except Exception as err:  # noqa: BLE001 - any failure of one scene is that scene's quarantine reason
        record = mf.QuarantineRecord(scene.scene_id, scene.uri, type(err).__name__, str(err) or repr(err))
        # Data errors are expected and self-describing; anything else also gets its traceback for debugging.
        detail = "" if isinstance(err, SceneDataError) else "\n" + traceback.format_exc(limit=5)
        log.warning("quarantined %s: %s: %s%s", scene.uri, record.error_type, record.reason, detail)
        mf.write_quarantine_record(out, scene.scene_id, record)
        return {"scene_id": scene.scene_id, "status": "quarantined", "clips": 0, "frames": 0, "bytes": 0,
                "error_type": record.error_type, "reason": record.reason,
                "seconds": time.perf_counter() - started}


def _stage_batch(batch: dict[str, np.ndarray], out: str, config: dict, config_hash: str) -> dict[str, list]:
    cfg = IngestConfig.from_dict(config)
    rows = [
        stage_scene(SceneInput(sid, uri, meta or None, json.loads(ann)), out, cfg, config_hash)
        for sid, uri, meta, ann in zip(batch["scene_id"], batch["uri"], batch["metadata_uri"],
                                       batch["annotations"], strict=True)
    ]
    return {k: [r[k] for r in rows] for k in rows[0]}


def _build_batch(batch: dict[str, np.ndarray]) -> dict[str, list]:
    records = []
    for units_json, uri in zip(batch["units"], batch["uri"], strict=True):
        units = [mf.StagedUnit(**u) for u in json.loads(units_json)]
        records.append(json.dumps(asdict(mf.build_shard(units, uri))))
    return {"record": records}


def ray_shard_builder(num_cpus: float = 1.0):
    """A ``finalize(build=...)`` callable building shards in parallel Ray Data tasks."""

    def build(jobs: list[tuple[list[mf.StagedUnit], str]]) -> list[mf.ShardRecord]:
        import ray

        if not jobs:
            return []
        items = [{"units": json.dumps([asdict(u) for u in units]), "uri": uri} for units, uri in jobs]
        ds = ray.data.from_items(items, override_num_blocks=len(items))
        rows = ds.map_batches(_build_batch, batch_size=1, num_cpus=num_cpus).take_all()
        return [mf.ShardRecord(**json.loads(r["record"])) for r in rows]

    return build


def init_ray(address: str | None = None) -> None:
    """Connect to ``address`` (or ``RAY_ADDRESS``, as set by ``ray job submit``), else start a local Ray."""
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True)


def scenes_per_task(num_scenes: int, at_most: int, cluster_cpus: float) -> int:
    """Scenes per Ray task: up to ``at_most``, but never so many that the tasks are fewer than the cluster's CPUs."""
    return max(1, min(at_most, num_scenes // max(1, int(cluster_cpus))))


def run_ingest(
    scenes: str | Sequence[str],
    out: str,
    config: IngestConfig,
    annotations_uri: str | None = None,
    ray_address: str | None = None,
    progress: bool = True,
) -> mf.Manifest:
    """Ingest scenes into CLIP shards under ``out``; resumable and idempotent. Returns the manifest.

    Every input scene ends either in the shards or in the manifest's quarantine list.
    """
    import ray

    out = out.rstrip("/")
    cfg_dict, cfg_hash = config.to_dict(), config.hash()
    if storage.exists(mf.manifest_uri(out)):
        manifest = mf.read_manifest(out)
        if manifest.config_hash != cfg_hash:
            raise mf.ManifestError(out, f"finished with config {manifest.config_hash}, this run has {cfg_hash}")
        mf.remove_staging(out)  # a run killed after its manifest may have left it
        log.info("ingest: %s is complete, nothing to do", out)
        return manifest
    mf.check_config(out, cfg_dict, cfg_hash)
    started = time.perf_counter()
    inputs = scene_inputs(scenes, config.layout, annotations_uri)
    ids = [s.scene_id for s in inputs]
    if len(set(ids)) != len(ids):
        raise ValueError(f"duplicate scene ids among inputs: {sorted({i for i in ids if ids.count(i) > 1})}")
    staged, quarantined = mf.list_staged(out)
    todo = [s for s in inputs if s.scene_id not in staged and s.scene_id not in quarantined]
    log.info("ingest: %d scenes, %d already staged, %d to do", len(inputs), len(inputs) - len(todo), len(todo))
    rows: list[dict[str, Any]] = []
    if todo:
        init_ray(ray_address)
        items = [{"scene_id": s.scene_id, "uri": s.uri, "metadata_uri": s.metadata_uri or "",
                  "annotations": json.dumps(s.annotations)} for s in todo]
        per_task = scenes_per_task(len(items), config.scenes_per_task, ray.cluster_resources().get("CPU", 1.0))
        ds = ray.data.from_items(items, override_num_blocks=-(-len(items) // per_task)).map_batches(
            _stage_batch, batch_size=per_task, num_cpus=config.num_cpus_per_task,
            compute=ray.data.TaskPoolStrategy(size=config.concurrency),
            fn_kwargs={"out": out, "config": cfg_dict, "config_hash": cfg_hash},
        )
        rows = list(ds.iter_rows())
    stage_seconds = time.perf_counter() - started
    staged, quarantined = mf.list_staged(out)
    missing = sorted(set(ids) - set(staged) - set(quarantined))
    if missing:
        raise mf.ManifestError(out, f"scenes neither staged nor quarantined: {missing}")
    units = [mf.staged_unit_from_uri(sid, staged[sid]) for sid in ids if sid in staged]
    records = [mf.read_quarantine_record(quarantined[sid]) for sid in ids if sid in quarantined]
    manifest = mf.finalize(
        out, "clips", CLIP_SHARD_PREFIX, cfg_dict, cfg_hash, units, records, config.target_shard_bytes,
        summary={"scenes": len(inputs), "scenes_written": len(units), "scenes_quarantined": len(records)},
        build=ray_shard_builder() if units and ray.is_initialized() else None, keep_staging=config.keep_staging,
    )
    # Timings describe this run only; they go to the printed summary, not into the (deterministic) manifest.
    frames = sum(r["frames"] for r in rows)
    manifest.summary.update({"seconds": round(time.perf_counter() - started, 2), "frames_this_run": frames,
                             "clips_this_run": sum(r["clips"] for r in rows),
                             "frames_per_s": round(frames / stage_seconds, 2) if stage_seconds > 0 else 0.0})
    if progress:
        print(mf.format_summary(manifest))
    return manifest
