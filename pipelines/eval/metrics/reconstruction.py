"""Reconstruction metrics: metric-scale depth (AbsRel, delta < 1.25) and camera pose (RRA/RTA@30, AUC@30).

**Depth** is scored at metric scale, as Vid-LLM reports it: no median or least-squares rescaling of the
prediction. Only pixels with a valid ground truth (finite and ``> 0``, optionally ``<= max_depth_m``) count, and
all valid pixels of all frames passed in one call are pooled (a per-scene score; the harness averages scenes).
``AbsRel = mean(|d - d*| / d*)`` and ``delta1 = mean(max(d / d*, d* / d) < 1.25)``; a non-positive predicted depth
never satisfies ``delta1``. :func:`depth_metrics_median_scaled` is the scale-invariant variant (prediction times
``median(d*) / median(d)``) and is reported under its own ``*_median_scaled`` keys, never in place of the metric one.

**Pose** follows the VGGT / PoseDiffusion protocol over all ``S (S - 1) / 2`` frame pairs: the relative rotation
error is the geodesic angle between predicted and ground-truth relative rotations, the relative translation error is
the angle between the relative translation directions *up to sign* (PoseDiffusion's ``compare_translation_by_angle``
squares the cosine; a zero translation gives 90 degrees). We take the world-frame-independent relative pose
``cam_j <- cam_i`` so that a prediction in the first-camera frame and a ground truth in ScanNet's world frame compare
directly. ``RRA@30`` / ``RTA@30`` are the percentages of pairs with error ``< 30`` degrees; ``AUC@30`` is VGGT's
``calculate_auc_np``: the histogram of ``max(rot_err, trans_err)`` over 1-degree bins ``[0, 30]``, accumulated and
averaged over the 30 thresholds.
"""

from __future__ import annotations

import numpy as np

POSE_CONVENTIONS: tuple[str, ...] = ("cam_to_world", "world_to_cam")


def _valid_depth_mask(gt: np.ndarray, max_depth_m: float | None) -> np.ndarray:
    valid = np.isfinite(gt) & (gt > 0)
    if max_depth_m is not None:
        valid &= gt <= max_depth_m
    return valid


