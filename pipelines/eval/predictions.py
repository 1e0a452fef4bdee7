"""The prediction-file format of the evaluation harness: JSON lines, one record per line, typed on load.

Every record has ``"task"`` and ``"scene_id"`` (string). Per task:

=================  ==================================================================================================
``scanqa``         ``question_id`` (str or int), ``answer`` (str): the generated answer, raw.
``sqa3d``          ``question_id`` (str or int), ``answer`` (str).
``scanrefer``      ``ann_id`` (str or int), ``object_id`` (int or numeric str): the query's target id, which with
                   ``scene_id`` and ``ann_id`` names the query; ``boxes``: list of ``[cx, cy, cz, dx, dy, dz]``
                   (metres, may be empty); optional ``scores`` (one float per box; the top-1 box is the highest
                   score, else the first box); optional ``frame``.
``multi3drefer``   ``ann_id`` (str or int), ``boxes`` (every predicted target, possibly none), optional ``scores``,
                   optional ``frame``.
``scan2cap``       ``boxes`` and ``captions`` (one caption per box; several records of one scene are concatenated),
                   optional ``frame``.
``reconstruction`` ``depth`` (path of a ``.npy`` ``[S, H, W]`` float depth in metres) and/or ``poses`` (path of a
                   ``.npy`` ``[S, 4, 4]`` / ``[S, 3, 4]``), ``pose_convention`` (``cam_to_world`` default or
                   ``world_to_cam``); relative paths are resolved against the prediction file's directory.
=================  ==================================================================================================

``frame`` is ``"aligned"`` (default: ScanNet's axis-aligned benchmark frame) or ``"first_camera"`` (the model's
native frame: the harness maps such boxes with the ground-truth first-frame pose, see
:mod:`pipelines.eval.alignment`). Unknown fields are rejected so that a typo never silently drops data.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines import storage
from pipelines.eval.metrics.boxes import as_boxes

TASKS: tuple[str, ...] = ("scanqa", "sqa3d", "scanrefer", "multi3drefer", "scan2cap", "reconstruction")
BOX_FRAMES: tuple[str, ...] = ("aligned", "first_camera")
#: How grounding boxes are scored: as predicted, or snapped to instance proposals.
GROUNDING_PROTOCOLS: tuple[str, ...] = ("free_form", "proposals")
#: Which boxes were captioned for Scan2Cap: the ground-truth boxes given in the prompt, or instance proposals.
CAPTIONING_PROTOCOLS: tuple[str, ...] = ("gt_boxes", "proposals")


class PredictionFormatError(ValueError):
    """A prediction record is malformed; the message names the file, the line and the field."""

    def __init__(self, where: str, problem: str):
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


@dataclass(frozen=True)
class AnswerPrediction:
    """A generated answer (ScanQA / SQA3D)."""

    task: str
    scene_id: str
    question_id: str
    answer: str


@dataclass(frozen=True)
class BoxPrediction:
    """Predicted boxes for one grounding query (ScanRefer / Multi3DRefer).

    ``boxes`` is ``[N, 6]`` centre+size in ``frame``; ``scores`` ``[N]`` or None. ``object_id`` is the query's
    target for ScanRefer, None for Multi3DRefer.
    """

    task: str
    scene_id: str
    ann_id: str
    boxes: np.ndarray
    scores: np.ndarray | None = None
    object_id: int | None = None
    frame: str = "aligned"

    def top1(self) -> np.ndarray:
        """``[0, 6]`` or ``[1, 6]``: the highest-scoring box, or the first one without scores."""
        if self.boxes.shape[0] == 0:
            return self.boxes
        idx = int(np.argmax(self.scores)) if self.scores is not None else 0
        return self.boxes[idx : idx + 1]


@dataclass(frozen=True)
class CaptionPrediction:
    """Captioned boxes of one scene (Scan2Cap); ``protocol`` None = the config's single captioning protocol."""

    task: str
    scene_id: str
    boxes: np.ndarray
    captions: tuple[str, ...]
    frame: str = "aligned"
    protocol: str | None = None


@dataclass(frozen=True)
class ReconstructionPrediction:
    """Predicted metric depth and/or camera poses of one evaluated clip, frames in ground-truth order."""

    task: str
    scene_id: str
    depth: np.ndarray | None = None  # [S, H, W] metres
    poses: np.ndarray | None = None  # [S, 4, 4] or [S, 3, 4]
    pose_convention: str = "cam_to_world"


