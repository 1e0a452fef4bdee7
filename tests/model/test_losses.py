"""Every loss is zero (or minimal) at the ground truth, positive away from it, and finite with empty masks."""

from __future__ import annotations

import math

import pytest
import torch

from model.config import LossWeights
from model.losses import (
    box_iou_giou,
    box_loss,
    camera_loss,
    depth_loss,
    geo_distill_loss,
    gram_tokens,
    gt_scene_scale,
    lang_distill_loss,
    lm_loss,
    metric_depth_loss,
    structural_consistency_loss,
)


def test_geo_distill_zero_at_gt_scale_invariant_and_max_opposite():
    t = torch.randn(2, 3, 5, 8)
    assert geo_distill_loss(2.5 * t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert geo_distill_loss(-t, t).item() == pytest.approx(4.0, abs=1e-5)  # ||a - (-a)||² for unit vectors
    assert geo_distill_loss(t[:, :, :0], t[:, :, :0]).item() == 0.0


def test_lang_distill_zero_at_gt_and_one_when_orthogonal():
    t = torch.randn(2, 3, 8)
    assert lang_distill_loss(t * 3, t).item() == pytest.approx(0.0, abs=1e-6)
    a = torch.tensor([[1.0, 0.0]])
    b = torch.tensor([[0.0, 1.0]])
    assert lang_distill_loss(a, b).item() == pytest.approx(1.0)


def test_structural_consistency_zero_for_equal_gram_and_rotation_invariant():
    torch.manual_seed(0)
    geo, sem = torch.randn(2, 3, 4, 6), torch.randn(2, 3, 6)
    z = gram_tokens(geo, sem)
    assert z.shape == (6, 5, 6)
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    # A rotated copy has the same token similarities: L_sc = 0 although L_geo > 0.
    assert structural_consistency_loss(gram_tokens(geo @ q, sem @ q), z).item() == pytest.approx(0.0, abs=1e-6)
    assert geo_distill_loss(geo @ q, geo).item() > 0.1
    assert structural_consistency_loss(gram_tokens(torch.randn_like(geo), sem), z).item() > 0
    # Hand value: two tokens, student orthogonal, teacher parallel -> off-diagonals differ by 1: 2 / 2² = 0.5.
    s = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    t = torch.tensor([[[1.0, 0.0], [1.0, 0.0]]])
    assert structural_consistency_loss(s, t).item() == pytest.approx(0.5)


def test_camera_loss_zero_at_gt_and_weights_last_iteration_most():
    gt = torch.randn(2, 3, 9)
    assert camera_loss([gt.clone(), gt.clone()], gt).item() == 0.0
    off = gt + 1.0
    early_wrong = camera_loss([off, gt], gt, gamma=0.6).item()
    late_wrong = camera_loss([gt, off], gt, gamma=0.6).item()
    assert late_wrong > early_wrong > 0
    # hand value: one iteration, error 1 everywhere: 1 (T) + 1 (R) + 0.5 (FoV)
    assert camera_loss([off], gt).item() == pytest.approx(2.5)
    with pytest.raises(ValueError):
        camera_loss([], gt)


def test_depth_loss_zero_at_gt_with_unit_confidence_and_finite_when_empty():
    gt = 1 + torch.rand(1, 2, 6, 7)
    valid = torch.ones_like(gt, dtype=torch.bool)
    conf = torch.ones_like(gt)
    assert depth_loss(gt, conf, gt, valid).item() == pytest.approx(0.0, abs=1e-7)
    assert depth_loss(gt + 0.5, conf, gt, valid).item() == pytest.approx(0.5, abs=1e-6)  # offset: no grad term
    tilted = gt + torch.linspace(0, 1, 7)
    assert depth_loss(tilted, conf, gt, valid).item() > depth_loss(gt + 0.5, conf, gt, valid).item() - 0.5
    empty = depth_loss(gt + 1, conf, gt, torch.zeros_like(valid))
    assert torch.isfinite(empty) and empty.item() == 0.0


def test_metric_depth_loss_eq9_values():
    gt = 0.5 + 3 * torch.rand(2, 2, 5, 5)
    valid = torch.ones_like(gt, dtype=torch.bool)
    assert metric_depth_loss(gt, gt, valid).item() == pytest.approx(0.0, abs=1e-8)
    # A global scale error is a pure bias b = log 2: the robust term vanishes, the loss is b².
    assert metric_depth_loss(2 * gt, gt, valid).item() == pytest.approx(math.log(2) ** 2, rel=1e-4)
    empty = metric_depth_loss(2 * gt, gt, torch.zeros_like(valid))
    assert torch.isfinite(empty) and empty.item() == 0.0


def test_lm_loss_shifts_ignores_and_is_zero_for_perfect_logits():
    labels = torch.tensor([[-100, 3, 1, -100]])
    logits = torch.full((1, 4, 5), -1e4)
    logits[0, 0, 3] = 1e4  # position 0 predicts token at position 1
    logits[0, 1, 1] = 1e4
    assert lm_loss(logits, labels).item() == pytest.approx(0.0, abs=1e-6)
    uniform = torch.zeros(1, 4, 5)
    assert lm_loss(uniform, labels).item() == pytest.approx(math.log(5), rel=1e-5)
    empty = lm_loss(uniform, torch.full((1, 4), -100))
    assert torch.isfinite(empty) and empty.item() == 0.0


def test_box_iou_giou_known_values():
    a = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0]])
    b = torch.tensor([[1.0, 0.0, 0.0, 2.0, 2.0, 2.0], [10.0, 0.0, 0.0, 2.0, 2.0, 2.0]])
    iou, giou = box_iou_giou(a, b)
    assert iou[0, 0].item() == pytest.approx(4 / 12)  # overlap 1x2x2, union 8 + 8 - 4
    assert iou[0, 1].item() == 0.0
    assert giou[0, 1].item() == pytest.approx(0 - (12 * 2 * 2 - 16) / (12 * 2 * 2))


