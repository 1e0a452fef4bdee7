"""Axis-aligned IoU on hand-computed boxes, and the first-camera <-> axis-aligned frame transforms."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.eval.alignment import (
    aligned_boxes_to_first_camera,
    first_camera_to_aligned,
    transform_boxes,
)
from pipelines.eval.metrics.boxes import as_boxes, box_corners, box_iou_matrix
from tests.eval.builders import box_iou

CUBE2 = [0.0, 0.0, 0.0, 2.0, 2.0, 2.0]


@pytest.mark.parametrize(
    ("other", "expected"),
    [
        (CUBE2, 1.0),  # identical
        ([1.0, 0.0, 0.0, 2.0, 2.0, 2.0], 4.0 / 12.0),  # half overlap along x: 4 / (8 + 8 - 4)
        ([5.0, 0.0, 0.0, 2.0, 2.0, 2.0], 0.0),  # disjoint
        ([2.0, 0.0, 0.0, 2.0, 2.0, 2.0], 0.0),  # touching faces: zero-volume intersection
        ([2.0, 2.0, 2.0, 2.0, 2.0, 2.0], 0.0),  # touching at one corner
        ([0.0, 0.0, 0.0, 1.0, 1.0, 1.0], 1.0 / 8.0),  # contained
        ([0.5, 0.5, 0.0, 1.0, 1.0, 2.0], 2.0 / 8.0),  # contained, sharing faces
    ],
)
def test_iou_hand_cases(other, expected):
    assert box_iou(CUBE2, other) == pytest.approx(expected, abs=1e-12)
    assert box_iou(other, CUBE2) == pytest.approx(expected, abs=1e-12)


def test_iou_partial_unit_boxes_and_matrix():
    a = [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    b = [0.25, 0.0, 0.0, 1.0, 1.0, 1.0]  # overlap 0.75, union 1.25
    assert box_iou(a, b) == pytest.approx(0.6)
    m = box_iou_matrix(np.array([a, b, CUBE2]), np.array([a, [9, 9, 9, 1, 1, 1]]))
    assert m.shape == (3, 2)
    np.testing.assert_allclose(m[:, 0], [1.0, 0.6, 1.0 / 8.0])
    np.testing.assert_allclose(m[:, 1], 0.0)


def test_degenerate_and_empty_boxes():
    flat = [0.0, 0.0, 0.0, 1.0, 1.0, 0.0]
    assert box_iou(flat, flat) == 0.0  # zero volume: 0, never NaN
    assert box_iou_matrix(np.zeros((0, 6)), np.array([CUBE2])).shape == (0, 1)


def test_bad_boxes_raise():
    with pytest.raises(ValueError, match=r"\[N, 6\]"):
        as_boxes([[1.0, 2.0, 3.0]])
    with pytest.raises(ValueError, match="sizes must be >= 0"):
        as_boxes([0, 0, 0, -1, 1, 1])
    with pytest.raises(ValueError, match="non-finite"):
        as_boxes([0, 0, np.nan, 1, 1, 1])


def test_corners_span_the_box():
    corners = box_corners(np.array([[1.0, 2.0, 3.0, 2.0, 4.0, 6.0]]))[0]
    assert corners.shape == (8, 3)
    np.testing.assert_allclose(corners.min(0), [0.0, 0.0, 0.0])
    np.testing.assert_allclose(corners.max(0), [2.0, 4.0, 6.0])
    assert len({tuple(c) for c in corners}) == 8


def _rz(deg: float) -> np.ndarray:
    r = np.radians(deg)
    m = np.eye(4)
    m[:2, :2] = [[np.cos(r), -np.sin(r)], [np.sin(r), np.cos(r)]]
    return m


def test_known_rotation_maps_box_to_aligned_frame():
    # first camera: rotated +90 deg about z and at (1, 0, 0) in the raw world; axis alignment shifts z by -0.5.
    cam_to_world = _rz(90.0)
    cam_to_world[:3, 3] = [1.0, 0.0, 0.0]
    axis_alignment = np.eye(4)
    axis_alignment[2, 3] = -0.5
    t = first_camera_to_aligned(axis_alignment, cam_to_world)
    np.testing.assert_allclose(t, axis_alignment @ cam_to_world)
    box_cam = np.array([[1.0, 0.0, 2.0, 1.0, 2.0, 3.0]])
    # Rz(90): (x, y, z) -> (-y, x, z): centre (1, 0, 2) -> (0, 1, 2) + (1, 0, -0.5); sizes x/y swap.
    expected = np.array([[1.0, 1.0, 1.5, 2.0, 1.0, 3.0]])
    np.testing.assert_allclose(
        transform_boxes(box_cam, t), expected, atol=1e-12
    )
    np.testing.assert_allclose(
        aligned_boxes_to_first_camera(expected, axis_alignment, cam_to_world), box_cam, atol=1e-12
    )


def test_oblique_rotation_takes_the_aabb_of_the_corners():
    out = transform_boxes(np.array([[0.0, 0.0, 0.0, 1.0, 1.0, 1.0]]), _rz(45.0))
    np.testing.assert_allclose(out, [[0.0, 0.0, 0.0, np.sqrt(2.0), np.sqrt(2.0), 1.0]], atol=1e-12)


def test_alignment_rejects_lost_pose_and_non_rigid():
    bad = np.full((4, 4), -np.inf)
    with pytest.raises(ValueError, match="not finite"):
        first_camera_to_aligned(np.eye(4), bad)
    skew = np.eye(4)
    skew[0, 1] = 0.5
    with pytest.raises(ValueError, match="orthonormal"):
        first_camera_to_aligned(np.eye(4), skew)
    with pytest.raises(ValueError, match="4x4"):
        first_camera_to_aligned(np.eye(3), np.eye(4))
