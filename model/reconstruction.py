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

VGGT-1B weights load through ``ReconstructionConfig.init_checkpoint`` or :meth:`ReconstructionBranch.load_vggt`
(key mapping in :mod:`model.vggt_weights`, documented in ``docs/vggt_key_mapping.md``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from model.heads.camera import CameraHead
from model.heads.dpt import DPTHead
from model.layers import Block, RotaryPositionEmbedding2D, maybe_checkpoint, patch_positions
from model.outputs import Output
from model.pose_encoding import pose_encoding_to_extrinsics_intrinsics
from model.precision import fp32_region
from model.vggt_weights import read_vggt_checkpoint, vggt_state_dict_to_ours


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
        frames_chunk_size: Frames decoded by the DPT heads at once (bounds peak memory; 0 = all at once).
        enable_point_head: Build VGGT's point-map head (a second DPT head: world points + confidence). The paper's
            ``L_recon`` is VGGT's camera, depth and point-map losses; VGGT-1B checkpoints carry its weights.
        init_checkpoint: Local path of a VGGT-format checkpoint (``facebook/VGGT-1B``'s ``model.pt`` or the same
            state dict as safetensors) loaded into the branch at construction; every branch parameter must be in
            it. ``None`` = random init. Remote URIs are the pipelines' to download; a checkpoint's stored config
            clears this field (its weights hold the branch).
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
    enable_point_head: bool = True
    init_checkpoint: str | None = None

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
        if self.init_checkpoint is not None and not str(self.init_checkpoint).strip():
            raise ValueError("ReconstructionConfig.init_checkpoint must be None or a local file path")

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
class ReconstructionOutput(Output):
    """Output of :class:`ReconstructionBranch` (frames: world = first camera, OpenCV axes).

    Every field is fp32 whatever the compute dtype (:mod:`model.precision`).

    Attributes:
        pose_enc: ``[B, S, 9]`` final pose encoding (see :mod:`model.pose_encoding`).
        extrinsics: ``[B, S, 3, 4]`` camera-from-world, translation in the branch's relative unit.
        intrinsics: ``[B, S, 3, 3]`` pixels of the ``H x W`` input.
        depth: ``[B, S, H, W]`` relative z-depth, positive (exp activation).
        depth_conf: ``[B, S, H, W]`` confidence ``1 + exp(x) >= 1``.
        pose_enc_list: ``[B, S, 9]`` estimate after each refinement iteration (last = ``pose_enc``).
        world_points: ``[B, S, H, W, 3]`` point map in the world (first-camera) frame, the branch's relative unit
            (VGGT's ``inv_log`` activation ``sign(x) (exp|x| - 1)``); ``None`` without a point head.
        world_points_conf: ``[B, S, H, W]`` point confidence ``1 + exp(x) >= 1``; ``None`` without a point head.
    """

    pose_enc: torch.Tensor
    extrinsics: torch.Tensor
    intrinsics: torch.Tensor
    depth: torch.Tensor
    depth_conf: torch.Tensor
    pose_enc_list: list[torch.Tensor]
    world_points: torch.Tensor | None = None
    world_points_conf: torch.Tensor | None = None


def inverse_log_transform(x: torch.Tensor) -> torch.Tensor:
    """VGGT's point activation ``sign(x) * (exp(|x|) - 1)``: linear near 0, exponential range for far points."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def _first_and_rest(table: torch.Tensor, b: int, s: int) -> torch.Tensor:
    """Expand a ``(1, 2, n, C)`` table to ``[B*S, n, C]``: entry 0 for frame 0, entry 1 for frames 1..S-1."""
    first = table[:, :1].expand(b, 1, -1, -1)
    rest = table[:, 1:].expand(b, s - 1, -1, -1)
    return torch.cat((first, rest), dim=1).reshape(b * s, table.shape[2], table.shape[3])


class AlternatingAttention(nn.Module):
    """VGGT aggregator minus the patch embedding: frame attention and global attention, alternating.

    ``gradient_checkpointing`` (off by default; a run-time switch, see ``VidLLM.set_activation_checkpointing``)
    recomputes each block in the backward pass instead of storing its activations.

    Args:
        cfg: Branch configuration.
    """

    def __init__(self, cfg: ReconstructionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gradient_checkpointing = False
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
        return maybe_checkpoint(self, self.gradient_checkpointing, block, tokens, pos)

    def forward(self, geom: torch.Tensor, grid: tuple[int, int], keep: set[int]) -> list[torch.Tensor | None]:
        """Run all layers.

        Args:
            geom: ``[B, S, P, C]`` geometric tokens.
            grid: Patch grid ``(h, w)`` with ``h * w = P``.
            keep: Layer indices whose outputs are returned (others are dropped to save memory).

        Returns:
            One entry per layer: ``[B, S, 1 + R + P, 2C]``, the frame-block and global-block outputs of that layer
            concatenated on channels (token 0 is the camera token, tokens ``1..R`` the registers, then the
            patches), for the layers in ``keep``; ``None`` for the others. (A list, not an int-keyed dict:
            DeepSpeed ZeRO-3's module hooks read dict outputs by string keys.)
        """
        b, s, p, c = geom.shape
        specials = (_first_and_rest(self.camera_token, b, s), _first_and_rest(self.register_token, b, s))
        tokens = torch.cat((*specials, geom.reshape(b * s, p, c)), dim=1)
        length = tokens.shape[1]
        pos = (
            patch_positions(b * s, grid, self.patch_start_idx, geom.device) if self.rope is not None else None
        )
        pos_global = pos.reshape(b, s * length, 2) if pos is not None else None
        kept: list[torch.Tensor | None] = [None] * len(self.frame_blocks)
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
    """Alternating attention + camera head + depth DPT head (+ point-map DPT head).

    ``gradient_checkpointing`` (off by default; a run-time switch) recomputes each DPT-head call (one per frame
    chunk) in the backward pass; the alternating blocks have their own switch
    (``alternating.gradient_checkpointing``).

    Args:
        cfg: Branch configuration; with ``cfg.init_checkpoint`` the VGGT weights are loaded at construction.
    """

    def __init__(self, cfg: ReconstructionConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gradient_checkpointing = False
        self.alternating = AlternatingAttention(cfg)
        self.camera_head = CameraHead(
            2 * cfg.dim, cfg.camera_num_layers, cfg.camera_num_heads, 4.0, cfg.init_values
        )
        self.depth_head = DPTHead(2 * cfg.dim, cfg.patch_size, cfg.dpt_layer_indices, cfg.dpt_features,
                                  cfg.dpt_out_channels, output_dim=2)  # fmt: skip
        self.point_head = (
            DPTHead(2 * cfg.dim, cfg.patch_size, cfg.dpt_layer_indices, cfg.dpt_features, cfg.dpt_out_channels,
                    output_dim=4)
            if cfg.enable_point_head else None
        )  # fmt: skip
        if cfg.init_checkpoint is not None:
            self.load_vggt(cfg.init_checkpoint)

    def load_vggt(self, checkpoint: str | Path | Mapping[str, torch.Tensor]) -> None:
        """Load VGGT weights: every parameter of the branch from the checkpoint, nothing left over.

        Args:
            checkpoint: a local VGGT-format file (see :func:`model.vggt_weights.read_vggt_checkpoint`) or a VGGT
                state dict already in memory. Its DINOv2 (``aggregator.patch_embed.*``) and track head are not
                part of the branch and are skipped; the point head is skipped when the branch has none.

        Raises:
            ValueError: a key of the checkpoint has no counterpart, a branch parameter is missing from it, or a
                shape differs (the message names the checkpoint and the keys).
        """
        where = str(checkpoint) if isinstance(checkpoint, str | Path) else "state dict"
        state = read_vggt_checkpoint(checkpoint) if isinstance(checkpoint, str | Path) else checkpoint
        ours = vggt_state_dict_to_ours(state, point_head=self.point_head is not None)
        try:
            self.load_state_dict(ours, strict=True)
        except RuntimeError as err:
            detail = " ".join(str(err).split())  # one line: torch's message spans several
            raise ValueError(f"VGGT checkpoint {where} does not fit the reconstruction branch: {detail}") from err

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
        patch_maps = {i: t[:, :, start:].reshape(b * s, p, t.shape[-1]) for i, t in enumerate(layers) if t is not None}
        raw = self._dense(self.depth_head, patch_maps, grid, tuple(image_hw))
        raw_points = None if self.point_head is None else self._dense(self.point_head, patch_maps, grid,
                                                                     tuple(image_hw))
        with fp32_region(raw):
            # The activations and everything downstream are geometry: fp32 (model.precision).
            raw = raw.float()
            depth = torch.exp(raw[:, 0]).reshape(b, s, *image_hw)
            depth_conf = (1 + torch.exp(raw[:, 1])).reshape(b, s, *image_hw)
            pose_enc = pose_enc_list[-1]
            extrinsics, intrinsics = pose_encoding_to_extrinsics_intrinsics(pose_enc, tuple(image_hw))
            points = points_conf = None
            if raw_points is not None:
                raw_points = raw_points.float()
                points = inverse_log_transform(raw_points[:, :3]).permute(0, 2, 3, 1).reshape(b, s, *image_hw, 3)
                points_conf = (1 + torch.exp(raw_points[:, 3])).reshape(b, s, *image_hw)
        return ReconstructionOutput(pose_enc=pose_enc, extrinsics=extrinsics, intrinsics=intrinsics, depth=depth,
                                    depth_conf=depth_conf, pose_enc_list=pose_enc_list, world_points=points,
                                    world_points_conf=points_conf)  # fmt: skip

    def _dense(self, head: DPTHead, patch_maps: dict[int, torch.Tensor], grid: tuple[int, int],
               image_hw: tuple[int, int]) -> torch.Tensor:
        """Run a DPT head over ``[N, P, 2C]`` patch maps in chunks of ``frames_chunk_size`` frames -> raw
        ``[N, out, H, W]``."""
        n = next(iter(patch_maps.values())).shape[0]
        chunk = self.cfg.frames_chunk_size or n
        keys = sorted(patch_maps)

        def run(*maps: torch.Tensor) -> torch.Tensor:
            return head(dict(zip(keys, maps, strict=True)), grid, image_hw)

        return torch.cat([maybe_checkpoint(self, self.gradient_checkpointing, run,
                                           *(patch_maps[i][j : j + chunk] for i in keys))
                          for j in range(0, n, chunk)])  # fmt: skip
