"""Shared DINOv2 encoder: shapes, normalisation, local pretrained loading (VGGT conversion: test_vggt_weights)."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from transformers import Dinov2Model, Dinov2WithRegistersModel

from model.encoder import IMAGENET_MEAN, IMAGENET_STD, Encoder, EncoderConfig


def _with(cfg: EncoderConfig, **dinov2_overrides) -> EncoderConfig:
    return dataclasses.replace(cfg, dinov2={**cfg.dinov2, **dinov2_overrides})


def test_tiny_forward_shapes_and_grid():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.tiny()).eval()
    out = enc(torch.rand(1, 2, 3, 28, 42))
    assert enc.hidden_size == 32
    assert out.grid == (2, 3)
    assert out.tokens.shape == (1, 2, 6, 32)
    assert len(out.layer_tokens) == 4
    assert all(t.shape == (1, 2, 6, 32) for t in out.layer_tokens)
    # The last requested layer is the last layer: same tokens as the final output.
    torch.testing.assert_close(out.layer_tokens[-1], out.tokens)
    assert not torch.allclose(out.layer_tokens[0], out.tokens)


def test_normalisation_happens_inside_and_prefix_tokens_are_dropped():
    torch.manual_seed(0)
    enc = Encoder(EncoderConfig.tiny()).eval()
    frames = torch.rand(2, 3, 3, 28, 28)
    out = enc(frames)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    ref = enc.backbone(pixel_values=(frames.reshape(6, 3, 28, 28) - mean) / std).last_hidden_state
    assert ref.shape[1] == 1 + 4  # CLS + 2x2 patches
    torch.testing.assert_close(out.tokens.reshape(6, 4, 32), ref[:, 1:])


def test_register_tokens_select_the_registers_model():
    cfg = _with(EncoderConfig.tiny(), num_register_tokens=2)
    enc = Encoder(cfg)
    assert isinstance(enc.backbone, Dinov2WithRegistersModel)
    assert isinstance(Encoder(EncoderConfig.tiny()).backbone, Dinov2Model)
    out = enc(torch.rand(1, 2, 3, 28, 42))
    assert out.tokens.shape == (1, 2, 6, 32)  # CLS and 2 registers removed


def test_gradients_reach_the_backbone():
    enc = Encoder(EncoderConfig.tiny())
    enc(torch.rand(1, 2, 3, 28, 28)).tokens.square().mean().backward()
    grad = enc.backbone.embeddings.patch_embeddings.projection.weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_pretrained_local_directory_round_trip(tmp_path):
    torch.manual_seed(0)
    source = Encoder(EncoderConfig.tiny()).eval()
    source.backbone.save_pretrained(tmp_path / "dino")
    loaded = Encoder(dataclasses.replace(EncoderConfig.tiny(), pretrained_path=str(tmp_path / "dino"))).eval()
    frames = torch.rand(1, 2, 3, 28, 42)
    torch.testing.assert_close(loaded(frames).tokens, source(frames).tokens)
    mismatched = dataclasses.replace(
        _with(EncoderConfig.tiny(), hidden_size=64), pretrained_path=str(tmp_path / "dino")
    )
    with pytest.raises(ValueError, match="hidden_size"):
        Encoder(mismatched)
    with pytest.raises(OSError):
        Encoder(dataclasses.replace(EncoderConfig.tiny(), pretrained_path=str(tmp_path / "missing")))


def test_bad_config_and_input_raise():
    with pytest.raises(ValueError, match="out_layers"):
        dataclasses.replace(EncoderConfig.tiny(), out_layers=(0, 3))
    with pytest.raises(ValueError, match="divisible"):
        _with(EncoderConfig.tiny(), num_attention_heads=3)
    with pytest.raises(ValueError, match="intermediate_size"):
        _with(EncoderConfig.tiny(), intermediate_size=64)  # Dinov2Config takes mlp_ratio instead
    with pytest.raises(ValueError, match="pretrained_path"):
        dataclasses.replace(EncoderConfig.tiny(), pretrained_path=" ")
    enc = Encoder(EncoderConfig.tiny())
    with pytest.raises(ValueError, match="multiple of the patch size"):
        enc(torch.rand(1, 2, 3, 28, 40))
    with pytest.raises(ValueError, match=r"\[B, S, 3, H, W\]"):
        enc(torch.rand(2, 3, 28, 28))


@pytest.mark.slow
def test_base_and_small_configs_build_on_meta_device_with_expected_sizes():
    with torch.device("meta"):
        large = Encoder(EncoderConfig.base())
        small = Encoder(EncoderConfig.small())
    n_large = sum(p.numel() for p in large.parameters())
    n_small = sum(p.numel() for p in small.parameters())
    assert next(large.parameters()).device.type == "meta"
    assert 300e6 < n_large < 310e6  # DINOv2-L/14: 304M
    assert 21e6 < n_small < 23e6  # DINOv2-S/14: 22M
    assert large.hidden_size == 1024 and small.hidden_size == 384
