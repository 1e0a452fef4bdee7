"""Shared DINOv2 image encoder: video frames -> per-frame patch tokens.

Vid-LLM feeds every frame of the clip through one DINOv2 ViT (DINOv2-L/14 in the paper) and hands the patch tokens to
the Cross-Task Adapter; intermediate layers additionally feed the Metric Depth Model's DPT decoder. The ViT is the
Hugging Face implementation, built ``from_config`` (random init, tests) or ``from_pretrained`` from a local
directory in HF layout (``local_files_only=True``: nothing is ever downloaded).

Inputs are frames in ``[0, 1]``; ImageNet mean/std normalisation happens here so callers never normalise twice.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    PretrainedConfig,
)

from model.outputs import Output

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
        """DINOv2-L/14 with 4 registers, as in the paper and exactly VGGT-1B's patch embed: hidden 1024, 24 layers,
        16 heads, 518 px position grid. The geometry teacher and the student encoder can therefore start from the
        same weights (:func:`model.vggt_weights.convert_vggt_encoder`)."""
        return cls(
            dinov2={
                "hidden_size": 1024,
                "num_hidden_layers": 24,
                "num_attention_heads": 16,
                "mlp_ratio": 4,
                "patch_size": 14,
                "image_size": 518,
                "layerscale_value": 1.0,
                "num_register_tokens": 4,
            },
            out_layers=(5, 12, 18, 24),
        )


_ARCHITECTURE_KEYS = ("model_type", "num_register_tokens", "hidden_size", "num_hidden_layers", "num_attention_heads",
                      "patch_size", "mlp_ratio")


def check_pretrained_architecture(path: str, expected: Dinov2Config | Dinov2WithRegistersConfig) -> None:
    """Refuse an HF DINOv2 folder whose architecture differs from ``expected``, naming both.

    Checked from the folder's ``config.json`` before any weight is read: transformers would load a plain DINOv2
    folder into ``Dinov2WithRegistersModel`` (and the reverse) with only a warning, leaving the 4 register tokens
    at their initial zeros. Used by :class:`Encoder` for ``EncoderConfig.pretrained_path``; the geometry teacher
    can use it the same way.

    Args:
        path: local HF folder.
        expected: the configured architecture (``EncoderConfig.hf_config()``).

    Raises:
        OSError: the folder has no readable ``config.json``.
        ValueError: model type, register tokens, width, depth, heads, patch size or MLP ratio differ.
    """
    loaded = AutoConfig.from_pretrained(path, local_files_only=True)

    def describe(config: PretrainedConfig) -> str:
        return (f"{config.model_type} with {getattr(config, 'num_register_tokens', 0)} register tokens, hidden "
                f"{getattr(config, 'hidden_size', '?')}, {getattr(config, 'num_hidden_layers', '?')} layers, "
                f"{getattr(config, 'num_attention_heads', '?')} heads, patch {getattr(config, 'patch_size', '?')}")

    differ = [k for k in _ARCHITECTURE_KEYS if getattr(loaded, k, 0) != getattr(expected, k, 0)]
    if differ:
        raise ValueError(f"pretrained encoder at {path} is {describe(loaded)}, but the configuration asks for "
                         f"{describe(expected)} (differs in {', '.join(differ)})")


@dataclass
class EncoderOutput(Output):
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
            check_pretrained_architecture(cfg.pretrained_path, hf_config)
            self.backbone, info = model_cls.from_pretrained(cfg.pretrained_path, local_files_only=True,
                                                            output_loading_info=True)
            if info["missing_keys"] or info["mismatched_keys"]:
                raise ValueError(f"pretrained encoder at {cfg.pretrained_path} lacks weights of {model_cls.__name__}: "
                                 f"missing {sorted(info['missing_keys'])[:5]}, "
                                 f"mismatched {sorted(info['mismatched_keys'])[:5]}")
        self.hidden_size = int(hf_config.hidden_size)
        self.patch_size = int(hf_config.patch_size)
        self.num_prefix_tokens = 1 + cfg.num_register_tokens

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
