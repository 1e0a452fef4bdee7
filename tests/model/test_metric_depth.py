"""Metric Depth Model: output range, adaptive bins, normalisation variants, gradients."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from model.metric_depth import MetricDepthConfig, MetricDepthModel, log_binomial_probs


def _tokens(b: int = 1, s: int = 2, p: int = 6, c: int = 32, scale: float = 1.0, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    return tuple(scale * torch.randn(b, s, p, c, generator=gen) for _ in range(4))


def _model(**overrides) -> MetricDepthModel:
    torch.manual_seed(0)
    return MetricDepthModel(dataclasses.replace(MetricDepthConfig.tiny(), **overrides))


def test_shapes_and_probabilities():
    out = _model()(_tokens(), grid=(2, 3), image_hw=(28, 42))
    assert out.depth.shape == (1, 2, 28, 42)
    assert out.bin_centers.shape == (1, 2, 16, 28, 42)
    assert out.bin_probs.shape == (1, 2, 16, 28, 42)
    torch.testing.assert_close(out.bin_probs.sum(dim=2), torch.ones(1, 2, 28, 42))
    assert (out.bin_probs >= 0).all()
    torch.testing.assert_close(out.depth, (out.bin_probs * out.bin_centers).sum(dim=2))


@pytest.mark.parametrize("normalization", ["log_binomial", "softmax"])
@pytest.mark.parametrize("token_scale", [1.0, 100.0])
def test_depth_and_centres_stay_inside_the_range_even_for_extreme_features(normalization, token_scale):
    model = _model(normalization=normalization)
    with torch.no_grad():
        for head in (model.prob_head, model.offset_head):
            head[-1].weight.mul_(50.0)  # saturate the heads: offsets at +-1 room, near one-hot probabilities
    out = model(_tokens(scale=token_scale), grid=(2, 3), image_hw=(28, 42))
    cfg = model.cfg
    assert out.depth.min() >= cfg.min_depth_m and out.depth.max() <= cfg.max_depth_m
    assert out.bin_centers.min() >= cfg.min_depth_m - 1e-6 and out.bin_centers.max() <= cfg.max_depth_m + 1e-5
    # Adapted centres never cross: ordering of the bins is preserved for every pixel.
    assert (out.bin_centers.diff(dim=2) >= 0).all()


def test_base_centres_are_log_spaced_over_the_configured_range():
    model = _model(num_bins=64, min_depth_m=0.1, max_depth_m=10.0)
    centres = model.base_bin_centers()
    assert centres.shape == (64,)
    torch.testing.assert_close(centres[0], torch.tensor(0.1))
    torch.testing.assert_close(centres[-1], torch.tensor(10.0))
    ratios = centres[1:] / centres[:-1]
    torch.testing.assert_close(ratios, torch.full_like(ratios, math.exp(math.log(100.0) / 63)))
    # Default config = the documented ZoeDepth-N-like indoor bins.
    default = MetricDepthConfig()
    assert (default.num_bins, default.min_depth_m, default.max_depth_m) == (64, 0.1, 10.0)


def test_log_binomial_is_unimodal_and_peaks_near_q_times_k():
    q = torch.tensor([0.1, 0.5, 0.9]).view(3, 1, 1, 1)
    probs = log_binomial_probs(q, torch.ones_like(q), num_bins=21)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(3, 1, 1))
    assert probs.argmax(dim=1).flatten().tolist() == [2, 10, 18]
    for row in probs[:, :, 0, 0]:
        peak = int(row.argmax())
        assert (row[: peak + 1].diff() >= 0).all() and (row[peak:].diff() <= 0).all()
    sharp = log_binomial_probs(q, torch.full_like(q, 0.05), num_bins=21)
    assert (sharp.max(dim=1).values > probs.max(dim=1).values).all()  # lower temperature = sharper


def test_gradients_flow_to_decoder_heads_and_tokens():
    model = _model()
    tokens = tuple(t.requires_grad_() for t in _tokens())
    out = model(tokens, grid=(2, 3), image_hw=(28, 42))
    out.depth.log().mean().backward()
    for t in tokens:
        assert t.grad is not None and t.grad.abs().sum() > 0
    for name in (
        "decoder.projects.0.weight",
        "prob_head.2.weight",
        "offset_head.2.weight",
        "decoder.norm.weight",
    ):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_down_ratio_predicts_bins_at_lower_resolution_and_upsamples_depth():
    out = _model(down_ratio=2)(_tokens(), grid=(2, 3), image_hw=(28, 42))
    assert out.depth.shape == (1, 2, 28, 42)
    assert out.bin_probs.shape == (1, 2, 16, 14, 21)
    assert out.bin_centers.shape == (1, 2, 16, 14, 21)


def test_frame_chunking_does_not_change_the_result():
    tokens = _tokens(b=2, s=3)
    whole = _model(frames_chunk_size=0)(tokens, grid=(2, 3), image_hw=(28, 42))
    chunked = _model(frames_chunk_size=4)(tokens, grid=(2, 3), image_hw=(28, 42))
    torch.testing.assert_close(chunked.depth, whole.depth)
    torch.testing.assert_close(chunked.bin_probs, whole.bin_probs)
    torch.testing.assert_close(chunked.bin_centers, whole.bin_centers)


def test_bad_config_and_input_raise():
    with pytest.raises(ValueError, match="min_depth_m"):
        MetricDepthConfig(min_depth_m=5.0, max_depth_m=1.0)
    with pytest.raises(ValueError, match="num_bins"):
        MetricDepthConfig(num_bins=1)
    with pytest.raises(ValueError, match="normalization"):
        MetricDepthConfig(normalization="uniform")
    model = _model()
    with pytest.raises(ValueError, match="4 encoder layers"):
        model(_tokens()[:3], grid=(2, 3), image_hw=(28, 42))
    with pytest.raises(ValueError, match="32-channel"):
        model(_tokens(c=16), grid=(2, 3), image_hw=(28, 42))


@pytest.mark.slow
def test_base_config_builds_on_meta_device():
    with torch.device("meta"):
        model = MetricDepthModel(MetricDepthConfig.base())
    n = sum(p.numel() for p in model.parameters())
    assert 25e6 < n < 40e6  # a DPT-L-sized decoder (~30M) plus small bin heads
    assert model.base_bin_centers().shape == (64,)
