"""The evaluation job: shards (manifest) -> Ray Data batch inference -> prediction file -> harness -> report.

Stages:

1. The driver reads the manifest of ``--data`` (CLIP or TRAINING shards; both carry frames, depth, poses,
   intrinsics, ``boxes.json`` and the scene's ``annotations.json``) and picks ONE clip per scene
   (``clip_index``, default the scene's first): the benchmarks key answers by question and boxes by scene.
2. Ray Data tasks (one per shard) decode the picked clips and select the annotation entries to score (``split``,
   ``max_queries_per_task`` with ``query_selection``; ``--annotations`` replaces the shards' entries with the
   benchmark files read by :mod:`pipelines.scenes.annotations`), and attach the scene's instance proposals when a
   ``proposals`` captioning protocol is configured.
3. ``map_batches`` with the :class:`ClipPredictor` actor class (model loaded once per actor, arguments passed
   explicitly; ``num_gpus``/``batch_size``/``concurrency`` from :class:`~pipelines.eval.config.EvalJobConfig`)
   encodes each clip once and answers every prompt on it: ScanQA questions, SQA3D ``situation + question``,
   Scan2Cap captions (protocol ``gt_boxes``: of the ground-truth boxes; ``proposals``: of every instance proposal
   of the scene; the prompt carries the box in the first-camera frame), ScanRefer / Multi3DRefer grounding, and
   the reconstruction (metric depth ``.npy`` and camera-from-world poses ``.npy``, written by the actor under
   ``<out>/predictions/reconstruction/``).
4. The driver converts grounding boxes from the model's first-camera metric frame to ScanNet's axis-aligned frame
   with :mod:`pipelines.eval.alignment`: ``T_aligned<-first = axisAlignment @ cam_to_world[0]``. The ground-truth
   pose is used only at evaluation, and only to move boxes between the benchmark frame and the model's frame: the
   model sees frames and, for captioning, the box to describe in its own first-camera frame (ground-truth boxes
   come so from ingest as ``*_first_cam``; proposals are mapped with the inverse transform), exactly as every
   video-based 3D LLM is scored against ScanNet boxes. It writes
   ``<out>/predictions/predictions.jsonl`` (:mod:`pipelines.eval.predictions` format, boxes in the ``aligned``
   frame), reloads it through the strict loader and scores it with :func:`pipelines.eval.harness.evaluate`.

Each actor resolves ``--model`` itself (a cached download per node), so on a multi-node cluster the model must be
reachable from every node: an ``s3://`` export or ``models:/`` with a tracking server (not a driver-local path or
sqlite store).

Memory: the harness holds ground-truth and predicted depth of every evaluated clip in the driver (about 50 MB per
clip at the paper's 32 x 518 x 378), so full-resolution reconstruction evaluation of a whole split wants a driver
with memory to match, or ``--tasks`` without ``reconstruction``.
"""

from __future__ import annotations

import json
import logging
import posixpath
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines import storage
from pipelines.eval.alignment import aligned_boxes_to_first_camera, first_camera_to_aligned, transform_boxes
from pipelines.eval.config import EvalJobConfig
from pipelines.eval.groundtruth import (
    GroundTruth,
    ReconstructionTarget,
    qa_items,
    record_family,
    refer_items,
    scan2cap_references,
)
from pipelines.eval.proposals import SceneProposals
from pipelines.manifest import ManifestError, read_manifest, shard_uris, webdataset_pipeline
from pipelines.schema import SchemaError, decode_clip_sample, split_key

log = logging.getLogger(__name__)

PREDICTIONS_DIR = "predictions"
PREDICTIONS_NAME = "predictions.jsonl"
RECON_DIR = "reconstruction"


class DataSourceError(FileNotFoundError):
    """``--data`` (or ``--annotations``) does not name usable evaluation data; the message names the URI."""

    def __init__(self, uri: str, problem: str, flag: str = "--data"):
        self.uri = uri
        self.problem = problem
        super().__init__(f"{flag} {uri}: {problem}")


