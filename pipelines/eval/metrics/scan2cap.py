"""Scan2Cap dense-captioning metrics ``m@kIoU`` (official ``daveredrum/Scan2Cap`` ``lib/eval_helper.py``).

For **every ground-truth object** of the evaluated split, the candidate caption is the caption of the predicted
box matched to it (see *Matching*), if their IoU passes ``k``; otherwise (no box in the scene, no box matched, or
too little overlap) it is the placeholder ``"sos eos"``. References are all descriptions of the object. Every caption is tokenised (see
:mod:`pipelines.eval.metrics.captions`) and wrapped as ``"sos <tokens> eos"``; CIDEr, BLEU-4, METEOR and ROUGE-L are
computed over all ground-truth objects at each ``k``, so a missed object costs as much as a wrong caption.

**Matching** follows the official evaluator: each predicted box (a proposal) is assigned to one ground-truth object
and an object is captioned only by a box assigned to it. The official ``feed_scene_cap`` assigns proposals with
VoteNet's ``object_assignment`` (nearest object centre) and keeps the last passing one; without votes we assign each
box to the object it overlaps most (ties: the first object), and an object keeps its highest-IoU box (ties: the
first box), as Chat-Scene's ``prepare_scan2cap_annos.py`` pairs Mask3D proposals with objects. So two boxes on one
object caption it once (the better box), and one box covering two objects captions only the object it overlaps
most; the other gets the placeholder. Only the objects being scored compete for boxes.

The IoU comparison is configurable: the official code uses ``iou > k`` (``strict=True``), Chat-Scene and GPT4Scene
use ``iou >= k``. We default to ``>=`` so that Acc@k, F1@k and m@kIoU share one threshold rule; the two differ only
for an IoU exactly equal to ``k``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines.eval.metrics.boxes import as_boxes, box_iou_matrix
from pipelines.eval.metrics.captions import CaptionScorer
from pipelines.eval.metrics.grounding import DEFAULT_IOU_THRESHOLDS, threshold_key

PLACEHOLDER = "sos eos"
SCAN2CAP_METRICS: tuple[str, ...] = ("cider", "bleu4", "meteor", "rouge_l")


@dataclass(frozen=True)
class CaptionedBoxes:
    """Predicted boxes of one scene with one caption each.

    Attributes:
        boxes: ``[N, 6]`` centre+size boxes in the benchmark (axis-aligned) frame.
        captions: ``N`` captions.
    """

    boxes: np.ndarray
    captions: tuple[str, ...]

    def __post_init__(self) -> None:
        boxes = as_boxes(self.boxes, "CaptionedBoxes.boxes")
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "captions", tuple(self.captions))
        if boxes.shape[0] != len(self.captions):
            raise ValueError(f"{boxes.shape[0]} boxes but {len(self.captions)} captions")


def wrap(tokens: str) -> str:
    """``"the brown chair"`` -> ``"sos the brown chair eos"``; an empty caption becomes the placeholder."""
    return f"sos {tokens} eos" if tokens else PLACEHOLDER


def assign_captions(
    objects: Sequence[tuple[str, int]],
    gt_boxes: Mapping[tuple[str, int], np.ndarray],
    predictions: Mapping[str, CaptionedBoxes],
    threshold: float,
    strict: bool = False,
) -> dict[tuple[str, int], str | None]:
    """The raw caption chosen for each ground-truth object at IoU threshold ``threshold`` (None: placeholder).

    Args:
        objects: ``(scene_id, object_id)`` of every ground-truth object to caption.
        gt_boxes: ``(scene_id, object_id)`` -> ``[6]`` box in the benchmark frame.
        predictions: scene_id -> captioned predicted boxes in the same frame.
        threshold: IoU threshold ``k``.
        strict: compare ``iou > k`` (official) instead of ``iou >= k``.

    Returns:
        ``{(scene_id, object_id): caption or None}``, with the box-to-object matching of the module docstring.
    """
    out: dict[tuple[str, int], str | None] = {}
    per_scene: dict[str, list[tuple[str, int]]] = {}
    for key in objects:
        if key not in gt_boxes:
            raise KeyError(f"no ground-truth box for scene {key[0]!r} object {key[1]}")
        per_scene.setdefault(key[0], []).append(key)
    for scene_id, keys in per_scene.items():
        pred = predictions.get(scene_id)
        if pred is None or pred.boxes.shape[0] == 0:
            out.update(dict.fromkeys(keys))
            continue
        iou = box_iou_matrix(pred.boxes, np.stack([as_boxes(gt_boxes[k])[0] for k in keys]))  # [P, G]
        owner = np.argmax(iou, axis=1)  # each box's object
        for g, key in enumerate(keys):
            mine = np.flatnonzero(owner == g)
            if mine.size == 0:
                out[key] = None
                continue
            best = int(mine[np.argmax(iou[mine, g])])
            ok = iou[best, g] > threshold if strict else iou[best, g] >= threshold
            out[key] = pred.captions[best] if ok else None
    return out


def scan2cap_scores(
    references: Mapping[tuple[str, int], Sequence[str]],
    gt_boxes: Mapping[tuple[str, int], np.ndarray],
    predictions: Mapping[str, CaptionedBoxes],
    scorer: CaptionScorer,
    thresholds: Sequence[float] = DEFAULT_IOU_THRESHOLDS,
    strict: bool = False,
) -> dict[str, Any]:
    """Scan2Cap m@kIoU over all ground-truth objects.

    Args:
        references: ``(scene_id, object_id)`` -> the raw reference descriptions of that object.
        gt_boxes: ``(scene_id, object_id)`` -> ``[6]`` ground-truth box (benchmark frame).
        predictions: scene_id -> :class:`CaptionedBoxes`.
        scorer: the session's caption scorer (its tokenizer applies to references and candidates).
        thresholds: IoU thresholds ``k``.
        strict: ``iou > k`` instead of ``iou >= k``.

    Returns:
        ``{"@0.25": {"cider", "bleu4", "meteor", "rouge_l", "matched"}, "@0.5": {...}, "num_objects": N}``
        with metrics in percent and ``matched`` the number of objects that received a predicted caption.
    """
    keys = sorted(references)
    str_keys = [f"{s}|{o}" for s, o in keys]
    ref_lists = [list(references[k]) for k in keys]
    for k, refs in zip(keys, ref_lists, strict=True):
        if not refs:
            raise ValueError(f"object {k} has no reference description")
    # Tokenise every distinct string once (references and all candidate captions), then wrap.
    per_k = {k: assign_captions(keys, gt_boxes, predictions, k, strict) for k in thresholds}
    texts = sorted(
        {r for refs in ref_lists for r in refs} | {c for a in per_k.values() for c in a.values() if c}
    )
    tokenized = dict(zip(texts, scorer.tokenize(texts), strict=True))
    refs_wrapped = {
        sk: [wrap(tokenized[r]) for r in refs] for sk, refs in zip(str_keys, ref_lists, strict=True)
    }
    out: dict[str, Any] = {}
    for k, assigned in per_k.items():
        hyps = {
            sk: (wrap(tokenized[c]) if c else PLACEHOLDER)
            for sk, c in zip(str_keys, (assigned[key] for key in keys), strict=True)
        }
        scores = scorer.score(refs_wrapped, hyps, tokenize=False)
        row = {m: 100.0 * scores[m] for m in SCAN2CAP_METRICS if m in scores}
        row["matched"] = sum(c is not None for c in assigned.values())
        out[f"@{threshold_key(k)}"] = row
    out["num_objects"] = len(keys)
    return out
