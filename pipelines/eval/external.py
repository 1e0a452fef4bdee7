"""Prediction files of other systems, read into the harness's typed predictions (``--predictions-format``).

The format is named explicitly, never guessed from the file. Fields a format does not use (``bbox`` of a ScanQA
submission, ``unique_multiple`` / ``others`` of a ScanRefer one) are ignored; the fields used are checked and a bad
one raises :class:`~pipelines.eval.predictions.PredictionFormatError` naming the file, the record and the field.

=================  ==================================================================================================
``vidllm``         this project's JSON lines (``<out>/predictions/predictions.jsonl`` of an evaluation; see
                   :mod:`pipelines.eval.predictions`).
``scanqa``         the ScanQA benchmark submission: a JSON list of ``{"question_id", "answer_top10": [str, ...]}``
                   (top-1 = the first answer) or ``{"question_id", "answer": str}``; ``scene_id`` optional.
``sqa3d``          the same layout for SQA3D questions (``question_id`` int or str).
``scanrefer``      the ScanRefer benchmark ``pred.json``: a JSON list of ``{"scene_id", "object_id", "ann_id",
                   "bbox"}`` with ``bbox`` the 8 corners ``[[x, y, z] x 8]`` or ``[cx, cy, cz, dx, dy, dz]``, in
                   ScanNet's axis-aligned frame.
``scan2cap``       a Scan2Cap candidate corpus: a JSON object ``{"<scene_id>|<object_id>[|<object_name>]":
                   caption}`` (official Scan2Cap keys carry the name, Chat-Scene's do not); the caption is a string
                   or a one-element list, and a ``sos ... eos`` wrapper (Scan2Cap's decoded captions) is removed.
                   The captions belong to ground-truth objects (the system matched its boxes itself), so each is
                   scored as a caption of that object's box under the configured captioning protocol.
=================  ==================================================================================================
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipelines import storage
from pipelines.eval.groundtruth import GroundTruth
from pipelines.eval.predictions import (
    AnswerPrediction,
    BoxPrediction,
    CaptionPrediction,
    Prediction,
    PredictionFormatError,
    load_predictions,
)
from pipelines.eval.proposals import boxes_from_any

PREDICTION_FORMATS: tuple[str, ...] = ("vidllm", "scanqa", "sqa3d", "scanrefer", "scan2cap")


def _load_json(uri: str) -> Any:
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri}: prediction file does not exist")
    try:
        return json.loads(storage.read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PredictionFormatError(uri, f"not valid JSON ({exc})") from None


def _records(uri: str, fmt: str) -> list[dict]:
    data = _load_json(uri)
    if not isinstance(data, list):
        raise PredictionFormatError(uri, f"a {fmt} prediction file is a JSON list of objects, got {type(data).__name__}")
    for i, rec in enumerate(data):
        if not isinstance(rec, dict):
            raise PredictionFormatError(f"{uri}[{i}]", f"expected a JSON object, got {type(rec).__name__}")
    return data


def _need(rec: dict, name: str, where: str) -> Any:
    if name not in rec:
        raise PredictionFormatError(where, f"missing field {name!r}")
    value = rec[name]
    if isinstance(value, bool) or not isinstance(value, (str, int, float, list)):
        raise PredictionFormatError(where, f"field {name!r} has type {type(value).__name__}")
    return value


def _answers(uri: str, task: str) -> list[Prediction]:
    out: list[Prediction] = []
    for i, rec in enumerate(_records(uri, task)):
        where = f"{uri}[{i}]"
        qid = _need(rec, "question_id", where)
        if not isinstance(qid, (str, int)):
            raise PredictionFormatError(where, "field 'question_id' must be a string or integer")
        if "answer_top10" in rec:
            top = rec["answer_top10"]
            if not isinstance(top, list) or not top or not isinstance(top[0], str):
                raise PredictionFormatError(where, "field 'answer_top10' must be a non-empty list of strings")
            answer = top[0]
        elif isinstance(rec.get("answer"), str):
            answer = rec["answer"]
        else:
            raise PredictionFormatError(where, "needs 'answer_top10' (list of strings) or 'answer' (string)")
        scene = rec.get("scene_id", "")
        out.append(AnswerPrediction(task, str(scene), str(qid), answer))
    return out


def _scanrefer(uri: str) -> list[Prediction]:
    out: list[Prediction] = []
    for i, rec in enumerate(_records(uri, "scanrefer")):
        where = f"{uri}[{i}]"
        scene, obj, ann = (_need(rec, k, where) for k in ("scene_id", "object_id", "ann_id"))
        try:
            object_id = int(obj)
        except (TypeError, ValueError):
            raise PredictionFormatError(where, f"field 'object_id' must be an integer, got {obj!r}") from None
        try:
            raw = np.asarray(_need(rec, "bbox", where), dtype=np.float64)
            if raw.shape not in ((8, 3), (6,)):
                raise ValueError(f"shape {raw.shape}")
            box = boxes_from_any(raw[None], "field 'bbox'")
        except ValueError as exc:
            raise PredictionFormatError(where, f"field 'bbox' must be 8 corners [[x, y, z] x 8] or "
                                        f"[cx, cy, cz, dx, dy, dz] ({exc})") from None
        out.append(BoxPrediction("scanrefer", str(scene), str(ann), box, None, object_id, "aligned"))
    return out


def _unwrap(caption: str) -> str:
    words = caption.split()
    if words[:1] == ["sos"]:
        words = words[1:]
    if words[-1:] == ["eos"]:
        words = words[:-1]
    return " ".join(words)


def _scan2cap(uri: str, gt: GroundTruth, protocol: str) -> list[Prediction]:
    data = _load_json(uri)
    if not isinstance(data, Mapping):
        raise PredictionFormatError(uri, "a scan2cap corpus is a JSON object {\"scene_id|object_id\": caption}")
    per_scene: dict[str, list[tuple[np.ndarray, str]]] = defaultdict(list)
    for key, value in data.items():
        where = f"{uri} key {key!r}"
        parts = str(key).split("|")
        try:
            scene_id, object_id = parts[0], int(parts[1])
        except (IndexError, ValueError):
            raise PredictionFormatError(where, "keys are '<scene_id>|<object_id>[|<object_name>]'") from None
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if not isinstance(value, str):
            raise PredictionFormatError(where, "the caption must be a string or a one-element list of strings")
        box = gt.boxes.get((scene_id, object_id))
        if box is None:
            raise PredictionFormatError(where, "names an object that has no ground-truth box in the evaluated data")
        per_scene[scene_id].append((np.asarray(box, np.float64), _unwrap(value)))
    return [CaptionPrediction("scan2cap", s, np.stack([b for b, _ in rows]), tuple(c for _, c in rows), "aligned",
                              protocol) for s, rows in sorted(per_scene.items())]


def load_external_predictions(uri: str, fmt: str, gt: GroundTruth, captioning_protocol: str = "gt_boxes"
                              ) -> list[Prediction]:
    """Read a prediction file in one of :data:`PREDICTION_FORMATS` (see the module docstring).

    Args:
        uri: the file (local path or fsspec URI).
        fmt: its format.
        gt: the ground truth it is scored against (``scan2cap`` corpora need the objects' boxes).
        captioning_protocol: the protocol a ``scan2cap`` corpus is reported under.

    Raises:
        FileNotFoundError: the file does not exist.
        PredictionFormatError: malformed content (names the file, the record and the field).
        ValueError: unknown ``fmt``.
    """
    if fmt not in PREDICTION_FORMATS:
        raise ValueError(f"predictions format must be one of {PREDICTION_FORMATS}, got {fmt!r}")
    if fmt == "vidllm":
        return load_predictions(uri)
    if fmt in ("scanqa", "sqa3d"):
        return _answers(uri, fmt)
    if fmt == "scanrefer":
        return _scanrefer(uri)
    return _scan2cap(uri, gt, captioning_protocol)