# --------------------------------------------------------------------------------------------- clip selection
def plan_clips(data_uri: str, clip_index: int | None = None) -> list[dict[str, Any]]:
    """``[{"shard": uri, "keys": [...]}]``: one clip per scene (``clip_index``, else the scene's lowest).

    Raises:
        DataSourceError: no readable manifest at ``data_uri``, or no clip to evaluate.
    """
    try:
        manifest = read_manifest(data_uri)
    except ManifestError as err:
        raise DataSourceError(data_uri, err.problem) from None
    except Exception as err:  # noqa: BLE001 - bad scheme, bucket or credentials: name the URI
        raise DataSourceError(data_uri, f"cannot be read ({type(err).__name__}: {err})") from None
    base = posixpath.dirname(data_uri) if data_uri.endswith(".json") else data_uri.rstrip("/")
    best: dict[str, tuple[int, str, str]] = {}
    for record, uri in zip(manifest.shards, shard_uris(manifest, base), strict=True):
        for key in record.keys:
            scene, clip = split_key(key)
            if clip_index is not None and clip != clip_index:
                continue
            if scene not in best or clip < best[scene][0]:
                best[scene] = (clip, key, uri)
    if not best:
        which = "any clip" if clip_index is None else f"clip {clip_index}"
        raise DataSourceError(data_uri, f"the manifest lists no scene with {which} to evaluate")
    per_shard: dict[str, list[str]] = {}
    for _, key, uri in sorted(best.values(), key=lambda v: v[1]):
        per_shard.setdefault(uri, []).append(key)
    return [{"shard": uri, "keys": keys} for uri, keys in sorted(per_shard.items())]


def _object_ids(boxes: Mapping[str, Any]) -> set[int]:
    return {int(o["object_id"]) for o in boxes.get("objects", [])}


def _stratum(task: str, entry: Mapping[str, Any]) -> str:
    """The group an entry belongs to for stratified selection (see :func:`select_annotations`)."""
    if task in ("scanqa", "sqa3d"):
        return record_family(entry)[0]
    if task == "scanrefer":
        return str(entry["object_id"])
    if task == "multi3drefer":
        return str(entry.get("eval_type"))
    return str(entry.get("object_id"))


def _stratified(entries: Sequence[Any], key, limit: int) -> list[Any]:
    """At most ``limit`` entries taken round robin over the groups ``key(entry)`` (groups in order of first
    appearance, entries in file order within a group)."""
    groups: dict[str, list[Any]] = {}
    for e in entries:
        groups.setdefault(key(e), []).append(e)
    depth = max((len(g) for g in groups.values()), default=0)
    return [g[i] for i in range(depth) for g in groups.values() if i < len(g)][:limit]


def select_annotations(annotations: Mapping[str, list], boxes: Mapping[str, Any], tasks: Sequence[str],
                       split: str | None, limit: int | None, selection: str = "stratified"
                       ) -> tuple[dict[str, list], dict[str, int]]:
    """The entries of each requested task to score on one clip, and how many were dropped per task.

    Grounding and captioning entries whose target objects have no box in ``boxes.json`` cannot be scored and are
    dropped (counted); ``split`` and ``limit`` narrow the rest. ``selection`` says which entries a limit keeps:
    ``stratified`` takes them round robin over QA question families, ScanRefer target objects and Multi3DRefer
    eval types (Scan2Cap entries are one per object already), ``first`` the first ones in file order. Scan2Cap uses
    the ``scan2cap`` set (ScanRefer grouped per object) or, when absent, the ScanRefer entries grouped here.
    """
    known = _object_ids(boxes)
    out: dict[str, list] = {}
    dropped: dict[str, int] = {}
    for task in tasks:
        if task == "reconstruction":
            continue
        entries = list(annotations.get(task, []))
        if task == "scan2cap" and not entries:
            entries = [{"scene_id": s, "object_id": str(o), "captions": list(c)}
                       for (s, o), c in scan2cap_references(annotations.get("scanrefer", [])).items()]
        if split is not None:
            entries = [e for e in entries if e.get("split") == split]
        if task in ("scanrefer", "scan2cap"):
            keep = [e for e in entries if int(e["object_id"]) in known]
        elif task == "multi3drefer":
            keep = [e for e in entries if all(int(o) in known for o in e["object_ids"])]
        else:
            keep = entries
        if len(keep) < len(entries):
            dropped[task] = len(entries) - len(keep)
        if limit is None:
            out[task] = keep
        elif selection == "stratified":
            out[task] = _stratified(keep, lambda e, t=task: _stratum(t, e), limit)
        else:
            out[task] = keep[:limit]
    return out, dropped


