"""Ground truth as the evaluation harness consumes it: small typed records plus boxes and frame transforms.

The benchmark readers (``pipelines.scenes``) produce richer records; :func:`qa_items` and :func:`refer_items` turn
any records carrying the published field names (objects with attributes, or the raw JSON dicts) into these, so the
harness depends only on the field names of the datasets' published files (``docs/evaluation.md``,
``pipelines/scenes/annotations.py``):

* ScanQA / SQA3D: ``question_id``, ``scene_id``, ``answers`` (strings, or SQA3D's ``[{"answer": ...}]``),
  optional ``question``, optional question family (``family``, else ``question_type`` unless ``"N/A"``; without
  either the template rule :func:`pipelines.eval.metrics.qa.question_family` of the question text).
* ScanRefer: ``scene_id``, ``object_id``, ``ann_id``, ``description``, optional ``eval_type`` (unique/multiple).
* Multi3DRefer: ``scene_id``, ``object_ids`` (possibly empty), ``ann_id``, ``description``, ``eval_type``.
* Scan2Cap: ScanRefer records of the split, or ``read_scan2cap``'s grouped records (``captions``), turned into
  ``(scene_id, object_id)`` -> descriptions by :func:`scan2cap_references`.

The records of ``pipelines.scenes.annotations`` (``ScanQARecord``, ``SQA3DRecord``, ``ScanReferRecord``,
``Scan2CapRecord``, ``Multi3DReferRecord``) are accepted as they are.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.eval.metrics.qa import question_family

ObjectKey = tuple[str, int]


@dataclass(frozen=True)
class QAItem:
    """One question with its ground-truth answers (ScanQA: several, SQA3D: one).

    ``family`` is the question family (counting, colour, ...); ``family_from_annotation`` says whether the
    annotation carried it or the template rule derived it from the question.
    """

    question_id: str
    scene_id: str
    answers: tuple[str, ...]
    question: str = ""
    family: str = "other"
    family_from_annotation: bool = False

    def __post_init__(self) -> None:
        if not self.answers:
            raise ValueError(f"question {self.question_id!r} ({self.scene_id}) has no ground-truth answer")


@dataclass(frozen=True)
class ReferItem:
    """One grounding query: ScanRefer (exactly one target) or Multi3DRefer (zero or more targets)."""

    scene_id: str
    ann_id: str
    object_ids: tuple[int, ...]
    eval_type: str | None = None
    description: str = ""


@dataclass(frozen=True)
class ReconstructionTarget:
    """Ground-truth depth (metres, 0 = invalid) and camera-to-world poses of one evaluated clip."""

    scene_id: str
    depth: np.ndarray | None = None  # [S, H, W]
    poses: np.ndarray | None = None  # [S, 4, 4] camera-to-world


@dataclass
class GroundTruth:
    """Everything the harness scores against; a task whose records are empty is skipped unless requested.

    Attributes:
        scanqa, sqa3d: QA items.
        scanrefer, multi3drefer: grounding queries.
        scan2cap: ``(scene_id, object_id)`` -> reference descriptions of every object to caption.
        reconstruction: one target per evaluated clip (keyed by ``scene_id``).
        boxes: ``(scene_id, object_id)`` -> ``[6]`` centre+size box in the axis-aligned benchmark frame.
        first_camera_to_aligned: ``scene_id`` -> ``[4, 4]`` ``T_aligned<-first`` of the evaluated clip, needed only
            for predictions given in the ``first_camera`` frame (see :mod:`pipelines.eval.alignment`).
    """

    scanqa: tuple[QAItem, ...] = ()
    sqa3d: tuple[QAItem, ...] = ()
    scanrefer: tuple[ReferItem, ...] = ()
    multi3drefer: tuple[ReferItem, ...] = ()
    scan2cap: Mapping[ObjectKey, tuple[str, ...]] = field(default_factory=dict)
    reconstruction: tuple[ReconstructionTarget, ...] = ()
    boxes: Mapping[ObjectKey, np.ndarray] = field(default_factory=dict)
    first_camera_to_aligned: Mapping[str, np.ndarray] = field(default_factory=dict)


def _get(rec: Any, name: str, default: Any = None) -> Any:
    if isinstance(rec, Mapping):
        return rec.get(name, default)
    return getattr(rec, name, default)


def _require(rec: Any, name: str) -> Any:
    value = _get(rec, name)
    if value is None:
        raise ValueError(f"annotation record misses field {name!r}: {rec!r}"[:300])
    return value


def _answers(rec: Any) -> tuple[str, ...]:
    raw = _get(rec, "answers")
    if raw is None and _get(rec, "answer") is not None:
        raw = [_get(rec, "answer")]
    if raw is None:
        raise ValueError(f"QA record {_get(rec, 'question_id')!r} has no 'answers'")
    out = []
    for a in raw:
        text = _get(a, "answer") if not isinstance(a, str) else a
        if not isinstance(text, str):
            raise ValueError(f"QA record {_get(rec, 'question_id')!r}: answer {a!r} is not a string")
        out.append(text)
    return tuple(out)


def record_family(rec: Any) -> tuple[str, bool]:
    """``(family, from_annotation)`` of a QA record: its ``family``, else a ``question_type`` other than ``"N/A"``,
    else :func:`~pipelines.eval.metrics.qa.question_family` of its ``question``."""
    for name in ("family", "question_type"):
        value = _get(rec, name)
        if isinstance(value, str) and value.strip() and value.strip() != "N/A":
            return value.strip(), True
    return question_family(str(_get(rec, "question", "") or "")), False


def qa_items(records: Iterable[Any]) -> tuple[QAItem, ...]:
    """ScanQA / SQA3D records (dicts or objects with the published field names) -> :class:`QAItem`."""
    out = []
    for r in records:
        question = str(_get(r, "question", "") or "")
        family, annotated = record_family(r)
        out.append(QAItem(
            question_id=str(_require(r, "question_id")),
            scene_id=str(_require(r, "scene_id")),
            answers=_answers(r),
            question=question,
            family=family,
            family_from_annotation=annotated,
        ))
    return tuple(out)


def refer_items(records: Iterable[Any]) -> tuple[ReferItem, ...]:
    """ScanRefer (``object_id``) or Multi3DRefer (``object_ids``) records -> :class:`ReferItem`."""
    out = []
    for r in records:
        ids = _get(r, "object_ids")
        if ids is None:
            ids = [_require(r, "object_id")]
        out.append(
            ReferItem(
                scene_id=str(_require(r, "scene_id")),
                ann_id=str(_require(r, "ann_id")),
                object_ids=tuple(int(i) for i in ids),
                eval_type=_get(r, "eval_type"),
                description=str(_get(r, "description", "") or ""),
            )
        )
    return tuple(out)


def scan2cap_references(records: Iterable[Any]) -> dict[ObjectKey, tuple[str, ...]]:
    """Scan2Cap references ``(scene_id, object_id)`` -> all descriptions of the object.

    Args:
        records: either ScanRefer records (``scene_id``, ``object_id``, ``description``), grouped here, or
            already grouped Scan2Cap records (``scene_id``, ``object_id``, ``captions``) such as
            ``pipelines.scenes.annotations.read_scan2cap`` returns.
    """
    refs: dict[ObjectKey, list[str]] = defaultdict(list)
    for r in records:
        key = (str(_require(r, "scene_id")), int(_require(r, "object_id")))
        captions = _get(r, "captions")
        texts = list(captions) if captions is not None else [_require(r, "description")]
        if not texts or not all(isinstance(t, str) and t.strip() for t in texts):
            raise ValueError(f"Scan2Cap object {key} has an empty or non-string description")
        refs[key].extend(texts)
    return {k: tuple(v) for k, v in refs.items()}
