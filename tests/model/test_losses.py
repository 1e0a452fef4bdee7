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
    gt_scene_scale,
    lang_distill_loss,
    lm_loss,
    metric_depth_loss,
    point_loss,
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


def _eq7_by_the_book(sg, tg, ss, ts):
    """Eq. 7 with the M x M Gram matrices built explicitly: Z_stu = [geo tokens; semantic tokens], Z_tea = [teacher
    geo tokens; the pooled teacher feature once per semantic token], the semantic x semantic block masked out."""
    import torch.nn.functional as F

    n = lambda x: F.normalize(x, dim=-1)  # noqa: E731
    losses = []
    for b in range(sg.shape[0]):
        for f in range(sg.shape[1]):
            pt, p = sg.shape[2], ss.shape[2]
            z_s = torch.cat([n(sg[b, f]), n(ss[b, f])])
            z_t = torch.cat([n(tg[b, f]), n(ts[b, f]).expand(p, -1)])
            w = torch.ones(pt + p, pt + p)
            w[pt:, pt:] = 0
            diff = z_s @ z_s.T - z_t @ z_t.T
            losses.append((w * diff.pow(2)).sum() / w.sum())
    return torch.stack(losses).mean()


def test_structural_consistency_is_eq7_over_the_semantic_tokens_with_the_pooled_teacher():
    gen = torch.Generator().manual_seed(0)
    sg, tg = torch.randn(2, 3, 4, 6, generator=gen), torch.randn(2, 3, 4, 6, generator=gen)
    ss, ts = torch.randn(2, 3, 5, 6, generator=gen), torch.randn(2, 3, 6, generator=gen)
    value = structural_consistency_loss(sg, tg, ss, ts)
    assert value.item() == pytest.approx(_eq7_by_the_book(sg, tg, ss, ts).item(), rel=1e-5)
    # Every semantic token counts, not only their mean: moving two tokens in opposite directions keeps the pooled
    # feature but changes the loss.
    moved = ss.clone()
    moved[:, :, 0] += 3.0
    moved[:, :, 1] -= 3.0
    assert torch.allclose(moved.mean(dim=2), ss.mean(dim=2), atol=1e-6)
    assert structural_consistency_loss(sg, tg, moved, ts).item() != pytest.approx(value.item(), rel=1e-3)
    # The semantic x semantic block is not compared. Geometry tokens span e1..e3; the pooled teacher feature is
    # t = cos(phi) e1 + sin(phi) e4; the student's semantic tokens l_k = cos(phi) e1 + sin(phi) e_{4+k} relate to
    # every geometry token exactly as t does, but not to each other as copies of t would (cos² phi, not 1).
    phi = 0.7
    geo = torch.zeros(1, 1, 4, 6)
    geo[..., :3] = torch.randn(1, 1, 4, 3, generator=gen)
    pooled = torch.zeros(1, 1, 6)
    pooled[..., 0], pooled[..., 3] = math.cos(phi), math.sin(phi)
    tokens = torch.zeros(1, 1, 3, 6)
    tokens[..., 0] = math.cos(phi)
    for k in range(3):
        tokens[0, 0, k, 3 + k] = math.sin(phi)
    assert structural_consistency_loss(geo, geo, tokens, pooled).item() == pytest.approx(0.0, abs=1e-6)
    mutual = tokens[0, 0] @ tokens[0, 0].T
    assert mutual[0, 1].item() == pytest.approx(math.cos(phi) ** 2, abs=1e-6)  # the block that is left out