def _scene_proposals(aligned: list | None, boxes: Mapping[str, Any], cam_to_world: np.ndarray) -> dict | None:
    """A scene's proposals in the benchmark frame and mapped into the clip's first-camera frame (for prompts)."""
    if aligned is None:
        return None
    arr = np.asarray(aligned, np.float64).reshape(-1, 6)
    axis = np.asarray(boxes.get("axis_alignment", np.eye(4)), np.float64)
    first = aligned_boxes_to_first_camera(arr, axis, cam_to_world[0]) if arr.shape[0] else arr
    return {"aligned": arr.tolist(), "first_camera": first.tolist()}


def _decode_batch(batch: dict[str, np.ndarray], tasks: list[str], split: str | None, limit: int | None,
                  annotations_json: str, selection: str = "stratified", proposals_json: str = "") -> dict[str, list]:
    """Ray Data task: decode the picked clips of one shard; GT columns ride along for the driver.

    ``proposals_json`` is ``{scene_id: [[cx, cy, cz, dx, dy, dz], ...]}`` (axis-aligned frame) of the scenes to
    caption under the ``proposals`` protocol ("" = none); a scene the file lacks gets ``null``.
    """
    override = json.loads(annotations_json) if annotations_json else None
    proposals = json.loads(proposals_json) if proposals_json else None
    cols: dict[str, list] = {k: [] for k in ("key", "scene_id", "frames", "depth_gt", "cam_to_world", "boxes",
                                             "annotations", "dropped", "proposals")}
    for shard, keys_json in zip(batch["shard"], batch["keys"], strict=True):
        wanted = set(json.loads(keys_json))
        for sample in webdataset_pipeline([str(shard)]):
            if sample["__key__"] not in wanted:
                continue
            clip = decode_clip_sample(sample)
            scene_id, _ = split_key(clip.key)
            source = override.get(scene_id, {}) if override is not None else clip.annotations
            chosen, dropped = select_annotations(source, clip.boxes, tasks, split, limit, selection)
            props = _scene_proposals(proposals.get(scene_id), clip.boxes, clip.cam_to_world) if proposals else None
            for name, value in (("key", clip.key), ("scene_id", scene_id), ("frames", clip.frames),
                                ("depth_gt", clip.depth_m), ("cam_to_world", clip.cam_to_world),
                                ("boxes", json.dumps(clip.boxes)), ("annotations", json.dumps(chosen)),
                                ("dropped", json.dumps(dropped)), ("proposals", json.dumps(props))):
                cols[name].append(value)
            wanted.discard(clip.key)
        if wanted:
            raise SchemaError(str(shard), f"samples listed in the manifest are missing from the shard: {sorted(wanted)}")
    return cols


# ------------------------------------------------------------------------------------------------- inference
def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i:i + size]


