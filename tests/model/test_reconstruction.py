"""Reconstruction branch: outputs, conventions, memory chunking, the point head and camera refinement."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.layers import RotaryPositionEmbedding2D, patch_positions
from model.pose_encoding import pose_encoding_to_extrinsics_intrinsics
from model.reconstruction import ReconstructionBranch, ReconstructionConfig


def _branch(**overrides) -> ReconstructionBranch:
    torch.manual_seed(0)
    return ReconstructionBranch(dataclasses.replace(ReconstructionConfig.tiny(), **overrides))


def test_tiny_forward_shapes_positive_depth_and_confidence():
    branch = _branch()
    out = branch(torch.randn(1, 2, 6, 32), grid=(2, 3), image_hw=(28, 42))
    assert out.pose_enc.shape == (1, 2, 9)
    assert out.extrinsics.shape == (1, 2, 3, 4)
    assert out.intrinsics.shape == (1, 2, 3, 3)
    assert out.depth.shape == (1, 2, 28, 42)
    assert out.depth_conf.shape == (1, 2, 28, 42)
    assert (out.depth > 0).all()
    assert (out.depth_conf >= 1).all()
    assert len(out.pose_enc_list) == 2
    assert all(p.shape == (1, 2, 9) for p in out.pose_enc_list)
    assert out.pose_enc_list[-1] is out.pose_enc
    assert torch.isfinite(out.intrinsics).all() and (out.intrinsics[..., [0, 1], [0, 1]] > 0).all()  # decoded FoVs


def test_cameras_are_decoded_from_the_pose_encoding():
    out = _branch()(torch.randn(2, 3, 6, 32), grid=(2, 3), image_hw=(28, 42))
    ext, intr = pose_encoding_to_extrinsics_intrinsics(out.pose_enc, (28, 42))
    torch.testing.assert_close(out.extrinsics, ext)
    torch.testing.assert_close(out.intrinsics, intr)
    torch.testing.assert_close(out.intrinsics[..., 0, 2], torch.full((2, 3), 21.0))
    torch.testing.assert_close(out.intrinsics[..., 1, 2], torch.full((2, 3), 14.0))
    rot = out.extrinsics[..., :3]
    torch.testing.assert_close(
        rot @ rot.transpose(-1, -2), torch.eye(3).expand(2, 3, 3, 3), atol=1e-5, rtol=0
    )


def test_first_frame_has_its_own_camera_and_register_tokens():
    branch = _branch()
    with torch.no_grad():
        branch.alternating.camera_token[:, 0] += 1.0
        branch.alternating.register_token[:, 0] -= 1.0
    frame = torch.randn(1, 1, 6, 32)
    out = branch(frame.expand(1, 3, 6, 32), grid=(2, 3), image_hw=(28, 42))
    # Identical frames: frames 1 and 2 are interchangeable, frame 0 (the world frame) is not.
    torch.testing.assert_close(out.pose_enc[:, 1], out.pose_enc[:, 2])
    torch.testing.assert_close(out.depth[:, 1], out.depth[:, 2])
    assert not torch.allclose(out.pose_enc[:, 0], out.pose_enc[:, 1])
    assert branch.alternating.camera_token.shape == (1, 2, 1, 32)
    assert branch.alternating.register_token.shape == (1, 2, 2, 32)


def test_gradients_reach_the_input_and_every_parameter():
    branch = _branch()
    geom = torch.randn(1, 2, 6, 32, requires_grad=True)
    out = branch(geom, grid=(2, 3), image_hw=(28, 42))
    loss = out.depth.mean() + out.depth_conf.mean() + sum(p.square().mean() for p in out.pose_enc_list)
    loss = loss + out.world_points.square().mean() + out.world_points_conf.mean()
    loss.backward()
    assert geom.grad.abs().sum() > 0
    no_grad = [n for n, p in branch.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert no_grad == []


def test_dpt_frame_chunking_does_not_change_the_result():
    geom = torch.randn(2, 3, 6, 32)
    whole = _branch(frames_chunk_size=0).eval()(geom, (2, 3), (28, 42))
    chunked = _branch(frames_chunk_size=2).eval()(geom, (2, 3), (28, 42))
    torch.testing.assert_close(chunked.depth, whole.depth)
    torch.testing.assert_close(chunked.depth_conf, whole.depth_conf)


def test_rope_attention_depends_only_on_relative_positions():
    rope = RotaryPositionEmbedding2D(100.0)
    q, k = torch.randn(1, 2, 5, 16), torch.randn(1, 2, 5, 16)
    pos = torch.randint(0, 10, (1, 5, 2))
    scores = rope(q, pos) @ rope(k, pos).transpose(-1, -2)
    shifted = rope(q, pos + torch.tensor([3, 7])) @ rope(k, pos + torch.tensor([3, 7])).transpose(-1, -2)
    torch.testing.assert_close(shifted, scores, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(rope(q, pos), q)  # it does rotate
    # Special tokens at (0, 0), patches row-major at (y + 1, x + 1).
    positions = patch_positions(2, (2, 3), num_special=3, device=torch.device("cpu"))
    assert positions.shape == (2, 9, 2)
    assert positions[0, :3].abs().sum() == 0
    assert positions[0, 3:].tolist() == [[1, 1], [1, 2], [1, 3], [2, 1], [2, 2], [2, 3]]


def test_bad_config_and_inputs_raise():
    with pytest.raises(ValueError, match="dpt_layer_indices"):
        dataclasses.replace(ReconstructionConfig.tiny(), dpt_layer_indices=(0, 1, 2, 3))
    with pytest.raises(ValueError, match="RoPE"):
        dataclasses.replace(ReconstructionConfig.tiny(), dim=24, num_heads=4)
    branch = _branch()
    with pytest.raises(ValueError, match="grid"):
        branch(torch.randn(1, 2, 6, 32), grid=(2, 2), image_hw=(28, 28))
    with pytest.raises(ValueError, match="image_hw"):
        branch(torch.randn(1, 2, 6, 32), grid=(2, 3), image_hw=(28, 40))
    with pytest.raises(ValueError, match=r"\[B, S, P, 32\]"):
        branch(torch.randn(1, 2, 6, 16), grid=(2, 3), image_hw=(28, 42))


@pytest.mark.slow
def test_base_config_builds_on_meta_device_with_vggt_sizes():
    with torch.device("meta"):
        branch = ReconstructionBranch(ReconstructionConfig.base())

    def count(module: torch.nn.Module) -> float:
        return sum(p.numel() for p in module.parameters()) / 1e6

    # VGGT-1B: aggregator 909M of which 304M is its DINOv2 (here the shared encoder), camera head 216M, DPT 33M.
    assert 600 < count(branch.alternating) < 610
    assert 210 < count(branch.camera_head) < 220
    assert 30 < count(branch.depth_head) < 35
    assert branch.alternating.register_token.shape == (1, 2, 4, 1024)


def test_a_negative_fov_still_learns():
    """A FoV pushed below zero must get a gradient back (a ReLU would keep it at 0, i.e. an infinite focal length)."""
    from model.heads.camera import CameraHead

    torch.manual_seed(0)
    head = CameraHead(dim_in=32, num_trunk_layers=1, num_heads=2)
    with torch.no_grad():
        head.pose_branch.fc2.bias[7:] = -5.0
    tokens = torch.randn(1, 3, 32)
    fov = head(tokens, num_iterations=1)[-1][..., 7:]
    assert (fov < 0).all()
    (fov - 0.8).abs().mean().backward()
    assert head.pose_branch.fc2.bias.grad[7:].abs().min() > 0
    with torch.no_grad():
        head.pose_branch.fc2.bias[7:] = 5.0
        assert (head(tokens, num_iterations=1)[-1][..., 7:] > 4).all()  # positive FoVs pass as under VGGT's ReLU


def test_camera_refinement_detaches_the_running_estimate():
    """Iteration k's output is ``detach(estimate_{k-1}) + delta_k`` (VGGT): its gradient reaches delta_k only."""
    from model.heads.camera import CameraHead

    torch.manual_seed(0)
    head = CameraHead(16, num_trunk_layers=1, num_heads=2)
    deltas: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        output.retain_grad()
        deltas.append(output)

    head.pose_branch.register_forward_hook(keep)
    poses = head(torch.randn(2, 3, 16), num_iterations=3)
    poses[-1][..., :7].sum().backward()
    assert len(deltas) == 3
    assert deltas[0].grad is None and deltas[1].grad is None  # no path from the last output to earlier deltas
    torch.testing.assert_close(deltas[2].grad[..., :7], torch.ones(2, 3, 7))
    # Every iteration's output still trains the shared head parameters.
    assert head.pose_branch.fc2.weight.grad.abs().sum() > 0


def test_point_head_predicts_world_points_with_vggt_activations():
    from model.reconstruction import inverse_log_transform

    out = _branch()(torch.randn(1, 2, 6, 32), grid=(2, 3), image_hw=(28, 42))
    assert out.world_points.shape == (1, 2, 28, 42, 3) and out.world_points_conf.shape == (1, 2, 28, 42)
    assert (out.world_points_conf >= 1).all()
    x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0])
    torch.testing.assert_close(inverse_log_transform(x), torch.sign(x) * (torch.exp(x.abs()) - 1))
    off = _branch(enable_point_head=False)
    assert off.point_head is None and not any(n.startswith("point_head") for n, _ in off.named_parameters())
    assert off(torch.randn(1, 2, 6, 32), grid=(2, 3), image_hw=(28, 42)).world_points is None
