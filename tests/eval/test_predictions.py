"""The JSON-lines prediction format: typed loading, round trip, and clear errors on bad records."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.eval.predictions import (
    AnswerPrediction,
    BoxPrediction,
    CaptionPrediction,
    PredictionFormatError,
    ReconstructionPrediction,
    load_predictions,
    parse_record,
    write_predictions,
)

BOX = [1.0, 2.0, 0.5, 0.4, 0.6, 0.8]


def _write_lines(path, records) -> str:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n")
    return str(path)


def test_load_every_task(tmp_path):
    np.save(tmp_path / "depth.npy", np.ones((2, 4, 5), np.float32))
    np.save(tmp_path / "poses.npy", np.tile(np.eye(4), (2, 1, 1)))
    uri = _write_lines(
        tmp_path / "preds.jsonl",
        [
            {"task": "scanqa", "scene_id": "scene0011_00", "question_id": "val-scene0011-0", "answer": "chair"},
            {"task": "sqa3d", "scene_id": "scene0011_00", "question_id": 220602000000, "answer": "two"},
            {"task": "scanrefer", "scene_id": "scene0011_00", "object_id": "5", "ann_id": 0,
             "boxes": [BOX, BOX], "scores": [0.1, 0.9], "frame": "first_camera"},
            {"task": "multi3drefer", "scene_id": "scene0011_00", "ann_id": "3", "boxes": []},
            {"task": "scan2cap", "scene_id": "scene0011_00", "boxes": [BOX], "captions": ["a chair"]},
            "",
            {"task": "reconstruction", "scene_id": "scene0011_00", "depth": "depth.npy", "poses": "poses.npy"},
        ],
    )  # fmt: skip
    preds = load_predictions(uri)
    assert [type(p) for p in preds] == [
        AnswerPrediction, AnswerPrediction, BoxPrediction, BoxPrediction, CaptionPrediction, ReconstructionPrediction
    ]  # fmt: skip
    assert preds[1].question_id == "220602000000"
    ref = preds[2]
    assert ref.object_id == 5 and ref.ann_id == "0" and ref.frame == "first_camera"
    assert ref.boxes.shape == (2, 6) and ref.top1().shape == (1, 6)
    assert preds[3].boxes.shape == (0, 6) and preds[3].top1().shape == (0, 6)
    assert preds[4].captions == ("a chair",)
    assert preds[5].depth.shape == (2, 4, 5) and preds[5].poses.shape == (2, 4, 4)


def test_round_trip(tmp_path):
    preds = [
        AnswerPrediction("scanqa", "s", "q1", "brown chair"),
        BoxPrediction("scanrefer", "s", "0", np.array([BOX]), np.array([0.5]), 3, "aligned"),
        BoxPrediction("multi3drefer", "s", "1", np.zeros((0, 6))),
        CaptionPrediction("scan2cap", "s", np.array([BOX]), ("a chair",)),
        CaptionPrediction("scan2cap", "s", np.array([BOX]), ("a chair",), "aligned", "proposals"),
    ]
    uri = str(tmp_path / "out" / "p.jsonl")
    write_predictions(uri, preds)
    back = load_predictions(uri)
    assert back[0] == preds[0]
    np.testing.assert_allclose(back[1].boxes, preds[1].boxes)
    assert back[1].object_id == 3 and back[1].scores.tolist() == [0.5]
    assert back[2].boxes.shape == (0, 6)
    assert back[3].captions == ("a chair",) and back[3].protocol is None and back[4].protocol == "proposals"


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"task": "vqa", "scene_id": "s"}, "field 'task' must be one of"),
        ({"task": "scanqa", "scene_id": "s", "answer": "x"}, r"misses field\(s\) \['question_id'\]"),
        (
            {"task": "scanqa", "scene_id": "s", "question_id": "q", "answer": "x", "answr": "y"},
            "unknown field",
        ),
        ({"task": "scanqa", "scene_id": "s", "question_id": "q", "answer": 3}, "'answer' must be a string"),
        ({"task": "scanqa", "scene_id": "s", "question_id": True, "answer": "x"}, "string or integer"),
        ({"task": "multi3drefer", "scene_id": "s", "ann_id": "1", "boxes": [[1, 2, 3]]}, r"\[N, 6\]"),
        (
            {"task": "multi3drefer", "scene_id": "s", "ann_id": "1", "boxes": [BOX], "scores": [1, 2]},
            "2 entries",
        ),
        (
            {"task": "multi3drefer", "scene_id": "s", "ann_id": "1", "boxes": [BOX], "frame": "world"},
            "'frame'",
        ),
        ({"task": "scanrefer", "scene_id": "s", "ann_id": "1", "object_id": "x", "boxes": [BOX]}, "integer"),
        ({"task": "scan2cap", "scene_id": "s", "boxes": [BOX], "captions": []}, "0 entries for 1 boxes"),
        (
            {"task": "scan2cap", "scene_id": "s", "boxes": [BOX], "captions": ["x"], "protocol": "mask3d"},
            "'protocol' must be one of",
        ),
        ({"task": "reconstruction", "scene_id": "s"}, "needs 'depth' and/or 'poses'"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_bad_records_name_the_problem(record, message):
    with pytest.raises(PredictionFormatError, match=message) as info:
        parse_record(record, where="preds.jsonl:7")
    assert str(info.value).startswith("preds.jsonl:7: ")


def test_bad_files(tmp_path):
    uri = _write_lines(tmp_path / "p.jsonl", [{"task": "scanqa", "scene_id": "s", "question_id": "q", "answer": "a"},
                                               "{not json"])  # fmt: skip
    with pytest.raises(PredictionFormatError, match=r"p\.jsonl:2: not valid JSON"):
        load_predictions(uri)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_predictions(str(tmp_path / "missing.jsonl"))
    uri = _write_lines(
        tmp_path / "r.jsonl", [{"task": "reconstruction", "scene_id": "s", "depth": "nope.npy"}]
    )
    with pytest.raises(PredictionFormatError, match="nope.npy does not exist"):
        load_predictions(uri)
    (tmp_path / "empty.jsonl").write_text("")
    assert load_predictions(str(tmp_path / "empty.jsonl")) == []
