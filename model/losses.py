"""Vid-LLM losses: pure functions plus the :class:`MultitaskLoss` combiner (weights from :class:`LossWeights`).

Stage 1 (paper §3.4): ``L_distill = L_geo + L_lang + λ L_sc``.
Stage 2: ``L_joint = L_recon (camera + depth + point map, VGGT) + L_VL (LM cross-entropy + box) + L_MD (Eq. 9)``.

Every loss is zero (or at its minimum) at the ground truth and finite (zero) when its mask is empty.

Scale: the reconstruction branch predicts geometry in VGGT's normalised scale, so its camera, depth and point
targets are divided by the GT scene scale (mean distance of valid GT points from the first camera, VGGT's
normalisation); the metric-depth model and the grounding head are supervised in metres.

Precision: every loss upcasts predictions and targets to fp32 and computes geometry (GT points, scene scale, pose
encodings) with autocast off (:mod:`model.precision`), so a bf16 run optimises the same objective as an fp32 one.

Matching: box targets are assigned to queries with the Hungarian algorithm from
``scipy.optimize.linear_sum_assignment`` on a detached CPU cost matrix. It lives here, outside ``nn.Module``
code, so ``model/`` modules stay pure torch; the assignment is not differentiated (as in DETR).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from model.batch import VidLLMBatch
from model.config import LossWeights
from model.geometry import backproject_depth
from model.outputs import VidLLMOutput
from model.pose_encoding import extrinsics_intrinsics_to_pose_encoding
from model.precision import fp32_region


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp(min=1.0)


# ---------------------------------------------------------------- Stage 1: distillation

def geo_distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Patch-level ``mean ||Norm(s) - Norm(t)||²`` over ``[..., P, D]`` tokens (0 when directions match)."""
    if student.numel() == 0:
        return student.sum()
    diff = F.normalize(student.float(), dim=-1) - F.normalize(teacher.float(), dim=-1)
    return diff.pow(2).sum(dim=-1).mean()


def lang_distill_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """``mean(1 - cos(s, t))`` over pooled ``[..., D]`` features."""
    if student.numel() == 0:
        return student.sum()
    return (1.0 - F.cosine_similarity(student.float(), teacher.float(), dim=-1)).mean()


def structural_consistency_loss(
    student_geo: torch.Tensor | None,
    teacher_geo: torch.Tensor | None,
    student_sem: torch.Tensor | None = None,
    teacher_sem: torch.Tensor | None = None,
) -> torch.Tensor:
    """Paper Eq. 7, ``L_sc = (1/M²) ||S_stu - S_tea||_F²`` with ``S = Z Zᵀ``, ``Z = [Norm(T'_geom); Norm(T'_lang)]``,
    per frame, averaged over frames.

    **Student side**, as the equation writes it: ``Z_stu`` stacks the ``Pt`` geometry tokens (resampled to the
    teacher grid) and the ``P`` *tokens* of the semantic stream, each L2-normalised: ``M = Pt + P`` rows.

    **Teacher side.** The geometry teacher gives ``Pt`` patch tokens, the rows of ``Norm(T^geo_tea)``. The semantic
    teacher (CLIP) gives only one pooled feature per frame, so where the teacher is pooled its pooled feature
    stands in for every semantic token: each of the ``P`` semantic rows of ``Z_tea`` is ``Norm(Pool(T^lang_tea))``
    (the same vector ``L_lang`` uses). ``S_tea = Z_tea Z_teaᵀ`` then has three blocks:

    * geometry x geometry (``Pt x Pt``): the teacher's patch similarities, compared entry by entry;
    * geometry x semantic (``Pt x P``, and its transpose): ``cos(t_i, t̄)``, how each geometry patch relates to the
      frame's global semantics, the target for ``cos(g_i, l_k)`` of *every* student semantic token ``k``;
    * semantic x semantic (``P x P``): identically 1 (a repeated unit vector). It carries no information about the
      teacher, and matching it would pull every semantic token of a frame onto one direction (token collapse,
      destroying the per-patch semantics the 3D-VL branch lifts into 3D). This block is left out.

    The loss is therefore ``||W ⊙ (S_stu - S_tea)||_F² / sum(W)`` with ``W`` zero on the semantic x semantic
    block and one elsewhere; ``sum(W) = Pt² + 2 Pt P`` replaces the paper's ``M²`` so the value is a mean squared
    difference per compared entry. The two informative blocks are computed directly (``Pt x Pt`` and ``Pt x P``
    matrices); the ``M x M`` Gram matrix is never materialised. With geometry tokens only (no semantic teacher)
    this is the plain ``Pt x Pt`` Gram loss. Without geometry tokens no teacher similarity is defined and the loss
    is 0.

    Args:
        student_geo: ``[B, S, Pt, D]`` projected student geometry tokens on the teacher grid, or ``None``.
        teacher_geo: ``[B, S, Pt, D]`` projected geometry-teacher tokens (``None`` with ``student_geo``).
        student_sem: ``[B, S, P, D]`` projected student semantic tokens, or ``None``.
        teacher_sem: ``[B, S, D]`` projected pooled semantic-teacher feature (``None`` with ``student_sem``).

    Returns:
        Scalar fp32 loss, 0 when the student and teacher similarity structures agree.
    """
    if student_geo is None:
        if student_sem is None:
            raise ValueError("structural_consistency_loss needs geometry tokens, semantic tokens or both")
        return student_sem.sum() * 0.0
    g_s = F.normalize(student_geo.float(), dim=-1).flatten(0, 1)  # [N, Pt, D]
    g_t = F.normalize(teacher_geo.float(), dim=-1).flatten(0, 1)
    if g_s.numel() == 0:
        return g_s.sum()
    pt = g_s.shape[1]
    squared = (g_s @ g_s.transpose(1, 2) - g_t @ g_t.transpose(1, 2)).pow(2).sum(dim=(1, 2))
    entries = pt * pt
    if student_sem is not None:
        l_s = F.normalize(student_sem.float(), dim=-1).flatten(0, 1)  # [N, P, D]
        t_bar = F.normalize(teacher_sem.float(), dim=-1).flatten(0, 1)  # [N, D]
        cross_s = g_s @ l_s.transpose(1, 2)  # [N, Pt, P]
        cross_t = (g_t @ t_bar[..., None])  # [N, Pt, 1]: the same for every semantic token
        squared = squared + 2 * (cross_s - cross_t).pow(2).sum(dim=(1, 2))  # both off-diagonal blocks
        entries += 2 * pt * l_s.shape[1]
    return (squared / entries).mean()


