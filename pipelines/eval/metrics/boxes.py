"""Axis-aligned 3D boxes: conversions and IoU as the ScanRefer / Multi3DRefer / Scan2Cap evaluators compute it.

Boxes are ``[cx, cy, cz, dx, dy, dz]`` (centre and full extents, metres) in one common frame, the layout of the
benchmark annotations. The reference ``box3d_iou`` (ScanRefer ``utils/box_util.py``) builds the 8 corners and takes
their per-axis min/max before intersecting; for an axis-aligned centre+size box that is exactly ``centre -/+ size/2``,
so we intersect the min/max directly and keep :func:`box_corners` for callers that transform boxes (alignment).
"""

from __future__ import annotations

import numpy as np


def as_boxes(boxes: np.ndarray | list, name: str = "boxes") -> np.ndarray:
    """Validate and convert boxes to a float64 ``[N, 6]`` array.

    Args:
        boxes: ``[N, 6]`` or ``[6]`` centre+size boxes.
        name: used in the error message.

    Returns:
        ``[N, 6]`` float64 array.

    Raises:
        ValueError: wrong shape, non-finite values or negative sizes.
    """
    arr = np.asarray(boxes, dtype=np.float64)
    if arr.ndim == 1 and arr.shape[0] == 6:
        arr = arr[None]
    if arr.size == 0:
        return np.zeros((0, 6), dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 6:
        raise ValueError(f"{name}: expected [N, 6] centre+size boxes, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: boxes contain non-finite values")
    if (arr[:, 3:] < 0).any():
        raise ValueError(f"{name}: box sizes must be >= 0, got {arr[:, 3:].min()}")
    return arr


def box_minmax(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, 6]`` centre+size -> (``[N, 3]`` min corner, ``[N, 3]`` max corner)."""
    boxes = as_boxes(boxes)
    half = boxes[:, 3:] / 2.0
    return boxes[:, :3] - half, boxes[:, :3] + half


def minmax_to_boxes(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(``[N, 3]`` min, ``[N, 3]`` max) -> ``[N, 6]`` centre+size."""
    lo = np.asarray(lo, dtype=np.float64)
    hi = np.asarray(hi, dtype=np.float64)
    return np.concatenate([(lo + hi) / 2.0, hi - lo], axis=-1)


def box_corners(boxes: np.ndarray) -> np.ndarray:
    """The 8 corners of each box, ``[N, 8, 3]`` (order: binary counting over x, y, z of min/max)."""
    lo, hi = box_minmax(boxes)
    bits = np.array([[(i >> 0) & 1, (i >> 1) & 1, (i >> 2) & 1] for i in range(8)], dtype=bool)  # [8, 3]
    return np.where(bits[None], hi[:, None, :], lo[:, None, :])


def box_iou_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Axis-aligned 3D IoU between every predicted and every ground-truth box.

    Args:
        pred: ``[P, 6]`` centre+size boxes.
        gt: ``[G, 6]`` centre+size boxes, same frame as ``pred``.

    Returns:
        ``[P, G]`` float64 IoU in [0, 1]. Touching boxes (zero-volume intersection) give 0; two degenerate
        zero-volume boxes give 0 rather than NaN.
    """
    plo, phi = box_minmax(pred)
    glo, ghi = box_minmax(gt)
    inter_lo = np.maximum(plo[:, None, :], glo[None, :, :])
    inter_hi = np.minimum(phi[:, None, :], ghi[None, :, :])
    inter = np.clip(inter_hi - inter_lo, 0.0, None).prod(axis=-1)
    vol_p = (phi - plo).prod(axis=-1)
    vol_g = (ghi - glo).prod(axis=-1)
    union = vol_p[:, None] + vol_g[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)
    return iou
