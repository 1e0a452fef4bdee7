"""Pose encoding <-> extrinsics/intrinsics: round trips, conventions and errors."""

from __future__ import annotations

import math

import pytest
import torch

from model.pose_encoding import (
    extrinsics_intrinsics_to_pose_encoding,
    pose_encoding_to_extrinsics_intrinsics,
    quaternion_to_rotation_matrix,
    rotation_matrix_to_quaternion,
)


def _axis_angle(axis: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula, float64: [N, 3] axes, [N] angles -> [N, 3, 3]."""
    axis = axis / axis.norm(dim=-1, keepdim=True)
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    k = torch.stack((zero, -z, y, z, zero, -x, -y, x, zero), dim=-1).reshape(-1, 3, 3)
    eye = torch.eye(3, dtype=axis.dtype).expand_as(k)
    s, c = angle.sin()[:, None, None], angle.cos()[:, None, None]
    return eye + s * k + (1 - c) * (k @ k)


def _random_cameras(
    n: int, gen: torch.Generator, image_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    axes = torch.randn(n, 3, generator=gen, dtype=torch.float64)
    angles = torch.rand(n, generator=gen, dtype=torch.float64) * math.pi
    # Include rotations at and around 180 degrees, where w ~ 0 and naive conversions break down.
    angles[:4] = torch.tensor([math.pi, math.pi - 1e-7, math.pi - 1e-3, 0.0], dtype=torch.float64)
    rotation = _axis_angle(axes, angles)
    translation = torch.randn(n, 3, 1, generator=gen, dtype=torch.float64) * 3
    extrinsics = torch.cat((rotation, translation), dim=-1)
    h, w = image_hw
    intrinsics = torch.zeros(n, 3, 3, dtype=torch.float64)
    intrinsics[:, 0, 0] = 200 + 400 * torch.rand(n, generator=gen, dtype=torch.float64)
    intrinsics[:, 1, 1] = 200 + 400 * torch.rand(n, generator=gen, dtype=torch.float64)
    intrinsics[:, 0, 2], intrinsics[:, 1, 2], intrinsics[:, 2, 2] = w / 2, h / 2, 1.0
    return extrinsics, intrinsics


def test_round_trip_random_rotations_including_near_180_degrees():
    gen = torch.Generator().manual_seed(0)
    image_hw = (378, 518)
    extrinsics, intrinsics = _random_cameras(256, gen, image_hw)
    enc = extrinsics_intrinsics_to_pose_encoding(extrinsics, intrinsics, image_hw)
    assert enc.shape == (256, 9)
    ext2, int2 = pose_encoding_to_extrinsics_intrinsics(enc, image_hw)
    torch.testing.assert_close(ext2, extrinsics, atol=1e-9, rtol=0)
    torch.testing.assert_close(int2, intrinsics, atol=1e-7, rtol=1e-9)
    # encode(decode(enc)) == enc: w >= 0 makes the encoding unique except at exactly 180 degrees (w = 0), where
    # q and -q both qualify (row 0); there the quaternion must agree up to sign.
    enc2 = extrinsics_intrinsics_to_pose_encoding(ext2, int2, image_hw)
    torch.testing.assert_close(enc2[1:], enc[1:], atol=1e-7, rtol=0)
    q0, q0_back = enc[0, 3:7], enc2[0, 3:7]
    assert min((q0 - q0_back).abs().max(), (q0 + q0_back).abs().max()) < 1e-9


def test_quaternion_is_scalar_last_with_nonnegative_w_and_unit_norm():
    angle = torch.tensor([math.pi / 2], dtype=torch.float64)
    rot_z = _axis_angle(torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64), angle)
    q = rotation_matrix_to_quaternion(rot_z)[0]
    s = math.sqrt(0.5)
    torch.testing.assert_close(q, torch.tensor([0.0, 0.0, s, s], dtype=torch.float64))
    gen = torch.Generator().manual_seed(1)
    ext, _ = _random_cameras(64, gen, (28, 42))
    quats = rotation_matrix_to_quaternion(ext[:, :, :3])
    assert (quats[:, 3] >= 0).all()
    torch.testing.assert_close(quats.norm(dim=-1), torch.ones(64, dtype=torch.float64))
    torch.testing.assert_close(quaternion_to_rotation_matrix(quats), ext[:, :, :3], atol=1e-9, rtol=0)


def test_fov_matches_pinhole_formula_and_batch_shape_is_kept():
    image_hw = (28, 42)
    extrinsics = torch.eye(3, 4).expand(2, 3, 3, 4)
    intrinsics = torch.tensor([[30.0, 0, 21], [0, 20.0, 14], [0, 0, 1]]).expand(2, 3, 3, 3)
    enc = extrinsics_intrinsics_to_pose_encoding(extrinsics, intrinsics, image_hw)
    assert enc.shape == (2, 3, 9)
    torch.testing.assert_close(enc[0, 0, 7], torch.tensor(2 * math.atan(14 / 20.0)))
    torch.testing.assert_close(enc[0, 0, 8], torch.tensor(2 * math.atan(21 / 30.0)))
    torch.testing.assert_close(enc[0, 0, :7], torch.tensor([0.0, 0, 0, 0, 0, 0, 1]))
    ext, intr = pose_encoding_to_extrinsics_intrinsics(enc, image_hw)
    assert ext.shape == (2, 3, 3, 4) and intr.shape == (2, 3, 3, 3)


def test_decoding_an_untrained_fov_gives_finite_positive_focals():
    enc = torch.zeros(4, 9)
    enc[:, 6] = 1.0
    enc[1, 7:] = -1.0
    enc[2, 7:] = 10.0
    _, intr = pose_encoding_to_extrinsics_intrinsics(enc, (28, 42))
    assert torch.isfinite(intr).all()
    assert (intr[:, 0, 0] > 0).all() and (intr[:, 1, 1] > 0).all()


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="extrinsics"):
        extrinsics_intrinsics_to_pose_encoding(torch.zeros(2, 4, 4), torch.zeros(2, 3, 3), (28, 42))
    with pytest.raises(ValueError, match="intrinsics"):
        extrinsics_intrinsics_to_pose_encoding(torch.zeros(2, 3, 4), torch.zeros(3, 3, 3), (28, 42))
    with pytest.raises(ValueError, match="pose_encoding"):
        pose_encoding_to_extrinsics_intrinsics(torch.zeros(2, 7), (28, 42))
    with pytest.raises(ValueError, match="image_hw"):
        pose_encoding_to_extrinsics_intrinsics(torch.zeros(2, 9), (0, 42))