Prediction = AnswerPrediction | BoxPrediction | CaptionPrediction | ReconstructionPrediction

_FIELDS: dict[str, tuple[set[str], set[str]]] = {  # task -> (required, optional) beyond task/scene_id
    "scanqa": ({"question_id", "answer"}, set()),
    "sqa3d": ({"question_id", "answer"}, set()),
    "scanrefer": ({"ann_id", "object_id", "boxes"}, {"scores", "frame"}),
    "multi3drefer": ({"ann_id", "boxes"}, {"scores", "frame"}),
    "scan2cap": ({"boxes", "captions"}, {"frame", "protocol"}),
    "reconstruction": (set(), {"depth", "poses", "pose_convention"}),
}


@dataclass
class _Ctx:
    where: str
    base_dir: str = field(default="")

    def fail(self, problem: str) -> PredictionFormatError:
        return PredictionFormatError(self.where, problem)


def _str_id(rec: dict, key: str, ctx: _Ctx) -> str:
    value = rec[key]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ctx.fail(f"field {key!r} must be a string or integer, got {type(value).__name__}")
    return str(value)


def _int_id(rec: dict, key: str, ctx: _Ctx) -> int:
    value = rec[key]
    if isinstance(value, bool):
        raise ctx.fail(f"field {key!r} must be an integer, got bool")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ctx.fail(f"field {key!r} must be an integer, got {value!r}") from None


def _text(rec: dict, key: str, ctx: _Ctx) -> str:
    if not isinstance(rec[key], str):
        raise ctx.fail(f"field {key!r} must be a string, got {type(rec[key]).__name__}")
    return rec[key]


