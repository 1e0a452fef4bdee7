"""Stage-1 dual-teacher distillation projections (paper §3.4, Figure 3).

Student side: learned linear maps from the CTA's ``T'_geom``/``T'_lang`` (width C) to a common width ``Dd``.
Teacher side: *fixed* orthogonal maps from the teacher widths to ``Dd``, stored as buffers. A learned teacher
projection would let the normalised losses collapse (both sides mapping to one constant vector); an orthogonal map
preserves the teacher's cosine structure exactly (identity-like when widths match), which is all the L2-normalised
losses see.

Grids: the geometry teacher (VGGT's DINOv2-L/14-reg at its own resolution) may have a different patch grid from
the student. Student tokens are resampled to the teacher grid by bilinear interpolation over the patch grid
(``align_corners=False``, i.e. cell centres aligned, both grids tiling the same image), after projection (linear
maps commute with interpolation, and ``Dd <= C`` makes this cheaper).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from model.config import DistillationConfig
from model.outputs import DistillFeatures


def _orthogonal(rows: int, cols: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    big, small = max(rows, cols), min(rows, cols)
    q, _ = torch.linalg.qr(torch.randn(big, small, generator=gen))
    return q if rows >= cols else q.T.contiguous()


def infer_teacher_grid(num_tokens: int, student_grid: tuple[int, int]) -> tuple[int, int]:
    """The ``(ht, wt)`` with ``ht * wt = num_tokens`` whose aspect ratio is closest to the student grid's."""
    h, w = student_grid
    target = math.log(h / w)
    pairs = [(d, num_tokens // d) for d in range(1, num_tokens + 1) if num_tokens % d == 0]
    return min(pairs, key=lambda p: abs(math.log(p[0] / p[1]) - target))


def resample_tokens(tokens: torch.Tensor, grid: tuple[int, int], target: tuple[int, int]) -> torch.Tensor:
    """Bilinearly resample ``[B, S, h*w, C]`` patch tokens to a ``target`` grid -> ``[B, S, ht*wt, C]``."""
    if tuple(grid) == tuple(target):
        return tokens
    b, s, p, c = tokens.shape
    x = tokens.reshape(b * s, grid[0], grid[1], c).permute(0, 3, 1, 2)
    x = F.interpolate(x, size=target, mode="bilinear", align_corners=False)
    return x.permute(0, 2, 3, 1).reshape(b, s, target[0] * target[1], c)


class DistillationProjections(nn.Module):
    """Project student and teacher features into the common distillation space.

    Args:
        cfg: :class:`DistillationConfig`.
        student_dim: width C of the CTA streams.
    """

    def __init__(self, cfg: DistillationConfig, student_dim: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.student_geo = nn.Linear(student_dim, cfg.dim)
        self.student_lang = nn.Linear(student_dim, cfg.dim)
        self.register_buffer("teacher_geo_proj", _orthogonal(cfg.teacher_geo_dim, cfg.dim, cfg.seed))
        self.register_buffer("teacher_sem_proj", _orthogonal(cfg.teacher_sem_dim, cfg.dim, cfg.seed + 1))

    def forward(
        self,
        geom: torch.Tensor,
        lang: torch.Tensor,
        grid: tuple[int, int],
        teacher_geo: torch.Tensor | None = None,
        teacher_sem: torch.Tensor | None = None,
        teacher_grid: tuple[int, int] | None = None,
    ) -> DistillFeatures:
        """Project the features that have a teacher target.

        Args:
            geom: ``[B, S, P, C]`` student ``T'_geom``.
            lang: ``[B, S, P, C]`` student ``T'_lang``.
            grid: student patch grid ``(h, w)``.
            teacher_geo: ``[B, S, Pt, Ct]`` teacher patch tokens, or ``None``.
            teacher_sem: ``[B, S, Cs]`` teacher pooled features, or ``None``.
            teacher_grid: teacher grid; inferred with :func:`infer_teacher_grid` when ``None``.

        Returns:
            :class:`DistillFeatures` (fields ``None`` where no teacher was given).
        """
        out = DistillFeatures()
        if teacher_geo is not None:
            if teacher_geo.shape[-1] != self.cfg.teacher_geo_dim:
                raise ValueError(f"teacher_geo width {teacher_geo.shape[-1]} != config teacher_geo_dim "
                                 f"{self.cfg.teacher_geo_dim}")
            pt = teacher_geo.shape[2]
            target = tuple(teacher_grid) if teacher_grid is not None else infer_teacher_grid(pt, grid)
            if target[0] * target[1] != pt:
                raise ValueError(f"teacher_grid {target} does not hold {pt} teacher tokens")
            out.student_geo = resample_tokens(self.student_geo(geom), grid, target)
            out.teacher_geo = teacher_geo.detach().to(self.teacher_geo_proj.dtype) @ self.teacher_geo_proj
        if teacher_sem is not None:
            if teacher_sem.shape[-1] != self.cfg.teacher_sem_dim:
                raise ValueError(f"teacher_sem width {teacher_sem.shape[-1]} != config teacher_sem_dim "
                                 f"{self.cfg.teacher_sem_dim}")
            # Projected per token (Eq. 7 compares the semantic stream's tokens); the mean of the projected tokens
            # is the projection of the mean (an affine map), i.e. Pool(T'_lang) of L_lang.
            out.student_sem_tokens = self.student_lang(lang)
            out.student_sem = out.student_sem_tokens.mean(dim=2)
            out.teacher_sem = teacher_sem.detach().to(self.teacher_sem_proj.dtype) @ self.teacher_sem_proj
        return out
