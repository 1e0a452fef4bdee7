"""Back-projection (paper Eq. 3) and metric voxel pooling against hand computations."""

from __future__ import annotations

import math

import pytest
import torch

from model.geometry import backproject_depth, pixel_centres, voxel_pool


def _rot_z(angle: float) -> torch.Tensor:
    c, s = math.cos(angle), math.sin(angle)
    return torch.tensor([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def test_pixel_centres_identity_and_patch_grid():
    full = pixel_centres((3, 4), (3, 4))
    assert torch.equal(full[..., 0], torch.arange(4.0).expand(3, 4))
    assert torch.equal(full[..., 1], torch.arange(3.0)[:, None].expand(3, 4))
    patches = pixel_centres((2, 3), (28, 42))  # 14-pixel patches: centres at 6.5, 20.5, 34.5
    assert torch.allclose(patches[0, :, 0], torch.tensor([6.5, 20.5, 34.5]))
    assert torch.allclose(patches[:, 0, 1], torch.tensor([6.5, 20.5]))


def test_backproject_identity_camera_known_points():
    k = torch.tensor([[10.0, 0.0, 1.5], [0.0, 20.0, 0.5], [0.0, 0.0, 1.0]])
    depth = torch.full((1, 1, 2, 4), 2.0)
    depth[0, 0, 1, 3] = 4.0
    pts = backproject_depth(depth, torch.eye(3, 4)[None, None], k[None, None], (2, 4))
    # pixel (u=0, v=0): x = (0 - 1.5) / 10 * 2 = -0.3, y = (0 - 0.5) / 20 * 2 = -0.05, z = 2
    assert torch.allclose(pts[0, 0, 0, 0], torch.tensor([-0.3, -0.05, 2.0]))
    # pixel (u=3, v=1) at depth 4: x = 1.5 / 10 * 4 = 0.6, y = 0.5 / 20 * 4 = 0.1
    assert torch.allclose(pts[0, 0, 1, 3], torch.tensor([0.6, 0.1, 4.0]))


def test_backproject_posed_camera_inverts_projection():
    """World points projected into a posed camera and lifted back must return to themselves."""
    torch.manual_seed(0)
    rot = _rot_z(0.3) @ torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    trans = torch.tensor([0.2, -0.1, 1.5])
    extr = torch.cat([rot, trans[:, None]], dim=1)
    k = torch.tensor([[50.0, 0.0, 13.5], [0.0, 50.0, 13.5], [0.0, 0.0, 1.0]])
    depth = 1.0 + torch.rand(1, 1, 2, 2)
    pts = backproject_depth(depth, extr[None, None], k[None, None], (28, 28))
    cam = pts[0, 0] @ rot.T + trans  # X_cam = R X_world + t
    assert torch.allclose(cam[..., 2], depth[0, 0], atol=1e-5)
    uv = (cam @ k.T)[..., :2] / cam[..., 2:]
    assert torch.allclose(uv, pixel_centres((2, 2), (28, 28)), atol=1e-4)  # patch centres 6.5 / 20.5


def test_backproject_translation_only_is_known_offset():
    """Camera at world x = +1 (t = -R c): a pixel at the principal point maps to (1, 0, d)."""
    extr = torch.eye(3, 4)
    extr[0, 3] = -1.0
    k = torch.tensor([[10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 1.0]])
    pts = backproject_depth(torch.full((1, 1, 1, 1), 3.0), extr[None, None], k[None, None], (1, 1))
    assert torch.allclose(pts.flatten(), torch.tensor([1.0, 0.0, 3.0]))


def test_backproject_rejects_bad_shapes():
    with pytest.raises(ValueError, match="extrinsics"):
        backproject_depth(torch.ones(1, 1, 2, 2), torch.eye(4)[None, None], torch.eye(3)[None, None], (2, 2))


def test_voxel_pool_matches_hand_computation():
    tokens = torch.tensor([[[1.0, 0.0], [3.0, 2.0], [10.0, 10.0], [5.0, 5.0]]])
    points = torch.tensor([[[0.05, 0.05, 0.05], [0.15, 0.1, 0.0], [0.25, 0.0, 0.0], [9.0, 9.0, 9.0]]])
    valid = torch.tensor([[True, True, True, False]])
    out = voxel_pool(tokens, points, valid, voxel_size_m=0.2, max_tokens=10)
    assert out.mask.tolist() == [[True, True]]
    # voxel (0,0,0) holds points 0 and 1; voxel (1,0,0) holds point 2; point 3 is invalid.
    assert torch.allclose(out.tokens[0], torch.tensor([[2.0, 1.0], [10.0, 10.0]]))
    assert torch.allclose(out.centres[0], torch.tensor([[0.1, 0.075, 0.025], [0.25, 0.0, 0.0]]))
    assert out.counts[0].tolist() == [2.0, 1.0]


def test_voxel_pool_negative_coordinates_use_floor():
    tokens = torch.ones(1, 2, 1)
    points = torch.tensor([[[-0.05, 0.0, 0.0], [0.05, 0.0, 0.0]]])  # straddle 0: two voxels, not one
    assert int(voxel_pool(tokens, points, voxel_size_m=0.2).mask.sum()) == 2


def test_voxel_pool_cap_padding_and_determinism():
    torch.manual_seed(0)
    tokens = torch.randn(2, 50, 4)
    points = torch.arange(50.0)[None, :, None].expand(2, 50, 3).clone()  # 50 distinct voxels per row
    valid = torch.ones(2, 50, dtype=torch.bool)
    valid[1, 10:] = False
    a = voxel_pool(tokens, points, valid, voxel_size_m=0.5, max_tokens=8, generator=torch.Generator().manual_seed(3))
    b = voxel_pool(tokens, points, valid, voxel_size_m=0.5, max_tokens=8, generator=torch.Generator().manual_seed(3))
    assert a.tokens.shape == (2, 8, 4)
    assert a.mask.sum(dim=1).tolist() == [8, 8]
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.centres, b.centres)
    kept = a.centres[0, :, 0]
    assert torch.all(kept[1:] > kept[:-1])  # kept in voxel order
    for row in range(2):  # every kept token is one of the inputs at its centre
        idx = a.centres[row, :, 0].long()
        assert torch.allclose(a.tokens[row], tokens[row, idx])


def test_voxel_pool_empty_rows_are_padding():
    out = voxel_pool(torch.randn(2, 3, 4), torch.randn(2, 3, 3), torch.zeros(2, 3, dtype=torch.bool))
    assert out.tokens.shape == (2, 1, 4)
    assert not out.mask.any()
    assert torch.count_nonzero(out.tokens) == 0


def test_voxel_pool_gradient_reaches_tokens():
    tokens = torch.randn(1, 4, 3, requires_grad=True)
    out = voxel_pool(tokens, torch.zeros(1, 4, 3))
    out.tokens.sum().backward()
    assert torch.allclose(tokens.grad, torch.full_like(tokens, 0.25))  # one voxel: mean of 4


@pytest.mark.parametrize("kwargs", [{"voxel_size_m": 0.0}, {"max_tokens": 0}])
def test_voxel_pool_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        voxel_pool(torch.randn(1, 2, 3), torch.randn(1, 2, 3), **kwargs)