def _check_depth(pred: np.ndarray, gt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    pred = np.asarray(pred, dtype=np.float64)
    gt = np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape:
        raise ValueError(f"depth shapes differ: prediction {pred.shape}, ground truth {gt.shape}")
    return pred, gt


def depth_metrics(pred: np.ndarray, gt: np.ndarray, max_depth_m: float | None = None) -> dict[str, float]:
    """Metric-scale depth errors over the valid ground-truth pixels.

    Args:
        pred: predicted depth in metres, any shape (e.g. ``[S, H, W]``).
        gt: ground-truth depth in metres, same shape; ``0`` / non-finite = invalid.
        max_depth_m: ignore ground truth beyond this depth (None: no cap).

    Returns:
        ``{"abs_rel": float, "delta1": % of pixels, "num_pixels": int}``.

    Raises:
        ValueError: shape mismatch, no valid pixel, or a non-finite prediction on a valid pixel.
    """
    pred, gt = _check_depth(pred, gt)
    valid = _valid_depth_mask(gt, max_depth_m)
    if not valid.any():
        raise ValueError("ground-truth depth has no valid pixel")
    d, g = pred[valid], gt[valid]
    if not np.isfinite(d).all():
        raise ValueError("predicted depth is non-finite on valid ground-truth pixels")
    abs_rel = float(np.mean(np.abs(d - g) / g))
    with np.errstate(divide="ignore"):
        ratio = np.where(d > 0, np.maximum(d / g, g / np.where(d > 0, d, 1.0)), np.inf)
    return {
        "abs_rel": abs_rel,
        "delta1": 100.0 * float(np.mean(ratio < 1.25)),
        "num_pixels": int(valid.sum()),
    }


def depth_metrics_median_scaled(
    pred: np.ndarray, gt: np.ndarray, max_depth_m: float | None = None
) -> dict[str, float]:
    """Scale-invariant variant: the prediction is multiplied by ``median(gt) / median(pred)`` over valid pixels.

    Returns:
        ``{"abs_rel_median_scaled", "delta1_median_scaled", "median_scale"}``.
    """
    pred, gt = _check_depth(pred, gt)
    valid = _valid_depth_mask(gt, max_depth_m)
    if not valid.any():
        raise ValueError("ground-truth depth has no valid pixel")
    med_pred = float(np.median(pred[valid]))
    if not np.isfinite(med_pred) or med_pred <= 0:
        raise ValueError(f"median predicted depth must be positive for median scaling, got {med_pred}")
    scale = float(np.median(gt[valid])) / med_pred
    m = depth_metrics(pred * scale, gt, max_depth_m)
    return {"abs_rel_median_scaled": m["abs_rel"], "delta1_median_scaled": m["delta1"], "median_scale": scale}


def _as_cam_to_world(poses: np.ndarray, convention: str, name: str) -> np.ndarray:
    if convention not in POSE_CONVENTIONS:
        raise ValueError(f"pose convention must be one of {POSE_CONVENTIONS}, got {convention!r}")
    arr = np.asarray(poses, dtype=np.float64)
    if arr.ndim != 3 or arr.shape[1:] not in ((4, 4), (3, 4)):
        raise ValueError(f"{name}: expected [S, 4, 4] or [S, 3, 4] poses, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(
            f"{name}: poses contain non-finite values (lost tracking frames must be dropped first)"
        )
    if arr.shape[1] == 3:
        bottom = np.broadcast_to(np.array([0.0, 0.0, 0.0, 1.0]), (arr.shape[0], 1, 4))
        arr = np.concatenate([arr, bottom], axis=1)
    return arr if convention == "cam_to_world" else np.linalg.inv(arr)


def relative_pose_errors(
    pred: np.ndarray, gt: np.ndarray, convention: str = "cam_to_world"
) -> tuple[np.ndarray, np.ndarray]:
    """Rotation and translation-direction angle errors (degrees) over all frame pairs ``i < j``.

    Args:
        pred: ``[S, 4, 4]`` (or ``[S, 3, 4]``) predicted poses.
        gt: ground-truth poses, same shape and frame order, any world frame and scale.
        convention: ``"cam_to_world"`` (ScanNet poses) or ``"world_to_cam"`` (model extrinsics).

    Returns:
        ``(rot_err, trans_err)``, each ``[S (S - 1) / 2]`` float64 degrees.
    """
    p = _as_cam_to_world(pred, convention, "pred poses")
    g = _as_cam_to_world(gt, convention, "gt poses")
    if p.shape != g.shape:
        raise ValueError(f"pose shapes differ: prediction {p.shape}, ground truth {g.shape}")
    if p.shape[0] < 2:
        raise ValueError(f"pose metrics need at least 2 frames, got {p.shape[0]}")
    i, j = np.triu_indices(p.shape[0], k=1)
    # cam_j <- cam_i = inv(c2w_j) @ c2w_i: independent of the world frame of each trajectory.
    rel_p = np.linalg.inv(p[j]) @ p[i]
    rel_g = np.linalg.inv(g[j]) @ g[i]
    r_delta = np.swapaxes(rel_g[:, :3, :3], 1, 2) @ rel_p[:, :3, :3]
    # atan2(sin, cos) instead of arccos(cos): same angle, but accurate near 0 where arccos loses ~1e-6 degrees.
    cos_r = (np.trace(r_delta, axis1=1, axis2=2) - 1.0) / 2.0
    skew = r_delta - np.swapaxes(r_delta, 1, 2)
    sin_r = np.linalg.norm(np.stack([skew[:, 2, 1], skew[:, 0, 2], skew[:, 1, 0]], axis=1), axis=1) / 2.0
    rot_err = np.degrees(np.arctan2(sin_r, cos_r))
    tp, tg = rel_p[:, :3, 3], rel_g[:, :3, 3]
    eps = 1e-15
    tp_n = tp / (np.linalg.norm(tp, axis=1, keepdims=True) + eps)
    tg_n = tg / (np.linalg.norm(tg, axis=1, keepdims=True) + eps)
    cos_t = np.abs(np.sum(tp_n * tg_n, axis=1))
    sin_t = np.linalg.norm(np.cross(tp_n, tg_n), axis=1)
    # A zero-length translation has no direction: 90 degrees, as PoseDiffusion's eps-normalised formula gives.
    trans_err = np.where((cos_t == 0) & (sin_t == 0), 90.0, np.degrees(np.arctan2(sin_t, cos_t)))
    return rot_err, trans_err


def pose_auc(rot_err: np.ndarray, trans_err: np.ndarray, max_threshold: int = 30) -> float:
    """VGGT's AUC: mean over thresholds 1..max of the fraction of pairs whose ``max(rot, trans)`` error is below it.

    Returns:
        AUC in percent.
    """
    errors = np.maximum(np.asarray(rot_err, np.float64), np.asarray(trans_err, np.float64))
    if errors.size == 0:
        raise ValueError("no pose pair to score")
    hist, _ = np.histogram(errors, bins=np.arange(max_threshold + 1))
    return 100.0 * float(np.mean(np.cumsum(hist.astype(np.float64) / errors.size)))


def pose_metrics(
    pred: np.ndarray, gt: np.ndarray, convention: str = "cam_to_world", threshold_deg: float = 30.0
) -> dict[str, float]:
    """RRA / RTA at ``threshold_deg`` and AUC@30, in percent, over all frame pairs.

    Returns:
        ``{"rra@30": %, "rta@30": %, "auc@30": %, "num_pairs": int}`` (the threshold in the key follows
        ``threshold_deg``; AUC always integrates up to 30 degrees).
    """
    rot_err, trans_err = relative_pose_errors(pred, gt, convention)
    key = f"{threshold_deg:g}"
    return {
        f"rra@{key}": 100.0 * float(np.mean(rot_err < threshold_deg)),
        f"rta@{key}": 100.0 * float(np.mean(trans_err < threshold_deg)),
        "auc@30": pose_auc(rot_err, trans_err, 30),
        "num_pairs": int(rot_err.size),
    }
