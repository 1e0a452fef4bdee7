"""Metric Depth Model ("Metric Bins Module", paper §3.2): a DPT decoder on DINOv2 features with adaptive depth bins.

Per pixel ``i`` the model predicts bin probabilities ``p_i(k)`` and adaptive bin centres
``c_i(k) = c_k + delta_c_i(k)`` and outputs ``d(i) = sum_k p_i(k) c_i(k)`` in metres.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from model.heads.dpt import DPTHead
from model.layers import maybe_checkpoint
from model.outputs import Output
from model.precision import fp32_region

Normalization = Literal["log_binomial", "softmax"]
_NORMALIZATIONS = ("log_binomial", "softmax")


@dataclass
class MetricDepthConfig:
    """Configuration of :class:`MetricDepthModel`.

    Choices the paper leaves open, fixed here:

    * **Multi-scale features:** the paper names 1/2 ... 1/32 scales. We feed four encoder layers
      (``EncoderConfig.out_layers``) to a DPT decoder whose reassembly builds levels at 4x, 2x, 1x and 1/2x the patch
      grid (1/3.5, 1/7, 1/14, 1/28 of the image for patch 14, i.e. the ~1/4 ... 1/32 pyramid) and whose fusion
      output is at ~1/2 scale before upsampling to the decoder resolution.
    * **Decoder resolution:** bins are predicted at ``(H // down_ratio, W // down_ratio)`` to bound memory
      (``num_bins`` maps per pixel); the expected depth is bilinearly upsampled to ``H x W``. Bilinear weights are
      convex, so the depth stays in ``[min_depth_m, max_depth_m]``.
    * **Base centres:** ``c_k`` log-spaced over ``[min_depth_m, max_depth_m]`` (64 bins over 0.1-10 m, ZoeDepth-N's
      indoor range).
    * **Offsets:** ``delta_c_i(k) = tanh(r_k(F_i))`` times the distance from ``c_k`` to the midpoint with its
      neighbour (the range end for the outer bins), so adapted centres never cross and never leave the range.
    * **Ordinal-aware normalisation** (``normalization``): ``"log_binomial"`` (default, ZoeDepth): the decoder
      predicts ``q in (0, 1)`` and a temperature ``t in [min_temperature, max_temperature]``;
      ``p(k) = softmax_k((log C(K-1, k) + k log q + (K-1-k) log(1-q)) / t)``, a unimodal distribution over ordered
      bins. ``"softmax"``: plain softmax over per-bin logits (ablation).

    Attributes:
        dim: Channels of the encoder tokens.
        patch_size: ViT patch size in pixels.
        num_bins: Number of depth bins ``K``.
        min_depth_m: Lower end of the depth range in metres.
        max_depth_m: Upper end of the depth range in metres.
        features: DPT fusion width.
        out_channels: DPT reassembly widths.
        bin_hidden: Hidden channels of the bin heads.
        normalization: ``"log_binomial"`` or ``"softmax"``.
        min_temperature: Lowest log-binomial temperature.
        max_temperature: Highest log-binomial temperature.
        down_ratio: Decoder resolution divisor (>= 1).
        frames_chunk_size: Frames decoded at once (bounds peak memory; 0 = all at once).
    """

    dim: int = 1024
    patch_size: int = 14
    num_bins: int = 64
    min_depth_m: float = 0.1
    max_depth_m: float = 10.0
    features: int = 256
    out_channels: tuple[int, int, int, int] = (256, 512, 1024, 1024)
    bin_hidden: int = 128
    normalization: Normalization = "log_binomial"
    min_temperature: float = 0.0212
    max_temperature: float = 50.0
    down_ratio: int = 2
    frames_chunk_size: int = 8

    def __post_init__(self) -> None:
        self.out_channels = tuple(int(c) for c in self.out_channels)
        for name in ("dim", "patch_size", "features", "bin_hidden", "down_ratio"):
            if getattr(self, name) < 1:
                raise ValueError(f"MetricDepthConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.frames_chunk_size < 0:
            raise ValueError(
                f"MetricDepthConfig.frames_chunk_size must be >= 0, got {self.frames_chunk_size}"
            )
        if self.num_bins < 2:
            raise ValueError(f"MetricDepthConfig.num_bins must be >= 2, got {self.num_bins}")
        if not 0 < self.min_depth_m < self.max_depth_m:
            raise ValueError(
                f"MetricDepthConfig: need 0 < min_depth_m < max_depth_m, got {self.min_depth_m}, {self.max_depth_m}"
            )
        if self.normalization not in _NORMALIZATIONS:
            raise ValueError(
                f"MetricDepthConfig.normalization must be one of {_NORMALIZATIONS}, got {self.normalization!r}"
            )
        if not 0 < self.min_temperature < self.max_temperature:
            raise ValueError("MetricDepthConfig: need 0 < min_temperature < max_temperature")
        if len(self.out_channels) != 4 or min(self.out_channels) < 1:
            raise ValueError(
                f"MetricDepthConfig.out_channels must be 4 positive ints, got {self.out_channels}"
            )

    @classmethod
    def tiny(cls) -> MetricDepthConfig:
        """16 bins on a 32-channel encoder, full decoder resolution: CPU tests."""
        return cls(
            dim=32, num_bins=16, features=16, out_channels=(8, 16, 32, 32), bin_hidden=16, down_ratio=1
        )

    @classmethod
    def small(cls) -> MetricDepthConfig:
        """DINOv2-S sized decoder (DA-V2-Small widths)."""
        return cls(dim=384, features=64, out_channels=(48, 96, 192, 384), bin_hidden=64)

    @classmethod
    def base(cls) -> MetricDepthConfig:
        """DINOv2-L sized decoder, 64 bins over 0.1-10 m."""
        return cls()


@dataclass
class MetricDepthOutput(Output):
    """Output of :class:`MetricDepthModel`.

    Every field is fp32 whatever the compute dtype (:mod:`model.precision`).

    Attributes:
        depth: ``[B, S, H, W]`` metric z-depth in metres, within ``[min_depth_m, max_depth_m]``.
        bin_centers: ``[B, S, K, h_d, w_d]`` adapted centres in metres at decoder resolution
            ``(h_d, w_d) = (H // down_ratio, W // down_ratio)``, increasing in ``k``.
        bin_probs: ``[B, S, K, h_d, w_d]`` bin probabilities (sum to 1 over ``K``).
    """

    depth: torch.Tensor
    bin_centers: torch.Tensor
    bin_probs: torch.Tensor


def log_binomial_probs(q: torch.Tensor, temperature: torch.Tensor, num_bins: int) -> torch.Tensor:
    """ZoeDepth's log-binomial normalisation.

    Args:
        q: ``[N, 1, h, w]`` success probability in ``(0, 1)``.
        temperature: ``[N, 1, h, w]`` positive temperature.
        num_bins: ``K``.

    Returns:
        ``[N, K, h, w]`` probabilities, unimodal in ``k`` for every pixel.
    """
    n = num_bins - 1
    k = torch.arange(num_bins, dtype=q.dtype, device=q.device).view(1, -1, 1, 1)
    log_binom = math.lgamma(n + 1) - torch.lgamma(k + 1) - torch.lgamma(n - k + 1)
    eps = 1e-6
    logits = log_binom + k * torch.log(q.clamp(eps, 1.0)) + (n - k) * torch.log((1 - q).clamp(eps, 1.0))
    return torch.softmax(logits / temperature, dim=1)


class MetricDepthModel(nn.Module):
    """DPT decoder + metric bins head.

    ``gradient_checkpointing`` (off by default; a run-time switch) recomputes the decoder and bin heads of each
    frame chunk in the backward pass instead of storing their full-resolution activations.

    Args:
        cfg: Metric depth configuration.
    """

    def __init__(self, cfg: MetricDepthConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.gradient_checkpointing = False
        self.decoder = DPTHead(cfg.dim, cfg.patch_size, (0, 1, 2, 3), cfg.features, cfg.out_channels,
                               feature_only=True)  # fmt: skip
        num_prob_channels = 2 if cfg.normalization == "log_binomial" else cfg.num_bins
        self.prob_head = nn.Sequential(
            nn.Conv2d(cfg.features, cfg.bin_hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(cfg.bin_hidden, num_prob_channels, 1),
        )
        self.offset_head = nn.Sequential(
            nn.Conv2d(cfg.features, cfg.bin_hidden, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(cfg.bin_hidden, cfg.num_bins, 1),
        )

    def base_bin_centers(self, device: torch.device | None = None) -> torch.Tensor:
        """Base centres ``c_k`` in metres, ``[K]``, log-spaced over ``[min_depth_m, max_depth_m]``."""
        cfg = self.cfg
        # Computed on the fly (K values) rather than stored as buffers: nothing to checkpoint, and a model built on
        # the meta device and materialised with to_empty() cannot end up with uninitialised centres.
        lin = torch.linspace(
            math.log(cfg.min_depth_m), math.log(cfg.max_depth_m), cfg.num_bins, device=device
        )
        return torch.exp(lin)

    def _bin_room(self, centers: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Distance from each base centre down / up to the midpoint with its neighbour (or the range end)."""
        mids = (centers[1:] + centers[:-1]) / 2
        lower = torch.cat((centers.new_full((1,), self.cfg.min_depth_m), mids))
        upper = torch.cat((mids, centers.new_full((1,), self.cfg.max_depth_m)))
        return centers - lower, upper - centers

    def _probabilities(self, raw: torch.Tensor) -> torch.Tensor:
        if self.cfg.normalization == "softmax":
            return torch.softmax(raw, dim=1)
        q = torch.sigmoid(raw[:, :1])
        span = self.cfg.max_temperature - self.cfg.min_temperature
        temperature = self.cfg.min_temperature + span * torch.sigmoid(raw[:, 1:2])
        return log_binomial_probs(q, temperature, self.cfg.num_bins)

    def _decode(
        self,
        maps: list[torch.Tensor],
        grid: tuple[int, int],
        dec_hw: tuple[int, int],
        out_hw: tuple[int, int],
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Frames ``[N, P, C]`` x 4 -> depth ``[N, 1, H, W]``, centres and probabilities ``[N, K, h_d, w_d]``."""
        features = self.decoder(maps, grid, dec_hw)  # [N, F, h_d, w_d]
        raw_probs, raw_offsets = self.prob_head(features), self.offset_head(features)
        # Bin probabilities, centres and their expectation in fp32 whatever the compute dtype (model.precision):
        # a bf16 softmax over 64 bins and a bf16 64-term sum would cost ~1 % of the depth.
        with fp32_region(features):
            probs = self._probabilities(raw_probs.float())
            shift = torch.tanh(raw_offsets.float())
            base = self.base_bin_centers(features.device)
            room_below, room_above = (r.view(1, -1, 1, 1) for r in self._bin_room(base))
            offsets = torch.where(shift >= 0, shift * room_above, shift * room_below)
            centers = base.view(1, -1, 1, 1) + offsets
            depth = (probs * centers).sum(dim=1, keepdim=True)
            if dec_hw != out_hw:
                depth = F.interpolate(depth, size=out_hw, mode="bilinear", align_corners=False)
        # Rounding in the sum or interpolation may step a hair outside the range; the range is a hard guarantee.
        return depth.clamp(self.cfg.min_depth_m, self.cfg.max_depth_m), centers, probs

    def forward(
        self, layer_tokens: tuple[torch.Tensor, ...], grid: tuple[int, int], image_hw: tuple[int, int]
    ) -> MetricDepthOutput:
        """Predict metric depth.

        Args:
            layer_tokens: Four ``[B, S, P, C]`` encoder token maps (``EncoderOutput.layer_tokens``), shallow to deep.
            grid: Patch grid ``(h, w)``, ``P = h * w``.
            image_hw: Output size ``(H, W)`` in pixels.

        Returns:
            :class:`MetricDepthOutput`.
        """
        if len(layer_tokens) != 4:
            raise ValueError(f"MetricDepthModel needs 4 encoder layers, got {len(layer_tokens)}")
        b, s, p, c = layer_tokens[0].shape
        if c != self.cfg.dim:
            raise ValueError(f"MetricDepthModel expects {self.cfg.dim}-channel tokens, got {c}")
        if any(t.shape != layer_tokens[0].shape for t in layer_tokens):
            raise ValueError(
                f"MetricDepthModel: layer token shapes differ: {[tuple(t.shape) for t in layer_tokens]}"
            )
        height, width = image_hw
        dec_hw = (max(1, height // self.cfg.down_ratio), max(1, width // self.cfg.down_ratio))
        maps = [t.reshape(b * s, p, c) for t in layer_tokens]
        chunk = self.cfg.frames_chunk_size or b * s

        def decode(*chunk_maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            return self._decode(list(chunk_maps), grid, dec_hw, (height, width))

        parts = [maybe_checkpoint(self, self.gradient_checkpointing, decode, *(m[i : i + chunk] for m in maps))
                 for i in range(0, b * s, chunk)]  # fmt: skip
        depth, centers, probs = (torch.cat(items) for items in zip(*parts, strict=True))
        k = self.cfg.num_bins
        return MetricDepthOutput(
            depth=depth.reshape(b, s, height, width),
            bin_centers=centers.reshape(b, s, k, *dec_hw),
            bin_probs=probs.reshape(b, s, k, *dec_hw),
        )