class ClipPredictor:
    """Ray Data actor: loads the model once, then predicts every requested task for each clip of a batch.

    Args:
        model_uri: the ``--model`` URI, resolved on the actor's node (cached download).
        tracking_uri: MLflow tracking URI (for ``models:/`` URIs).
        config: :meth:`EvalJobConfig.to_dict` of the job.
        out: job output URI; reconstruction arrays go to ``<out>/predictions/reconstruction/``.
    """

    def __init__(self, model_uri: str, tracking_uri: str | None, config: dict[str, Any], out: str) -> None:
        import torch

        from pipelines.artifacts import load_model_and_processor, resolve_model

        self.cfg = EvalJobConfig.from_dict(config)
        self.out = out
        self.device = "cuda" if self.cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        source = resolve_model(model_uri, tracking_uri, self.cfg.cache_dir)
        # The exported processor: the prompts, chat template and frame conversion the model was trained with.
        self.model, self.processor = load_model_and_processor(source.local_dir, self.device)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        out: dict[str, list] = {"records": [], "seconds": [], "prompts": []}
        for i in range(len(batch["key"])):
            started = time.perf_counter()
            records, prompts = self.predict_clip(str(batch["key"][i]), str(batch["scene_id"][i]),
                                                 np.asarray(batch["frames"][i]), json.loads(batch["boxes"][i]),
                                                 json.loads(batch["annotations"][i]),
                                                 json.loads(batch["proposals"][i]))
            out["records"].append(json.dumps(records))
            out["prompts"].append(prompts)
            out["seconds"].append(time.perf_counter() - started)
        # Ground-truth columns pass through unchanged (the model above never reads them).
        for name in ("key", "scene_id", "depth_gt", "cam_to_world", "boxes", "annotations", "dropped", "proposals"):
            out[name] = list(batch[name])
        return out

    def predict_clip(self, key: str, scene_id: str, frames: np.ndarray, boxes: dict, ann: dict[str, list],
                     proposals: dict | None = None) -> tuple[list[dict], int]:
        """Prediction records of one clip (boxes still in the first-camera frame) and the number of prompts.

        ``proposals`` (``{"aligned": [[6]], "first_camera": [[6]]}`` or None) are captioned under the
        ``proposals`` captioning protocol when the clip has Scan2Cap objects to score.
        """
        import torch

        cfg, model, processor = self.cfg, self.model, self.processor
        video = processor.frames_to_tensor(torch.from_numpy(frames).to(self.device)[None])  # [1, S, 3, H, W] in [0, 1]
        scene = model.encode_scene(video)
        records: list[dict] = []
        prompts = 0
        for task in ("scanqa", "sqa3d"):
            for chunk in _chunks(ann.get(task, []), cfg.prompt_batch_size):
                texts = [e["question"] if task == "scanqa" else f"{e['situation']} {e['question']}" for e in chunk]
                answers = model.answer(scene, texts, processor, max_new_tokens=cfg.max_new_tokens_answer)
                prompts += len(texts)
                records += [{"task": task, "scene_id": scene_id, "question_id": str(e["question_id"]), "answer": a}
                            for e, a in zip(chunk, answers, strict=True)]
        for task in ("scanrefer", "multi3drefer"):
            for chunk in _chunks(ann.get(task, []), cfg.prompt_batch_size):
                grounding = model.ground(scene, [e["description"] for e in chunk], processor, max_new_tokens=1)
                prompts += len(chunk)
                for j, e in enumerate(chunk):
                    b = grounding.boxes[j].float().cpu().numpy()
                    s = grounding.scores[j].float().cpu().numpy()
                    keep = 1 if task == "scanrefer" else int((s >= cfg.min_box_score).sum())
                    keep = min(keep, cfg.max_boxes)
                    rec = {"task": task, "scene_id": scene_id, "ann_id": str(e["ann_id"]),
                           "boxes": b[:keep].tolist(), "scores": s[:keep].tolist(), "frame": "first_camera"}
                    if task == "scanrefer":
                        rec["object_id"] = int(e["object_id"])
                    records.append(rec)
        objects = {int(o["object_id"]): o for o in boxes.get("objects", [])}
        targets = [objects[int(e["object_id"])] for e in ann.get("scan2cap", [])]
        captioned: list[tuple[str, list, list]] = []  # (protocol, boxes in the benchmark frame, first-camera boxes)
        if "gt_boxes" in cfg.protocol.captioning_protocols:
            captioned.append(("gt_boxes", [o["center"] + o["size"] for o in targets],
                              [o["center_first_cam"] + o["size_first_cam"] for o in targets]))
        if "proposals" in cfg.protocol.captioning_protocols and targets and proposals:
            captioned.append(("proposals", proposals["aligned"], proposals["first_camera"]))
        for protocol, aligned, first in captioned:
            for chunk in _chunks(list(zip(aligned, first, strict=True)), cfg.prompt_batch_size):
                first_cam = torch.tensor([f for _, f in chunk], dtype=torch.float32, device=self.device)
                captions = model.caption(scene, first_cam, processor, max_new_tokens=cfg.max_new_tokens_caption)
                prompts += len(chunk)
                records.append({"task": "scan2cap", "scene_id": scene_id, "frame": "aligned", "protocol": protocol,
                                "boxes": [a for a, _ in chunk], "captions": list(captions)})
        if "reconstruction" in cfg.tasks:
            records.append(self._write_reconstruction(key, scene_id, scene))
        return records, prompts

    def _write_reconstruction(self, key: str, scene_id: str, scene) -> dict:
        from pipelines.schema import npy_bytes

        base = storage.join(self.out, PREDICTIONS_DIR, RECON_DIR)
        depth = scene.depth[0].float().cpu().numpy().astype(np.float32)  # [S, H, W] metres
        poses = scene.extrinsics[0].float().cpu().numpy().astype(np.float64)  # [S, 3, 4] camera-from-world
        storage.write_bytes(storage.join(base, f"{key}.depth.npy"), npy_bytes(depth))
        storage.write_bytes(storage.join(base, f"{key}.poses.npy"), npy_bytes(poses))
        return {"task": "reconstruction", "scene_id": scene_id, "depth": f"{RECON_DIR}/{key}.depth.npy",
                "poses": f"{RECON_DIR}/{key}.poses.npy", "pose_convention": "world_to_cam"}


