"""Builders of a small synthetic split (two scenes, every task) and of its oracle predictions."""

from __future__ import annotations

import numpy as np

from pipelines.eval.alignment import aligned_boxes_to_first_camera
from pipelines.eval.groundtruth import (
    GroundTruth,
    ReconstructionTarget,
    qa_items,
    refer_items,
    scan2cap_references,
)
from pipelines.eval.harness import EvalConfig
from pipelines.eval.metrics.boxes import as_boxes, box_iou_matrix
from pipelines.eval.predictions import (
    AnswerPrediction,
    BoxPrediction,
    CaptionPrediction,
    ReconstructionPrediction,
)
from pipelines.scenes.types import ObjectBox, SceneMetadata

S0, S1 = "scene0000_00", "scene0001_00"
FAST = EvalConfig(meteor=False)


def box_iou(a, b) -> float:
    """IoU of two single centre+size boxes (``[6]`` each)."""
    return float(box_iou_matrix(as_boxes(a), as_boxes(b))[0, 0])


def boxes_from_metadata(scenes) -> dict[tuple[str, int], np.ndarray]:
    """``(scene_id, object_id)`` -> ``[6]`` centre+size box of the scenes' annotated objects (what the oracle is
    scored against)."""
    return {(scene.scene_id, int(obj.object_id)): np.concatenate([np.asarray(obj.center, np.float64),
                                                                   np.asarray(obj.size, np.float64)])
            for scene in scenes for obj in scene.objects}


def _rz90_at(t) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    m[:3, 3] = t
    return m


def _metadata() -> list[SceneMetadata]:
    def obj(i, label, c, s):
        return ObjectBox(i, label, np.array(c, float), np.array(s, float))

    return [
        SceneMetadata(S0, objects=(obj(1, "chair", [1, 1, 0.5], [0.6, 0.6, 1.0]),
                                   obj(2, "table", [3, 1, 0.4], [1.2, 0.8, 0.8]))),
        SceneMetadata(S1, objects=(obj(1, "sink", [0, 2, 0.9], [0.5, 0.4, 0.3]),
                                   obj(3, "door", [4, 0, 1.0], [0.1, 0.9, 2.0]))),
    ]  # fmt: skip


SCANREFER = [
    {"scene_id": S0, "object_id": "1", "ann_id": "0", "description": "the brown chair next to the table.",
     "eval_type": "unique"},
    {"scene_id": S0, "object_id": "1", "ann_id": "1", "description": "a wooden chair by the window.",
     "eval_type": "unique"},
    {"scene_id": S0, "object_id": "2", "ann_id": "0", "description": "the big table in the middle of the room.",
     "eval_type": "multiple"},
    {"scene_id": S1, "object_id": "1", "ann_id": "0", "description": "a white sink under the mirror.",
     "eval_type": "multiple"},
    {"scene_id": S1, "object_id": "3", "ann_id": "0", "description": "the door on the left of the sink.",
     "eval_type": "unique"},
]  # fmt: skip


def _depth() -> np.ndarray:
    d = np.random.default_rng(1).uniform(0.5, 4.0, size=(3, 4, 5))
    d[:, 0, 0] = 0.0  # invalid pixels
    return d


def _poses() -> np.ndarray:
    return np.stack([_rz90_at([i * 0.5, 0.2 * i, 1.0]) for i in range(3)])


SCANQA = [
    {"question_id": "val-scene0000-0", "scene_id": S0, "question": "What is next to the table?",
     "answers": ["brown wooden chair near table", "chair"]},
    {"question_id": "val-scene0000-1", "scene_id": S0, "question": "What is white?", "answers": ["sink"]},
    {"question_id": "val-scene0001-0", "scene_id": S1, "question": "How many doors?", "answers": ["one door"]},
]  # fmt: skip
SQA3D = [
    {"question_id": 1, "scene_id": S0, "situation": "I sit on the bed.", "question": "How many chairs are behind me?",
     "answers": [{"answer": "two", "answer_id": 1}]},
    {"question_id": 2, "scene_id": S0, "situation": "I face the desk.", "question": "Which way is the door?",
     "answers": [{"answer": "left"}]},
    {"question_id": 3, "scene_id": S1, "situation": "I wash my hands.", "question": "Is the sink on?",
     "answers": [{"answer": "no"}]},
]  # fmt: skip
MULTI3DREFER = [
    {"scene_id": S0, "ann_id": "10", "object_ids": [], "eval_type": "zt_w_d", "description": "the red lamp."},
    {"scene_id": S1, "ann_id": "11", "object_ids": [], "eval_type": "zt_wo_d", "description": "the bed."},
    {"scene_id": S0, "ann_id": "12", "object_ids": [1], "eval_type": "st_w_d", "description": "the brown chair."},
    {"scene_id": S1, "ann_id": "13", "object_ids": [3], "eval_type": "st_wo_d", "description": "the door."},
    {"scene_id": S0, "ann_id": "14", "object_ids": [1, 2], "eval_type": "mt", "description": "all furniture."},
]  # fmt: skip
S1_FIRST_CAMERA_TO_ALIGNED = _rz90_at([2.0, -1.0, 0.3])


