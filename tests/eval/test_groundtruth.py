"""Ground truth built from the benchmark readers of ``pipelines.scenes.annotations`` on tiny published-format files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.eval.groundtruth import (
    GroundTruth,
    QAItem,
    qa_items,
    refer_items,
    scan2cap_references,
)
from pipelines.eval.harness import EvalConfig, evaluate
from pipelines.eval.predictions import AnswerPrediction, BoxPrediction
from pipelines.scenes.annotations import (
    read_multi3drefer,
    read_scan2cap,
    read_scanqa,
    read_scanrefer,
    read_sqa3d,
)
from pipelines.scenes.types import ObjectBox, SceneMetadata
from tests.eval.builders import boxes_from_metadata


def _dump(path, obj) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


@pytest.fixture()
def files(tmp_path):
    scanqa = _dump(
        tmp_path / "ScanQA_v1.0_val.json",
        [
            {
                "question_id": "val-scene0011-0",
                "scene_id": "scene0011_00",
                "question": "What is under the desk?",
                "answers": ["black chair", "chair"],
                "object_ids": [3],
                "object_names": ["chair"],
            },
        ],
    )
    questions = _dump(
        tmp_path / "q.json",
        {
            "questions": [
                {
                    "question_id": 220602000001,
                    "scene_id": "scene0011_00",
                    "situation": "I sit on the bed.",
                    "alternative_situation": [],
                    "question": "How many chairs are in front of me?",
                },
            ]
        },
    )
    annotations = _dump(
        tmp_path / "a.json",
        {
            "annotations": [
                {
                    "question_id": 220602000001,
                    "scene_id": "scene0011_00",
                    "answers": [{"answer": "2", "answer_id": 1}],
                },
            ]
        },
    )
    scanrefer = _dump(
        tmp_path / "ScanRefer_filtered_val.json",
        [
            {
                "scene_id": "scene0011_00",
                "object_id": "3",
                "object_name": "chair",
                "ann_id": "0",
                "description": "a black chair under the desk.",
                "token": ["a", "black", "chair", "under", "the", "desk", "."],
                "eval_type": "multiple",
            },
            {
                "scene_id": "scene0011_00",
                "object_id": "3",
                "object_name": "chair",
                "ann_id": "1",
                "description": "the chair at the desk.",
                "token": ["the", "chair", "at", "the", "desk", "."],
                "eval_type": "multiple",
            },
        ],
    )
    m3d = _dump(
        tmp_path / "multi3drefer_val.json",
        [
            {
                "scene_id": "scene0011_00",
                "object_ids": [3],
                "object_name": "chair",
                "ann_id": 7,
                "description": "the chair.",
                "eval_type": "st_w_d",
            },
            {
                "scene_id": "scene0011_00",
                "object_ids": [],
                "object_name": "piano",
                "ann_id": 8,
                "description": "the piano.",
                "eval_type": "zt_w_d",
            },
        ],
    )
    return scanqa, questions, annotations, scanrefer, m3d  # fmt: skip


def test_reader_records_feed_the_harness(files):
    scanqa, questions, annotations, scanrefer, m3d = files
    box = np.array([1.0, 2.0, 0.5, 0.6, 0.6, 1.0])
    meta = SceneMetadata("scene0011_00", objects=(ObjectBox(3, "chair", box[:3], box[3:]),))
    gt = GroundTruth(
        scanqa=qa_items(read_scanqa(scanqa)),
        sqa3d=qa_items(read_sqa3d(questions, annotations)),
        scanrefer=refer_items(read_scanrefer(scanrefer)),
        multi3drefer=refer_items(read_multi3drefer(m3d)),
        scan2cap=scan2cap_references(read_scan2cap(scanrefer)),
        boxes=boxes_from_metadata([meta]),
    )
    assert gt.sqa3d[0] == QAItem(
        "220602000001", "scene0011_00", ("2",), "How many chairs are in front of me?", family="counting"
    )
    assert gt.scan2cap == scan2cap_references(
        read_scanrefer(scanrefer)
    )  # grouped here or by the reader: same
    assert gt.scan2cap[("scene0011_00", 3)] == ("a black chair under the desk.", "the chair at the desk.")
    assert gt.multi3drefer[1].object_ids == () and gt.multi3drefer[0].ann_id == "7"
    preds = [
        AnswerPrediction("scanqa", "scene0011_00", "val-scene0011-0", "chair"),
        AnswerPrediction("sqa3d", "scene0011_00", "220602000001", "two"),
        BoxPrediction("scanrefer", "scene0011_00", "0", box[None], None, 3),
        BoxPrediction("multi3drefer", "scene0011_00", "7", box[None]),
    ]
    res = evaluate(
        preds, gt, tasks=["scanqa", "sqa3d", "scanrefer", "multi3drefer"], config=EvalConfig(meteor=False)
    )
    assert res["scanqa"]["em"] == 100.0
    assert res["sqa3d"]["em"] == 100.0  # "two" == clean_answer("2")
    assert res["scanrefer"]["free_form"]["multiple"]["acc@0.5"] == 50.0  # ann 1 has no prediction
    assert res["multi3drefer"]["free_form"]["overall"]["f1@0.5"] == 100.0


def test_test_split_without_answers_is_rejected(tmp_path):
    uri = _dump(tmp_path / "ScanQA_v1.0_test_wo_obj.json",
                [{"question_id": "test-scene0707-0", "scene_id": "scene0707_00", "question": "What?"}])  # fmt: skip
    with pytest.raises(ValueError, match="no ground-truth answer"):
        qa_items(read_scanqa(uri, with_answers=False))