# ---------------------------------------------------------------- Stage 2: reconstruction

def camera_loss(
    pose_enc_list: list[torch.Tensor],
    gt_pose_enc: torch.Tensor,
    gamma: float = 0.6,
    weight_trans: float = 1.0,
    weight_rot: float = 1.0,
    weight_fov: float = 0.5,
) -> torch.Tensor:
    """VGGT camera loss: L1 on the 9-d pose encoding (T 3, quaternion 4, FoV 2) of every refinement iteration,
    iteration ``i`` of ``n`` weighted ``gamma ** (n - 1 - i)`` (the last counts most), normalised by the weights.

    Args:
        pose_enc_list: per iteration ``[B, S, 9]``.
        gt_pose_enc: ``[B, S, 9]`` (translation in the same scale as the prediction).
    """
    n = len(pose_enc_list)
    if n == 0:
        raise ValueError("camera_loss needs at least one pose-encoding iteration")
    total = gt_pose_enc.new_zeros(())
    norm = 0.0
    for i, pred in enumerate(pose_enc_list):
        w = gamma ** (n - 1 - i)
        err = (pred.float() - gt_pose_enc.float()).abs()
        total = total + w * (weight_trans * err[..., :3].mean() + weight_rot * err[..., 3:7].mean()
                             + weight_fov * err[..., 7:].mean())
        norm += w
    return total / norm


def depth_loss(
    pred: torch.Tensor,
    conf: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor,
    alpha: float = 0.2,
    grad_weight: float = 1.0,
) -> torch.Tensor:
    """VGGT confidence-weighted depth loss ``mean(|d - d*| c - α log c)`` plus a gradient-matching term.

    The gradient term is the L1 of horizontal/vertical finite differences of ``d - d*`` over pairs of valid
    neighbours (penalises wrong local shape, not offsets). Zero at ``d = d*`` with ``c = 1``.

    Args:
        pred, conf, gt: ``[B, S, H, W]`` (conf >= 1).
        valid: ``[B, S, H, W]`` bool.
    """
    err = pred.float() - gt.float()
    conf = conf.float()
    main = _masked_mean(err.abs() * conf - alpha * torch.log(conf), valid)
    return main + grad_weight * _gradient_term(err[..., None], valid)


