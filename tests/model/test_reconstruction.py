"""Reconstruction branch: outputs, conventions, memory chunking and VGGT key mapping."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.layers import RotaryPositionEmbedding2D, patch_positions
from model.pose_encoding import pose_encoding_to_extrinsics_intrinsics
from model.reconstruction import ReconstructionBranch, ReconstructionConfig, vggt_state_dict_to_ours


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


def test_gradient_checkpointing_gives_identical_outputs_and_gradients():
    geom = torch.randn(1, 2, 6, 32)
    results = []
    for enabled in (False, True):
        branch = _branch(gradient_checkpointing=enabled).train()
        out = branch(geom, (2, 3), (28, 42))
        (out.depth.mean() + out.pose_enc.square().mean()).backward()
        grad = branch.alternating.frame_blocks[0].attn.qkv.weight.grad.clone()
        results.append((out.depth.detach(), out.pose_enc.detach(), grad))
    for plain, checkpointed in zip(*results, strict=True):
        torch.testing.assert_close(checkpointed, plain)


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


def _block_shapes(prefix: str, dim: int, qk_norm: bool, num_heads: int) -> dict[str, tuple[int, ...]]:
    shapes = {
        "norm1.weight": (dim,), "norm1.bias": (dim,),
        "attn.qkv.weight": (3 * dim, dim), "attn.qkv.bias": (3 * dim,),
        "attn.proj.weight": (dim, dim), "attn.proj.bias": (dim,),
        "ls1.gamma": (dim,), "norm2.weight": (dim,), "norm2.bias": (dim,),
        "mlp.fc1.weight": (4 * dim, dim), "mlp.fc1.bias": (4 * dim,),
        "mlp.fc2.weight": (dim, 4 * dim), "mlp.fc2.bias": (dim,), "ls2.gamma": (dim,),
    }  # fmt: skip
    if qk_norm:
        head_dim = dim // num_heads
        for name in ("q_norm", "k_norm"):
            shapes |= {f"attn.{name}.weight": (head_dim,), f"attn.{name}.bias": (head_dim,)}
    return {prefix + k: v for k, v in shapes.items()}


def _vggt_named_state_dict(cfg: ReconstructionConfig) -> dict[str, torch.Tensor]:
    """A state dict with the key names and shapes of facebookresearch/vggt's VGGT for the given sizes.

    Written out from VGGT's module definitions (Aggregator, CameraHead, DPTHead), not from our modules, so that the
    test fails if our naming drifts from VGGT's.
    """
    c, d = cfg.dim, 2 * cfg.dim
    f, oc = cfg.dpt_features, cfg.dpt_out_channels
    shapes: dict[str, tuple[int, ...]] = {
        "aggregator.camera_token": (1, 2, 1, c),
        "aggregator.register_token": (1, 2, cfg.num_register_tokens, c),
        # VGGT's own DINOv2 and the heads we do not build: must be skipped by the mapping.
        "aggregator.patch_embed.cls_token": (1, 1, c),
        "aggregator.patch_embed.blocks.0.attn.qkv.weight": (3 * c, c),
        "point_head.norm.weight": (d,),
        "track_head.feature_extractor.norm.weight": (d,),
    }
    for i in range(cfg.depth):
        shapes |= _block_shapes(f"aggregator.frame_blocks.{i}.", c, cfg.qk_norm, cfg.num_heads)
        shapes |= _block_shapes(f"aggregator.global_blocks.{i}.", c, cfg.qk_norm, cfg.num_heads)
    for i in range(cfg.camera_trunk_depth):
        shapes |= _block_shapes(f"camera_head.trunk.{i}.", d, False, cfg.camera_num_heads)
    shapes |= {
        "camera_head.token_norm.weight": (d,), "camera_head.token_norm.bias": (d,),
        "camera_head.trunk_norm.weight": (d,), "camera_head.trunk_norm.bias": (d,),
        "camera_head.empty_pose_tokens": (1, 1, 9),
        "camera_head.embed_pose.weight": (d, 9), "camera_head.embed_pose.bias": (d,),
        "camera_head.poseLN_modulation.1.weight": (3 * d, d), "camera_head.poseLN_modulation.1.bias": (3 * d,),
        "camera_head.pose_branch.fc1.weight": (d // 2, d), "camera_head.pose_branch.fc1.bias": (d // 2,),
        "camera_head.pose_branch.fc2.weight": (9, d // 2), "camera_head.pose_branch.fc2.bias": (9,),
        "depth_head.norm.weight": (d,), "depth_head.norm.bias": (d,),
        "depth_head.resize_layers.0.weight": (oc[0], oc[0], 4, 4), "depth_head.resize_layers.0.bias": (oc[0],),
        "depth_head.resize_layers.1.weight": (oc[1], oc[1], 2, 2), "depth_head.resize_layers.1.bias": (oc[1],),
        "depth_head.resize_layers.3.weight": (oc[3], oc[3], 3, 3), "depth_head.resize_layers.3.bias": (oc[3],),
        "depth_head.scratch.output_conv1.weight": (f // 2, f, 3, 3), "depth_head.scratch.output_conv1.bias": (f // 2,),
        "depth_head.scratch.output_conv2.0.weight": (32, f // 2, 3, 3), "depth_head.scratch.output_conv2.0.bias": (32,),
        "depth_head.scratch.output_conv2.2.weight": (2, 32, 1, 1), "depth_head.scratch.output_conv2.2.bias": (2,),
    }  # fmt: skip
    for i in range(4):
        shapes[f"depth_head.projects.{i}.weight"] = (oc[i], d, 1, 1)
        shapes[f"depth_head.projects.{i}.bias"] = (oc[i],)
        shapes[f"depth_head.scratch.layer{i + 1}_rn.weight"] = (f, oc[i], 3, 3)
        units = ("resConfUnit2",) if i == 3 else ("resConfUnit1", "resConfUnit2")
        for unit in units:
            for conv in ("conv1", "conv2"):
                shapes[f"depth_head.scratch.refinenet{i + 1}.{unit}.{conv}.weight"] = (f, f, 3, 3)
                shapes[f"depth_head.scratch.refinenet{i + 1}.{unit}.{conv}.bias"] = (f,)
        shapes[f"depth_head.scratch.refinenet{i + 1}.out_conv.weight"] = (f, f, 1, 1)
        shapes[f"depth_head.scratch.refinenet{i + 1}.out_conv.bias"] = (f,)
    gen = torch.Generator().manual_seed(0)
    # Small weights like a trained checkpoint's, so the exp depth activation stays finite in the forward below.
    return {k: 0.02 * torch.randn(v, generator=gen) for k, v in shapes.items()}


def test_vggt_state_dict_maps_onto_every_key_of_the_tiny_branch():
    cfg = ReconstructionConfig.tiny()
    vggt_sd = _vggt_named_state_dict(cfg)
    ours = vggt_state_dict_to_ours(vggt_sd)
    branch = ReconstructionBranch(cfg)
    result = branch.load_state_dict(ours, strict=True)
    assert result.missing_keys == [] and result.unexpected_keys == []
    assert set(ours) == set(branch.state_dict())
    torch.testing.assert_close(branch.alternating.camera_token, vggt_sd["aggregator.camera_token"])
    torch.testing.assert_close(
        branch.alternating.global_blocks[1].attn.qkv.weight,
        vggt_sd["aggregator.global_blocks.1.attn.qkv.weight"],
    )
    assert not any(k.startswith(("patch_embed", "point_head", "track_head")) for k in ours)
    out = branch(torch.randn(1, 2, 6, 32), grid=(2, 3), image_hw=(28, 42))
    assert torch.isfinite(out.depth).all() and torch.isfinite(out.pose_enc).all()


def test_vggt_mapping_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unmapped"):
        vggt_state_dict_to_ours({"aggregator.new_module.weight": torch.ones(1)})


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
    head = CameraHead(dim_in=32, trunk_depth=1, num_heads=2)
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
