"""Readers of the 3D-language benchmark annotation files, with the published field names.

* ScanQA ``ScanQA_v1.0_{split}.json``: a list of ``{question_id, scene_id, question, answers, object_ids,
  object_names}``. The test files carry no answers (``_test_wo_obj`` neither objects): read them with
  ``with_answers=False`` and get empty tuples.
* SQA3D ``v1_balanced_questions_{split}_scannetv2.json`` (``{"questions": [...]}``) and
  ``v1_balanced_sqa_annotations_{split}_scannetv2.json`` (``{"annotations": [...]}``), joined by ``question_id``.
* ScanRefer ``ScanRefer_filtered_{split}.json``: ``{scene_id, object_id (str), object_name, ann_id (str),
  description, token}``, optionally with M3DRef-CLIP's ``eval_type`` (unique/multiple).
* Scan2Cap: no file of its own; ScanRefer records grouped by ``(scene_id, object_id, object_name)``.
* Multi3DRefer ``multi3drefer_{split}.json``: ``{scene_id, object_ids, object_name, ann_id, description, eval_type}``
  plus the optional attribute flags ``spatial``/``color``/``texture``/``shape``.

Validation is strict: an unknown field, a missing required field or a value of the wrong type raises
:class:`~pipelines.scenes.errors.AnnotationFormatError` naming the file, the record index and the field, so that a
renamed field (ScanQA's docs print ``object_id``; the files use ``object_ids``) can never be silently dropped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pipelines import storage
from pipelines.scenes.errors import AnnotationFormatError, MissingFileError

MULTI3DREFER_EVAL_TYPES = ("zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt")
SCANREFER_EVAL_TYPES = ("unique", "multiple")


@dataclass(frozen=True)
class ScanQARecord:
    """One ScanQA question; ``answers``/``object_ids``/``object_names`` are empty for test files.

    ``question_type`` is optional and not part of the published files: data sets that group their questions into
    families (the synthetic generator does) name the family there, so that results can be broken down by it.
    """

    question_id: str
    scene_id: str
    question: str
    answers: tuple[str, ...]
    object_ids: tuple[int, ...]
    object_names: tuple[str, ...]
    question_type: str | None = None


@dataclass(frozen=True)
class SQA3DRecord:
    """One SQA3D question joined with its annotation. The model prompt is ``situation + " " + question``.

    Attributes:
        position: agent position ``(x, y, z)`` from the annotation, or None when absent.
        rotation: agent orientation quaternion ``(x, y, z, w)``, or None when absent.
    """

    question_id: int
    scene_id: str
    situation: str
    alternative_situation: tuple[str, ...]
    question: str
    answers: tuple[str, ...]
    question_type: str | None = None
    answer_type: str | None = None
    position: tuple[float, float, float] | None = None
    rotation: tuple[float, float, float, float] | None = None


@dataclass(frozen=True)
class ScanReferRecord:
    """One ScanRefer description; ``object_id`` and ``ann_id`` are strings as in the published files."""

    scene_id: str
    object_id: str
    object_name: str
    ann_id: str
    description: str
    token: tuple[str, ...]
    eval_type: str | None = None


@dataclass(frozen=True)
class Scan2CapRecord:
    """All reference captions of one object (Scan2Cap reuses ScanRefer, grouped per object)."""

    scene_id: str
    object_id: str
    object_name: str
    captions: tuple[str, ...]


@dataclass(frozen=True)
class Multi3DReferRecord:
    """One Multi3DRefer query; ``object_ids`` is empty for zero-target queries (``zt_*``)."""

    scene_id: str
    object_ids: tuple[int, ...]
    object_name: str
    ann_id: int
    description: str
    eval_type: str
    spatial: bool | None = None
    color: bool | None = None
    texture: bool | None = None
    shape: bool | None = None


# --- validation -------------------------------------------------------------------------------------------------

Check = Callable[[Any], bool]


def _is_str(v: Any) -> bool:
    return isinstance(v, str)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_bool(v: Any) -> bool:
    return isinstance(v, bool)


def _list_of(check: Check) -> Check:
    return lambda v: isinstance(v, list) and all(check(x) for x in v)


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict)


_TYPE_NAMES = {_is_str: "str", _is_int: "int", _is_bool: "bool", _is_dict: "object"}


@dataclass(frozen=True)
class _Field:
    check: Check
    type_name: str
    required: bool = True


def _validate(record: Any, schema: dict[str, _Field], uri: str, index: int) -> dict:
    if not isinstance(record, dict):
        raise AnnotationFormatError(
            uri, f"record {index}: expected a JSON object, got {type(record).__name__}"
        )
    for name in record:
        if name not in schema:
            raise AnnotationFormatError(
                uri, f"record {index}: unknown field {name!r} (known: {sorted(schema)})"
            )
    for name, spec in schema.items():
        if name not in record:
            if spec.required:
                raise AnnotationFormatError(uri, f"record {index}: missing required field {name!r}")
            continue
        if not spec.check(record[name]):
            got = type(record[name]).__name__
            raise AnnotationFormatError(
                uri, f"record {index}: field {name!r} must be {spec.type_name}, got {got}"
            )
    return record


def _load_json(uri: str) -> Any:
    if not storage.exists(uri):
        raise MissingFileError(uri, "annotation file does not exist")
    try:
        return json.loads(storage.read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationFormatError(uri, f"not valid JSON: {exc}") from exc


def _load_list(uri: str, key: str | None = None) -> list:
    data = _load_json(uri)
    if key is not None:
        if not isinstance(data, dict) or key not in data:
            raise AnnotationFormatError(uri, f"expected a JSON object with a {key!r} list")
        data = data[key]
    if not isinstance(data, list):
        raise AnnotationFormatError(uri, f"expected a JSON list of records, got {type(data).__name__}")
    return data


# --- readers ----------------------------------------------------------------------------------------------------


def read_scanqa(uri: str, with_answers: bool = True) -> list[ScanQARecord]:
    """Read a ScanQA file.

    Args:
        uri: path or URI of ``ScanQA_v1.0_{train,val,test_w_obj,test_wo_obj}.json``.
        with_answers: require ``answers``/``object_ids``/``object_names`` (train/val). Pass False for the test
            files, which omit them; missing ones become empty tuples.
    """
    schema = {
        "question_id": _Field(_is_str, "str"),
        "scene_id": _Field(_is_str, "str"),
        "question": _Field(_is_str, "str"),
        "answers": _Field(_list_of(_is_str), "list[str]", with_answers),
        "object_ids": _Field(_list_of(_is_int), "list[int]", with_answers),
        "object_names": _Field(_list_of(_is_str), "list[str]", with_answers),
        "question_type": _Field(_is_str, "str", False),
    }
    out = []
    for i, raw in enumerate(_load_list(uri)):
        r = _validate(raw, schema, uri, i)
        if len(r.get("object_ids", [])) != len(r.get("object_names", [])):
            raise AnnotationFormatError(
                uri, f"record {i}: field 'object_names' must match 'object_ids' in length"
            )
        out.append(
            ScanQARecord(
                r["question_id"],
                r["scene_id"],
                r["question"],
                tuple(r.get("answers", ())),
                tuple(r.get("object_ids", ())),
                tuple(r.get("object_names", ())),
                r.get("question_type"),
            )
        )
    return out


_SQA_QUESTION = {
    "question_id": _Field(_is_int, "int"),
    "scene_id": _Field(_is_str, "str"),
    "situation": _Field(_is_str, "str"),
    "alternative_situation": _Field(_list_of(_is_str), "list[str]"),
    "question": _Field(_is_str, "str"),
}
_SQA_ANSWER = {
    "answer": _Field(_is_str, "str"),
    "answer_confidence": _Field(_is_str, "str", False),
    "answer_id": _Field(_is_int, "int", False),
}
_SQA_ANNOTATION = {
    "question_id": _Field(_is_int, "int"),
    "scene_id": _Field(_is_str, "str"),
    "answers": _Field(_list_of(_is_dict), "list[object]"),
    "question_type": _Field(_is_str, "str", False),
    "answer_type": _Field(_is_str, "str", False),
    "position": _Field(_is_dict, "object", False),
    "rotation": _Field(_is_dict, "object", False),
}


def _numbers(value: dict, keys: tuple[str, ...], uri: str, index: int, name: str) -> tuple[float, ...]:
    if set(value) != set(keys) or not all(
        isinstance(value[k], int | float) and not isinstance(value[k], bool) for k in keys
    ):
        raise AnnotationFormatError(
            uri, f"record {index}: field {name!r} must have numeric keys {list(keys)}"
        )
    return tuple(float(value[k]) for k in keys)


def read_sqa3d(questions_uri: str, annotations_uri: str) -> list[SQA3DRecord]:
    """Read an SQA3D split: questions and annotations files joined by ``question_id`` (question order kept).

    Raises:
        AnnotationFormatError: bad fields, duplicate ids, a question without annotation (or the reverse), a scene
            mismatch between the two files, or an annotation without an answer.
    """
    annotations: dict[int, dict] = {}
    for i, raw in enumerate(_load_list(annotations_uri, "annotations")):
        a = _validate(raw, _SQA_ANNOTATION, annotations_uri, i)
        if not a["answers"]:
            raise AnnotationFormatError(annotations_uri, f"record {i}: field 'answers' is empty")
        for answer in a["answers"]:
            _validate(answer, _SQA_ANSWER, annotations_uri, i)
        if a["question_id"] in annotations:
            raise AnnotationFormatError(
                annotations_uri, f"record {i}: duplicate question_id {a['question_id']}"
            )
        annotations[a["question_id"]] = a | {"_index": i}
    out, seen = [], set()
    for i, raw in enumerate(_load_list(questions_uri, "questions")):
        q = _validate(raw, _SQA_QUESTION, questions_uri, i)
        qid = q["question_id"]
        if qid in seen:
            raise AnnotationFormatError(questions_uri, f"record {i}: duplicate question_id {qid}")
        seen.add(qid)
        a = annotations.get(qid)
        if a is None:
            raise AnnotationFormatError(
                annotations_uri, f"no annotation for question_id {qid} (question record {i})"
            )
        if a["scene_id"] != q["scene_id"]:
            raise AnnotationFormatError(
                annotations_uri,
                f"record {a['_index']}: field 'scene_id' is {a['scene_id']!r}, question says {q['scene_id']!r}",
            )
        pos = (
            _numbers(a["position"], ("x", "y", "z"), annotations_uri, a["_index"], "position")
            if "position" in a
            else None
        )
        rot = (
            _numbers(a["rotation"], ("_x", "_y", "_z", "_w"), annotations_uri, a["_index"], "rotation")
            if "rotation" in a
            else None
        )
        out.append(
            SQA3DRecord(
                question_id=qid,
                scene_id=q["scene_id"],
                situation=q["situation"],
                alternative_situation=tuple(q["alternative_situation"]),
                question=q["question"],
                answers=tuple(ans["answer"] for ans in a["answers"]),
                question_type=a.get("question_type"),
                answer_type=a.get("answer_type"),
                position=pos,
                rotation=rot,
            )
        )
    extra = set(annotations) - seen
    if extra:
        raise AnnotationFormatError(
            annotations_uri, f"annotations without a question: question_id {sorted(extra)[:5]}"
        )
    return out


_SCANREFER = {
    "scene_id": _Field(_is_str, "str"),
    "object_id": _Field(_is_str, "str"),
    "object_name": _Field(_is_str, "str"),
    "ann_id": _Field(_is_str, "str"),
    "description": _Field(_is_str, "str"),
    "token": _Field(_list_of(_is_str), "list[str]"),
    "eval_type": _Field(lambda v: v in SCANREFER_EVAL_TYPES, f"one of {SCANREFER_EVAL_TYPES}", False),
}


def read_scanrefer(uri: str) -> list[ScanReferRecord]:
    """Read ``ScanRefer_filtered_{split}.json`` (optionally with M3DRef-CLIP's ``eval_type``)."""
    out = []
    for i, raw in enumerate(_load_list(uri)):
        r = _validate(raw, _SCANREFER, uri, i)
        out.append(
            ScanReferRecord(
                r["scene_id"],
                r["object_id"],
                r["object_name"],
                r["ann_id"],
                r["description"],
                tuple(r["token"]),
                r.get("eval_type"),
            )
        )
    return out


def read_scan2cap(scanrefer_uri: str) -> list[Scan2CapRecord]:
    """Scan2Cap references: ScanRefer descriptions grouped per ``(scene_id, object_id, object_name)``.

    Groups keep first-appearance order; captions keep file order.
    """
    groups: dict[tuple[str, str, str], list[str]] = {}
    for r in read_scanrefer(scanrefer_uri):
        groups.setdefault((r.scene_id, r.object_id, r.object_name), []).append(r.description)
    return [Scan2CapRecord(s, o, n, tuple(c)) for (s, o, n), c in groups.items()]


_MULTI3DREFER = {
    "scene_id": _Field(_is_str, "str"),
    "object_ids": _Field(_list_of(_is_int), "list[int]"),
    "object_name": _Field(_is_str, "str"),
    "ann_id": _Field(_is_int, "int"),
    "description": _Field(_is_str, "str"),
    "eval_type": _Field(lambda v: v in MULTI3DREFER_EVAL_TYPES, f"one of {MULTI3DREFER_EVAL_TYPES}"),
    "spatial": _Field(_is_bool, "bool", False),
    "color": _Field(_is_bool, "bool", False),
    "texture": _Field(_is_bool, "bool", False),
    "shape": _Field(_is_bool, "bool", False),
}


def read_multi3drefer(uri: str) -> list[Multi3DReferRecord]:
    """Read ``multi3drefer_{split}.json``; checks that the target count agrees with ``eval_type``."""
    out = []
    for i, raw in enumerate(_load_list(uri)):
        r = _validate(raw, _MULTI3DREFER, uri, i)
        n, kind = len(r["object_ids"]), r["eval_type"]
        expected_ok = n == 0 if kind.startswith("zt") else (n == 1 if kind.startswith("st") else n >= 2)
        if not expected_ok:
            raise AnnotationFormatError(
                uri, f"record {i}: field 'object_ids' has {n} targets, inconsistent with {kind}"
            )
        out.append(
            Multi3DReferRecord(
                r["scene_id"],
                tuple(r["object_ids"]),
                r["object_name"],
                r["ann_id"],
                r["description"],
                kind,
                r.get("spatial"),
                r.get("color"),
                r.get("texture"),
                r.get("shape"),
            )
        )
    return out


def benchmark_paths(annotations_root: str, split: str) -> dict[str, str]:
    """Standard file locations of one split under an annotations root (as written by the synthetic generator)."""
    sqa = storage.join(annotations_root, "sqa_task", "balanced")
    return {
        "scanqa": storage.join(annotations_root, f"ScanQA_v1.0_{split}.json"),
        "sqa3d_questions": storage.join(sqa, f"v1_balanced_questions_{split}_scannetv2.json"),
        "sqa3d_annotations": storage.join(sqa, f"v1_balanced_sqa_annotations_{split}_scannetv2.json"),
        "scanrefer": storage.join(annotations_root, f"ScanRefer_filtered_{split}.json"),
        "multi3drefer": storage.join(annotations_root, f"multi3drefer_{split}.json"),
        "scene_list": storage.join(annotations_root, f"scannetv2_{split}.txt"),
    }


def read_scene_list(uri: str) -> list[str]:
    """Read a ``scannetv2_{split}.txt`` list (one scene id per line, blank lines ignored)."""
    if not storage.exists(uri):
        raise MissingFileError(uri, "scene list does not exist")
    return [line.strip() for line in storage.read_bytes(uri).decode("utf-8").splitlines() if line.strip()]
