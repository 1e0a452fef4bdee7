"""Tiny VGGT-format state dicts for the tests: facebookresearch/vggt's key names and shapes at small sizes.

Written out from VGGT's module definitions (Aggregator with its DINOv2 ``patch_embed``, CameraHead, DPTHead for
depth and points, TrackHead), not from our modules, so that the tests fail if our naming drifts from VGGT's.
"""

from __future__ import annotations

import torch

from model.reconstruction import ReconstructionConfig


def block_shapes(prefix: str, dim: int, qk_norm: bool, num_heads: int) -> dict[str, tuple[int, ...]]:
    """One DINOv2/VGGT transformer block (fused qkv, LayerScale ``ls*.gamma``)."""
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


def dinov2_shapes(prefix: str, dim: int, num_layers: int, registers: int, num_pos: int, num_heads: int
                  ) -> dict[str, tuple[int, ...]]:
    """facebookresearch/dinov2 ``vit_*(num_register_tokens=...)`` with ``block_chunks=0`` (as in VGGT)."""
    shapes = {
        "cls_token": (1, 1, dim), "mask_token": (1, dim), "register_tokens": (1, registers, dim),
        "pos_embed": (1, 1 + num_pos, dim),
        "patch_embed.proj.weight": (dim, 3, 14, 14), "patch_embed.proj.bias": (dim,),
        "norm.weight": (dim,), "norm.bias": (dim,),
    }  # fmt: skip
    shapes = {prefix + k: v for k, v in shapes.items()}
    for i in range(num_layers):
        shapes |= block_shapes(f"{prefix}blocks.{i}.", dim, False, num_heads)
    return shapes


def dpt_shapes(prefix: str, d: int, features: int, oc: tuple[int, ...], output_dim: int) -> dict[str, tuple]:
    """VGGT's ``DPTHead(dim_in=d, output_dim=...)``."""
    f = features
    shapes: dict[str, tuple[int, ...]] = {
        "norm.weight": (d,), "norm.bias": (d,),
        "resize_layers.0.weight": (oc[0], oc[0], 4, 4), "resize_layers.0.bias": (oc[0],),
        "resize_layers.1.weight": (oc[1], oc[1], 2, 2), "resize_layers.1.bias": (oc[1],),
        "resize_layers.3.weight": (oc[3], oc[3], 3, 3), "resize_layers.3.bias": (oc[3],),
        "scratch.output_conv1.weight": (f // 2, f, 3, 3), "scratch.output_conv1.bias": (f // 2,),
        "scratch.output_conv2.0.weight": (32, f // 2, 3, 3), "scratch.output_conv2.0.bias": (32,),
        "scratch.output_conv2.2.weight": (output_dim, 32, 1, 1), "scratch.output_conv2.2.bias": (output_dim,),
    }  # fmt: skip
    for i in range(4):
        shapes[f"projects.{i}.weight"] = (oc[i], d, 1, 1)
        shapes[f"projects.{i}.bias"] = (oc[i],)
        shapes[f"scratch.layer{i + 1}_rn.weight"] = (f, oc[i], 3, 3)
        units = ("resConfUnit2",) if i == 3 else ("resConfUnit1", "resConfUnit2")
        for unit in units:
            for conv in ("conv1", "conv2"):
                shapes[f"scratch.refinenet{i + 1}.{unit}.{conv}.weight"] = (f, f, 3, 3)
                shapes[f"scratch.refinenet{i + 1}.{unit}.{conv}.bias"] = (f,)
        shapes[f"scratch.refinenet{i + 1}.out_conv.weight"] = (f, f, 1, 1)
        shapes[f"scratch.refinenet{i + 1}.out_conv.bias"] = (f,)
    return {prefix + k: v for k, v in shapes.items()}


def vggt_state_dict(cfg: ReconstructionConfig | None = None, encoder_heads: int = 2, encoder_grid: int = 2,
                    encoder_layers: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
    """A whole VGGT checkpoint (aggregator incl. its DINOv2 with 4 registers, camera, depth, point and track heads)
    for the reconstruction sizes ``cfg`` (default: the tiny branch, 32 channels)."""
    cfg = cfg or ReconstructionConfig.tiny()
    c, d = cfg.dim, 2 * cfg.dim
    shapes: dict[str, tuple[int, ...]] = {
        "aggregator.camera_token": (1, 2, 1, c),
        "aggregator.register_token": (1, 2, cfg.num_register_tokens, c),
        # Not used by Vid-LLM: must be skipped by the mapping.
        "track_head.feature_extractor.norm.weight": (d,),
    }
    shapes |= dinov2_shapes("aggregator.patch_embed.", c, encoder_layers, 4, encoder_grid**2, encoder_heads)
    for i in range(cfg.num_layers):
        shapes |= block_shapes(f"aggregator.frame_blocks.{i}.", c, cfg.qk_norm, cfg.num_heads)
        shapes |= block_shapes(f"aggregator.global_blocks.{i}.", c, cfg.qk_norm, cfg.num_heads)
    for i in range(cfg.camera_num_layers):
        shapes |= block_shapes(f"camera_head.trunk.{i}.", d, False, cfg.camera_num_heads)
    shapes |= {
        "camera_head.token_norm.weight": (d,), "camera_head.token_norm.bias": (d,),
        "camera_head.trunk_norm.weight": (d,), "camera_head.trunk_norm.bias": (d,),
        "camera_head.empty_pose_tokens": (1, 1, 9),
        "camera_head.embed_pose.weight": (d, 9), "camera_head.embed_pose.bias": (d,),
        "camera_head.poseLN_modulation.1.weight": (3 * d, d), "camera_head.poseLN_modulation.1.bias": (3 * d,),
        "camera_head.pose_branch.fc1.weight": (d // 2, d), "camera_head.pose_branch.fc1.bias": (d // 2,),
        "camera_head.pose_branch.fc2.weight": (9, d // 2), "camera_head.pose_branch.fc2.bias": (9,),
    }  # fmt: skip
    shapes |= dpt_shapes("depth_head.", d, cfg.dpt_features, cfg.dpt_out_channels, 2)
    shapes |= dpt_shapes("point_head.", d, cfg.dpt_features, cfg.dpt_out_channels, 4)
    gen = torch.Generator().manual_seed(seed)
    # Small weights like a trained checkpoint's, so the exp activations stay finite in a forward pass.
    return {k: 0.02 * torch.randn(v, generator=gen) for k, v in shapes.items()}
