"""Pure tensor geometry for the 3D-VL branch: depth back-projection and metric voxel pooling.

Conventions (shared with the rest of ``model/``): OpenCV camera axes (x right, y down, z forward), z-depth,
extrinsics are camera-from-world ``[R | t]`` with the world frame = the first camera of the clip (VGGT
convention), intrinsics are in pixels of the full input image, and pixel centres sit at integer coordinates
(so an image of width ``W`` spans ``u in [-0.5, W - 0.5]``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from model.precision import fp32_region


def pixel_centres(grid_hw: tuple[int, int], image_hw: tuple[int, int], device=None, dtype=None) -> torch.Tensor:
    """Pixel coordinates of the centres of a ``h x w`` grid of cells tiling an ``H x W`` image.

    Cell ``(i, j)`` covers pixels ``[j*W/w, (j+1)*W/w)``; its centre is ``u = (j + 0.5) * W / w - 0.5``. For
    ``(h, w) == (H, W)`` this is the identity (``u = j``); for the ViT patch grid it gives the patch centres.

    Returns:
        ``[h, w, 2]`` tensor of ``(u, v)`` pixel coordinates.
    """
    h, w = grid_hw
    big_h, big_w = image_hw
    v = (torch.arange(h, device=device, dtype=dtype or torch.float32) + 0.5) * (big_h / h) - 0.5
    u = (torch.arange(w, device=device, dtype=dtype or torch.float32) + 0.5) * (big_w / w) - 0.5
    vv, uu = torch.meshgrid(v, u, indexing="ij")
    return torch.stack([uu, vv], dim=-1)


def backproject_depth(
    depth: torch.Tensor,
    extrinsics: torch.Tensor,
    intrinsics: torch.Tensor,
    image_hw: tuple[int, int],
) -> torch.Tensor:
    """Lift z-depth to world points (paper Eq. 3): ``P = R^T (K^-1 [u, v, 1]^T d) - R^T t``.

    The depth map may be sampled at a coarser grid than the image (e.g. at ViT patch centres): pixel coordinates
    are those of the grid-cell centres in the full-resolution image, so ``intrinsics`` stay the image's.

    Args:
        depth: ``[B, S, h, w]`` z-depth (metres, or any unit consistent with the translation in ``extrinsics``).
        extrinsics: ``[B, S, 3, 4]`` camera-from-world ``[R | t]``.
        intrinsics: ``[B, S, 3, 3]`` pinhole ``K`` in pixels of the ``image_hw`` image.
        image_hw: ``(H, W)`` of the image the intrinsics refer to.

    Returns:
        ``[B, S, h, w, 3]`` points in the world (first-camera) frame, same unit as ``depth``; computed and returned
        in fp32 (fp64 for fp64 inputs) whatever the input dtype or autocast state.
    """
    if depth.dim() != 4 or extrinsics.shape[-2:] != (3, 4) or intrinsics.shape[-2:] != (3, 3):
        raise ValueError(
            f"backproject_depth expects depth [B,S,h,w], extrinsics [B,S,3,4], intrinsics [B,S,3,3]; got "
            f"{tuple(depth.shape)}, {tuple(extrinsics.shape)}, {tuple(intrinsics.shape)}"
        )
    b, s, h, w = depth.shape
    dtype = torch.promote_types(depth.dtype, torch.float32)
    with fp32_region(depth):
        uv = pixel_centres((h, w), image_hw, device=depth.device, dtype=dtype)  # [h, w, 2]
        homog = torch.cat([uv, torch.ones_like(uv[..., :1])], dim=-1)  # [h, w, 3]
        k_inv = torch.linalg.inv(intrinsics.to(dtype))  # [B, S, 3, 3]
        rays = torch.einsum("bsij,hwj->bshwi", k_inv, homog)  # camera-frame rays with z = 1
        cam = rays * depth.to(dtype).unsqueeze(-1)
        rot = extrinsics[..., :3].to(dtype)
        trans = extrinsics[..., 3].to(dtype)
        # R^T (X_cam - t): the inverse of X_cam = R X_world + t.
        return torch.einsum("bsji,bshwj->bshwi", rot, cam - trans[:, :, None, None, :])


@dataclass
class VoxelPoolOutput:
    """Result of :func:`voxel_pool` for a batch, padded to the largest voxel count ``M``.

    Attributes:
        tokens: ``[B, M, C]`` mean token of each kept voxel (zeros in padding), in the input tokens' dtype.
        centres: ``[B, M, 3]`` mean point of each kept voxel (world frame, metres; zeros in padding), fp32.
        mask: ``[B, M]`` bool, True for real voxels.
        counts: ``[B, M]`` fp32 number of input tokens averaged into each voxel (0 in padding).
    """

    tokens: torch.Tensor
    centres: torch.Tensor
    mask: torch.Tensor
    counts: torch.Tensor


def voxel_pool(
    tokens: torch.Tensor,
    points: torch.Tensor,
    valid: torch.Tensor | None = None,
    voxel_size_m: float = 0.2,
    max_tokens: int = 2560,
    generator: torch.Generator | None = None,
) -> VoxelPoolOutput:
    """Average tokens that fall into the same metric voxel (LLaVA-3D style pooling, no ``torch_scatter``).

    Voxel index = ``floor(p / voxel_size_m)``; every occupied voxel yields the mean token and the mean point of
    its members. Counts, sums and means are accumulated in fp32 whatever the input dtype (bf16 cannot count past
    256 and would bias both means); the mean tokens are returned in the tokens' dtype, centres and counts in fp32. When more than ``max_tokens`` voxels are occupied, a random subset of ``max_tokens`` voxels is
    kept (LLaVA-3D caps at 2560); the subset is drawn from ``generator`` (a fixed seed-0 generator when
    ``None``, so inference is deterministic) and kept in voxel order.

    Args:
        tokens: ``[B, N, C]`` tokens.
        points: ``[B, N, 3]`` their 3D positions (metres).
        valid: optional ``[B, N]`` bool; invalid tokens (e.g. non-finite or non-positive depth) are ignored.
        voxel_size_m: voxel edge length in metres.
        max_tokens: cap on the number of voxels per batch item.
        generator: random generator for the cap subset.

    Returns:
        A :class:`VoxelPoolOutput` padded to ``M = max_b(kept voxels)`` (at least 1, so shapes stay non-empty).
    """
    if voxel_size_m <= 0:
        raise ValueError(f"voxel_size_m must be > 0, got {voxel_size_m}")
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    if tokens.dim() != 3 or points.shape != (*tokens.shape[:2], 3):
        raise ValueError(f"voxel_pool expects tokens [B,N,C] and points [B,N,3]; got {tuple(tokens.shape)}, "
                         f"{tuple(points.shape)}")
    b, _, c = tokens.shape
    acc = torch.promote_types(torch.promote_types(tokens.dtype, points.dtype), torch.float32)
    finite = torch.isfinite(points).all(dim=-1)
    valid = finite if valid is None else valid & finite
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(0)
    per_item = []
    for i in range(b):
        tok, pts = tokens[i][valid[i]].to(acc), points[i][valid[i]].to(acc)
        if tok.shape[0] == 0:
            per_item.append((tok.new_zeros(0, c), pts.new_zeros(0, 3), pts.new_zeros(0)))
            continue
        idx = torch.floor(pts.detach() / voxel_size_m).long()
        _, inverse = torch.unique(idx, dim=0, return_inverse=True)
        n_vox = int(inverse.max()) + 1
        counts = torch.zeros(n_vox, device=tok.device, dtype=acc).index_add_(
            0, inverse, torch.ones_like(inverse, dtype=acc))
        mean_tok = tok.new_zeros(n_vox, c).index_add_(0, inverse, tok) / counts[:, None]
        mean_pts = pts.new_zeros(n_vox, 3).index_add_(0, inverse, pts) / counts[:, None]
        if n_vox > max_tokens:
            keep = torch.randperm(n_vox, generator=generator)[:max_tokens].sort().values.to(tok.device)
            mean_tok, mean_pts, counts = mean_tok[keep], mean_pts[keep], counts[keep]
        per_item.append((mean_tok, mean_pts, counts))
    m = max(1, max(item[0].shape[0] for item in per_item))
    out_tok = tokens.new_zeros(b, m, c)
    out_pts = points.new_zeros(b, m, 3, dtype=acc)
    out_cnt = tokens.new_zeros(b, m, dtype=acc)
    mask = torch.zeros(b, m, dtype=torch.bool, device=tokens.device)
    for i, (tok, pts, cnt) in enumerate(per_item):
        n = tok.shape[0]
        out_tok[i, :n], out_pts[i, :n], out_cnt[i, :n] = tok, pts, cnt
        mask[i, :n] = True
    return VoxelPoolOutput(tokens=out_tok, centres=out_pts, mask=mask, counts=out_cnt)
