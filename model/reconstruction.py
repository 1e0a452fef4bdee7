"""Reconstruction branch: VGGT-style alternating frame/global attention over the geometric stream, plus heads.

Input is the Cross-Task Adapter's geometric stream ``T'_geom`` (``[B, S, P, C]``) rather than raw DINOv2 tokens:
Vid-LLM shares one encoder between branches, so unlike VGGT the branch has no patch embedding of its own.

Per frame the branch prepends one camera token and ``num_register_tokens`` register tokens. The first frame uses its
own camera/register parameters (index 0 of the ``(1, 2, n, C)`` tables) and all other frames share index 1; this is
how the network knows which camera defines the world frame.

Conventions (same as VGGT): world frame = camera of the FIRST frame, OpenCV axes; extrinsics camera-from-world
``[R | t]``; intrinsics in pixels of the ``H x W`` input with the principal point at the centre; depth is z-depth in
an arbitrary, clip-consistent unit (metric scale comes from :mod:`model.scale_alignment`). The first frame's
predicted extrinsics are learned to be the identity (the training targets are expressed in that frame) but are not
forced to be by construction.

VGGT-1B weights load through :func:`vggt_state_dict_to_ours` (documented in ``docs/vggt_key_mapping.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from model.heads.camera import CameraHead
from model.heads.dpt import DPTHead
from model.layers import Block, RotaryPositionEmbedding2D, patch_positions
from model.pose_encoding import pose_encoding_to_extrinsics_intrinsics


@dataclass
class ReconstructionConfig:
    """Configuration of :class:`ReconstructionBranch` (defaults = VGGT-1B aggregator and heads).

    Attributes:
        dim: Token width ``C`` of the geometric stream (must equal the encoder/adapter width).
        num_layers: Number of (frame block, global block) pairs.
        num_heads: Heads of the alternating-attention blocks.
        mlp_ratio: MLP ratio of the alternating-attention blocks.
        num_register_tokens: Register tokens per frame.
        qk_norm: QK-LayerNorm in the alternating-attention blocks.
        rope_frequency: 2D RoPE base frequency; 0 disables RoPE.
        init_values: LayerScale init of all blocks.
        patch_size: Pixels per patch side (maps the patch grid to the image size).
        camera_num_layers: Transformer blocks of the camera head trunk.
        camera_num_heads: Heads of the camera head trunk (over ``2 * dim`` channels).
        num_camera_iterations: Pose refinement iterations (length of ``pose_enc_list``).
        dpt_features: Fusion width of the depth DPT head.
        dpt_out_channels: Reassembly widths of the four DPT levels.
        dpt_layer_indices: 0-based alternating-attention layers feeding the DPT head (VGGT: 4, 11, 17, 23).
        frames_chunk_size: Frames decoded by the DPT head at once (bounds peak memory; 0 = all at once).
        gradient_checkpointing: Recompute each alternating-attention block in the backward pass instead of storing
            its activations (training-time memory for 24 layers x 32 frames; no effect in eval or without grad).
    """

    dim: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    mlp_ratio: float = 4.0
    num_register_tokens: int = 4
    qk_norm: bool = True
    rope_frequency: float = 100.0
    init_values: float = 0.01
    patch_size: int = 14
    camera_num_layers: int = 4
    camera_num_heads: int = 16
    num_camera_iterations: int = 4
    dpt_features: int = 256
    dpt_out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    dpt_layer_indices: tuple[int, int, int, int] = (4, 11, 17, 23)
    frames_chunk_size: int = 8
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        self.dpt_out_channels = tuple(int(c) for c in self.dpt_out_channels)
        self.dpt_layer_indices = tuple(int(i) for i in self.dpt_layer_indices)
        positive = ("dim", "num_layers", "num_heads", "patch_size", "camera_num_layers", "camera_num_heads",
                    "num_camera_iterations", "dpt_features")  # fmt: skip
        for name in positive:
            if getattr(self, name) <= 0:
                raise ValueError(f"ReconstructionConfig.{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(
                f"ReconstructionConfig: dim {self.dim} not divisible by num_heads {self.num_heads}"
            )
        if self.rope_frequency > 0 and (self.dim // self.num_heads) % 4:
            raise ValueError(
                "ReconstructionConfig: 2D RoPE needs a head dim (dim / num_heads) divisible by 4"
            )
        if (2 * self.dim) % self.camera_num_heads:
            raise ValueError(
                f"ReconstructionConfig: 2*dim {2 * self.dim} not divisible by camera_num_heads {self.camera_num_heads}"
            )
        if self.num_register_tokens < 0 or self.frames_chunk_size < 0 or self.rope_frequency < 0:
            raise ValueError(
                "ReconstructionConfig: num_register_tokens, frames_chunk_size, rope_frequency must be >= 0"
            )
        if len(self.dpt_out_channels) != 4 or min(self.dpt_out_channels) <= 0:
            raise ValueError(
                f"ReconstructionConfig.dpt_out_channels must be 4 positive ints, got {self.dpt_out_channels}"
            )
        if len(self.dpt_layer_indices) != 4 or not all(0 <= i < self.num_layers for i in self.dpt_layer_indices):
            raise ValueError(
                f"ReconstructionConfig.dpt_layer_indices must be 4 indices in [0, {self.num_layers}), "
                f"got {self.dpt_layer_indices}"
            )

    @classmethod
    def tiny(cls) -> ReconstructionConfig:
        """Two alternating layers, 32 channels: a CPU-test model (matches ``EncoderConfig.tiny``)."""
        return cls(dim=32, num_layers=2, num_heads=2, num_register_tokens=2, camera_num_layers=1, camera_num_heads=2,
                   num_camera_iterations=2, dpt_features=16, dpt_out_channels=(8, 16, 32, 32),
                   dpt_layer_indices=(0, 0, 1, 1), frames_chunk_size=0)  # fmt: skip

    @classmethod
    def small(cls) -> ReconstructionConfig:
        """12 alternating layers over DINOv2-S width (384)."""
        return cls(dim=384, num_layers=12, num_heads=6, camera_num_layers=2, camera_num_heads=6, dpt_features=128,
                   dpt_out_channels=(96, 192, 384, 384), dpt_layer_indices=(2, 5, 8, 11))  # fmt: skip

    @classmethod
    def base(cls) -> ReconstructionConfig:
        """VGGT-1B sizes (24 layers, 1024 channels), loadable from VGGT-1B weights."""
        return cls()


@dataclass
class ReconstructionOutput:
    """Output of :class:`ReconstructionBranch` (frames: world = first camera, OpenCV axes).

    Attributes:
        pose_enc: ``[B, S, 9]`` final pose encoding (see :mod:`model.pose_encoding`).
        extrinsics: ``[B, S, 3, 4]`` camera-from-world, translation in the branch's relative unit.
        intrinsics: ``[B, S, 3, 3]`` pixels of the ``H x W`` input.
        depth: ``[B, S, H, W]`` relative z-depth, positive (exp activation).
        depth_conf: ``[B, S, H, W]`` confidence ``1 + exp(x) >= 1``.
        pose_enc_list: ``[B, S, 9]`` estimate after each refinement iteration (last = ``pose_enc``).
    """

    pose_enc: torch.Tensor
    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    depth: torch.Tensor
    depth_conf: torch.Tensor
    pose_enc_list: list[torch.Tensor]


def _first_and_rest(table: torch.Tensor, b: int, s: int) -> torch.Tensor:
    """Expand a ``(1, 2, n, C)`` table to ``[B*S, n, C]``: entry 0 for frame 0, entry 1 for frames 1..S-1."""
    first = table[:, :1].expand(b, 1, -1, -1)
    rest = table[:, 1:].expand(b, s - 1, -1, -1)
    return torch.cat((first, rest), dim=1).reshape(b * s, table.shape[2], table.shape[3])


class AlternatingAttention(nn.Module):
    """VGGT aggregator minus the patch embedding: frame attention and global attention, alternating.

    Args:
        cfg: Branch configuration.
    """

    def __init__(self, cfg: ReconstructionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.rope = RotaryPositionEmbedding2D(cfg.rope_frequency) if cfg.rope_frequency > 0 else None
        self.frame_blocks = nn.ModuleList(self._make_blocks(cfg))
        self.global_blocks = nn.ModuleList(self._make_blocks(cfg))
        self.camera_token = nn.Parameter(torch.randn(1, 2, 1, cfg.dim) * 1e-6)
        self.register_token = nn.Parameter(torch.randn(1, 2, cfg.num_register_tokens, cfg.dim) * 1e-6)
        self.patch_start_idx = 1 + cfg.num_register_tokens

    def _make_blocks(self, cfg: ReconstructionConfig) -> list[Block]:
        return [
            Block(cfg.dim, cfg.num_heads, cfg.mlp_ratio, cfg.init_values, qk_norm=cfg.qk_norm, rope=self.rope)
            for _ in range(cfg.num_layers)
        ]

    def _run(self, block: Block, tokens: torch.Tensor, pos: torch.Tensor | None) -> torch.Tensor:
        if self.cfg.gradient_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, tokens, pos, use_reentrant=False)
        return block(tokens, pos)

    def forward(self, geom: torch.Tensor, grid: tuple[int, int], keep: set[int]) -> dict[int, torch.Tensor]:
        """Run all layers.

        Args:
            geom: ``[B, S, P, C]`` geometric tokens.
            grid: Patch grid ``(h, w)`` with ``h * w = P``.
            keep: Layer indices whose outputs are returned (others are dropped to save memory).

        Returns:
            ``{layer: [B, S, 1 + R + P, 2C]}``: frame-block and global-block outputs of that layer concatenated on
            channels; token 0 is the camera token, tokens ``1..R`` the registers, then the patches.
        """
        b, s, p, c = geom.shape
        specials = (_first_and_rest(self.camera_token, b, s), _first_and_rest(self.register_token, b, s))
        tokens = torch.cat((*specials, geom.reshape(b * s, p, c)), dim=1)
        length = tokens.shape[1]
        pos = (
            patch_positions(b * s, grid, self.patch_start_idx, geom.device) if self.rope is not None else None
        )
        pos_global = pos.reshape(b, s * length, 2) if pos is not None else None
        kept: dict[int, torch.Tensor] = {}
        for layer, (frame_block, global_block) in enumerate(
            zip(self.frame_blocks, self.global_blocks, strict=True)
        ):
            tokens = self._run(frame_block, tokens.reshape(b * s, length, c), pos)
            frame_out = tokens.reshape(b, s, length, c)
            tokens = self._run(global_block, tokens.reshape(b, s * length, c), pos_global)
            if layer in keep:
                kept[layer] = torch.cat((frame_out, tokens.reshape(b, s, length, c)), dim=-1)
        return kept


class ReconstructionBranch(nn.Module):
    """Alternating attention + camera head + depth DPT head.

    Args:
        cfg: Branch configuration.
    """

    def __init__(self, cfg: ReconstructionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.alternating = AlternatingAttention(cfg)
        self.camera_head = CameraHead(
            2 * cfg.dim, cfg.camera_num_layers, cfg.camera_num_heads, 4.0, cfg.init_values
        )
        self.depth_head = DPTHead(2 * cfg.dim, cfg.patch_size, cfg.dpt_layer_indices, cfg.dpt_features,
                                  cfg.dpt_out_channels, output_dim=2)  # fmt: skip

    def forward(
        self, geom: torch.Tensor, grid: tuple[int, int], image_hw: tuple[int, int]
    ) -> ReconstructionOutput:
        """Predict cameras and relative depth for a clip.

        Args:
            geom: ``[B, S, P, C]`` geometric stream ``T'_geom``.
            grid: Patch grid ``(h, w)``, ``P = h * w``.
            image_hw: Input image size ``(H, W) = (h * patch, w * patch)`` in pixels.

        Returns:
            :class:`ReconstructionOutput`.
        """
        if geom.ndim != 4 or geom.shape[-1] != self.cfg.dim:
            raise ValueError(
                f"reconstruction expects [B, S, P, {self.cfg.dim}] tokens, got {tuple(geom.shape)}"
            )
        b, s, p, _ = geom.shape
        h, w = grid
        if h * w != p:
            raise ValueError(f"grid {grid} does not match {p} tokens per frame")
        if tuple(image_hw) != (h * self.cfg.patch_size, w * self.cfg.patch_size):
            raise ValueError(
                f"image_hw {tuple(image_hw)} does not match grid {grid} x patch {self.cfg.patch_size}"
            )
        last = self.cfg.num_layers - 1
        layers = self.alternating(geom, grid, keep={*self.cfg.dpt_layer_indices, last})
        pose_enc_list = self.camera_head(layers[last][:, :, 0], self.cfg.num_camera_iterations)
        start = self.alternating.patch_start_idx
        patch_maps = {i: t[:, :, start:].reshape(b * s, p, t.shape[-1]) for i, t in layers.items()}
        chunk = self.cfg.frames_chunk_size or b * s
        raw = torch.cat(
            [
                self.depth_head({i: t[j : j + chunk] for i, t in patch_maps.items()}, grid, tuple(image_hw))
                for j in range(0, b * s, chunk)
            ]
        )
        depth = torch.exp(raw[:, 0]).reshape(b, s, *image_hw)
        depth_conf = (1 + torch.exp(raw[:, 1])).reshape(b, s, *image_hw)
        pose_enc = pose_enc_list[-1]
        extrinsics, intrinsics = pose_encoding_to_extrinsics_intrinsics(pose_enc, tuple(image_hw))
        return ReconstructionOutput(pose_enc=pose_enc, extrinsics=extrinsics, intrinsics=intrinsics, depth=depth,
                                    depth_conf=depth_conf, pose_enc_list=pose_enc_list)  # fmt: skip


# VGGT-1B key prefix -> our ReconstructionBranch key prefix (docs/vggt_key_mapping.md has the full table).
VGGT_PREFIX_MAP: dict[str, str] = {
    "aggregator.camera_token": "alternating.camera_token",
    "aggregator.register_token": "alternating.register_token",
    "aggregator.frame_blocks.": "alternating.frame_blocks.",
    "aggregator.global_blocks.": "alternating.global_blocks.",
    "camera_head.": "camera_head.",
    "depth_head.": "depth_head.",
}
# VGGT parts with no counterpart in the reconstruction branch: the DINOv2 patch embed lives in our shared encoder
# (convert it with model.encoder.vggt_patch_embed_to_hf_dinov2); point and track heads are not used by Vid-LLM.
VGGT_SKIPPED_PREFIXES: tuple[str, ...] = ("aggregator.patch_embed.", "point_head.", "track_head.")


def vggt_state_dict_to_ours(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a VGGT (``facebook/VGGT-1B``) state dict to :class:`ReconstructionBranch` keys.

    Args:
        state_dict: VGGT ``model.state_dict()`` (keys like ``aggregator.frame_blocks.0.attn.qkv.weight``).

    Returns:
        A state dict for ``ReconstructionBranch(ReconstructionConfig.base()).load_state_dict(..., strict=True)``.
        Keys under :data:`VGGT_SKIPPED_PREFIXES` are left out.

    Raises:
        ValueError: A key matches neither a mapped nor a skipped prefix (not a VGGT checkpoint, or a new version).
    """
    ours: dict[str, torch.Tensor] = {}
    unknown = []
    for key, value in state_dict.items():
        if key.startswith(VGGT_SKIPPED_PREFIXES):
            continue
        prefix = next((p for p in VGGT_PREFIX_MAP if key.startswith(p)), None)
        if prefix is None:
            unknown.append(key)
            continue
        ours[VGGT_PREFIX_MAP[prefix] + key[len(prefix) :]] = value
    if unknown:
        raise ValueError(f"VGGT state dict has {len(unknown)} unmapped keys, e.g. {unknown[:5]}")
    return ours
