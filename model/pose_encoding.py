"""9-D camera pose encoding (VGGT's ``absT_quaR_FoV``) and its inverse.

Layout of the last dimension: ``[tx, ty, tz, qx, qy, qz, qw, fov_h, fov_w]``:

* ``t``: translation of the camera-from-world extrinsics ``[R | t]`` (world = first camera of the clip, OpenCV axes:
  x right, y down, z forward), in the clip's length unit (relative for the reconstruction branch, metres after
  scale alignment).
* ``q``: unit quaternion of ``R``, scalar last, sign fixed so that ``qw >= 0``.
* ``fov_h``, ``fov_w``: vertical / horizontal field of view in radians, ``fov_h = 2 atan(H / (2 fy))``,
  ``fov_w = 2 atan(W / (2 fx))`` for an image of ``H x W`` pixels.

Decoding puts the principal point at the image centre ``(W/2, H/2)``; the encoding cannot represent anything else.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

POSE_ENCODING_DIM = 9


def _check_image_hw(image_hw: tuple[int, int]) -> tuple[int, int]:
    if len(image_hw) != 2 or min(image_hw) <= 0:
        raise ValueError(f"image_hw must be a positive (H, W) pair, got {image_hw!r}")
    return int(image_hw[0]), int(image_hw[1])


def rotation_matrix_to_quaternion(rotation: torch.Tensor) -> torch.Tensor:
    """Convert rotation matrices to unit quaternions (scalar last, ``w >= 0``).

    Uses the numerically robust "best of four candidates" construction: each of ``4w^2, 4x^2, 4y^2, 4z^2`` gives one
    candidate quaternion and the one with the largest magnitude is kept, so rotations near 180 degrees (``w ~ 0``)
    stay exact.

    Args:
        rotation: ``[..., 3, 3]`` rotation matrices.

    Returns:
        ``[..., 4]`` quaternions ``(x, y, z, w)``.
    """
    if rotation.shape[-2:] != (3, 3):
        raise ValueError(f"rotation must be [..., 3, 3], got {tuple(rotation.shape)}")
    m = rotation
    m00, m01, m02 = m[..., 0, 0], m[..., 0, 1], m[..., 0, 2]
    m10, m11, m12 = m[..., 1, 0], m[..., 1, 1], m[..., 1, 2]
    m20, m21, m22 = m[..., 2, 0], m[..., 2, 1], m[..., 2, 2]
    # Squared magnitudes (times 4) of w, x, y, z; clamped so that sqrt never sees a tiny negative from rounding.
    sq = torch.stack(
        (1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22), dim=-1
    ).clamp_min(0.0)
    abs_q = torch.sqrt(sq)  # 2|w|, 2|x|, 2|y|, 2|z|
    # Row r holds (w, x, y, z) * (4 * component_r); dividing by 2 * abs_q[r] gives the quaternion.
    candidates = torch.stack(
        (
            torch.stack((sq[..., 0], m21 - m12, m02 - m20, m10 - m01), dim=-1),
            torch.stack((m21 - m12, sq[..., 1], m10 + m01, m02 + m20), dim=-1),
            torch.stack((m02 - m20, m10 + m01, sq[..., 2], m12 + m21), dim=-1),
            torch.stack((m10 - m01, m20 + m02, m21 + m12, sq[..., 3]), dim=-1),
        ),
        dim=-2,
    ) / (2.0 * abs_q[..., None].clamp_min(0.1))
    best = abs_q.argmax(dim=-1)
    wxyz = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    wxyz = F.normalize(wxyz, dim=-1)
    wxyz = torch.where(wxyz[..., :1] < 0, -wxyz, wxyz)
    return torch.cat((wxyz[..., 1:], wxyz[..., :1]), dim=-1)


def quaternion_to_rotation_matrix(quaternion: torch.Tensor) -> torch.Tensor:
    """Convert quaternions ``(x, y, z, w)`` (normalised here) to ``[..., 3, 3]`` rotation matrices."""
    if quaternion.shape[-1] != 4:
        raise ValueError(f"quaternion must be [..., 4], got {tuple(quaternion.shape)}")
    x, y, z, w = F.normalize(quaternion, dim=-1).unbind(-1)
    rows = (
        1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w),
        2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w),
        2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y),
    )  # fmt: skip
    return torch.stack(rows, dim=-1).reshape(*quaternion.shape[:-1], 3, 3)


def extrinsics_intrinsics_to_pose_encoding(
    extrinsics: torch.Tensor, intrinsics: torch.Tensor, image_hw: tuple[int, int]
) -> torch.Tensor:
    """Encode cameras as 9-D vectors.

    Args:
        extrinsics: ``[..., 3, 4]`` camera-from-world ``[R | t]`` (OpenCV axes).
        intrinsics: ``[..., 3, 3]`` pinhole matrices in pixels of an ``H x W`` image.
        image_hw: ``(H, W)`` in pixels.

    Returns:
        ``[..., 9]`` pose encoding (see module docstring).
    """
    height, width = _check_image_hw(image_hw)
    if extrinsics.shape[-2:] != (3, 4):
        raise ValueError(f"extrinsics must be [..., 3, 4], got {tuple(extrinsics.shape)}")
    if intrinsics.shape[-2:] != (3, 3) or intrinsics.shape[:-2] != extrinsics.shape[:-2]:
        raise ValueError(
            f"intrinsics must be [..., 3, 3] with the extrinsics' batch shape, got {tuple(intrinsics.shape)}"
        )
    translation = extrinsics[..., :3, 3]
    quaternion = rotation_matrix_to_quaternion(extrinsics[..., :3, :3])
    fov_h = 2 * torch.atan((height / 2) / intrinsics[..., 1, 1])
    fov_w = 2 * torch.atan((width / 2) / intrinsics[..., 0, 0])
    return torch.cat((translation, quaternion, fov_h[..., None], fov_w[..., None]), dim=-1)


def pose_encoding_to_extrinsics_intrinsics(
    pose_encoding: torch.Tensor, image_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode 9-D pose encodings.

    Args:
        pose_encoding: ``[..., 9]``.
        image_hw: ``(H, W)`` of the image the intrinsics refer to, in pixels.

    Returns:
        ``(extrinsics [..., 3, 4], intrinsics [..., 3, 3])``; the principal point is ``(W/2, H/2)``.
    """
    height, width = _check_image_hw(image_hw)
    if pose_encoding.shape[-1] != POSE_ENCODING_DIM:
        raise ValueError(f"pose_encoding must be [..., 9], got {tuple(pose_encoding.shape)}")
    translation = pose_encoding[..., :3]
    rotation = quaternion_to_rotation_matrix(pose_encoding[..., 3:7])
    # Clamp the FoV inside (0, pi) so that an untrained head never yields an infinite or negative focal length.
    eps = 1e-4
    fov_h = pose_encoding[..., 7].clamp(eps, math.pi - eps)
    fov_w = pose_encoding[..., 8].clamp(eps, math.pi - eps)
    fy = (height / 2) / torch.tan(fov_h / 2)
    fx = (width / 2) / torch.tan(fov_w / 2)
    extrinsics = torch.cat((rotation, translation[..., None]), dim=-1)
    intrinsics = torch.zeros(
        *pose_encoding.shape[:-1], 3, 3, dtype=pose_encoding.dtype, device=pose_encoding.device
    )
    intrinsics[..., 0, 0] = fx
    intrinsics[..., 1, 1] = fy
    intrinsics[..., 0, 2] = width / 2
    intrinsics[..., 1, 2] = height / 2
    intrinsics[..., 2, 2] = 1.0
    return extrinsics, intrinsics
