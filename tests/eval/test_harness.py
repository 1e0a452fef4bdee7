"""The harness discriminates: oracle predictions score perfectly, empty and constant ones score zero or chance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.eval.groundtruth import GroundTruth
from pipelines.eval.harness import EvalConfig, evaluate
from pipelines.eval.predictions import (
    AnswerPrediction,
    BoxPrediction,
    CaptionPrediction,
    load_predictions,
    write_predictions,
)
from tests.eval.builders import FAST, S0, S1, make_ground_truth, oracle


@pytest.fixture(scope="module")
def gt() -> GroundTruth:
    return make_ground_truth()


def test_oracle_scores_perfectly(gt, ptb_scorer):
    res = evaluate(oracle(gt), gt, config=FAST, scorer=ptb_scorer)
    json.dumps(res)  # JSON-serialisable
    assert res["scanqa"]["em"] == 100.0 and res["scanqa"]["em_refined"] == 100.0
    assert res["scanqa"]["bleu1"] == pytest.approx(100.0, abs=1e-4)
    assert res["scanqa"]["rouge_l"] == pytest.approx(100.0)
    assert res["sqa3d"]["em"] == 100.0 and res["sqa3d"]["by_type"]["how"]["count"] == 1
    for split in ("overall", "unique", "multiple"):
        assert res["scanrefer"]["free_form"][split]["acc@0.25"] == 100.0 and res["scanrefer"]["free_form"][split]["acc@0.5"] == 100.0
    assert res["scanrefer"]["free_form"]["mean_iou"] == pytest.approx(1.0)
    for etype in ("overall", "zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt"):
        assert (
            res["multi3drefer"]["free_form"][etype]["f1@0.25"] == 100.0 and res["multi3drefer"]["free_form"][etype]["f1@0.5"] == 100.0
        )
    for k in ("@0.25", "@0.5"):
        cap = res["scan2cap"]["gt_boxes"][k]
        assert cap["matched"] == 4
        assert cap["bleu4"] == pytest.approx(100.0, abs=1e-4)
        assert cap["rouge_l"] == pytest.approx(100.0)
        assert cap["cider"] > 100.0  # CIDEr-D x 100 of exact captions; its ceiling depends on the corpus idf
    assert res["scan2cap"]["gt_boxes"]["num_objects"] == 4
    rec = res["reconstruction"]
    assert rec["depth"]["abs_rel"] == 0.0 and rec["depth"]["delta1"] == 100.0
    assert rec["pose"] == {"rra@30": 100.0, "rta@30": 100.0, "auc@30": 100.0}
    assert rec["num_depth_scored"] == 1 and rec["num_pose_scored"] == 1


def test_empty_predictions_score_zero_or_chance(gt, ptb_scorer):
    res = evaluate([], gt, config=FAST, scorer=ptb_scorer)
    for task in ("scanqa", "sqa3d"):
        assert res[task]["em"] == 0.0 and res[task]["em_refined"] == 0.0 and res[task]["answered"] == 0
    assert res["scanqa"]["cider"] == 0.0 and res["scanqa"]["bleu1"] < 1e-6 and res["scanqa"]["rouge_l"] == 0.0
    assert res["scanrefer"]["free_form"]["overall"]["acc@0.25"] == 0.0
    # the two zero-target queries of five are right by predicting nothing: chance level 40
    assert res["multi3drefer"]["free_form"]["overall"]["f1@0.25"] == pytest.approx(40.0)
    assert res["multi3drefer"]["free_form"]["zt_w_d"]["f1@0.5"] == 100.0 and res["multi3drefer"]["free_form"]["mt"]["f1@0.5"] == 0.0
    for k in ("@0.25", "@0.5"):
        assert res["scan2cap"]["gt_boxes"][k]["matched"] == 0
        assert res["scan2cap"]["gt_boxes"][k]["cider"] == 0.0 and res["scan2cap"]["gt_boxes"][k]["bleu4"] < 1e-3
    assert res["reconstruction"]["num_depth_scored"] == 0 and res["reconstruction"]["depth"] == {}


def test_constant_predictions_score_chance(gt, ptb_scorer):
    far = np.array([[50.0, 50.0, 50.0, 1.0, 1.0, 1.0]])
    huge = np.array([[2.0, 1.0, 1.0, 20.0, 20.0, 20.0]])  # covers every object, IoU far below 0.25
    preds: list = [AnswerPrediction("scanqa", q.scene_id, q.question_id, "chair") for q in gt.scanqa]
    preds += [AnswerPrediction("sqa3d", q.scene_id, q.question_id, "2") for q in gt.sqa3d]
    preds += [
        BoxPrediction("scanrefer", r.scene_id, r.ann_id, far, None, r.object_ids[0]) for r in gt.scanrefer
    ]
    preds += [BoxPrediction("multi3drefer", r.scene_id, r.ann_id, huge) for r in gt.multi3drefer]
    preds += [CaptionPrediction("scan2cap", s, huge, ("a chair",)) for s in (S0, S1)]
    res = evaluate(preds, gt, config=FAST, scorer=ptb_scorer)
    assert res["scanqa"]["em"] == pytest.approx(100.0 / 3.0)  # "chair" is one of question 1's answers
    assert res["sqa3d"]["em"] == pytest.approx(100.0 / 3.0)  # "2" -> "two" after normalisation
    assert res["scanrefer"]["free_form"]["overall"]["acc@0.25"] == 0.0
    assert res["multi3drefer"]["free_form"]["overall"]["f1@0.25"] == 0.0  # boxes on zero-target queries are wrong too
    assert res["scan2cap"]["gt_boxes"]["@0.25"]["matched"] == 0 and res["scan2cap"]["gt_boxes"]["@0.25"]["cider"] == 0.0
    oracle_res = evaluate(oracle(gt), gt, config=FAST, scorer=ptb_scorer)
    assert res["scanqa"]["cider"] < oracle_res["scanqa"]["cider"]


def test_partial_credit_and_thresholds(gt, ptb_scorer):
    box = gt.boxes[(S0, 1)].copy()
    shifted = box + np.array([box[3] / 2, 0, 0, 0, 0, 0])  # half overlap along x: IoU 1/3
    preds = [BoxPrediction("scanrefer", S0, "0", shifted[None], None, 1),
             BoxPrediction("scanrefer", S0, "1", box[None], None, 1)]  # fmt: skip
    res = evaluate(preds, gt, tasks=["scanrefer"], config=FAST)
    assert set(res) == {"config", "scanrefer"}
    assert res["scanrefer"]["free_form"]["unique"]["acc@0.25"] == pytest.approx(200.0 / 3.0)
    assert res["scanrefer"]["free_form"]["unique"]["acc@0.5"] == pytest.approx(100.0 / 3.0)
    assert res["scanrefer"]["free_form"]["overall"]["acc@0.25"] == pytest.approx(40.0)


def test_harness_rejects_mismatched_predictions(gt, ptb_scorer):
    with pytest.raises(ValueError, match="not in the ground truth"):
        evaluate([AnswerPrediction("sqa3d", S0, "999", "two")], gt, tasks=["sqa3d"], config=FAST)
    dup = [AnswerPrediction("sqa3d", S0, "1", "two")] * 2
    with pytest.raises(ValueError, match="two predictions"):
        evaluate(dup, gt, tasks=["sqa3d"], config=FAST)
    no_transform = GroundTruth(scanrefer=gt.scanrefer, boxes=gt.boxes)
    pred = BoxPrediction("scanrefer", S0, "0", gt.boxes[(S0, 1)][None], None, 1, "first_camera")
    with pytest.raises(ValueError, match="no first_camera_to_aligned"):
        evaluate([pred], no_transform, config=FAST)
    with pytest.raises(ValueError, match="unknown task"):
        evaluate([], gt, tasks=["vqa"], config=FAST)
    with pytest.raises(ValueError, match="does not match the config"):
        evaluate([], gt, tasks=["scanqa"], config=EvalConfig(caption_tokenizer="whitespace", meteor=False),
                 scorer=ptb_scorer)  # fmt: skip
    with pytest.raises(ValueError, match="caption_tokenizer"):
        EvalConfig(caption_tokenizer="spacy")
    with pytest.raises(ValueError, match="iou_thresholds"):
        EvalConfig(iou_thresholds=(0.0,))


def test_prediction_file_round_trip_through_harness(gt, ptb_scorer, tmp_path):
    preds = [p for p in oracle(gt) if p.task != "reconstruction"]
    uri = str(tmp_path / "preds.jsonl")
    write_predictions(uri, preds)
    res = evaluate(load_predictions(uri), gt, tasks=["scanqa", "scanrefer", "multi3drefer", "scan2cap"],
                   config=FAST, scorer=ptb_scorer)  # fmt: skip
    assert res["scanqa"]["em"] == 100.0
    assert res["scanrefer"]["free_form"]["overall"]["acc@0.5"] == 100.0
    assert res["multi3drefer"]["free_form"]["overall"]["f1@0.5"] == 100.0
    assert res["scan2cap"]["gt_boxes"]["@0.5"]["matched"] == 4


@pytest.mark.slow
def test_oracle_meteor_with_default_config(gt, meteor_scorer):
    res = evaluate(oracle(gt), gt, tasks=["scanqa", "scan2cap"], scorer=meteor_scorer)
    assert res["config"]["meteor"] is True and res["config"]["caption_tokenizer"] == "ptb"
    assert res["scanqa"]["meteor"] == pytest.approx(100.0, abs=1e-6)
    assert res["scan2cap"]["gt_boxes"]["@0.5"]["meteor"] == pytest.approx(100.0, abs=1e-6)
    empty = evaluate([], gt, tasks=["scan2cap"], scorer=meteor_scorer)
    assert empty["scan2cap"]["gt_boxes"]["@0.5"]["meteor"] < 30.0


def test_harness_rejects_repeated_ground_truth_keys(gt):
    twice = GroundTruth(sqa3d=gt.sqa3d + gt.sqa3d[:1])
    with pytest.raises(ValueError, match="ground truth repeats keys"):
        evaluate([], twice, tasks=["sqa3d"], config=FAST)