def _gradient_term(err: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean L1 of horizontal plus vertical finite differences of ``err`` ``[B, S, H, W, C]`` (averaged over the
    C channels) over pairs of valid neighbours ``[B, S, H, W]``."""
    gx_mask = valid[..., :, 1:] & valid[..., :, :-1]
    gy_mask = valid[..., 1:, :] & valid[..., :-1, :]
    gx = _masked_mean((err[..., :, 1:, :] - err[..., :, :-1, :]).abs().mean(dim=-1), gx_mask)
    gy = _masked_mean((err[..., 1:, :, :] - err[..., :-1, :, :]).abs().mean(dim=-1), gy_mask)
    return gx + gy


def point_loss(
    pred: torch.Tensor,
    conf: torch.Tensor,
    gt: torch.Tensor,
    valid: torch.Tensor,
    alpha: float = 0.2,
    grad_weight: float = 1.0,
) -> torch.Tensor:
    """VGGT's confidence-weighted point-map loss (``regression_loss`` in its ``training/loss.py``).

    ``mean(||p - p*|| c - α log c)`` over valid pixels, with ``||.||`` the Euclidean distance of the 3D error,
    plus a gradient term: the L1 of horizontal/vertical finite differences of ``p - p*`` over valid neighbour
    pairs (averaged over x, y, z; penalises wrong local shape, not offsets). Zero at ``p = p*`` with ``c = 1``.

    Args:
        pred: ``[B, S, H, W, 3]`` predicted world points (first-camera frame, normalised scale).
        conf: ``[B, S, H, W]`` confidence (>= 1).
        gt: ``[B, S, H, W, 3]`` GT world points in the same frame and scale.
        valid: ``[B, S, H, W]`` bool.
    """
    err = pred.float() - gt.float()
    conf = conf.float()
    main = _masked_mean(err.norm(dim=-1) * conf - alpha * torch.log(conf), valid)
    return main + grad_weight * _gradient_term(err, valid)


def metric_depth_loss(pred: torch.Tensor, gt: torch.Tensor, valid: torch.Tensor, alpha: float = 0.5,
                      eps: float = 1e-6) -> torch.Tensor:
    """Paper Eq. 9, per image: ``b² + mean((e - b)² / (1 + α|e - b|))`` with ``e = log(d + ε) - log(d* + ε)``
    and ``b`` the mean of ``e`` over the image's valid pixels; averaged over images with valid pixels.

    Args:
        pred, gt: ``[B, S, H, W]`` metres.
        valid: ``[B, S, H, W]`` bool.
    """
    e = torch.log(pred.float().clamp(min=0) + eps) - torch.log(gt.float().clamp(min=0) + eps)
    e = torch.where(valid, e, torch.zeros_like(e))
    count = valid.flatten(2).sum(dim=-1).float()  # [B, S]
    b = e.flatten(2).sum(dim=-1) / count.clamp(min=1)
    dev = (e - b[..., None, None]) * valid
    robust = (dev.pow(2) / (1 + alpha * dev.abs())).flatten(2).sum(dim=-1) / count.clamp(min=1)
    per_image = b.pow(2) + robust
    return _masked_mean(per_image, count > 0)


# ---------------------------------------------------------------- Stage 2: 3D-VL

def lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Next-token cross-entropy: ``logits[:, t]`` predicts ``labels[:, t + 1]``; -100 ignored; 0 if none."""
    shift_logits = logits[:, :-1].float().reshape(-1, logits.shape[-1])
    shift_labels = labels[:, 1:].reshape(-1)
    if (shift_labels != -100).sum() == 0:
        return logits.sum() * 0.0
    return F.cross_entropy(shift_logits, shift_labels, ignore_index=-100)


def box_corners(boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``[..., 6]`` centre+size -> (min ``[..., 3]``, max ``[..., 3]``)."""
    half = boxes[..., 3:].abs() / 2
    return boxes[..., :3] - half, boxes[..., :3] + half


def box_iou_giou(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Axis-aligned 3D IoU and generalised IoU between ``[N, 6]`` and ``[M, 6]`` boxes -> two ``[N, M]``."""
    a_min, a_max = box_corners(a[:, None])
    b_min, b_max = box_corners(b[None])
    inter = (torch.minimum(a_max, b_max) - torch.maximum(a_min, b_min)).clamp(min=0).prod(dim=-1)
    vol_a = (a_max - a_min).prod(dim=-1)
    vol_b = (b_max - b_min).prod(dim=-1)
    union = (vol_a + vol_b - inter).clamp(min=1e-9)
    iou = inter / union
    enclose = (torch.maximum(a_max, b_max) - torch.minimum(a_min, b_min)).prod(dim=-1).clamp(min=1e-9)
    return iou, iou - (enclose - union) / enclose


def hungarian_match(pred_boxes: torch.Tensor, pred_logits: torch.Tensor, gt_boxes: torch.Tensor,
                    weights: LossWeights) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimal query->target assignment for one item: ``[Q, 6]``, ``[Q]``, ``[T, 6]`` -> (query idx, target idx)."""
    with torch.no_grad():
        _, giou = box_iou_giou(pred_boxes.float(), gt_boxes.float())
        cost = (weights.box_l1 * torch.cdist(pred_boxes.float(), gt_boxes.float(), p=1)
                + weights.box_giou * (1 - giou)
                - weights.box_score * pred_logits.float().sigmoid()[:, None])
        rows, cols = linear_sum_assignment(cost.cpu().numpy())
    device = pred_boxes.device
    return torch.as_tensor(rows, device=device, dtype=torch.long), torch.as_tensor(cols, device=device,
                                                                                     dtype=torch.long)


def box_loss(
    pred_boxes: torch.Tensor,
    pred_logits: torch.Tensor,
    gt_boxes: torch.Tensor,
    gt_mask: torch.Tensor,
    item_mask: torch.Tensor | None = None,
    weights: LossWeights | None = None,
) -> dict[str, torch.Tensor]:
    """Hungarian-matched box loss for several targets per item (Multi3DRefer; ScanRefer is T = 1).

    Args:
        pred_boxes: ``[B, Q, 6]`` metres; pred_logits: ``[B, Q]`` score logits.
        gt_boxes: ``[B, T, 6]``; gt_mask: ``[B, T]`` bool.
        item_mask: ``[B]`` bool, items that ask for grounding (have ``<loc>``); others contribute nothing.
            An item with ``item_mask`` True and no targets trains all scores towards 0.

    Returns:
        ``{"box_l1", "box_giou", "box_score", "box"}``: L1 over matched boxes (mean over coordinates and
        targets), ``1 - GIoU`` over matched boxes, score BCE (matched -> 1, others -> 0) over queries of
        grounding items, and their weighted sum. All zero when nothing is to be grounded.
    """
    weights = weights or LossWeights()
    b, q, _ = pred_boxes.shape
    if item_mask is None:
        item_mask = torch.ones(b, dtype=torch.bool, device=pred_boxes.device)
    zero = (pred_boxes.sum() + pred_logits.sum()) * 0.0  # keeps every head parameter in the graph
    l1, giou_loss, n_targets = zero, zero, 0
    score_target = torch.zeros_like(pred_logits, dtype=torch.float32)
    for i in range(b):
        if not bool(item_mask[i]):
            continue
        gt = gt_boxes[i][gt_mask[i]]
        if gt.shape[0] == 0:
            continue
        rows, cols = hungarian_match(pred_boxes[i], pred_logits[i], gt, weights)
        matched, target = pred_boxes[i, rows].float(), gt[cols].float()
        l1 = l1 + (matched - target).abs().mean(dim=-1).sum()
        _, giou = box_iou_giou(matched, target)
        giou_loss = giou_loss + (1 - giou.diagonal()).sum()
        n_targets += len(rows)
        score_target[i, rows] = 1.0
    l1 = l1 / max(n_targets, 1)
    giou_loss = giou_loss / max(n_targets, 1)
    if item_mask.any():
        bce = F.binary_cross_entropy_with_logits(pred_logits.float(), score_target, reduction="none")
        score = bce[item_mask].mean()
    else:
        score = zero
    total = weights.box_l1 * l1 + weights.box_giou * giou_loss + weights.box_score * score
    return {"box_l1": l1, "box_giou": giou_loss, "box_score": score, "box": total}


# ---------------------------------------------------------------- targets and the combiner

def gt_scene_scale(depth: torch.Tensor, extrinsics: torch.Tensor, intrinsics: torch.Tensor,
                   image_hw: tuple[int, int]) -> torch.Tensor:
    """VGGT normalisation: mean distance of valid GT points from the first camera (metres) -> ``[B]``.

    Falls back to the mean camera-centre distance, then 1, for clips without valid depth.
    """
    depth, extrinsics, intrinsics = depth.float(), extrinsics.float(), intrinsics.float()
    with fp32_region(depth):
        points = backproject_depth(depth, extrinsics, intrinsics, image_hw)
        valid = (depth > 0).float()
        dist = points.norm(dim=-1)
        scale = (dist * valid).flatten(1).sum(dim=1) / valid.flatten(1).sum(dim=1).clamp(min=1)
        rot, trans = extrinsics[..., :3], extrinsics[..., 3]
        centres = -(rot.transpose(-1, -2) @ trans[..., None]).squeeze(-1)
        cam_scale = centres.norm(dim=-1).mean(dim=1)
        scale = torch.where(scale > 0, scale, cam_scale)
        return torch.where(scale > 0, scale, torch.ones_like(scale))


class MultitaskLoss:
    """Weighted sum of the losses whose weight is > 0 and whose targets are in the batch.

    Args:
        weights: :class:`LossWeights` (the training stages set theirs in ``pipelines/train/config.py``).

    Call: ``loss(output, batch) -> (total, terms)`` where ``terms`` maps each computed loss name (``geo``,
    ``lang``, ``sc``, ``camera``, ``depth``, ``point``, ``metric_depth``, ``lm``, ``box`` and the box parts) to its
    *unweighted, detached* value for logging; ``total`` carries the graph.
    """

    def __init__(self, weights: LossWeights) -> None:
        self.weights = weights

    def __call__(self, output: VidLLMOutput, batch: VidLLMBatch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        w = self.weights
        terms: dict[str, torch.Tensor] = {}
        weighted: list[torch.Tensor] = []

        def add(name: str, weight: float, value: torch.Tensor) -> None:
            terms[name] = value.detach()
            weighted.append(weight * value)

        d = output.distill
        if d is not None:
            if w.geo > 0 and d.student_geo is not None:
                add("geo", w.geo, geo_distill_loss(d.student_geo, d.teacher_geo))
            if w.lang > 0 and d.student_sem is not None:
                add("lang", w.lang, lang_distill_loss(d.student_sem, d.teacher_sem))
            if w.sc > 0 and (d.student_geo is not None or d.student_sem_tokens is not None):
                add("sc", w.sc, structural_consistency_loss(d.student_geo, d.teacher_geo, d.student_sem_tokens,
                                                            d.teacher_sem))
        rec = output.reconstruction
        has_cam = batch.extrinsics is not None and batch.intrinsics is not None
        if rec is not None and has_cam and (w.camera > 0 or w.depth > 0 or w.point > 0):
            if batch.depth is not None:
                scale = gt_scene_scale(batch.depth, batch.extrinsics, batch.intrinsics, output.image_hw)
            else:
                scale = torch.ones(batch.frames.shape[0], device=batch.frames.device)
            if w.camera > 0:
                gt_extr = batch.extrinsics.float().clone()
                gt_extr[..., 3] = gt_extr[..., 3] / scale[:, None, None]
                gt_enc = extrinsics_intrinsics_to_pose_encoding(gt_extr, batch.intrinsics.float(), output.image_hw)
                add("camera", w.camera, camera_loss(rec.pose_enc_list, gt_enc, w.camera_gamma,
                                                    w.camera_weight_trans, w.camera_weight_rot,
                                                    w.camera_weight_fov))
            if w.depth > 0 and batch.depth is not None:
                gt = batch.depth.float() / scale[:, None, None, None]
                add("depth", w.depth, depth_loss(rec.depth, rec.depth_conf, gt, batch.depth > 0, w.depth_alpha,
                                                 w.depth_grad_weight))
            if w.point > 0 and batch.depth is not None and rec.world_points is not None:
                with fp32_region(rec.world_points):
                    gt_points = backproject_depth(batch.depth.float(), batch.extrinsics.float(),
                                                  batch.intrinsics.float(), output.image_hw)
                gt_points = gt_points / scale[:, None, None, None, None]
                add("point", w.point, point_loss(rec.world_points, rec.world_points_conf, gt_points,
                                                 batch.depth > 0, w.point_alpha, w.point_grad_weight))
        md = output.metric_depth
        if md is not None and w.metric_depth > 0 and batch.depth is not None:
            gt = batch.depth.float()
            if gt.shape[-2:] != md.depth.shape[-2:]:
                gt = F.interpolate(gt.flatten(0, 1)[:, None], size=md.depth.shape[-2:], mode="nearest")
                gt = gt[:, 0].reshape(*batch.depth.shape[:2], *md.depth.shape[-2:])
            add("metric_depth", w.metric_depth, metric_depth_loss(md.depth, gt, gt > 0, w.metric_depth_alpha))
        if w.lm > 0 and output.lm_logits is not None and output.lm_labels is not None:
            add("lm", w.lm, lm_loss(output.lm_logits, output.lm_labels))
        if w.box > 0 and output.grounding is not None and batch.boxes is not None:
            parts = box_loss(output.grounding.boxes, output.grounding.scores, batch.boxes, batch.box_mask,
                             output.has_loc, w)
            for name in ("box_l1", "box_giou", "box_score"):
                terms[name] = parts[name].detach()
            add("box", w.box, parts["box"])
        if not weighted:
            raise ValueError(f"MultitaskLoss: no loss could be computed (weights {w}, batch fields present: "
                             f"{[k for k, v in vars(batch).items() if v is not None]})")
        return torch.stack([t.float() for t in weighted]).sum(), terms