# --------------------------------------------------------------------------------------- ground truth + frames
@dataclass
class CollectedClips:
    """What the driver gathers from the inference stage: prediction records and ground-truth parts."""

    records: list[dict] = field(default_factory=list)
    scanqa: list[dict] = field(default_factory=list)
    sqa3d: list[dict] = field(default_factory=list)
    scanrefer: list[dict] = field(default_factory=list)
    multi3drefer: list[dict] = field(default_factory=list)
    scan2cap: list[dict] = field(default_factory=list)
    reconstruction: list[ReconstructionTarget] = field(default_factory=list)
    boxes: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)
    transforms: dict[str, np.ndarray] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    prompts: int = 0
    seconds: float = 0.0

    def add(self, row: Mapping[str, Any], tasks: Sequence[str]) -> None:
        """Add one inference row: convert its grounding boxes to the aligned frame, keep its ground truth."""
        scene_id = str(row["scene_id"])
        boxes = json.loads(row["boxes"])
        cam_to_world = np.asarray(row["cam_to_world"], np.float64)
        axis = np.asarray(boxes.get("axis_alignment", np.eye(4)), np.float64)
        transform = first_camera_to_aligned(axis, cam_to_world[0])
        self.transforms[scene_id] = transform
        for o in boxes.get("objects", []):
            self.boxes[(scene_id, int(o["object_id"]))] = np.asarray(o["center"] + o["size"], np.float64)
        for rec in json.loads(row["records"]):
            if rec.get("frame") == "first_camera":
                rec["boxes"] = transform_boxes(np.asarray(rec["boxes"], np.float64).reshape(-1, 6),
                                               transform).tolist()
                rec["frame"] = "aligned"
            self.records.append(rec)
        ann = json.loads(row["annotations"])
        for task in ("scanqa", "sqa3d", "scanrefer", "multi3drefer", "scan2cap"):
            getattr(self, task).extend(ann.get(task, []))
        if "reconstruction" in tasks:
            self.reconstruction.append(ReconstructionTarget(scene_id, np.asarray(row["depth_gt"], np.float32),
                                                            cam_to_world))
        for task, n in json.loads(row["dropped"]).items():
            self.dropped[task] = self.dropped.get(task, 0) + n
        self.prompts += int(row["prompts"])
        self.seconds += float(row["seconds"])

    def ground_truth(self) -> GroundTruth:
        return GroundTruth(
            scanqa=qa_items(self.scanqa), sqa3d=qa_items(self.sqa3d), scanrefer=refer_items(self.scanrefer),
            multi3drefer=refer_items(self.multi3drefer), scan2cap=scan2cap_references(self.scan2cap),
            reconstruction=tuple(self.reconstruction), boxes=self.boxes, first_camera_to_aligned=self.transforms,
        )


