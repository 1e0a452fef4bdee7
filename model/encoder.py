"""Shared DINOv2 image encoder: video frames -> per-frame patch tokens.

Vid-LLM feeds every frame of the clip through one DINOv2 ViT (DINOv2-L/14 in the paper) and hands the patch tokens to
the Cross-Task Adapter; intermediate layers additionally feed the Metric Depth Model's DPT decoder. The ViT is the
Hugging Face implementation, built ``from_config`` (random init, tests) or ``from_pretrained`` from a local
directory in HF layout (``local_files_only=True``: nothing is ever downloaded).

Inputs are frames in ``[0, 1]``; ImageNet mean/std normalisation happens here so callers never normalise twice.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class EncoderConfig:
    """Configuration of :class:`Encoder`.

    Attributes:
        dinov2: Keyword arguments of HF ``Dinov2Config`` (``hidden_size``, ``num_hidden_layers``,
            ``num_attention_heads``, ``mlp_ratio``, ``patch_size``, ``image_size``, ``layerscale_value``, ...).
            A positive ``num_register_tokens`` selects ``Dinov2WithRegistersConfig``/``Dinov2WithRegistersModel``.
        pretrained_path: Local directory holding an HF-layout DINOv2 checkpoint (``config.json`` +
            safetensors), or ``None`` for random initialisation. Its architecture must match ``dinov2``.
        out_layers: 1-based indices of the transformer layers whose (final-LayerNorm-ed) patch tokens are returned
            in ``EncoderOutput.layer_tokens``, like HF ``out_indices``; they feed the Metric Depth DPT decoder.
    """

    dinov2: dict[str, Any] = field(default_factory=dict)
    pretrained_path: str | None = None
    out_layers: tuple[int, ...] = (1, 2, 3, 4)

    def __post_init__(self) -> None:
        self.dinov2 = dict(self.dinov2)
        self.out_layers = tuple(int(i) for i in self.out_layers)
        config_cls = Dinov2WithRegistersConfig if self.num_register_tokens > 0 else Dinov2Config
        known = set(inspect.signature(config_cls.__init__).parameters) | {"num_register_tokens"}
        # HF configs store unknown kwargs silently; a typo such as "intermediate_size" would then be ignored.
        unknown = sorted(set(self.dinov2) - known)
        if unknown:
            raise ValueError(f"EncoderConfig.dinov2 has keys unknown to {config_cls.__name__}: {unknown}")
        try:
            hf_config = self.hf_config()
        except (TypeError, ValueError) as err:
            raise ValueError(f"EncoderConfig.dinov2 is not a valid Dinov2Config: {err}") from err
        if hf_config.hidden_size % hf_config.num_attention_heads != 0:
            raise ValueError(
                f"EncoderConfig.dinov2: hidden_size {hf_config.hidden_size} not divisible by "
                f"num_attention_heads {hf_config.num_attention_heads}"
            )
        if not self.out_layers:
            raise ValueError("EncoderConfig.out_layers must name at least one layer")
        bad = [i for i in self.out_layers if not 1 <= i <= hf_config.num_hidden_layers]
        if bad:
            raise ValueError(
                f"EncoderConfig.out_layers {bad} outside 1..num_hidden_layers={hf_config.num_hidden_layers}"
            )
        if self.pretrained_path is not None and not str(self.pretrained_path).strip():
            raise ValueError("EncoderConfig.pretrained_path must be None or a non-empty local directory")

    @property
    def num_register_tokens(self) -> int:
        """Register tokens of the ViT (0 for plain DINOv2)."""
        return int(self.dinov2.get("num_register_tokens", 0))

    @property
    def hidden_size(self) -> int:
        """Token width ``C``."""
        return int(self.hf_config().hidden_size)

    @property
    def patch_size(self) -> int:
        """Patch side in pixels."""
        return int(self.hf_config().patch_size)

    def hf_config(self) -> Dinov2Config | Dinov2WithRegistersConfig:
        """Build the HF config object described by ``dinov2``."""
        if self.num_register_tokens > 0:
            return Dinov2WithRegistersConfig(**self.dinov2)
        kwargs = {k: v for k, v in self.dinov2.items() if k != "num_register_tokens"}
        return Dinov2Config(**kwargs)

    @classmethod
    def tiny(cls) -> EncoderConfig:
        """2-layer, 32-wide random ViT/14 for CPU tests."""
        return cls(
            dinov2={
                "hidden_size": 32,
                "num_hidden_layers": 2,
                "num_attention_heads": 2,
                "mlp_ratio": 2,
                "patch_size": 14,
                "image_size": 28,
                "layerscale_value": 1.0,
            },
            out_layers=(1, 1, 2, 2),
        )

    @classmethod
    def small(cls) -> EncoderConfig:
        """DINOv2-S/14: hidden 384, 12 layers, 6 heads, 518 px position grid."""
        return cls(
            dinov2={
                "hidden_size": 384,
                "num_hidden_layers": 12,
                "num_attention_heads": 6,
                "mlp_ratio": 4,
                "patch_size": 14,
                "image_size": 518,
                "layerscale_value": 1.0,
            },
            out_layers=(3, 6, 9, 12),
        )

    @classmethod
    def base(cls) -> EncoderConfig:
        """DINOv2-L/14 as in the paper: hidden 1024, 24 layers, 16 heads, 518 px position grid."""
        return cls(
            dinov2={
                "hidden_size": 1024,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "mlp_ratio": 4,
                "patch_size": 14,
                "image_size": 518,
                "layerscale_value": 1.0,
            },
            out_layers=(5, 12, 18, 24),
        )


def vggt_patch_embed_to_hf_dinov2(
    state_dict: Mapping[str, torch.Tensor], prefix: str = "aggregator.patch_embed."
) -> dict[str, torch.Tensor]:
    """Convert the DINOv2 inside a VGGT checkpoint (facebookresearch/dinov2 naming) to HF ``Dinov2*Model`` keys.

    The paper's geometry teacher is "the DINO encoder initialised from VGGT"; VGGT-1B stores a DINOv2-L/14 with
    4 registers under ``aggregator.patch_embed.``. The fused ``attn.qkv`` projection is split into HF's
    ``q_proj``/``k_proj``/``v_proj`` (rows 0..C-1, C..2C-1, 2C..3C-1). Keys outside ``prefix`` are ignored.

    Args:
        state_dict: VGGT (or plain DINOv2 hub, with ``prefix=""``) state dict.
        prefix: Key prefix of the ViT inside ``state_dict``.

    Returns:
        State dict for ``Dinov2WithRegistersModel`` (or ``Dinov2Model`` when the source has no registers).

    Raises:
        ValueError: A key under ``prefix`` has no HF counterpart.
    """
    renames = {
        "cls_token": "embeddings.cls_token",
        "mask_token": "embeddings.mask_token",
        "register_tokens": "embeddings.register_tokens",
        "pos_embed": "embeddings.position_embeddings",
        "patch_embed.proj.weight": "embeddings.patch_embeddings.projection.weight",
        "patch_embed.proj.bias": "embeddings.patch_embeddings.projection.bias",
        "norm.weight": "layernorm.weight",
        "norm.bias": "layernorm.bias",
    }
    block_renames = {
        "attn.proj.": "attention.o_proj.",
        "ls1.gamma": "layer_scale1.lambda1",
        "ls2.gamma": "layer_scale2.lambda1",
        "norm1.": "norm1.",
        "norm2.": "norm2.",
        "mlp.": "mlp.",
    }
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if name in renames:
            out[renames[name]] = value
            continue
        parts = name.split(".", 2)
        if len(parts) != 3 or parts[0] != "blocks" or not parts[1].isdigit():
            raise ValueError(f"VGGT patch-embed key {key!r} has no HF DINOv2 counterpart")
        layer, rest = f"encoder.layer.{parts[1]}.", parts[2]
        if rest.startswith("attn.qkv."):
            q, k, v = value.chunk(3, dim=0)
            suffix = rest[len("attn.qkv.") :]
            for proj, part in (("q_proj", q), ("k_proj", k), ("v_proj", v)):
                out[f"{layer}attention.{proj}.{suffix}"] = part
            continue
        src = next((s for s in block_renames if rest.startswith(s)), None)
        if src is None:
            raise ValueError(f"VGGT patch-embed key {key!r} has no HF DINOv2 counterpart")
        out[layer + block_renames[src] + rest[len(src) :]] = value
    return out


@dataclass
class EncoderOutput:
    """Output of :class:`Encoder`.

    Attributes:
        tokens: ``[B, S, P, C]`` last-layer patch tokens (after the final LayerNorm), ``P = h * w`` in row-major
            patch order; no CLS or register tokens.
        layer_tokens: One ``[B, S, P, C]`` tensor per ``EncoderConfig.out_layers`` entry (same LayerNorm).
        grid: Patch grid ``(h, w) = (H // patch, W // patch)``.
    """

    tokens: torch.Tensor
    layer_tokens: tuple[torch.Tensor, ...]
    grid: tuple[int, int]


class Encoder(nn.Module):
    """DINOv2 wrapper mapping frames ``[B, S, 3, H, W]`` in ``[0, 1]`` to patch tokens.

    Args:
        cfg: Encoder configuration. With ``cfg.pretrained_path`` the weights are read from that local directory.
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        hf_config = cfg.hf_config()
        model_cls = Dinov2WithRegistersModel if cfg.num_register_tokens > 0 else Dinov2Model
        if cfg.pretrained_path is None:
            self.backbone = model_cls(hf_config)
        else:
            self.backbone = model_cls.from_pretrained(cfg.pretrained_path, local_files_only=True)
            self._check_pretrained_matches(hf_config)
        self.hidden_size = int(hf_config.hidden_size)
        self.patch_size = int(hf_config.patch_size)
        self.num_prefix_tokens = 1 + cfg.num_register_tokens

    def _check_pretrained_matches(self, expected: Dinov2Config | Dinov2WithRegistersConfig) -> None:
        loaded = self.backbone.config
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size"):
            if getattr(loaded, key) != getattr(expected, key):
                raise ValueError(
                    f"pretrained encoder at {self.cfg.pretrained_path}: {key}={getattr(loaded, key)} but "
                    f"EncoderConfig.dinov2 says {getattr(expected, key)}"
                )

    def forward(self, frames: torch.Tensor) -> EncoderOutput:
        """Encode a clip.

        Args:
            frames: ``[B, S, 3, H, W]`` RGB in ``[0, 1]``; ``H`` and ``W`` multiples of the patch size.

        Returns:
            :class:`EncoderOutput` with patch tokens of the last layer and of ``cfg.out_layers``.
        """
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise ValueError(f"frames must be [B, S, 3, H, W], got {tuple(frames.shape)}")
        b, s, _, height, width = frames.shape
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"frame size {height}x{width} is not a multiple of the patch size {self.patch_size}"
            )
        grid = (height // self.patch_size, width // self.patch_size)
        # Constants built per call (not buffers) so a model materialised from the meta device stays correct.
        mean = torch.tensor(IMAGENET_MEAN, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_STD, dtype=frames.dtype, device=frames.device).view(1, 3, 1, 1)
        pixels = (frames.reshape(b * s, 3, height, width) - mean) / std
        out = self.backbone(pixel_values=pixels, output_hidden_states=True)
        tokens = out.last_hidden_state[:, self.num_prefix_tokens :]
        # hidden_states[i] is the output of layer i (index 0 = embeddings) before the final LayerNorm; normalise
        # them the same way as the last layer, as DINOv2's get_intermediate_layers(norm=True) does for DPT heads.
        layer_tokens = tuple(
            self.backbone.layernorm(out.hidden_states[i][:, self.num_prefix_tokens :]).reshape(
                b, s, -1, self.hidden_size
            )
            for i in self.cfg.out_layers
        )
        return EncoderOutput(
            tokens=tokens.reshape(b, s, -1, self.hidden_size), layer_tokens=layer_tokens, grid=grid
        )