def test_structural_consistency_is_rotation_invariant_and_reduces_to_the_geometry_gram():
    torch.manual_seed(0)
    geo, sem_tokens, sem = torch.randn(2, 3, 4, 6), torch.randn(2, 3, 5, 6), torch.randn(2, 3, 6)
    q, _ = torch.linalg.qr(torch.randn(6, 6))
    # A rotated copy has the same token similarities: L_sc = 0 although L_geo > 0.
    reference = structural_consistency_loss(geo, geo, sem_tokens, sem)
    rotated = structural_consistency_loss(geo @ q, geo, sem_tokens @ q, sem)
    assert rotated.item() == pytest.approx(reference.item(), abs=1e-6)
    assert structural_consistency_loss(geo @ q, geo).item() == pytest.approx(0.0, abs=1e-6)
    assert geo_distill_loss(geo @ q, geo).item() > 0.1
    # Hand value, geometry only: two tokens, student orthogonal, teacher parallel -> off-diagonals differ by 1.
    s = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    t = torch.tensor([[[[1.0, 0.0], [1.0, 0.0]]]])
    assert structural_consistency_loss(s, t).item() == pytest.approx(0.5)
    # No geometry tokens: no teacher similarity is defined; zero, but still in the graph.
    tokens = torch.randn(1, 1, 3, 2, requires_grad=True)
    none = structural_consistency_loss(None, None, tokens, torch.randn(1, 1, 2))
    assert none.item() == 0.0 and none.requires_grad
    with pytest.raises(ValueError, match="needs geometry tokens"):
        structural_consistency_loss(None, None)


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


def test_loss_weights_point_defaults_off():
    assert LossWeights().point == 0.0 and LossWeights().point_alpha == 0.2


def test_loss_weights_default_off_and_validation():
    assert LossWeights().geo == LossWeights().lm == LossWeights().camera == 0.0
    with pytest.raises(ValueError, match="non-negative"):
        LossWeights(lm=-1.0)


def test_point_loss_zero_at_gt_confidence_weighted_distance_and_finite_when_empty():
    gt = torch.randn(1, 2, 5, 6, 3)
    valid = torch.ones(1, 2, 5, 6, dtype=torch.bool)
    conf = torch.ones(1, 2, 5, 6)
    assert point_loss(gt, conf, gt, valid).item() == pytest.approx(0.0, abs=1e-7)
    offset = gt + torch.tensor([0.3, 0.0, 0.4])  # a constant offset: distance 0.5, no gradient term
    assert point_loss(offset, conf, gt, valid).item() == pytest.approx(0.5, abs=1e-6)
    # VGGT's c * err - alpha * log c: confidence 2 doubles the error and subtracts alpha log 2.
    assert point_loss(offset, 2 * conf, gt, valid, alpha=0.2).item() == pytest.approx(1.0 - 0.2 * math.log(2), abs=1e-6)
    bent = gt.clone()
    bent[..., 3:, :] += 1.0  # a step between columns 2 and 3: the gradient term sees it
    assert point_loss(bent, conf, gt, valid, grad_weight=1.0).item() > point_loss(bent, conf, gt, valid,
                                                                                  grad_weight=0.0).item()
    empty = point_loss(offset, conf, gt, torch.zeros_like(valid))
    assert torch.isfinite(empty) and empty.item() == 0.0


def test_multitask_point_term_uses_gt_points_in_the_first_camera_frame_at_the_gt_scene_scale(tokenizer):
    """With the point head predicting exactly the back-projected GT depth (normalised like depth), the point
    term is 0; shifting the prediction by 0.1 scene units costs exactly 0.1."""
    from types import SimpleNamespace

    from model.geometry import backproject_depth
    from model.losses import MultitaskLoss

    from .conftest import make_batch

    batch = make_batch(tokenizer)
    scale = gt_scene_scale(batch.depth, batch.extrinsics, batch.intrinsics, (28, 28))
    gt_points = backproject_depth(batch.depth, batch.extrinsics, batch.intrinsics, (28, 28))
    gt_points = gt_points / scale[:, None, None, None, None]
    conf = torch.ones(batch.depth.shape)
    for shift, expected in ((0.0, 0.0), (0.1, 0.1)):
        rec = SimpleNamespace(world_points=gt_points + torch.tensor([shift, 0.0, 0.0]), world_points_conf=conf)
        out = SimpleNamespace(distill=None, reconstruction=rec, metric_depth=None, lm_logits=None, grounding=None,
                              image_hw=(28, 28))
        _, terms = MultitaskLoss(LossWeights(point=1.0))(out, batch)
        assert terms["point"].item() == pytest.approx(expected, abs=1e-5)
