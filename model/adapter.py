"""Cross-Task Adapter (CTA): splits shared DINOv2 tokens into a geometric and a language stream linked by bridge tokens.

Paper (§3.1, Eq. 2): ``T_geom = phi_geom(T_base)``, ``T_lang = phi_lang(T_base)`` with two-layer x4 GELU MLPs, and K
learnable bridge tokens updated by

    T'_bridge = Attn(T_bridge, T_geom, T_geom) + Attn(T_bridge, T_lang, T_lang)

after which the bridge is "integrated into the feature streams" to give ``T'_geom`` and ``T'_lang``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from model.outputs import Output

WritebackMode = Literal["cross_attention", "none"]
_WRITEBACK_MODES = ("cross_attention", "none")


@dataclass
class AdapterConfig:
    """Configuration of :class:`CrossTaskAdapter`.

    Choices the paper leaves open, fixed here:

    * **Grouping:** bridge tokens attend over the whole clip at once (all ``S * P`` tokens of all frames), so the
      ``K`` bridge tokens summarise the video and carry information across frames into both streams.
    * **Eq. 2 normalisation:** keys/values are pre-LayerNorm-ed streams (``norm_geom_kv``/``norm_lang_kv``); the sum
      of the two attentions is used as ``T'_bridge`` as written, followed by a LayerNorm (``norm_bridge``) so the
      write-back sees unit-scale keys.
    * **Write-back** (``writeback``): ``"cross_attention"`` (default) makes every stream token a query over
      ``T'_bridge`` and adds the result back with a residual and a post-LayerNorm,
      ``T'_s = LN(T_s + Attn(T_s, T'_bridge, T'_bridge))``, one attention per stream. ``"none"`` returns the
      projected streams unchanged (ablation "no bridge integration"); the bridge is still computed and returned.

    Attributes:
        dim: Token width ``C`` (must equal the encoder's hidden size).
        num_bridge_tokens: ``K`` (paper best: 16 among 4/8/16/32).
        num_heads: Heads of every attention in the adapter.
        mlp_ratio: Expansion of phi_geom/phi_lang (paper: 4).
        writeback: Write-back operator, see above.
        dropout: Attention dropout probability.
    """

    dim: int = 1024
    num_bridge_tokens: int = 16
    num_heads: int = 16
    mlp_ratio: int = 4
    writeback: WritebackMode = "cross_attention"
    dropout: float = 0.0

    def __post_init__(self) -> None:
        if self.dim <= 0 or self.num_heads <= 0 or self.dim % self.num_heads != 0:
            raise ValueError(
                f"AdapterConfig: dim {self.dim} must be positive and divisible by num_heads {self.num_heads}"
            )
        if self.num_bridge_tokens <= 0:
            raise ValueError(
                f"AdapterConfig.num_bridge_tokens must be positive, got {self.num_bridge_tokens}"
            )
        if self.mlp_ratio <= 0:
            raise ValueError(f"AdapterConfig.mlp_ratio must be positive, got {self.mlp_ratio}")
        if self.writeback not in _WRITEBACK_MODES:
            raise ValueError(
                f"AdapterConfig.writeback must be one of {_WRITEBACK_MODES}, got {self.writeback!r}"
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"AdapterConfig.dropout must be in [0, 1), got {self.dropout}")

    @classmethod
    def tiny(cls) -> AdapterConfig:
        """32-wide adapter with 4 bridge tokens for CPU tests (matches ``EncoderConfig.tiny``)."""
        return cls(dim=32, num_bridge_tokens=4, num_heads=2)

    @classmethod
    def small(cls) -> AdapterConfig:
        """Adapter for DINOv2-S (384 channels)."""
        return cls(dim=384, num_bridge_tokens=16, num_heads=6)

    @classmethod
    def base(cls) -> AdapterConfig:
        """Adapter for DINOv2-L (1024 channels), K = 16 as in the paper."""
        return cls(dim=1024, num_bridge_tokens=16, num_heads=16)


@dataclass
class AdapterOutput(Output):
    """Output of :class:`CrossTaskAdapter`.

    Attributes:
        geom: ``[B, S, P, C]`` geometric stream ``T'_geom`` (input of the reconstruction branch).
        lang: ``[B, S, P, C]`` language stream ``T'_lang`` (input of the 3D-VL branch).
        bridge: ``[B, K, C]`` updated bridge tokens ``T'_bridge``.
    """

    geom: torch.Tensor
    lang: torch.Tensor
    bridge: torch.Tensor


def _projection(dim: int, ratio: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim, dim * ratio), nn.GELU(), nn.Linear(dim * ratio, dim))


class CrossTaskAdapter(nn.Module):
    """Cross-Task Adapter of Vid-LLM (see :class:`AdapterConfig` for the documented design choices).

    Args:
        cfg: Adapter configuration.
    """

    def __init__(self, cfg: AdapterConfig) -> None:
        super().__init__()
        self.cfg = cfg
        dim = cfg.dim
        self.phi_geom = _projection(dim, cfg.mlp_ratio)
        self.phi_lang = _projection(dim, cfg.mlp_ratio)
        self.bridge_tokens = nn.Parameter(torch.randn(1, cfg.num_bridge_tokens, dim) * 0.02)
        self.norm_geom_kv = nn.LayerNorm(dim)
        self.norm_lang_kv = nn.LayerNorm(dim)
        self.bridge_from_geom = nn.MultiheadAttention(
            dim, cfg.num_heads, dropout=cfg.dropout, batch_first=True
        )
        self.bridge_from_lang = nn.MultiheadAttention(
            dim, cfg.num_heads, dropout=cfg.dropout, batch_first=True
        )
        self.norm_bridge = nn.LayerNorm(dim)
        if cfg.writeback == "cross_attention":
            self.geom_from_bridge = nn.MultiheadAttention(
                dim, cfg.num_heads, dropout=cfg.dropout, batch_first=True
            )
            self.lang_from_bridge = nn.MultiheadAttention(
                dim, cfg.num_heads, dropout=cfg.dropout, batch_first=True
            )
            self.norm_geom_out = nn.LayerNorm(dim)
            self.norm_lang_out = nn.LayerNorm(dim)

    def forward(self, tokens: torch.Tensor) -> AdapterOutput:
        """Split and fuse the shared encoder tokens.

        Args:
            tokens: ``[B, S, P, C]`` encoder patch tokens ``T_base``.

        Returns:
            :class:`AdapterOutput` with both streams ``[B, S, P, C]`` and the bridge ``[B, K, C]``.
        """
        if tokens.ndim != 4 or tokens.shape[-1] != self.cfg.dim:
            raise ValueError(f"adapter expects [B, S, P, {self.cfg.dim}] tokens, got {tuple(tokens.shape)}")
        b, s, p, c = tokens.shape
        # Whole-clip grouping: each clip is one sequence of S*P tokens for the bridge attention.
        geom = self.phi_geom(tokens).reshape(b, s * p, c)
        lang = self.phi_lang(tokens).reshape(b, s * p, c)
        bridge = self.bridge_tokens.expand(b, -1, -1)
        geom_kv, lang_kv = self.norm_geom_kv(geom), self.norm_lang_kv(lang)
        from_geom, _ = self.bridge_from_geom(bridge, geom_kv, geom_kv, need_weights=False)
        from_lang, _ = self.bridge_from_lang(bridge, lang_kv, lang_kv, need_weights=False)
        bridge = self.norm_bridge(from_geom + from_lang)  # Eq. 2
        if self.cfg.writeback == "cross_attention":
            geom_upd, _ = self.geom_from_bridge(geom, bridge, bridge, need_weights=False)
            lang_upd, _ = self.lang_from_bridge(lang, bridge, bridge, need_weights=False)
            geom = self.norm_geom_out(geom + geom_upd)
            lang = self.norm_lang_out(lang + lang_upd)
        return AdapterOutput(geom=geom.reshape(b, s, p, c), lang=lang.reshape(b, s, p, c), bridge=bridge)
