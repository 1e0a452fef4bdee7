"""Real-scale alignment of the reconstruction branch (paper §3.2).

The reconstruction branch predicts depth and camera translation up to one unknown scale per clip. The Metric Depth
Model predicts metric depth per frame, with less detail. Per frame we fit the scale ``s`` minimising
``sum_i w_i (s r_i - m_i)^2`` (closed form ``s = sum w r m / sum w r^2``), take the **median** over up to 16 randomly
sampled frames as the clip's scale, and multiply both the relative depth and the camera translations by it. The
final geometry is the *scaled relative* depth (sharper than the metric one).

Weights (unspecified in the paper) are chosen by the caller; the natural choice, used by ``VidLLM``, is the DPT depth
confidence ``depth_conf``. Pixels with non-positive weight, non-positive depth or non-finite values are ignored. The
weighted fit down-weights outlier pixels; the median over frames rejects frames whose fit went wrong.

All functions are plain tensor maths and differentiable almost everywhere; detach the result if the scale must not
receive gradients.
"""

from __future__ import annotations

import torch


def _check_maps(relative: torch.Tensor, metric: torch.Tensor, weight: torch.Tensor) -> None:
    if relative.ndim != 4:
        raise ValueError(f"relative depth must be [B, S, H, W], got {tuple(relative.shape)}")
    for name, t in (("metric", metric), ("weight", weight)):
        if t.shape != relative.shape:
            raise ValueError(
                f"{name} shape {tuple(t.shape)} differs from relative depth {tuple(relative.shape)}"
            )


def fit_scale_per_frame(relative: torch.Tensor, metric: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Weighted least-squares scale of every frame.

    Args:
        relative: ``[B, S, H, W]`` relative depth (reconstruction branch).
        metric: ``[B, S, H, W]`` metric depth in metres (Metric Depth Model, or ground truth).
        weight: ``[B, S, H, W]`` non-negative per-pixel weights (e.g. depth confidence).

    Returns:
        ``[B, S]`` scales ``s = sum w r m / sum w r^2`` (metres per relative unit); NaN for frames with no valid
        pixel.
    """
    _check_maps(relative, metric, weight)
    valid = (weight > 0) & (relative > 0) & (metric > 0)
    valid &= torch.isfinite(relative) & torch.isfinite(metric) & torch.isfinite(weight)
    zero = torch.zeros((), dtype=relative.dtype, device=relative.device)
    w = torch.where(valid, weight, zero)
    r = torch.where(valid, relative, zero)
    m = torch.where(valid, metric, zero)
    num = (w * r * m).flatten(2).sum(-1)
    den = (w * r * r).flatten(2).sum(-1)
    nan = torch.full_like(num, float("nan"))
    return torch.where(den > 0, num / den.clamp_min(torch.finfo(den.dtype).tiny), nan)


def scene_scale(
    relative: torch.Tensor,
    metric: torch.Tensor,
    weight: torch.Tensor,
    num_frames: int = 16,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Clip scale: median of per-frame scales over up to ``num_frames`` randomly sampled frames.

    Args:
        relative: ``[B, S, H, W]`` relative depth.
        metric: ``[B, S, H, W]`` metric depth in metres.
        weight: ``[B, S, H, W]`` per-pixel weights.
        num_frames: Frames sampled per clip (paper: 16); all frames when ``S <= num_frames``.
        generator: CPU ``torch.Generator`` for a reproducible frame sample (global RNG when ``None``).

    Returns:
        ``[B]`` scales. The median of an even count is the lower middle value (``torch.nanmedian``); frames without
        valid pixels are ignored.

    Raises:
        ValueError: ``num_frames < 1`` or a clip whose sampled frames all lack valid pixels.
    """
    _check_maps(relative, metric, weight)
    if num_frames < 1:
        raise ValueError(f"num_frames must be >= 1, got {num_frames}")
    b, s = relative.shape[:2]
    k = min(num_frames, s)
    # One independent sample of frames per clip, drawn on the CPU so a CPU generator works for any device.
    idx = torch.stack([torch.randperm(s, generator=generator)[:k] for _ in range(b)]).to(relative.device)
    gather = idx[:, :, None, None].expand(b, k, *relative.shape[2:])
    scales = fit_scale_per_frame(
        relative.gather(1, gather), metric.gather(1, gather), weight.gather(1, gather)
    )  # [B, k]
    result = torch.nanmedian(scales, dim=1).values
    bad = torch.isnan(result).nonzero().flatten().tolist()
    if bad:
        raise ValueError(
            f"scene_scale: clips {bad} have no frame with valid (positive, finite) depth and weight"
        )
    return result


def apply_scale(
    depth: torch.Tensor, extrinsics: torch.Tensor, scale: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bring relative geometry to metric scale.

    Scaling the world by ``s`` maps camera-from-world ``[R | t]`` to ``[R | s t]``; intrinsics are unchanged.

    Args:
        depth: ``[B, S, H, W]`` relative depth.
        extrinsics: ``[B, S, 3, 4]`` camera-from-world with relative translation.
        scale: ``[B]`` clip scales.

    Returns:
        ``(depth * s, extrinsics with translation * s)``, same shapes as the inputs.
    """
    if depth.ndim != 4 or extrinsics.shape[-2:] != (3, 4) or extrinsics.shape[:2] != depth.shape[:2]:
        raise ValueError(
            f"apply_scale expects depth [B, S, H, W] and extrinsics [B, S, 3, 4], got {tuple(depth.shape)} "
            f"and {tuple(extrinsics.shape)}"
        )
    if scale.shape != depth.shape[:1]:
        raise ValueError(f"scale must be [B]={tuple(depth.shape[:1])}, got {tuple(scale.shape)}")
    scaled_depth = depth * scale[:, None, None, None]
    scaled_extrinsics = torch.cat(
        (extrinsics[..., :3], extrinsics[..., 3:] * scale[:, None, None, None]), dim=-1
    )
    return scaled_depth, scaled_extrinsics