def _boxes(rec: dict, ctx: _Ctx) -> tuple[np.ndarray, np.ndarray | None, str]:
    raw = rec["boxes"]
    if not isinstance(raw, list):
        raise ctx.fail(f"field 'boxes' must be a list of [cx, cy, cz, dx, dy, dz], got {type(raw).__name__}")
    try:
        boxes = as_boxes(np.asarray(raw, dtype=np.float64) if raw else np.zeros((0, 6)), "boxes")
    except (TypeError, ValueError) as exc:
        raise ctx.fail(f"field 'boxes': {exc}") from None
    scores = None
    if rec.get("scores") is not None:
        try:
            scores = np.asarray(rec["scores"], dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise ctx.fail("field 'scores' must be a list of numbers") from None
        if scores.shape[0] != boxes.shape[0]:
            raise ctx.fail(f"field 'scores' has {scores.shape[0]} entries for {boxes.shape[0]} boxes")
        if not np.isfinite(scores).all():
            raise ctx.fail("field 'scores' contains non-finite values")
    frame = rec.get("frame", "aligned")
    if frame not in BOX_FRAMES:
        raise ctx.fail(f"field 'frame' must be one of {BOX_FRAMES}, got {frame!r}")
    return boxes, scores, frame


def _array(rec: dict, key: str, ctx: _Ctx) -> np.ndarray | None:
    if rec.get(key) is None:
        return None
    path = _text(rec, key, ctx)
    uri = (
        path
        if ("://" in path or path.startswith("/") or not ctx.base_dir)
        else storage.join(ctx.base_dir, path)
    )
    try:
        return np.load(io.BytesIO(storage.read_bytes(uri)), allow_pickle=False)
    except FileNotFoundError:
        raise ctx.fail(f"field {key!r}: file {uri} does not exist") from None
    except ValueError as exc:
        raise ctx.fail(f"field {key!r}: {uri} is not a readable .npy array ({exc})") from None


def parse_record(rec: Any, where: str = "<record>", base_dir: str = "") -> Prediction:
    """Validate one decoded JSON object and build its typed prediction.

    Args:
        rec: the decoded JSON value of one line.
        where: location for error messages (``file:line``).
        base_dir: directory that relative array paths of reconstruction records are resolved against.

    Raises:
        PredictionFormatError: unknown task, missing/unknown field, wrong type or shape.
    """
    ctx = _Ctx(where, base_dir)
    if not isinstance(rec, dict):
        raise ctx.fail(f"a record must be a JSON object, got {type(rec).__name__}")
    task = rec.get("task")
    if task not in TASKS:
        raise ctx.fail(f"field 'task' must be one of {TASKS}, got {task!r}")
    required, optional = _FIELDS[task]
    required = required | {"scene_id"}
    missing = sorted(required - rec.keys())
    if missing:
        raise ctx.fail(f"{task} record misses field(s) {missing}")
    unknown = sorted(rec.keys() - required - optional - {"task"})
    if unknown:
        raise ctx.fail(f"{task} record has unknown field(s) {unknown}")
    scene_id = _text(rec, "scene_id", ctx)
    if task in ("scanqa", "sqa3d"):
        return AnswerPrediction(task, scene_id, _str_id(rec, "question_id", ctx), _text(rec, "answer", ctx))
    if task in ("scanrefer", "multi3drefer"):
        boxes, scores, frame = _boxes(rec, ctx)
        object_id = _int_id(rec, "object_id", ctx) if task == "scanrefer" else None
        return BoxPrediction(task, scene_id, _str_id(rec, "ann_id", ctx), boxes, scores, object_id, frame)
    if task == "scan2cap":
        boxes, _, frame = _boxes(rec, ctx)
        captions = rec["captions"]
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise ctx.fail("field 'captions' must be a list of strings")
        if len(captions) != boxes.shape[0]:
            raise ctx.fail(f"field 'captions' has {len(captions)} entries for {boxes.shape[0]} boxes")
        protocol = rec.get("protocol")
        if protocol is not None and protocol not in CAPTIONING_PROTOCOLS:
            raise ctx.fail(f"field 'protocol' must be one of {CAPTIONING_PROTOCOLS}, got {protocol!r}")
        return CaptionPrediction(task, scene_id, boxes, tuple(captions), frame, protocol)
    convention = rec.get("pose_convention", "cam_to_world")
    if convention not in ("cam_to_world", "world_to_cam"):
        raise ctx.fail(
            f"field 'pose_convention' must be 'cam_to_world' or 'world_to_cam', got {convention!r}"
        )
    if rec.get("depth") is None and rec.get("poses") is None:
        raise ctx.fail("reconstruction record needs 'depth' and/or 'poses'")
    return ReconstructionPrediction(
        task, scene_id, _array(rec, "depth", ctx), _array(rec, "poses", ctx), convention
    )


def load_predictions(uri: str) -> list[Prediction]:
    """Read and validate a JSON-lines prediction file (local path or fsspec URI); blank lines are skipped.

    Raises:
        FileNotFoundError: the file does not exist.
        PredictionFormatError: a line is not JSON or not a valid record (names ``uri:line``).
    """
    if not storage.exists(uri):
        raise FileNotFoundError(f"{uri}: prediction file does not exist")
    text = storage.read_bytes(uri).decode("utf-8")
    base_dir = posixpath.dirname(uri)
    out: list[Prediction] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{uri}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PredictionFormatError(where, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        out.append(parse_record(rec, where, base_dir))
    return out


def to_record(pred: Prediction) -> dict[str, Any]:
    """The JSON-serialisable record of a prediction (reconstruction predictions carry arrays: write them
    with :func:`numpy.save` and reference their paths instead)."""
    if isinstance(pred, AnswerPrediction):
        return {
            "task": pred.task,
            "scene_id": pred.scene_id,
            "question_id": pred.question_id,
            "answer": pred.answer,
        }
    if isinstance(pred, BoxPrediction):
        rec: dict[str, Any] = {"task": pred.task, "scene_id": pred.scene_id, "ann_id": pred.ann_id}
        if pred.object_id is not None:
            rec["object_id"] = pred.object_id
        rec["boxes"] = pred.boxes.tolist()
        if pred.scores is not None:
            rec["scores"] = pred.scores.tolist()
        rec["frame"] = pred.frame
        return rec
    if isinstance(pred, CaptionPrediction):
        rec = {
            "task": pred.task,
            "scene_id": pred.scene_id,
            "boxes": pred.boxes.tolist(),
            "captions": list(pred.captions),
            "frame": pred.frame,
        }
        if pred.protocol is not None:
            rec["protocol"] = pred.protocol
        return rec
    raise TypeError(f"{type(pred).__name__} holds arrays; write them as .npy files and reference their paths")


def write_predictions(uri: str, predictions: Iterable[Prediction | dict[str, Any]]) -> None:
    """Write predictions (typed or already-record dicts) as JSON lines to a local path or fsspec URI."""
    lines = [json.dumps(p if isinstance(p, dict) else to_record(p)) for p in predictions]
    storage.write_bytes(uri, ("\n".join(lines) + "\n").encode("utf-8") if lines else b"")