def test_box_loss_hungarian_zero_at_gt_for_any_query_order():
    gt = torch.tensor([[[1.0, 2.0, 3.0, 0.5, 0.5, 1.0], [-1.0, 0.0, 2.0, 1.0, 0.2, 0.3], [0, 0, 0, 1, 1, 1.0]]])
    gt_mask = torch.tensor([[True, True, False]])
    pred = torch.stack([gt[0, 1], torch.tensor([5.0, 5, 5, 1, 1, 1]), gt[0, 0], torch.tensor([9.0, 9, 9, 1, 1, 1])])
    logits = torch.tensor([[20.0, -20.0, 20.0, -20.0]])
    parts = box_loss(pred[None], logits, gt, gt_mask)
    assert parts["box_l1"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["box_giou"].item() == pytest.approx(0.0, abs=1e-6)
    assert parts["box_score"].item() < 1e-6
    worse = box_loss(pred[None] + 0.1, logits, gt, gt_mask)
    assert worse["box_l1"].item() == pytest.approx(0.1, abs=1e-5)
    assert worse["box"].item() > parts["box"].item()


def test_box_loss_masks_and_zero_target_items():
    pred = torch.randn(2, 3, 6, requires_grad=True)
    logits = torch.randn(2, 3, requires_grad=True)
    gt = torch.randn(2, 1, 6)
    none = box_loss(pred, logits, gt, torch.zeros(2, 1, dtype=torch.bool), torch.zeros(2, dtype=torch.bool))
    assert all(torch.isfinite(v) and v.item() == 0.0 for v in none.values())
    none["box"].backward()  # still part of the graph
    # An item that asks for grounding but has no target pushes every score to 0.
    zero_targets = box_loss(pred, logits, gt, torch.zeros(2, 1, dtype=torch.bool), torch.tensor([True, False]))
    expected = torch.nn.functional.softplus(logits[0]).mean()  # BCE with target 0
    assert zero_targets["box_score"].item() == pytest.approx(expected.item(), rel=1e-5)
    assert zero_targets["box_l1"].item() == 0.0


def test_gt_scene_scale_is_mean_point_distance():
    depth = torch.full((1, 1, 1, 1), 2.0)
    k = torch.eye(3)
    scale = gt_scene_scale(depth, torch.eye(3, 4)[None, None], k[None, None], (1, 1))
    assert scale.item() == pytest.approx(2.0)
    no_depth = gt_scene_scale(torch.zeros(1, 1, 1, 1), torch.eye(3, 4)[None, None], k[None, None], (1, 1))
    assert no_depth.item() == 1.0


def test_loss_weights_default_off_and_validation():
    assert LossWeights().geo == LossWeights().lm == LossWeights().camera == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        LossWeights(lm=-1.0)
