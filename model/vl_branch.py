"""3D-VL branch (paper Eq. 3-4): lift semantic tokens to metric 3D patches, pool them into voxels, project.

    depth (metric, detached) --sample at patch centres--> d [B,S,h,w]
    d, R, t, K (detached)    --Eq. 3 back-projection--->  P [B,S,h,w,3]  (metres, first-camera frame)
    T_3D = T'_lang + MLP(P)                             (Eq. 4, LLaVA-3D's learned MLP position embedding)
    voxel mean-pool (0.2 m, cap 2560) -> 2-layer GELU projector (LLaVA mlp2x_gelu) -> scene tokens [B,M,D]

Geometry is detached *before* back-projection, which is what makes the paper's one-way gradient exact: VL losses
reach the CTA through ``T'_lang`` but never the reconstruction branch or the metric-depth model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.config import VLBranchConfig
from model.geometry import backproject_depth, voxel_pool
from model.outputs import Output


@dataclass
class VLBranchOutput(Output):
    """Scene tokens for the LLM.

    Attributes:
        tokens: ``[B, M, D]`` projected voxel tokens (D = LLM hidden size).
        mask: ``[B, M]`` bool, True for real voxels.
        centres: ``[B, M, 3]`` voxel centres (mean of member points), metres, first-camera frame.
    """

    tokens: torch.Tensor
    mask: torch.Tensor
    centres: torch.Tensor


def sample_at_patch_centres(depth: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Bilinearly sample ``[B, S, H, W]`` depth at the ``h x w`` patch centres -> ``[B, S, h, w]``.

    ``interpolate(..., align_corners=False)`` evaluates the source at ``(j + 0.5) * W / w - 0.5``, exactly the
    patch-centre pixel used by :func:`model.geometry.pixel_centres`; antialiasing stays off so it is a point
    sample, not an average that would blend depth across object boundaries.
    """
    b, s, big_h, big_w = depth.shape
    flat = depth.reshape(b * s, 1, big_h, big_w)
    sampled = F.interpolate(flat, size=grid, mode="bilinear", align_corners=False)
    return sampled.reshape(b, s, *grid)


class VLBranch(nn.Module):
    """Semantic stream -> 3D patches -> voxel tokens -> LLM embedding space.

    Args:
        cfg: :class:`VLBranchConfig`.
        in_dim: width C of the CTA's semantic tokens.
        out_dim: LLM hidden size D.
    """

    def __init__(self, cfg: VLBranchConfig, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.pos_embed = nn.Sequential(nn.Linear(3, cfg.pos_hidden), nn.ReLU(), nn.Linear(cfg.pos_hidden, in_dim))
        self.projector = nn.Sequential(nn.Linear(in_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(
        self,
        lang: torch.Tensor,
        grid: tuple[int, int],
        image_hw: tuple[int, int],
        depth: torch.Tensor,
        extrinsics: torch.Tensor,
        intrinsics: torch.Tensor,
        generator: torch.Generator | None = None,
    ) -> VLBranchOutput:
        """Build scene tokens.

        Args:
            lang: ``[B, S, P, C]`` CTA semantic tokens ``T'_lang`` (P = h * w, row-major).
            grid: patch grid ``(h, w)``.
            image_hw: frame size ``(H, W)`` in pixels.
            depth: ``[B, S, H, W]`` metric depth (metres); detached here.
            extrinsics: ``[B, S, 3, 4]`` camera-from-world with metric translation; detached here.
            intrinsics: ``[B, S, 3, 3]`` K in pixels of ``image_hw``; detached here.
            generator: random generator for the voxel cap (``None``: deterministic seed 0).

        Returns:
            :class:`VLBranchOutput`; with ``cfg.blind`` one all-zero token per clip, masked out (no scene at all).
        """
        b, s, p, c = lang.shape
        h, w = grid
        if p != h * w:
            raise ValueError(f"VLBranch: {p} tokens per frame do not match the patch grid {grid}")
        if self.cfg.blind:
            return VLBranchOutput(tokens=lang.new_zeros(b, 1, self.projector[-1].out_features),
                                  mask=torch.zeros(b, 1, dtype=torch.bool, device=lang.device),
                                  centres=torch.zeros(b, 1, 3, device=lang.device))
        depth_p = sample_at_patch_centres(depth.detach().float(), grid)
        points = backproject_depth(depth_p, extrinsics.detach().float(), intrinsics.detach().float(), image_hw)
        points = points.reshape(b, s * p, 3)
        valid = (depth_p.reshape(b, s * p) > self.cfg.min_depth_m) & torch.isfinite(points).all(dim=-1)
        points = torch.where(valid[..., None], points, torch.zeros_like(points))
        tokens = lang.reshape(b, s * p, c) + self.pos_embed(points.to(lang.dtype))
        pooled = voxel_pool(tokens, points, valid, voxel_size_m=self.cfg.voxel_size_m,
                            max_tokens=self.cfg.max_tokens, generator=generator)
        return VLBranchOutput(tokens=self.projector(pooled.tokens), mask=pooled.mask, centres=pooled.centres)
