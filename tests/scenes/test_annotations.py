"""Benchmark annotation readers on generated files: facts derived from the scenes hold; bad files fail clearly."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from pipelines.ingest.synthetic import SyntheticConfig, generate
from pipelines.ingest.synthetic.language import number_word, tokenize
from pipelines.ingest.synthetic.room import CATALOGUE, PALETTE
from pipelines.scenes.annotations import (
    MULTI3DREFER_EVAL_TYPES,
    benchmark_paths,
    read_multi3drefer,
    read_scan2cap,
    read_scanqa,
    read_scanrefer,
    read_scene_list,
    read_sqa3d,
)
from pipelines.scenes.errors import AnnotationFormatError


@pytest.fixture(scope="module")
def annotated(tmp_path_factory):
    root = tmp_path_factory.mktemp("annotated")
    config = SyntheticConfig(
        out=str(root), num_scenes=4, num_frames=4, layouts=("sens",), num_invalid_frames=0
    )
    specs = generate(config, log=lambda _msg: None)
    rooms = {s.scene_id: s.room for s in specs}
    return str(root / "annotations"), rooms, config


def _objects(rooms, scene_id):
    return {o.object_id: o for o in rooms[scene_id].furniture}


def test_split_lists_partition_the_scenes(annotated):
    ann, rooms, config = annotated
    train = read_scene_list(benchmark_paths(ann, "train")["scene_list"])
    val = read_scene_list(benchmark_paths(ann, "val")["scene_list"])
    assert val == ["scene0001_00"] and sorted(train + val) == sorted(rooms)
    for split, scenes in (("train", train), ("val", val)):
        assert {r.scene_id for r in read_scanqa(benchmark_paths(ann, split)["scanqa"])} == set(scenes)


def test_scanqa_answers_are_true(annotated):
    ann, rooms, _ = annotated
    kinds = Counter()
    for split in ("train", "val"):
        for r in read_scanqa(benchmark_paths(ann, split)["scanqa"]):
            objs = _objects(rooms, r.scene_id)
            assert r.question_id.startswith(f"{split}-{r.scene_id[:9]}-")
            assert r.object_names == tuple(objs[i].label for i in r.object_ids)
            counts = Counter(o.label for o in objs.values())
            if r.question_type == "counting":
                label = r.object_names[0]
                assert r.answers == (number_word(counts[label]),) and len(r.object_ids) == counts[label]
            elif r.question_type == "color":
                assert r.answers == (objs[r.object_ids[0]].color_name,)
            elif r.question_type == "existence":
                label = r.question[len("Is there a ") : -len(" in the room?")]
                assert r.answers == (("yes",) if counts[label] else ("no",))
            elif r.question_type == "size":
                a, b = (objs[i] for i in r.object_ids)
                assert a.label == b.label and r.answers == ((a if a.volume > b.volume else b).color_name,)
            else:
                assert r.question_type == "relative_position" and r.question.startswith("Which is closer to")
                assert len(r.object_ids) == 3
            kinds[r.question_type] += 1
    assert set(kinds) == {"counting", "color", "existence", "relative_position", "size"}


def test_sqa3d_join_and_situated_answers(annotated):
    ann, rooms, _ = annotated
    paths = benchmark_paths(ann, "train")
    records = read_sqa3d(paths["sqa3d_questions"], paths["sqa3d_annotations"])
    assert records and all(len(r.answers) == 1 for r in records)
    assert len({r.question_id for r in records}) == len(records)
    sides = 0
    for r in records:
        objs = rooms[r.scene_id].furniture
        yaw = 2.0 * np.arctan2(r.rotation[2], r.rotation[3])
        facing = np.array([np.cos(yaw), np.sin(yaw)])
        agent = np.array(r.position[:2])
        if r.question.endswith("in front of me?"):
            label = r.question[len("What color is the ") : -len(" in front of me?")]
            ahead = min(
                (o for o in objs if o.label == label), key=lambda o: np.linalg.norm(o.center[:2] - agent)
            )
            assert r.answers == (ahead.color_name,)
            assert float((ahead.center[:2] - agent) @ facing) > 0
        elif "on my left or on my right" in r.question:
            phrase = r.question[len("Is the ") : -len(" on my left or on my right?")]
            target = [o for o in objs if o.label == phrase or f"{o.color_name} {o.label}" == phrase]
            assert len(target) == 1
            lateral = float((target[0].center[:2] - agent) @ np.array([-facing[1], facing[0]]))
            assert r.answers == ("left" if lateral > 0 else "right",)
            sides += 1
    assert sides > 0


def test_scanrefer_unique_multiple_and_scan2cap_grouping(annotated):
    ann, rooms, config = annotated
    uri = benchmark_paths(ann, "train")["scanrefer"]
    records = read_scanrefer(uri)
    for r in records:
        objs = _objects(rooms, r.scene_id)
        obj = objs[int(r.object_id)]
        assert r.object_name == obj.label and obj.color_name in r.description.split(". ")[0]
        n_same = sum(o.label == obj.label for o in objs.values())
        assert r.eval_type == ("unique" if n_same == 1 else "multiple")
        assert list(r.token) == tokenize(r.description)
    assert {r.eval_type for r in records} == {"unique", "multiple"}
    captions = read_scan2cap(uri)
    assert len(captions) == len(records) // config.descriptions_per_object
    assert all(len(c.captions) == config.descriptions_per_object for c in captions)


def test_multi3drefer_targets_match_the_scene(annotated):
    ann, rooms, _ = annotated
    seen = set()
    for split in ("train", "val"):
        for r in read_multi3drefer(benchmark_paths(ann, split)["multi3drefer"]):
            objs = _objects(rooms, r.scene_id)
            same = [o for o in objs.values() if o.label == r.object_name]
            seen.add(r.eval_type)
            if r.eval_type == "zt_wo_d":
                assert r.object_ids == () and not same, "zero-target queries name absent classes"
            elif r.eval_type == "zt_w_d":
                colour = r.description.split()[1]
                assert r.object_ids == () and same and colour not in {o.color_name for o in same}
            elif r.eval_type == "mt":
                assert sorted(r.object_ids) == sorted(o.object_id for o in same) and len(same) >= 2
            else:
                assert len(r.object_ids) == 1 and objs[r.object_ids[0]].label == r.object_name
                assert (len(same) == 1) == (r.eval_type == "st_wo_d")
    assert seen == set(MULTI3DREFER_EVAL_TYPES)


def test_colour_and_class_vocabularies(annotated):
    ann, _, _ = annotated
    labels = {c.label for c in CATALOGUE}
    for r in read_scanrefer(benchmark_paths(ann, "val")["scanrefer"]):
        assert r.object_name in labels and any(c in r.description for c in PALETTE)


# --- bad files ------------------------------------------------------------------------------------------------

GOOD = {
    "scanqa": {
        "question_id": "val-scene0001-0", "scene_id": "scene0001_00", "question": "How many chairs?",
        "answers": ["two"], "object_ids": [0, 1], "object_names": ["chair", "chair"],
    },
    "scanrefer": {
        "scene_id": "scene0001_00", "object_id": "3", "object_name": "bed", "ann_id": "0",
        "description": "a red bed.", "token": ["a", "red", "bed", "."],
    },
    "multi3drefer": {
        "scene_id": "scene0001_00", "object_ids": [1], "object_name": "bed", "ann_id": 0,
        "description": "the bed.", "eval_type": "st_wo_d",
    },
}  # fmt: skip
READERS = {"scanqa": read_scanqa, "scanrefer": read_scanrefer, "multi3drefer": read_multi3drefer}


@pytest.mark.parametrize("kind", sorted(GOOD))
@pytest.mark.parametrize(
    "mutation, field",
    [("unknown", "object_id_extra"), ("missing", "scene_id"), ("wrong_type", "object_name_or_question")],
)
def test_bad_records_name_file_record_and_field(tmp_path, kind, mutation, field):
    record = dict(GOOD[kind])
    if mutation == "unknown":
        record[field] = 1
    elif mutation == "missing":
        del record[field]
    else:
        field = "question" if kind == "scanqa" else "object_name"
        record[field] = 7
    uri = tmp_path / f"{kind}.json"
    uri.write_text(json.dumps([GOOD[kind], record]))
    with pytest.raises(AnnotationFormatError) as err:
        READERS[kind](str(uri))
    message = str(err.value)
    assert str(uri) in message and "record 1" in message and repr(field) in message


def test_scanqa_docs_field_name_is_rejected_and_test_files_need_no_answers(tmp_path):
    uri = tmp_path / "ScanQA_v1.0_val.json"
    bad = {k: v for k, v in GOOD["scanqa"].items() if k != "object_ids"} | {"object_id": [0, 1]}
    uri.write_text(json.dumps([bad]))
    with pytest.raises(AnnotationFormatError, match="unknown field 'object_id'"):
        read_scanqa(str(uri))
    test_uri = tmp_path / "ScanQA_v1.0_test_wo_obj.json"
    test_uri.write_text(
        json.dumps([{"question_id": "test-scene0707-0", "scene_id": "scene0707_00", "question": "q?"}])
    )
    (rec,) = read_scanqa(str(test_uri), with_answers=False)
    assert rec.answers == () and rec.object_ids == ()
    with pytest.raises(AnnotationFormatError, match="missing required field 'answers'"):
        read_scanqa(str(test_uri))


def test_sqa3d_mismatches_and_bad_json(tmp_path):
    q = {
        "question_id": 5,
        "scene_id": "scene0001_00",
        "situation": "s.",
        "alternative_situation": [],
        "question": "q?",
    }
    a = {"question_id": 6, "scene_id": "scene0001_00", "answers": [{"answer": "two"}]}
    qu, an = tmp_path / "q.json", tmp_path / "a.json"
    qu.write_text(json.dumps({"questions": [q]}))
    an.write_text(json.dumps({"annotations": [a]}))
    with pytest.raises(AnnotationFormatError, match="no annotation for question_id 5"):
        read_sqa3d(str(qu), str(an))
    an.write_text(json.dumps({"annotations": [a | {"question_id": 5, "answers": [{"text": "two"}]}]}))
    with pytest.raises(AnnotationFormatError, match="unknown field 'text'"):
        read_sqa3d(str(qu), str(an))
    an.write_text(json.dumps({"annotations": [a | {"question_id": 5}]}))
    (rec,) = read_sqa3d(str(qu), str(an))
    assert rec.answers == ("two",) and rec.position is None
    an.write_text("{not json")
    with pytest.raises(AnnotationFormatError, match="not valid JSON"):
        read_sqa3d(str(qu), str(an))


def test_multi3drefer_target_count_must_match_eval_type(tmp_path):
    uri = tmp_path / "m.json"
    uri.write_text(json.dumps([GOOD["multi3drefer"] | {"eval_type": "mt"}]))
    with pytest.raises(AnnotationFormatError, match="inconsistent with mt"):
        read_multi3drefer(str(uri))
