"""DPT decoder (Ranftl et al. 2021) over ViT tokens, in the VGGT variant.

Four token maps (from four transformer layers) are *reassembled* into a feature pyramid at 4x, 2x, 1x and 1/2x the
patch-grid resolution (for patch 14: 1/3.5, 1/7, 1/14 and 1/28 of the image), *fused* coarse-to-fine by residual
convolution units, upsampled to the input resolution and mapped to the output channels. Parameter names follow
VGGT's ``DPTHead`` (``norm``, ``projects``, ``resize_layers``, ``scratch.layer{i}_rn``, ``scratch.refinenet{i}``,
``scratch.output_conv1/2``) so VGGT-1B depth-head weights load by prefix renaming.

Used twice: as the reconstruction branch's depth head (``output_dim=2``: depth + confidence) and, with
``feature_only=True``, as the Metric Depth Model's decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _sincos_1d(dim: int, pos: torch.Tensor, omega_0: float) -> torch.Tensor:
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device) / (dim / 2.0)
    omega = 1.0 / omega_0**omega
    angles = pos.reshape(-1).to(torch.float64)[:, None] * omega[None]
    return torch.cat((angles.sin(), angles.cos()), dim=1).float()


def uv_position_embedding(
    height: int, width: int, channels: int, aspect_ratio: float, omega_0: float = 100.0
) -> torch.Tensor:
    """Sinusoidal embedding of normalised image-plane coordinates, VGGT's ``_apply_pos_embed`` grid.

    Coordinates span ``[-a/d, a/d] x [-1/d, 1/d]`` (``a`` = width/height of the *image*, ``d = sqrt(a^2 + 1)``),
    sampled at pixel centres of a ``height x width`` map, so the embedding is resolution independent.

    Args:
        height: Map height.
        width: Map width.
        channels: Embedding channels (multiple of 4).
        aspect_ratio: Image ``W / H``.
        omega_0: Frequency base.

    Returns:
        ``[channels, height, width]`` float32 tensor.
    """
    diag = (aspect_ratio**2 + 1.0) ** 0.5
    span_x, span_y = aspect_ratio / diag, 1.0 / diag
    xs = torch.linspace(-span_x * (width - 1) / width, span_x * (width - 1) / width, width)
    ys = torch.linspace(-span_y * (height - 1) / height, span_y * (height - 1) / height, height)
    uu, vv = torch.meshgrid(xs, ys, indexing="xy")  # [height, width] each
    emb = torch.cat((_sincos_1d(channels // 2, uu, omega_0), _sincos_1d(channels // 2, vv, omega_0)), dim=-1)
    return emb.reshape(height, width, channels).permute(2, 0, 1)


class ResidualConvUnit(nn.Module):
    """``relu(x) + conv2(relu(conv1(relu(x))))``.

    The skip carries ``relu(x)``, not ``x``: VGGT/DPT apply an in-place ReLU to the input before the convolutions,
    which also rectifies the skip; we reproduce that explicitly so converted weights behave identically.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1, bias=True)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the unit to ``[N, F, h, w]``."""
        x = F.relu(x)
        return x + self.conv2(F.relu(self.conv1(x)))


class FeatureFusionBlock(nn.Module):
    """Fuse a coarser path with an optional skip, refine, upsample and project (1x1).

    Args:
        features: Channels of both inputs and the output.
        has_residual: Whether a skip input is fused (False for the coarsest level).
    """

    def __init__(self, features: int, has_residual: bool = True) -> None:
        super().__init__()
        self.has_residual = has_residual
        if has_residual:
            self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)
        self.out_conv = nn.Conv2d(features, features, 1, bias=True)

    def forward(
        self, x: torch.Tensor, skip: torch.Tensor | None = None, size: tuple[int, int] | None = None
    ) -> torch.Tensor:
        """Fuse ``x`` (``[N, F, h, w]``) with ``skip`` (same shape), then upsample to ``size`` (default 2x)."""
        if self.has_residual:
            if skip is None:
                raise ValueError("FeatureFusionBlock with a residual needs a skip input")
            x = x + self.resConfUnit1(skip)
        x = self.resConfUnit2(x)
        if size is None:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=True)
        else:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTHead(nn.Module):
    """DPT head over four token maps.

    Args:
        dim_in: Token channels of the input layers.
        patch_size: ViT patch size in pixels.
        layer_indices: Four indices into the token-map list passed to :meth:`forward`.
        features: Fusion width.
        out_channels: Reassembly widths of the four levels.
        output_dim: Output channels (ignored when ``feature_only``); the last channel is the confidence.
        feature_only: Return the fused ``[N, features, H, W]`` map instead of predictions.
        pos_embed: Add VGGT's UV sinusoidal embedding to the reassembled and final maps.
    """

    def __init__(
        self,
        dim_in: int,
        patch_size: int,
        layer_indices: tuple[int, int, int, int],
        features: int = 256,
        out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024),
        output_dim: int = 2,
        feature_only: bool = False,
        pos_embed: bool = True,
    ) -> None:
        super().__init__()
        if len(layer_indices) != 4 or len(out_channels) != 4:
            raise ValueError("DPTHead needs exactly four layer indices and four out_channels")
        self.patch_size = patch_size
        self.layer_indices = tuple(layer_indices)
        self.feature_only = feature_only
        self.pos_embed = pos_embed
        self.norm = nn.LayerNorm(dim_in)
        self.projects = nn.ModuleList([nn.Conv2d(dim_in, oc, kernel_size=1) for oc in out_channels])
        self.resize_layers = nn.ModuleList(
            [
                nn.ConvTranspose2d(out_channels[0], out_channels[0], kernel_size=4, stride=4),
                nn.ConvTranspose2d(out_channels[1], out_channels[1], kernel_size=2, stride=2),
                nn.Identity(),
                nn.Conv2d(out_channels[3], out_channels[3], kernel_size=3, stride=2, padding=1),
            ]
        )
        self.scratch = nn.Module()
        for i, oc in enumerate(out_channels, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(oc, features, 3, padding=1, bias=False))
        self.scratch.refinenet1 = FeatureFusionBlock(features)
        self.scratch.refinenet2 = FeatureFusionBlock(features)
        self.scratch.refinenet3 = FeatureFusionBlock(features)
        self.scratch.refinenet4 = FeatureFusionBlock(features, has_residual=False)
        if feature_only:
            self.scratch.output_conv1 = nn.Conv2d(features, features, 3, padding=1)
            self.out_features = features
        else:
            self.scratch.output_conv1 = nn.Conv2d(features, features // 2, 3, padding=1)
            self.scratch.output_conv2 = nn.Sequential(
                nn.Conv2d(features // 2, 32, 3, padding=1),
                nn.ReLU(inplace=True),
                nn.Conv2d(32, output_dim, 1),
            )
            self.out_features = output_dim

    def _add_pos(self, x: torch.Tensor, aspect_ratio: float) -> torch.Tensor:
        if not self.pos_embed:
            return x
        emb = uv_position_embedding(x.shape[-2], x.shape[-1], x.shape[1], aspect_ratio).to(x)
        return x + 0.1 * emb[None]

    def forward(
        self,
        token_maps: list[torch.Tensor] | tuple[torch.Tensor, ...],
        grid: tuple[int, int],
        out_hw: tuple[int, int],
    ) -> torch.Tensor:
        """Decode.

        Args:
            token_maps: Sequence of ``[N, P, dim_in]`` patch-token tensors (``P = h * w``, row-major); the head reads
                the four at ``layer_indices``.
            grid: Patch grid ``(h, w)``.
            out_hw: Output resolution ``(H_out, W_out)``; the image aspect ratio is taken from it.

        Returns:
            ``[N, out_features, H_out, W_out]`` raw (un-activated) predictions or fused features.
        """
        h, w = grid
        aspect = out_hw[1] / out_hw[0]
        levels = []
        for level, idx in enumerate(self.layer_indices):
            x = self.norm(token_maps[idx])
            if x.shape[1] != h * w:
                raise ValueError(f"DPTHead: layer {idx} has {x.shape[1]} tokens, grid {grid} needs {h * w}")
            x = x.transpose(1, 2).reshape(x.shape[0], x.shape[-1], h, w)
            x = self._add_pos(self.projects[level](x), aspect)
            levels.append(self.resize_layers[level](x))
        l1, l2, l3, l4 = (getattr(self.scratch, f"layer{i}_rn")(x) for i, x in enumerate(levels, start=1))
        out = self.scratch.refinenet4(l4, size=l3.shape[-2:])
        out = self.scratch.refinenet3(out, l3, size=l2.shape[-2:])
        out = self.scratch.refinenet2(out, l2, size=l1.shape[-2:])
        out = self.scratch.refinenet1(out, l1)
        out = self.scratch.output_conv1(out)
        out = F.interpolate(out, size=tuple(out_hw), mode="bilinear", align_corners=True)
        out = self._add_pos(out, aspect)
        if self.feature_only:
            return out
        return self.scratch.output_conv2(out)
