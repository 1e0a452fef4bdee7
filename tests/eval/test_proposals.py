"""Instance proposals: the five readers, snapping predicted boxes, and both protocols on hand-made cases."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.eval.groundtruth import GroundTruth
from pipelines.eval.harness import EvalConfig, evaluate
from pipelines.eval.metrics.boxes import box_corners
from pipelines.eval.metrics.grounding import snap_to_proposals
from pipelines.eval.metrics.scan2cap import CaptionedBoxes, assign_captions
from pipelines.eval.predictions import BoxPrediction, CaptionPrediction
from pipelines.eval.proposals import (
    ProposalFormatError,
    SceneProposals,
    boxes_from_any,
    load_proposals,
    mask_boxes,
    write_proposals,
)
from pipelines.scenes.metadata import write_ply, write_scene_info
from tests.eval.builders import FAST, S0, S1, box_iou, make_ground_truth

BOTH = EvalConfig(meteor=False, grounding_protocols=("free_form", "proposals"),
                  captioning_protocols=("gt_boxes", "proposals"))


@pytest.fixture(scope="module")
def gt() -> GroundTruth:
    return make_ground_truth()


def _grow(box: np.ndarray, factor: float) -> np.ndarray:
    return np.concatenate([box[:3], box[3:] * factor])


# ------------------------------------------------------------------------------------------------- snapping
def test_snap_best_iou_then_nearest_centre():
    props = np.array([[0.0, 0, 0, 1, 1, 1], [5.0, 0, 0, 1, 1, 1], [0.2, 0, 0, 1.2, 1.2, 1.2]])
    pred = np.array([
        [0.1, 0, 0, 1, 1, 1],   # overlaps proposals 0 and 2; 0 has the higher IoU
        [4.2, 0, 0, 0.2, 0.2, 0.2],   # overlaps nothing: nearest centre is proposal 1
        [2.4, 0, 0, 0.1, 0.1, 0.1],   # overlaps nothing: nearer to proposal 0/2 centres than to 1
    ])  # fmt: skip
    ious = np.array([box_iou(pred[0], p) for p in props])
    assert ious[0] > ious[2] > 0 == ious[1]
    assert snap_to_proposals(pred, props).tolist() == [0, 1, 2]
    assert snap_to_proposals(pred, np.zeros((0, 6))).shape == (0,)
    assert snap_to_proposals(np.zeros((0, 6)), props).shape == (0,)


# ------------------------------------------------------------------------------------- grounding protocols
def _scanrefer_preds(gt: GroundTruth, boxes: dict[tuple[str, str, int], np.ndarray]) -> list:
    return [BoxPrediction("scanrefer", r.scene_id, r.ann_id, boxes[(r.scene_id, r.ann_id, r.object_ids[0])][None],
                          None, r.object_ids[0]) for r in gt.scanrefer]  # fmt: skip


def test_scanrefer_proposals_hits_misses_and_missing_scene(gt):
    chair, table = gt.boxes[(S0, 1)], gt.boxes[(S0, 2)]
    sink, door = gt.boxes[(S1, 1)], gt.boxes[(S1, 3)]
    preds = _scanrefer_preds(gt, {
        (S0, "0", 1): _grow(chair, 1.6),                      # loose box: free-form IoU 0.24, snaps to the chair
        (S0, "1", 1): chair + [0.7, 0, 0, 0, 0, 0],          # beside the chair, no overlap: nearest centre = chair
        (S0, "0", 2): table,                                 # exact, but the only table proposal is poor
        (S1, "0", 1): sink,                                  # exact; scene S1 has no proposals in the file
        (S1, "0", 3): door,
    })  # fmt: skip
    poor_table = table + [0.5, 0, 0, 0, 0, 0]
    assert 0.25 <= box_iou(poor_table, table) < 0.5
    proposals = {S0: SceneProposals(np.stack([chair, _grow(chair, 1.1), poor_table]))}  # two on the chair
    res = evaluate(preds, gt, tasks=["scanrefer"], config=BOTH, proposals=proposals)["scanrefer"]
    free, prop = res["free_form"], res["proposals"]
    assert free["overall"]["acc@0.25"] == pytest.approx(60.0)   # the three exact boxes; 1.6x gives IoU 0.24
    assert box_iou(_grow(chair, 1.6), chair) < 0.25
    # proposals: both chair queries snap to the exact chair (the better of its two duplicates), the table to the
    # poor proposal (IoU in [0.25, 0.5)), S1's queries miss because the file lacks S1
    assert prop["unique"]["acc@0.5"] == pytest.approx(100.0 * 2 / 3)    # chair, chair | door missed
    assert prop["overall"]["acc@0.25"] == pytest.approx(60.0)
    assert prop["overall"]["acc@0.5"] == pytest.approx(40.0)
    assert prop["scenes_missing_proposals"] == 1 and "scenes_missing_proposals" not in free
    assert prop["answered"] == free["answered"] == 5
    empty = {S0: proposals[S0], S1: SceneProposals(np.zeros((0, 6)))}  # S1 present but empty: same misses
    res_empty = evaluate(preds, gt, tasks=["scanrefer"], config=BOTH, proposals=empty)["scanrefer"]["proposals"]
    assert res_empty["overall"] == prop["overall"] and res_empty["scenes_missing_proposals"] == 0


def test_multi3drefer_duplicate_snaps_count_once(gt):
    chair, table = gt.boxes[(S0, 1)], gt.boxes[(S0, 2)]
    proposals = {S0: SceneProposals(np.stack([chair, table])), S1: SceneProposals(np.zeros((0, 6)))}
    # query 14 targets chair and table; both predicted boxes sit on the chair -> one proposal, counted once
    preds = [BoxPrediction("multi3drefer", S0, "14", np.stack([_grow(chair, 0.9), _grow(chair, 1.2)]))]
    res = evaluate(preds, gt, tasks=["multi3drefer"], config=BOTH, proposals=proposals)["multi3drefer"]
    assert res["free_form"]["mt"]["f1@0.5"] == pytest.approx(100.0 * 2 * 1 / (2 + 2))  # one of two boxes matches
    assert res["proposals"]["mt"]["f1@0.5"] == pytest.approx(100.0 * 2 * 1 / (1 + 2))  # deduplicated
    # zero-target queries stay right with no boxes, a query of the empty-proposal scene predicts nothing
    assert res["proposals"]["zt_w_d"]["f1@0.5"] == 100.0 and res["proposals"]["st_wo_d"]["f1@0.5"] == 0.0


def test_proposals_protocol_needs_proposals(gt):
    with pytest.raises(ValueError, match="needs instance proposals"):
        evaluate([], gt, tasks=["scanrefer"], config=BOTH)
    with pytest.raises(ValueError, match="grounding_protocols"):
        EvalConfig(grounding_protocols=("proposals", "proposals"))
    with pytest.raises(ValueError, match="captioning_protocols"):
        EvalConfig(captioning_protocols=("mask3d",))
    assert EvalConfig(grounding_protocols=["proposals"]).grounding_protocols == ("proposals",)  # JSON lists


# ------------------------------------------------------------------------------------- Scan2Cap matching
UNIT = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])


def test_scan2cap_one_box_for_two_objects_and_two_boxes_for_one():
    gt_boxes = {("s", 1): UNIT, ("s", 2): UNIT + [1.0, 0, 0, 0, 0, 0], ("s", 3): UNIT + [9.0, 0, 0, 0, 0, 0]}
    keys = sorted(gt_boxes)
    # a box over objects 1 and 2, leaning to 2; two boxes on object 3 (the second one better)
    both = np.array([0.6, 0, 0, 2.0, 1.0, 1.0])
    assert box_iou(both, gt_boxes[("s", 2)]) > box_iou(both, gt_boxes[("s", 1)]) >= 0.25
    preds = {"s": CaptionedBoxes(np.stack([both, _grow(gt_boxes[("s", 3)], 1.3), gt_boxes[("s", 3)]]),
                                 ("two objects", "loose", "exact"))}  # fmt: skip
    got = assign_captions(keys, gt_boxes, preds, 0.25)
    assert got == {("s", 1): None, ("s", 2): "two objects", ("s", 3): "exact"}
    assert assign_captions(keys, gt_boxes, {"s": CaptionedBoxes(np.zeros((0, 6)), ())}, 0.25) == dict.fromkeys(keys)


def test_scan2cap_protocols_side_by_side(gt, ptb_scorer):
    keys = sorted(gt.scan2cap)
    exact = {s: [k for k in keys if k[0] == s] for s in (S0, S1)}
    preds = [CaptionPrediction("scan2cap", s, np.stack([gt.boxes[k] for k in ks]),
                               tuple(gt.scan2cap[k][0] for k in ks), "aligned", "gt_boxes")
             for s, ks in exact.items()]  # fmt: skip
    chair = gt.boxes[(S0, 1)]
    # proposals captioned: only S0's chair is found (twice), S1 has none
    preds.append(CaptionPrediction("scan2cap", S0, np.stack([chair, _grow(chair, 1.5)]),
                                   (gt.scan2cap[(S0, 1)][0], "a thing"), "aligned", "proposals"))  # fmt: skip
    res = evaluate(preds, gt, tasks=["scan2cap"], config=BOTH, scorer=ptb_scorer)["scan2cap"]
    assert res["gt_boxes"]["@0.5"]["matched"] == 4 and res["proposals"]["@0.5"]["matched"] == 1
    assert res["proposals"]["num_objects"] == res["gt_boxes"]["num_objects"] == 4
    assert res["proposals"]["@0.5"]["cider"] < res["gt_boxes"]["@0.5"]["cider"]
    unlabelled = [CaptionPrediction("scan2cap", S0, chair[None], ("x",))]
    with pytest.raises(ValueError, match="no 'protocol'"):
        evaluate(unlabelled, gt, tasks=["scan2cap"], config=BOTH, scorer=ptb_scorer)
    only = evaluate(unlabelled, gt, tasks=["scan2cap"], config=FAST, scorer=ptb_scorer)["scan2cap"]
    assert set(only) == {"gt_boxes"} and only["gt_boxes"]["@0.5"]["matched"] == 1


# ------------------------------------------------------------------------------------------------- readers
def test_vidllm_format_round_trip_with_corners(tmp_path):
    box = np.array([1.0, 2.0, 0.5, 0.6, 0.4, 1.0])
    props = {S0: SceneProposals(np.stack([box, box + 1]), np.array([0.2, 0.9]), ("chair", "table")),
             S1: SceneProposals(np.zeros((0, 6)))}  # fmt: skip
    uri = str(tmp_path / "props.json")
    write_proposals(uri, props)
    back = load_proposals(uri, "vidllm")
    assert set(back) == {S0, S1} and len(back[S1]) == 0
    np.testing.assert_allclose(back[S0].boxes, props[S0].boxes)
    assert back[S0].labels == ("chair", "table")
    top = back[S0].top(1)
    np.testing.assert_allclose(top.boxes, [box + 1]) and top.labels == ("table",)
    doc = json.loads((tmp_path / "props.json").read_text())
    doc["scenes"][S1] = {"boxes": box_corners(box[None]).tolist()}  # 8 corners
    (tmp_path / "corners.json").write_text(json.dumps(doc))
    np.testing.assert_allclose(load_proposals(str(tmp_path / "corners.json"))[S1].boxes, [box])


def test_video3dllm_and_chatscene_formats(tmp_path):
    import torch

    box = [1.0, 2.0, 0.5, 0.6, 0.4, 1.0]
    (tmp_path / "scannet_val_pred_box.json").write_text(json.dumps({f"scannet/{S0}": [box, box], S1: []}))
    v3d = load_proposals(str(tmp_path / "scannet_val_pred_box.json"), "video3dllm")
    assert len(v3d[S0]) == 2 and len(v3d[S1]) == 0 and v3d[S0].scores is None
    torch.save({S0: {"objects": ["chair"], "locs": torch.tensor([box])}},
               tmp_path / "scannet_mask3d_val_attributes.pt")  # fmt: skip
    cs = load_proposals(str(tmp_path / "scannet_mask3d_val_attributes.pt"), "chatscene")
    np.testing.assert_allclose(cs[S0].boxes, [box], rtol=1e-6) and cs[S0].labels == ("chair",)


def _scene_with_mesh(root, scene_id: str, vertices: np.ndarray, shift: np.ndarray) -> None:
    scene_dir = root / "scans" / scene_id
    scene_dir.mkdir(parents=True)
    write_ply(str(scene_dir / f"{scene_id}_vh_clean_2.ply"), vertices, np.zeros_like(vertices, np.uint8),
              np.zeros((0, 3), np.int32))  # fmt: skip
    align = np.eye(4)
    align[:3, 3] = shift
    write_scene_info(str(scene_dir / f"{scene_id}.txt"), align)


VERTS = np.array([[0, 0, 0], [1, 0, 0], [0, 2, 0], [0, 0, 3], [5, 5, 5]], dtype=np.float32)
SHIFT = np.array([10.0, 0.0, 0.0])


def test_mask_formats_build_boxes_from_the_aligned_mesh(tmp_path):
    from scipy import sparse

    _scene_with_mesh(tmp_path / "scannet", S0, VERTS, SHIFT)
    masks = np.array([[1, 1, 1, 1, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 0]])  # the last one is empty
    # ScanNet instance-benchmark layout (Mask3D's export)
    pred = tmp_path / "mask3d"
    (pred / "pred_mask").mkdir(parents=True)
    lines = []
    for i, m in enumerate(masks):
        (pred / "pred_mask" / f"{S0}_{i}.txt").write_text("\n".join(str(v) for v in m) + "\n")
        lines.append(f"pred_mask/{S0}_{i}.txt {3 + i} {0.9 - 0.1 * i}")
    (pred / f"{S0}.txt").write_text("\n".join(lines) + "\n")
    inst = load_proposals(str(pred), "scannet_instance", scans_root=str(tmp_path / "scannet"))[S0]
    np.testing.assert_allclose(inst.boxes, [[10.5, 1.0, 1.5, 1.0, 2.0, 3.0], [15.0, 5.0, 5.0, 0.0, 0.0, 0.0]])
    np.testing.assert_allclose(inst.scores, [0.9, 0.8]) and inst.labels == ("3", "4")
    # LEO / VG-LLM sparse masks
    leo = tmp_path / "mask"
    leo.mkdir()
    sparse.save_npz(leo / f"{S0}.mask.npz", sparse.csr_matrix(masks))
    boxes = load_proposals(str(leo), "leo_masks", scans_root=str(tmp_path / "scannet"))[S0].boxes
    np.testing.assert_allclose(boxes, inst.boxes)
    assert mask_boxes(masks, VERTS.astype(float))[1].tolist() == [0, 1]


def test_bad_proposal_files_name_the_file(tmp_path):
    missing = str(tmp_path / "nope.json")
    with pytest.raises(ProposalFormatError, match="nope.json: proposal file does not exist"):
        load_proposals(missing)
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ProposalFormatError, match="bad.json: not valid JSON"):
        load_proposals(str(bad), "video3dllm")
    bad.write_text(json.dumps({"scenes": {}}))
    with pytest.raises(ProposalFormatError, match="vidllm.proposals"):
        load_proposals(str(bad))
    bad.write_text(json.dumps({"format": "vidllm.proposals", "version": 1, "scenes": {S0: {"boxes": [[1, 2, 3]]}}}))
    with pytest.raises(ProposalFormatError, match=r"scene 'scene0000_00'.*\[N, 6\]"):
        load_proposals(str(bad))
    bad.write_text(json.dumps({"format": "vidllm.proposals", "version": 1,
                               "scenes": {S0: {"boxes": [[0, 0, 0, 1, 1, 1]], "scores": [1, 2]}}}))  # fmt: skip
    with pytest.raises(ProposalFormatError, match="scores"):
        load_proposals(str(bad))
    with pytest.raises(ValueError, match="needs scans_root"):
        load_proposals(str(tmp_path), "leo_masks")
    with pytest.raises(ValueError, match="must be one of"):
        load_proposals(str(bad), "mask3d")
    (tmp_path / "torch.pt").write_bytes(b"not a torch file")
    with pytest.raises(ProposalFormatError, match="torch.pt: not a readable torch file"):
        load_proposals(str(tmp_path / "torch.pt"), "chatscene")
    # a mask that does not cover the mesh, and a scene whose mesh is absent
    _scene_with_mesh(tmp_path / "scannet", S0, VERTS, SHIFT)
    pred = tmp_path / "mask3d"
    (pred / "pred_mask").mkdir(parents=True)  # masks live in a subfolder (ScanNet's rule)
    (pred / "pred_mask" / "m.txt").write_text("1\n0\n")
    (pred / f"{S0}.txt").write_text("pred_mask/m.txt 3 0.5\n")
    with pytest.raises(ProposalFormatError, match="m.txt: 2 values for the 5 vertices"):
        load_proposals(str(pred), "scannet_instance", scans_root=str(tmp_path / "scannet"))
    (pred / f"{S1}.txt").write_text("pred_mask/m.txt 3 0.5\n")
    (pred / f"{S0}.txt").unlink()
    with pytest.raises(ProposalFormatError, match="scene0001_00_vh_clean_2.ply does not exist"):
        load_proposals(str(pred), "scannet_instance", scans_root=str(tmp_path / "scannet"))
    with pytest.raises(ValueError, match=r"\[N, 8, 3\]"):
        boxes_from_any([[1.0, 2.0]], "x")
