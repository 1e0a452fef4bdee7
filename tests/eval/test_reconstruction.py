"""Depth AbsRel / delta1 on a hand array, and RRA / RTA / AUC@30 on known camera trajectories."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.eval.metrics.reconstruction import (
    depth_metrics,
    depth_metrics_median_scaled,
    pose_auc,
    pose_metrics,
    relative_pose_errors,
)


def test_depth_hand_array():
    gt = np.array([[1.0, 2.0], [4.0, 0.0]])  # the 0 is invalid
    pred = np.array([[1.1, 2.0], [2.0, 5.0]])
    out = depth_metrics(pred, gt)
    # |rel| = 0.1, 0, 0.5 -> AbsRel 0.2; ratios 1.1, 1.0, 2.0 -> 2 of 3 under 1.25
    assert out["abs_rel"] == pytest.approx(0.2)
    assert out["delta1"] == pytest.approx(200.0 / 3.0)
    assert out["num_pixels"] == 3
    capped = depth_metrics(pred, gt, max_depth_m=3.0)  # drops the 4 m pixel
    assert capped["abs_rel"] == pytest.approx(0.05) and capped["delta1"] == 100.0


def test_depth_is_metric_not_median_scaled():
    gt = np.full((4, 4), 2.0)
    pred = gt * 2.0  # right shape, wrong scale
    metric = depth_metrics(pred, gt)
    assert metric["abs_rel"] == pytest.approx(1.0) and metric["delta1"] == 0.0
    scaled = depth_metrics_median_scaled(pred, gt)
    assert scaled["abs_rel_median_scaled"] == pytest.approx(0.0)
    assert scaled["delta1_median_scaled"] == 100.0
    assert scaled["median_scale"] == pytest.approx(0.5)


def test_depth_nonpositive_prediction_and_errors():
    gt = np.array([1.0, 1.0])
    out = depth_metrics(np.array([0.0, 1.0]), gt)
    assert out["delta1"] == 50.0 and out["abs_rel"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="no valid pixel"):
        depth_metrics(np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="shapes differ"):
        depth_metrics(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="non-finite"):
        depth_metrics(np.array([np.nan, 1.0]), gt)


def _pose(rot: np.ndarray, centre) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = rot
    m[:3, 3] = centre
    return m


def _rx(deg: float) -> np.ndarray:
    r = np.radians(deg)
    return np.array([[1, 0, 0], [0, np.cos(r), -np.sin(r)], [0, np.sin(r), np.cos(r)]])


def _rz(deg: float) -> np.ndarray:
    r = np.radians(deg)
    return np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])


GT = np.stack([_pose(np.eye(3), [i, 0.0, 0.0]) for i in range(3)])  # cameras 1 m apart along x


def test_perfect_and_gauge_transformed_poses_score_full():
    assert pose_metrics(GT, GT) == {"rra@30": 100.0, "rta@30": 100.0, "auc@30": 100.0, "num_pairs": 3}
    # a different world frame (first camera frame) and scale: relative directions are unchanged
    world = _pose(_rz(70.0) @ _rx(20.0), [3.0, -1.0, 2.0])
    pred = np.stack([world @ np.diag([1, 1, 1, 1.0]) @ p for p in GT])
    pred[:, :3, 3] *= 0.5
    rot, trans = relative_pose_errors(pred, GT)
    np.testing.assert_allclose(rot, 0.0, atol=1e-5)
    np.testing.assert_allclose(trans, 0.0, atol=1e-5)
    # world_to_cam inputs give the same answer
    w2c = np.linalg.inv(GT)
    assert pose_metrics(np.linalg.inv(pred), w2c, convention="world_to_cam")["auc@30"] == pytest.approx(100.0)


def test_known_rotation_error():
    # camera 2 rotated 40 deg about x, the direction it is translated along: rotation error 40 deg on the two pairs
    # involving it, translation direction unchanged.
    pred = GT.copy()
    pred[2, :3, :3] = _rx(40.0)
    rot, trans = relative_pose_errors(pred, GT)
    np.testing.assert_allclose(rot, [0.0, 40.0, 40.0], atol=1e-6)
    np.testing.assert_allclose(trans, 0.0, atol=1e-6)
    out = pose_metrics(pred, GT)
    assert out["rra@30"] == pytest.approx(100.0 / 3.0)
    assert out["rta@30"] == 100.0
    assert out["auc@30"] == pytest.approx(100.0 / 3.0)  # max error 0 on one pair, 40 on two


def test_translation_direction_error_is_sign_free():
    pred = GT.copy()
    pred[:, :3, 3] *= -1.0  # cameras walk the other way: same line, opposite sign
    _, trans = relative_pose_errors(pred, GT)
    np.testing.assert_allclose(trans, 0.0, atol=1e-6)
    pred = GT.copy()
    pred[:, :3, 3] = GT[:, [1, 0, 2], 3]  # along y instead of x: 90 deg
    _, trans = relative_pose_errors(pred, GT)
    np.testing.assert_allclose(trans, 90.0, atol=1e-6)


def test_auc_hand_computed():
    # max errors 0.5, 10.5, 29.5: 1/3 below thresholds 1..10, 2/3 below 11..29, all below 30
    auc = pose_auc(np.array([0.5, 10.5, 29.5]), np.array([0.0, 1.0, 2.0]))
    assert auc == pytest.approx(100.0 * (10 / 3 + 19 * 2 / 3 + 1) / 30)
    assert pose_auc(np.array([45.0]), np.array([0.0])) == 0.0


def test_pose_input_errors():
    with pytest.raises(ValueError, match="at least 2 frames"):
        pose_metrics(GT[:1], GT[:1])
    with pytest.raises(ValueError, match="non-finite"):
        bad = GT.copy()
        bad[1] = -np.inf
        pose_metrics(bad, GT)
    with pytest.raises(ValueError, match="shapes differ"):
        pose_metrics(GT, GT[:2])
    assert pose_metrics(GT[:, :3, :], GT)["rra@30"] == 100.0  # [S, 3, 4] accepted


def test_zero_translation_counts_as_90_degrees():
    pred = GT.copy()
    pred[:, :3, 3] = 0.0  # all cameras at one point
    _, trans = relative_pose_errors(pred, GT)
    np.testing.assert_allclose(trans, 90.0)
