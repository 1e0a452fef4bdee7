"""Frame alignment between the model's first-camera frame and ScanNet's axis-aligned benchmark frame.

Vid-LLM reconstructs a clip in the frame of its first camera (OpenCV axes, metric scale): grounding boxes come out
as axis-aligned boxes *in that frame*. ScanRefer / Multi3DRefer / Scan2Cap boxes are axis-aligned boxes in ScanNet's
axis-aligned scene frame. The two are related by a rigid transform that only the ground truth knows:

    T_aligned<-first = axisAlignment @ cam_to_world_raw(first frame)

(``axisAlignment`` from the scene ``.txt``, identity for test scans; ``cam_to_world_raw`` the ScanNet pose of the
clip's first frame). It is used **at evaluation only** to carry predictions into the benchmark frame, and its
inverse to carry ground-truth boxes into the first-camera frame to build training targets.

A box is transformed by mapping its 8 corners and taking their axis-aligned bounding box (AABB). Under a rotation
that is not a multiple of 90 degrees about the axes the AABB grows, so a round trip is not the identity; that
inflation is inherent to axis-aligned boxes and is the same for every method evaluated this way.
"""

from __future__ import annotations

import numpy as np

from pipelines.eval.metrics.boxes import as_boxes, box_corners, minmax_to_boxes


def _check_rigid(matrix: np.ndarray, name: str) -> np.ndarray:
    m = np.asarray(matrix, dtype=np.float64)
    if m.shape != (4, 4):
        raise ValueError(f"{name}: expected a 4x4 matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name}: matrix is not finite (a lost-tracking ScanNet pose cannot anchor a clip)")
    if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=1e-6):
        raise ValueError(f"{name}: last row must be [0, 0, 0, 1], got {m[3].tolist()}")
    return m


def first_camera_to_aligned(axis_alignment: np.ndarray, first_cam_to_world: np.ndarray) -> np.ndarray:
    """``T_aligned<-first``: maps points from the clip's first-camera frame to the axis-aligned scene frame.

    Args:
        axis_alignment: ``[4, 4]`` ScanNet ``axisAlignment`` (raw world -> axis-aligned), identity when absent.
        first_cam_to_world: ``[4, 4]`` ground-truth camera-to-world pose (raw ScanNet world) of the first frame.

    Returns:
        ``[4, 4]`` float64 rigid transform.
    """
    a = _check_rigid(axis_alignment, "axis_alignment")
    c = _check_rigid(first_cam_to_world, "first_cam_to_world")
    rot = c[:3, :3]
    if not np.allclose(rot.T @ rot, np.eye(3), atol=1e-4):
        raise ValueError("first_cam_to_world: rotation block is not orthonormal")
    return a @ c


def transform_points(points: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Apply a ``[4, 4]`` transform to ``[..., 3]`` points."""
    t = _check_rigid(transform, "transform")
    pts = np.asarray(points, dtype=np.float64)
    return pts @ t[:3, :3].T + t[:3, 3]


def transform_boxes(boxes: np.ndarray, transform: np.ndarray) -> np.ndarray:
    """Transform centre+size boxes: map the 8 corners, take their AABB.

    Args:
        boxes: ``[N, 6]`` (or ``[6]``) centre+size boxes in the source frame, metres.
        transform: ``[4, 4]`` target <- source rigid transform.

    Returns:
        ``[N, 6]`` centre+size AABBs in the target frame.
    """
    b = as_boxes(boxes)
    if b.shape[0] == 0:
        return b
    corners = transform_points(box_corners(b), transform)  # [N, 8, 3]
    return minmax_to_boxes(corners.min(axis=1), corners.max(axis=1))


def aligned_boxes_to_first_camera(
    boxes_aligned: np.ndarray, axis_alignment: np.ndarray, first_cam_to_world: np.ndarray
) -> np.ndarray:
    """Ground-truth boxes (axis-aligned scene frame) -> the clip's first-camera frame, for training targets."""
    t = first_camera_to_aligned(axis_alignment, first_cam_to_world)
    return transform_boxes(boxes_aligned, np.linalg.inv(t))