def run_inference(model_uri: str, data_uri: str, out: str, config: EvalJobConfig, tracking_uri: str | None,
                  annotations: Mapping[str, dict] | None = None, progress=print,
                  proposals: Mapping[str, SceneProposals] | None = None) -> CollectedClips:
    """Plan, decode and predict with Ray Data; returns the gathered rows (needs a connected Ray).

    Args:
        annotations: ``{scene_id: {set: [entries]}}`` replacing the shards' annotations (``--annotations``).
        progress: called with one line per finished clip.
        proposals: instance proposals (axis-aligned frame); captioned when the ``proposals`` captioning protocol is
            configured (at most ``max_proposals_per_scene`` per scene).
    """
    import ray

    plan = plan_clips(data_uri, config.clip_index)
    total = sum(len(p["keys"]) for p in plan)
    progress(f"evaluating {total} clips from {len(plan)} shards of {data_uri}")
    items = [{"shard": p["shard"], "keys": json.dumps(p["keys"])} for p in plan]
    to_caption = ""
    if proposals is not None and "proposals" in config.protocol.captioning_protocols and "scan2cap" in config.tasks:
        scenes = {split_key(k)[0] for p in plan for k in p["keys"]}
        to_caption = json.dumps({s: proposals[s].top(config.max_proposals_per_scene).boxes.tolist()
                                 for s in sorted(scenes & set(proposals))})
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        _decode_batch, batch_size=1, num_cpus=1,
        fn_kwargs={"tasks": list(config.tasks), "split": config.split, "limit": config.max_queries_per_task,
                   "annotations_json": json.dumps(annotations) if annotations is not None else "",
                   "selection": config.query_selection, "proposals_json": to_caption},
    ).map_batches(
        ClipPredictor, batch_size=config.batch_size, num_gpus=config.num_gpus, num_cpus=config.num_cpus,
        compute=ray.data.ActorPoolStrategy(size=config.concurrency),
        fn_constructor_kwargs={"model_uri": model_uri, "tracking_uri": tracking_uri, "config": config.to_dict(),
                               "out": out},
    )
    collected = CollectedClips()
    for n, row in enumerate(ds.iter_rows(), start=1):
        collected.add(row, config.tasks)
        progress(f"[{n}/{total}] {row['key']}: {int(row['prompts'])} prompts in {float(row['seconds']):.1f} s")
    if collected.dropped:
        log.warning("annotation entries without a ground-truth box were not scored: %s", collected.dropped)
    return collected


def predictions_uri(out: str) -> str:
    return storage.join(out, PREDICTIONS_DIR, PREDICTIONS_NAME)


def collect_ground_truth(data_uri: str, config: EvalJobConfig,
                         annotations: Mapping[str, dict] | None = None) -> CollectedClips:
    """The ground truth of the clips a model run would evaluate, read on the driver (no Ray, no model).

    The same clips (``clip_index``) and annotation entries (``split``, ``max_queries_per_task``,
    ``query_selection``) as :func:`run_inference`, so a prediction file of a run re-scores to the same numbers.

    Raises:
        DataSourceError: ``data_uri`` names no usable evaluation data.
    """
    collected = CollectedClips()
    override = json.dumps(annotations) if annotations is not None else ""
    for part in plan_clips(data_uri, config.clip_index):
        cols = _decode_batch({"shard": np.array([part["shard"]]), "keys": np.array([json.dumps(part["keys"])])},
                             list(config.tasks), config.split, config.max_queries_per_task, override,
                             config.query_selection)
        for i in range(len(cols["key"])):
            row = {name: values[i] for name, values in cols.items()}
            collected.add({**row, "records": "[]", "prompts": 0, "seconds": 0.0}, config.tasks)
    if collected.dropped:
        log.warning("annotation entries without a ground-truth box are not scored: %s", collected.dropped)
    return collected
