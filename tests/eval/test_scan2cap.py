"""Scan2Cap caption assignment (best-IoU box, threshold rule, placeholder) and m@kIoU scoring."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.eval.metrics.scan2cap import (
    PLACEHOLDER,
    CaptionedBoxes,
    assign_captions,
    scan2cap_scores,
    wrap,
)

UNIT = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])
GT_BOXES = {("s0", 1): UNIT, ("s0", 2): UNIT + [5, 0, 0, 0, 0, 0], ("s1", 1): UNIT}


def test_wrap():
    assert wrap("the chair") == "sos the chair eos"
    assert wrap("") == PLACEHOLDER


def test_assign_best_box_and_threshold_rule():
    # IoU 0.5 exactly (the half of the unit box with x < 0) and a worse box (IoU 0.25); object 2 overlaps nothing
    boxes = np.array([[-0.25, 0.0, 0.0, 0.5, 1.0, 1.0], UNIT + [0.6, 0, 0, 0, 0, 0]])
    preds = {"s0": CaptionedBoxes(boxes, ("good", "worse"))}
    keys = [("s0", 1), ("s0", 2), ("s1", 1)]
    loose = assign_captions(keys, GT_BOXES, preds, 0.5)
    assert loose == {("s0", 1): "good", ("s0", 2): None, ("s1", 1): None}  # s1 has no prediction
    strict = assign_captions(keys, GT_BOXES, preds, 0.5, strict=True)  # official "iou > k"
    assert strict[("s0", 1)] is None
    assert assign_captions(keys, GT_BOXES, preds, 0.25, strict=True)[("s0", 1)] == "good"
    with pytest.raises(KeyError, match="no ground-truth box"):
        assign_captions([("s9", 1)], GT_BOXES, preds, 0.5)
    with pytest.raises(ValueError, match="2 boxes but 1 captions"):
        CaptionedBoxes(boxes, ("one",))


def test_scores_use_placeholder_for_missed_objects(ptb_scorer):
    refs = {("s0", 1): ["the brown chair by the table."], ("s0", 2): ["a white door on the left."]}
    preds = {"s0": CaptionedBoxes(UNIT[None], ("The brown chair by the table.",))}
    out = scan2cap_scores(refs, GT_BOXES, preds, ptb_scorer)
    assert out["num_objects"] == 2 and out["@0.5"]["matched"] == 1
    # the same corpus scored directly: one exact caption, one placeholder
    direct = ptb_scorer.score(
        {"s0|1": ["sos the brown chair by the table eos"], "s0|2": ["sos a white door on the left eos"]},
        {"s0|1": "sos the brown chair by the table eos", "s0|2": PLACEHOLDER},
        tokenize=False,
    )
    for metric in ("cider", "bleu4", "rouge_l"):
        assert out["@0.5"][metric] == pytest.approx(100.0 * direct[metric])
    assert 0.0 < out["@0.5"]["bleu4"] < 100.0
