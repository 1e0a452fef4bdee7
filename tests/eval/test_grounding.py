"""ScanRefer Acc@k and Multi3DRefer Hungarian F1@k on hand-computed cases."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from pipelines.eval.metrics.boxes import box_iou_matrix
from pipelines.eval.metrics.grounding import match_f1, multi3drefer_f1, scanrefer_accuracy

UNIT = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 1.0])


def shifted(dx: float) -> np.ndarray:
    return UNIT + np.array([dx, 0, 0, 0, 0, 0])


def test_scanrefer_accuracy_splits_unique_multiple():
    # IoUs: 1.0 (unique), 0.3 (unique), 0.6 (multiple), 0.0 (multiple), 0.5 exactly (multiple: >= counts)
    ious = [1.0, 0.3, 0.6, 0.0, 0.5]
    types = ["unique", "unique", "multiple", "multiple", "multiple"]
    out = scanrefer_accuracy(ious, types)
    assert out["overall"] == {"count": 5, "acc@0.25": 80.0, "acc@0.5": 60.0}
    assert out["unique"] == {"count": 2, "acc@0.25": 100.0, "acc@0.5": 50.0}
    assert out["multiple"]["acc@0.25"] == pytest.approx(200.0 / 3.0)
    assert out["multiple"]["acc@0.5"] == pytest.approx(200.0 / 3.0)
    assert set(scanrefer_accuracy(ious)) == {"overall"}
    with pytest.raises(ValueError, match="unknown ScanRefer eval_type"):
        scanrefer_accuracy([1.0], ["single"])


def test_f1_zero_targets():
    assert match_f1(np.zeros((0, 6)), np.zeros((0, 6)), 0.5) == 1.0
    assert match_f1(UNIT[None], np.zeros((0, 6)), 0.5) == 0.0


def test_f1_one_target():
    assert match_f1(np.zeros((0, 6)), UNIT[None], 0.25) == 0.0
    assert match_f1(UNIT[None], UNIT[None], 0.5) == 1.0
    # IoU 0.6: a TP at 0.5; plus one extra far prediction: 2*1 / (2 + 1)
    preds = np.stack([shifted(0.25), shifted(10.0)])
    assert match_f1(preds, UNIT[None], 0.5) == pytest.approx(2.0 / 3.0)
    # IoU 1/3 (shift 0.5): TP at 0.25, not at 0.5
    assert match_f1(shifted(0.5)[None], UNIT[None], 0.25) == 1.0
    assert match_f1(shifted(0.5)[None], UNIT[None], 0.5) == 0.0


def test_f1_many_targets_many_predictions():
    gts = np.stack([shifted(0.0), shifted(5.0)])
    preds = np.stack([shifted(5.0), shifted(0.5), shifted(20.0)])  # IoU 1 with gt1, 1/3 with gt0, a miss
    assert match_f1(preds, gts, 0.25) == pytest.approx(2 * 2 / 5)
    assert match_f1(preds, gts, 0.5) == pytest.approx(2 * 1 / 5)


def test_hungarian_beats_greedy():
    # Unit cross-sections, intervals along x: targets [0, 1] and [1, 2]; A = [0.45, 1.45] overlaps both (best: target
    # 0), B = [-0.2, 0.8] only target 0. Greedy in prediction order gives A target 0 and B nothing (TP 1);
    # Hungarian maximises total IoU: A -> target 1 (0.29), B -> target 0 (0.67), TP 2.
    gt = np.stack([shifted(0.0), shifted(1.0)])
    pred = np.stack([shifted(0.45), shifted(-0.2)])
    iou = box_iou_matrix(pred, gt)
    assert iou[0, 0] > iou[0, 1] > 0.25 and iou[1, 0] > 0.25 and iou[1, 1] == 0.0
    assert match_f1(pred, gt, 0.25) == 1.0


def _brute_force_tp(iou: np.ndarray, k: float) -> int:
    """TP of the one-to-one assignment with the largest IoU sum, by enumeration."""
    n_p, n_g = iou.shape
    if n_p >= n_g:
        candidates = [
            list(zip(perm, range(n_g), strict=True)) for perm in itertools.permutations(range(n_p), n_g)
        ]
    else:
        candidates = [
            list(zip(range(n_p), perm, strict=True)) for perm in itertools.permutations(range(n_g), n_p)
        ]
    best = max(candidates, key=lambda pairs: sum(iou[i, j] for i, j in pairs))
    return sum(iou[i, j] >= k for i, j in best)


def test_f1_equals_brute_force_on_random_boxes():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n_p, n_g = (int(n) for n in rng.integers(1, 5, size=2))
        boxes = np.concatenate(
            [rng.uniform(0, 2, size=(n_p + n_g, 3)), rng.uniform(0.5, 1.5, size=(n_p + n_g, 3))], axis=1
        )
        pred, gt = boxes[:n_p], boxes[n_p:]
        iou = box_iou_matrix(pred, gt)
        for k in (0.25, 0.5):
            assert match_f1(pred, gt, k) == pytest.approx(2 * _brute_force_tp(iou, k) / (n_p + n_g))


def test_multi3drefer_averages_per_eval_type():
    empty = np.zeros((0, 6))
    preds = [empty, UNIT[None], UNIT[None], empty, np.stack([shifted(0.0), shifted(3.0)])]
    gts = [empty, empty, UNIT[None], UNIT[None], np.stack([shifted(0.0), shifted(3.0), shifted(6.0)])]
    types = ["zt_w_d", "zt_wo_d", "st_w_d", "st_wo_d", "mt"]
    out = multi3drefer_f1(preds, gts, types)
    assert out["zt_w_d"] == {"count": 1, "f1@0.25": 100.0, "f1@0.5": 100.0}
    assert out["zt_wo_d"]["f1@0.5"] == 0.0
    assert out["st_w_d"]["f1@0.5"] == 100.0
    assert out["st_wo_d"]["f1@0.5"] == 0.0
    assert out["mt"]["f1@0.5"] == pytest.approx(100.0 * 4 / 5)
    assert out["overall"]["count"] == 5
    assert out["overall"]["f1@0.25"] == pytest.approx(100.0 * (1 + 0 + 1 + 0 + 0.8) / 5)
    with pytest.raises(ValueError, match="unknown Multi3DRefer eval_type"):
        multi3drefer_f1([empty], [empty], ["zero"])
