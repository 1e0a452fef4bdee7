"""Scale alignment: weighted per-frame fit, median over sampled frames, application to depth and poses."""

from __future__ import annotations

import pytest
import torch

from model.scale_alignment import apply_scale, fit_scale_per_frame, scene_scale


def _synthetic(
    scale: float,
    b: int = 2,
    s: int = 8,
    hw: tuple[int, int] = (24, 32),
    outlier_frac: float = 0.2,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Relative depth, metric = scale * relative * (1 + 5% noise) with gross outliers, confidence, outlier mask."""
    gen = torch.Generator().manual_seed(seed)
    relative = 0.5 + 2.5 * torch.rand(b, s, *hw, generator=gen)
    metric = scale * relative * (1 + 0.05 * torch.randn(b, s, *hw, generator=gen))
    outliers = torch.rand(b, s, *hw, generator=gen) < outlier_frac
    # Gross outliers: 3-10x too far (e.g. windows, mirrors, sky-like failures of the metric model).
    metric = torch.where(outliers, metric * (3 + 7 * torch.rand(b, s, *hw, generator=gen)), metric)
    # Confidence in the style of the DPT head's 1 + exp(x): ~55-400 on inliers, the minimum 1 on outliers.
    confidence = 1 + torch.where(outliers, 0.0, torch.exp(4 + 2 * torch.rand(b, s, *hw, generator=gen)))
    return relative, metric, confidence, outliers


def test_per_frame_fit_recovers_scale_under_noise_and_outliers_when_confidence_downweights_them():
    relative, metric, confidence, _ = _synthetic(scale=2.7)
    scales = fit_scale_per_frame(relative, metric, confidence)
    assert scales.shape == (2, 8)
    assert torch.allclose(scales, torch.full_like(scales, 2.7), rtol=0.02)
    # Without the confidence the 20% gross outliers bias the least-squares fit well by more than 50%.
    unweighted = fit_scale_per_frame(relative, metric, torch.ones_like(relative))
    assert ((unweighted - 2.7).abs() / 2.7).min() > 0.5


def test_exact_scale_without_noise():
    relative = torch.rand(1, 3, 5, 7) + 0.1
    scales = fit_scale_per_frame(relative, 0.37 * relative, torch.ones_like(relative))
    torch.testing.assert_close(scales, torch.full((1, 3), 0.37))


def test_scene_scale_median_rejects_bad_frames():
    relative, metric, confidence, _ = _synthetic(scale=1.8, s=9)
    metric[:, :3] *= 5.0  # three of nine frames are badly wrong (e.g. a failed metric prediction)
    per_frame = fit_scale_per_frame(relative, metric, confidence)
    assert (per_frame[:, :3] > 8).all()
    scale = scene_scale(relative, metric, confidence, num_frames=16)
    assert scale.shape == (2,)
    assert torch.allclose(scale, torch.full((2,), 1.8), rtol=0.02)
    # A mean would be pulled far off by the bad frames: the median is what makes this robust.
    assert (per_frame.mean(dim=1) > 3.5).all()


def test_scene_scale_samples_at_most_num_frames_deterministically():
    b, s = 1, 40
    # Frame f has scale f + 1, so the result reveals which frames were sampled.
    relative = torch.ones(b, s, 2, 2)
    metric = torch.arange(1, s + 1, dtype=torch.float32).view(1, s, 1, 1).expand(b, s, 2, 2).clone()
    weight = torch.ones_like(relative)
    first = scene_scale(relative, metric, weight, num_frames=16, generator=torch.Generator().manual_seed(7))
    again = scene_scale(relative, metric, weight, num_frames=16, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(first, again)
    expected_perm = torch.randperm(s, generator=torch.Generator().manual_seed(7))[:16]
    expected = torch.median((expected_perm + 1).float()).reshape(1)  # torch.median: lower middle value
    torch.testing.assert_close(first, expected)
    others = {
        float(scene_scale(relative, metric, weight, 16, torch.Generator().manual_seed(seed)))
        for seed in range(10)
    }
    assert len(others) > 1  # the sample really depends on the generator
    # With S <= num_frames every frame is used: the median of 1..40 (lower middle) is 20.
    assert float(scene_scale(relative, metric, weight, num_frames=64)) == 20.0


def test_invalid_pixels_and_frames_are_ignored():
    relative = torch.rand(1, 4, 6, 6) + 0.5
    metric = 3.0 * relative
    weight = torch.ones_like(relative)
    metric[0, 0] = 0.0  # frame 0: no valid metric depth at all
    relative[0, 1, :3] = float("nan")  # frame 1: half the pixels invalid
    weight[0, 2, :, :2] = 0.0  # frame 2: some pixels masked out
    per_frame = fit_scale_per_frame(relative, metric, weight)
    assert torch.isnan(per_frame[0, 0])
    torch.testing.assert_close(per_frame[0, 1:], torch.full((3,), 3.0))
    torch.testing.assert_close(scene_scale(relative, metric, weight), torch.tensor([3.0]))


def test_scene_scale_raises_when_nothing_is_valid():
    relative = torch.ones(2, 3, 4, 4)
    metric = torch.ones(2, 3, 4, 4)
    metric[1] = 0.0
    with pytest.raises(ValueError, match=r"clips \[1\]"):
        scene_scale(relative, metric, torch.ones_like(relative))
    with pytest.raises(ValueError, match="num_frames"):
        scene_scale(relative, metric, torch.ones_like(relative), num_frames=0)
    with pytest.raises(ValueError, match="weight shape"):
        fit_scale_per_frame(relative, metric, torch.ones(2, 3, 4, 5))


def test_apply_scale_scales_depth_and_translation_consistently():
    gen = torch.Generator().manual_seed(3)
    b, s, h, w = 2, 3, 4, 5
    depth = torch.rand(b, s, h, w, generator=gen) + 0.5
    rotation = torch.linalg.qr(torch.randn(b, s, 3, 3, generator=gen)).Q
    translation = torch.randn(b, s, 3, 1, generator=gen)
    extrinsics = torch.cat((rotation, translation), dim=-1)
    scale = torch.tensor([2.0, 0.5])
    new_depth, new_ext = apply_scale(depth, extrinsics, scale)
    torch.testing.assert_close(new_depth, depth * scale[:, None, None, None])
    torch.testing.assert_close(new_ext[..., :3], rotation)
    torch.testing.assert_close(new_ext[..., 3:], translation * scale[:, None, None, None])
    # A camera-frame point X_c = d * ray maps to world X_w = R^T (X_c - t); scaling depth and t scales X_w.
    ray = torch.tensor([0.1, -0.2, 1.0])
    x_c = depth[..., 0, 0, None] * ray
    x_w = (rotation.transpose(-1, -2) @ (x_c[..., None] - translation))[..., 0]
    x_c_new = new_depth[..., 0, 0, None] * ray
    x_w_new = (rotation.transpose(-1, -2) @ (x_c_new[..., None] - new_ext[..., 3:]))[..., 0]
    torch.testing.assert_close(x_w_new, x_w * scale[:, None, None])
    with pytest.raises(ValueError, match="scale"):
        apply_scale(depth, extrinsics, torch.ones(3))
