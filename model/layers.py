"""Transformer building blocks shared by the reconstruction branch and its heads.

The blocks follow the DINOv2/VGGT layout (pre-norm attention + MLP, each scaled by a learnable LayerScale) and keep
VGGT's parameter names (``norm1``, ``attn.qkv``, ``attn.q_norm``, ``attn.k_norm``, ``attn.proj``, ``ls1.gamma``,
``norm2``, ``mlp.fc1``, ``mlp.fc2``, ``ls2.gamma``) so that VGGT-1B aggregator and camera-head weights load with a
prefix-only key mapping (see ``docs/vggt_key_mapping.md``).

Token layout conventions used throughout ``model/``:

* ``tokens``: ``[N, L, C]`` where ``N`` is a batch of sequences (frames or clips), ``L`` tokens, ``C`` channels.
* ``positions``: ``[N, L, 2]`` integer ``(y, x)`` patch coordinates for 2D RoPE; special tokens (camera/register) sit
  at ``(0, 0)`` and patch ``(i, j)`` sits at ``(i + 1, j + 1)`` so that specials never share a position with a patch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


def maybe_checkpoint(module: nn.Module, enabled: bool, fn: Callable[..., torch.Tensor], *args) -> torch.Tensor:
    """``fn(*args)``; with activation checkpointing on (``enabled``, ``module`` in training mode, grad enabled) its
    activations are not stored but recomputed in the backward pass (non-reentrant, RNG and autocast state
    restored, so values and gradients are identical; inputs need not require grad)."""
    if enabled and module.training and torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


class LayerScale(nn.Module):
    """Per-channel learnable scaling of a residual branch (CaiT/DINOv2).

    Args:
        dim: Channel count ``C``.
        init_value: Initial value of every entry of ``gamma``.
    """

    def __init__(self, dim: int, init_value: float) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Scale ``x`` (``[..., C]``) channel-wise."""
        return x * self.gamma


class Mlp(nn.Module):
    """Two-layer perceptron ``fc2(GELU(fc1(x)))``.

    Args:
        in_features: Input channels.
        hidden_features: Hidden channels.
        out_features: Output channels (defaults to ``in_features``).
        bias: Whether both linear layers have a bias.
    """

    def __init__(
        self, in_features: int, hidden_features: int, out_features: int | None = None, bias: bool = True
    ) -> None:
        super().__init__()
        self.fc1 = nn.Linear(in_features, hidden_features, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden_features, out_features or in_features, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the MLP to the last dimension of ``x``."""
        return self.fc2(self.act(self.fc1(x)))


class RotaryPositionEmbedding2D(nn.Module):
    """2D rotary position embedding (RoPE) over ``(y, x)`` patch coordinates.

    The head dimension is split in two halves: the first half is rotated by the ``y`` coordinate, the second by the
    ``x`` coordinate, each with the usual 1D RoPE frequencies ``base ** (-2i / d)``. No parameters: the module only
    carries the base frequency, so it adds nothing to the state dict.

    Args:
        base_frequency: RoPE base (VGGT uses 100).
    """

    def __init__(self, base_frequency: float = 100.0) -> None:
        super().__init__()
        self.base_frequency = float(base_frequency)

    def _rotate_1d(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        dim = x.shape[-1]
        inv_freq = 1.0 / (
            self.base_frequency ** (torch.arange(0, dim, 2, device=x.device, dtype=torch.float32) / dim)
        )
        angles = pos.to(torch.float32)[..., None] * inv_freq  # [N, L, dim/2]
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # [N, 1, L, dim] broadcast over heads
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        x1, x2 = x[..., : dim // 2], x[..., dim // 2 :]
        rotated_half = torch.cat((-x2, x1), dim=-1)
        return x * cos + rotated_half * sin

    def forward(self, x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Rotate queries or keys.

        Args:
            x: ``[N, heads, L, head_dim]`` with ``head_dim`` divisible by 4.
            positions: ``[N, L, 2]`` integer ``(y, x)`` coordinates.

        Returns:
            Tensor of the same shape as ``x``.
        """
        if x.shape[-1] % 4 != 0:
            raise ValueError(f"2D RoPE needs a head dim divisible by 4, got {x.shape[-1]}")
        y_half, x_half = x.chunk(2, dim=-1)
        return torch.cat(
            (self._rotate_1d(y_half, positions[..., 0]), self._rotate_1d(x_half, positions[..., 1])), dim=-1
        )


def patch_positions(
    batch: int, grid: tuple[int, int], num_special: int, device: torch.device
) -> torch.Tensor:
    """RoPE coordinates for ``num_special`` special tokens followed by a ``h x w`` patch grid (row-major).

    Args:
        batch: Number of sequences ``N``.
        grid: Patch grid ``(h, w)``.
        num_special: Tokens placed before the patches (all at ``(0, 0)``).
        device: Target device.

    Returns:
        Long tensor ``[N, num_special + h*w, 2]`` of ``(y, x)``; patches are shifted by +1.
    """
    h, w = grid
    ys = torch.arange(h, device=device).repeat_interleave(w)
    xs = torch.arange(w, device=device).repeat(h)
    patch = torch.stack((ys, xs), dim=-1) + 1
    special = torch.zeros(num_special, 2, dtype=patch.dtype, device=device)
    return torch.cat((special, patch), dim=0)[None].expand(batch, -1, -1)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` projection, optional QK-LayerNorm and optional 2D RoPE.

    Args:
        dim: Channels ``C``.
        num_heads: Heads; ``C`` must be divisible by it.
        qkv_bias: Bias of the ``qkv`` projection.
        proj_bias: Bias of the output projection.
        qk_norm: LayerNorm on each head's queries and keys (stabilises deep global attention, as in VGGT).
        rope: Shared RoPE module, or ``None`` for no positional rotation.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
    ) -> None:
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim, bias=proj_bias)
        self.rope = rope

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Attend over all ``L`` tokens of each sequence.

        Args:
            x: ``[N, L, C]``.
            positions: ``[N, L, 2]`` RoPE coordinates; required when the module has a RoPE.

        Returns:
            ``[N, L, C]``.
        """
        n, length, channels = x.shape
        qkv = self.qkv(x).reshape(n, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # each [N, heads, L, head_dim]
        q, k = self.q_norm(q), self.k_norm(k)
        if self.rope is not None:
            if positions is None:
                raise ValueError("Attention with RoPE needs token positions")
            q, k = self.rope(q, positions), self.rope(k, positions)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(n, length, channels))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + ls1(attn(norm1(x)))`` then ``x + ls2(mlp(norm2(x)))``.

    Args:
        dim: Channels ``C``.
        num_heads: Attention heads.
        mlp_ratio: MLP hidden size as a multiple of ``C``.
        init_values: LayerScale initial value (VGGT: 0.01).
        qk_norm: QK-LayerNorm in attention.
        rope: Shared RoPE module or ``None``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        init_values: float = 0.01,
        qk_norm: bool = False,
        rope: RotaryPositionEmbedding2D | None = None,
    ) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, qk_norm=qk_norm, rope=rope)
        self.ls1 = LayerScale(dim, init_values)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, init_values)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the block to ``x`` (``[N, L, C]``); ``positions`` as in :class:`Attention`."""
        x = x + self.ls1(self.attn(self.norm1(x), positions))
        return x + self.ls2(self.mlp(self.norm2(x)))