def make_ground_truth() -> GroundTruth:
    return GroundTruth(
        scanqa=qa_items(SCANQA),
        sqa3d=qa_items(SQA3D),
        scanrefer=refer_items(SCANREFER),
        multi3drefer=refer_items(MULTI3DREFER),
        scan2cap=scan2cap_references(SCANREFER),
        reconstruction=(ReconstructionTarget(S0, _depth(), _poses()),),
        boxes=boxes_from_metadata(_metadata()),
        first_camera_to_aligned={S1: S1_FIRST_CAMERA_TO_ALIGNED},
    )


def write_clip_shards(out: str) -> str:
    """The split of :func:`make_ground_truth` as one CLIP shard + manifest (what ingest writes), no Ray needed.

    S0's first camera is the scene frame, S1's is ``S1_FIRST_CAMERA_TO_ALIGNED``; both clips have 3 frames of
    4 x 5 pixels with S0's depth and poses (depth stored as millimetres, as every shard does).
    """
    import hashlib

    from pipelines import storage
    from pipelines.manifest import Manifest, ShardRecord, manifest_uri, put_atomic
    from pipelines.schema import (
        CLIP_SHARD_PREFIX,
        ClipSample,
        config_hash,
        encode_clip_sample,
        sample_key,
        sample_members,
        shard_name,
        write_tar,
    )

    members, keys = [], []
    for meta in _metadata():
        sid = meta.scene_id
        first = np.eye(4) if sid == S0 else S1_FIRST_CAMERA_TO_ALIGNED
        c2w = np.stack([first @ np.linalg.inv(_poses()[0]) @ p for p in _poses()])
        objects = []
        for o in meta.objects:
            box = np.concatenate([o.center, o.size])[None]
            first_box = aligned_boxes_to_first_camera(box, np.eye(4), first)[0]
            objects.append({"object_id": o.object_id, "label": o.label, "center": o.center.tolist(),
                            "size": o.size.tolist(), "center_first_cam": first_box[:3].tolist(),
                            "size_first_cam": first_box[3:].tolist()})
        annotations = {task: [dict(e) for e in entries if e["scene_id"] == sid]
                       for task, entries in (("scanqa", SCANQA), ("sqa3d", SQA3D), ("scanrefer", SCANREFER),
                                             ("multi3drefer", MULTI3DREFER))}
        clip = ClipSample(
            key=sample_key(sid, 0), frames=np.full((3, 4, 5, 3), 100, np.uint8), depth_m=_depth().astype(np.float32),
            cam_to_world=c2w, extrinsics=np.linalg.inv(c2w)[:, :3, :].astype(np.float32),
            intrinsics=np.tile(np.eye(3, dtype=np.float32), (3, 1, 1)),
            boxes={"axis_alignment": np.eye(4).tolist(), "objects": objects}, annotations=annotations,
            meta={"scene_id": sid, "clip_index": 0, "source": "eval-builders"})
        members.extend(sample_members(encode_clip_sample(clip, frame_codec="npy")))
        keys.append(clip.key)
    data = write_tar(members)
    name = shard_name(CLIP_SHARD_PREFIX, 0)
    put_atomic(storage.join(out, name), data)
    record = ShardRecord(name=name, num_samples=len(keys), num_bytes=len(data),
                         sha256=hashlib.sha256(data).hexdigest(), scenes=[S0, S1], keys=keys)
    manifest = Manifest(kind="clips", config={"builder": "eval"}, config_hash=config_hash({"builder": "eval"}),
                        shards=[record])
    put_atomic(manifest_uri(out), manifest.to_json())
    return out


def oracle(gt: GroundTruth) -> list:
    preds: list = []
    preds += [AnswerPrediction("scanqa", q.scene_id, q.question_id, q.answers[0] + ".") for q in gt.scanqa]
    preds += [
        AnswerPrediction("sqa3d", q.scene_id, q.question_id, q.answers[0].capitalize()) for q in gt.sqa3d
    ]
    for r in gt.scanrefer:
        box = gt.boxes[(r.scene_id, r.object_ids[0])][None]
        if (
            r.scene_id == S1
        ):  # the model's native frame: mapped back by the harness with the GT first-frame pose
            t = gt.first_camera_to_aligned[S1]
            box = aligned_boxes_to_first_camera(box, np.eye(4), t)
            preds.append(
                BoxPrediction("scanrefer", r.scene_id, r.ann_id, box, None, r.object_ids[0], "first_camera")
            )
        else:
            preds.append(BoxPrediction("scanrefer", r.scene_id, r.ann_id, box, None, r.object_ids[0]))
    for r in gt.multi3drefer:
        boxes = np.array([gt.boxes[(r.scene_id, o)] for o in r.object_ids]).reshape(-1, 6)
        preds.append(BoxPrediction("multi3drefer", r.scene_id, r.ann_id, boxes))
    for scene in (S0, S1):
        keys = [k for k in gt.scan2cap if k[0] == scene]
        preds.append(CaptionPrediction("scan2cap", scene, np.array([gt.boxes[k] for k in keys]),
                                       tuple(gt.scan2cap[k][0] for k in keys)))  # fmt: skip
    t = gt.reconstruction[0]
    preds.append(ReconstructionPrediction("reconstruction", t.scene_id, t.depth.copy(), np.linalg.inv(t.poses),
                                          "world_to_cam"))  # fmt: skip
    return preds
