"""Visual-grounding metrics: ScanRefer Acc@k and Multi3DRefer F1@k.

* **ScanRefer** (``daveredrum/ScanRefer``): one predicted box per query; a query is correct at ``k`` when the
  axis-aligned IoU with its single ground-truth box is ``>= k``. Reported over all queries and split by
  ``eval_type`` ``unique`` / ``multiple`` (is the target the only object of its class in the scene).
* **Multi3DRefer** (``3dlg-hcvc/M3DRef-CLIP`` ``multi3drefer_evaluator.py``): any number of predicted and target
  boxes per query. Hungarian matching (``scipy.optimize.linear_sum_assignment`` on ``-IoU``) pairs them one to one;
  a matched pair with IoU ``>= k`` is a true positive and ``F1 = 2 TP / (|pred| + |gt|)``. A zero-target query
  scores 1 exactly when there are no predictions. F1 is averaged over queries per ``eval_type``
  (``zt_w_d``, ``zt_wo_d``, ``st_w_d``, ``st_wo_d``, ``mt``) and over all queries.

A query with no prediction counts as a miss (IoU 0 / no predicted boxes), so scores are over the ground truth.

**Proposal protocol** (:func:`snap_to_proposals`): the paper scores ScanRefer with Mask3D proposals. Our model
regresses boxes (the ``<loc>`` box head); each predicted box is replaced by the proposal it overlaps most, and when it
overlaps none, by the proposal whose centre is nearest to its centre (a box at the right place but of the wrong size
still selects the object there). The box head's scores rank the predicted boxes, not the proposals, so scoring
proposals directly would need the model to score arbitrary boxes, which it does not; snapping needs only its output.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
from scipy.optimize import linear_sum_assignment

from pipelines.eval.metrics.boxes import as_boxes, box_iou_matrix

DEFAULT_IOU_THRESHOLDS: tuple[float, ...] = (0.25, 0.5)
SCANREFER_EVAL_TYPES: tuple[str, ...] = ("unique", "multiple")
MULTI3DREFER_EVAL_TYPES: tuple[str, ...] = ("zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt")


def threshold_key(k: float) -> str:
    """The key suffix for threshold ``k`` in result dicts (``0.25`` -> ``"0.25"``, ``0.5`` -> ``"0.5"``)."""
    return f"{k:g}"


def scanrefer_accuracy(
    ious: Sequence[float],
    eval_types: Sequence[str] | None = None,
    thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> dict[str, dict[str, float]]:
    """ScanRefer Acc@k from the per-query IoU of the top-1 predicted box with the target box.

    Args:
        ious: ``[Q]`` IoU per query (0 for a query without prediction).
        eval_types: ``[Q]`` ``"unique"`` / ``"multiple"`` per query, or None for the overall score only.
        thresholds: IoU thresholds ``k``.

    Returns:
        ``{"overall": {"acc@0.25": %, "acc@0.5": %, "count": Q}, "unique": {...}, "multiple": {...}}`` with
        accuracies in percent; a split with no query reports accuracies of 0 and ``count`` 0.
    """
    iou_arr = np.asarray(ious, dtype=np.float64).reshape(-1)
    if eval_types is not None and len(eval_types) != iou_arr.shape[0]:
        raise ValueError(f"eval_types has {len(eval_types)} entries for {iou_arr.shape[0]} queries")
    groups: dict[str, np.ndarray] = {"overall": np.ones(iou_arr.shape[0], dtype=bool)}
    if eval_types is not None:
        types = np.asarray(eval_types, dtype=object)
        unknown = set(types.tolist()) - set(SCANREFER_EVAL_TYPES)
        if unknown:
            raise ValueError(
                f"unknown ScanRefer eval_type(s) {sorted(unknown)}; expected {SCANREFER_EVAL_TYPES}"
            )
        for name in SCANREFER_EVAL_TYPES:
            groups[name] = types == name
    out: dict[str, dict[str, float]] = {}
    for name, mask in groups.items():
        count = int(mask.sum())
        row: dict[str, float] = {"count": count}
        for k in thresholds:
            row[f"acc@{threshold_key(k)}"] = 100.0 * float((iou_arr[mask] >= k).mean()) if count else 0.0
        out[name] = row
    return out


def snap_to_proposals(pred_boxes: np.ndarray, proposals: np.ndarray) -> np.ndarray:
    """The proposal chosen for each predicted box: the highest IoU, else (no overlap at all) the nearest centre.

    Args:
        pred_boxes: ``[P, 6]`` predicted centre+size boxes.
        proposals: ``[N, 6]`` proposal boxes in the same frame.

    Returns:
        ``[P]`` int64 indices into ``proposals`` (ties: the first proposal); empty when ``P == 0`` or ``N == 0``.
    """
    pred = as_boxes(pred_boxes, "pred_boxes")
    props = as_boxes(proposals, "proposals")
    if pred.shape[0] == 0 or props.shape[0] == 0:
        return np.zeros(0, dtype=np.int64)
    iou = box_iou_matrix(pred, props)
    dist = np.linalg.norm(pred[:, None, :3] - props[None, :, :3], axis=-1)
    best = np.argmax(iou, axis=1)
    overlaps = iou[np.arange(pred.shape[0]), best] > 0
    return np.where(overlaps, best, np.argmin(dist, axis=1)).astype(np.int64)


def match_f1(pred_boxes: np.ndarray, gt_boxes: np.ndarray, threshold: float) -> float:
    """Multi3DRefer F1 of one query at IoU threshold ``threshold``.

    Args:
        pred_boxes: ``[P, 6]`` predicted centre+size boxes (P may be 0).
        gt_boxes: ``[G, 6]`` target boxes in the same frame (G may be 0: a zero-target query).

    Returns:
        ``2 TP / (P + G)`` after one-to-one Hungarian matching on IoU; for ``G == 0`` it is 1.0 iff ``P == 0``.
    """
    pred = as_boxes(pred_boxes, "pred_boxes")
    gt = as_boxes(gt_boxes, "gt_boxes")
    if gt.shape[0] == 0:
        return 1.0 if pred.shape[0] == 0 else 0.0
    if pred.shape[0] == 0:
        return 0.0
    iou = box_iou_matrix(pred, gt)
    rows, cols = linear_sum_assignment(-iou)
    tp = int((iou[rows, cols] >= threshold).sum())
    return 2.0 * tp / (pred.shape[0] + gt.shape[0])


def multi3drefer_f1(
    preds: Sequence[np.ndarray],
    gts: Sequence[np.ndarray],
    eval_types: Sequence[str],
    thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
) -> dict[str, dict[str, float]]:
    """Multi3DRefer F1@k averaged per ``eval_type`` and overall.

    Args:
        preds: per query, ``[P_q, 6]`` predicted boxes.
        gts: per query, ``[G_q, 6]`` target boxes.
        eval_types: per query, one of :data:`MULTI3DREFER_EVAL_TYPES`.
        thresholds: IoU thresholds ``k``.

    Returns:
        ``{"overall": {"f1@0.25": %, "f1@0.5": %, "count": Q}, "zt_w_d": {...}, ...}`` in percent; every eval type
        is present (count 0 and F1 0 when it has no query).
    """
    if not (len(preds) == len(gts) == len(eval_types)):
        raise ValueError(
            f"length mismatch: {len(preds)} predictions, {len(gts)} targets, {len(eval_types)} types"
        )
    unknown = set(eval_types) - set(MULTI3DREFER_EVAL_TYPES)
    if unknown:
        raise ValueError(
            f"unknown Multi3DRefer eval_type(s) {sorted(unknown)}; expected {MULTI3DREFER_EVAL_TYPES}"
        )
    per_type: dict[str, list[list[float]]] = defaultdict(list)
    for pred, gt, etype in zip(preds, gts, eval_types, strict=True):
        scores = [match_f1(pred, gt, k) for k in thresholds]
        per_type[etype].append(scores)
        per_type["overall"].append(scores)
    out: dict[str, dict[str, float]] = {}
    for name in ("overall", *MULTI3DREFER_EVAL_TYPES):
        rows = np.asarray(per_type.get(name, []), dtype=np.float64).reshape(-1, len(thresholds))
        row: dict[str, float] = {"count": int(rows.shape[0])}
        for i, k in enumerate(thresholds):
            row[f"f1@{threshold_key(k)}"] = 100.0 * float(rows[:, i].mean()) if rows.shape[0] else 0.0
        out[name] = row
    return out
