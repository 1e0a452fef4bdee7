"""Cross-Task Adapter: shapes, Eq. 2, write-back and gradient flow between the streams."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.adapter import AdapterConfig, CrossTaskAdapter


@pytest.mark.parametrize("num_bridge_tokens", [1, 4, 16])
def test_shapes_and_configurable_k(num_bridge_tokens):
    adapter = CrossTaskAdapter(dataclasses.replace(AdapterConfig.tiny(), num_bridge_tokens=num_bridge_tokens))
    out = adapter(torch.randn(2, 3, 6, 32))
    assert out.geom.shape == (2, 3, 6, 32)
    assert out.lang.shape == (2, 3, 6, 32)
    assert out.bridge.shape == (2, num_bridge_tokens, 32)
    assert adapter.bridge_tokens.shape == (1, num_bridge_tokens, 32)


def test_projections_are_two_layer_x4_gelu_mlps():
    adapter = CrossTaskAdapter(AdapterConfig.tiny())
    for mlp in (adapter.phi_geom, adapter.phi_lang):
        assert [type(m).__name__ for m in mlp] == ["Linear", "GELU", "Linear"]
        assert mlp[0].weight.shape == (128, 32) and mlp[2].weight.shape == (32, 128)


def test_bridge_follows_equation_2():
    torch.manual_seed(0)
    adapter = CrossTaskAdapter(AdapterConfig.tiny()).eval()
    tokens = torch.randn(2, 3, 6, 32)
    out = adapter(tokens)
    geom = adapter.norm_geom_kv(adapter.phi_geom(tokens).reshape(2, 18, 32))
    lang = adapter.norm_lang_kv(adapter.phi_lang(tokens).reshape(2, 18, 32))
    bridge = adapter.bridge_tokens.expand(2, -1, -1)
    expected = (
        adapter.bridge_from_geom(bridge, geom, geom)[0] + adapter.bridge_from_lang(bridge, lang, lang)[0]
    )
    torch.testing.assert_close(out.bridge, adapter.norm_bridge(expected))


def test_bridge_sees_the_whole_clip():
    torch.manual_seed(0)
    adapter = CrossTaskAdapter(AdapterConfig.tiny()).eval()
    tokens = torch.randn(1, 3, 6, 32)
    out = adapter(tokens)
    changed = tokens.clone()
    changed[:, 2] += 1.0  # only the last frame changes
    out_changed = adapter(changed)
    assert not torch.allclose(out.bridge, out_changed.bridge)
    # ...and the write-back carries that change into the other frames' tokens.
    assert not torch.allclose(out.geom[:, 0], out_changed.geom[:, 0])


def test_every_part_receives_gradient_and_streams_exchange_information():
    torch.manual_seed(0)
    adapter = CrossTaskAdapter(AdapterConfig.tiny())
    tokens = torch.randn(1, 2, 6, 32, requires_grad=True)
    out = adapter(tokens)
    (out.geom.square().mean() + out.lang.square().mean()).backward()
    for name, param in adapter.named_parameters():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
    assert tokens.grad.abs().sum() > 0
    # A loss on the geometric stream alone reaches the language projection through the bridge tokens.
    adapter.zero_grad()
    adapter(tokens).geom.square().mean().backward()
    assert adapter.phi_lang[0].weight.grad.abs().sum() > 0
    assert adapter.bridge_tokens.grad.abs().sum() > 0


def test_writeback_none_leaves_streams_as_projected():
    torch.manual_seed(0)
    adapter = CrossTaskAdapter(dataclasses.replace(AdapterConfig.tiny(), writeback="none"))
    tokens = torch.randn(1, 2, 6, 32)
    out = adapter(tokens)
    torch.testing.assert_close(out.geom, adapter.phi_geom(tokens))
    torch.testing.assert_close(out.lang, adapter.phi_lang(tokens))
    assert out.bridge.shape == (1, 4, 32)
    assert not hasattr(adapter, "geom_from_bridge")


def test_bad_config_and_input_raise():
    with pytest.raises(ValueError, match="writeback"):
        AdapterConfig(dim=32, num_heads=2, writeback="append")
    with pytest.raises(ValueError, match="num_bridge_tokens"):
        AdapterConfig(dim=32, num_heads=2, num_bridge_tokens=0)
    with pytest.raises(ValueError, match="divisible"):
        AdapterConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match=r"\[B, S, P, 32\]"):
        CrossTaskAdapter(AdapterConfig.tiny())(torch.randn(1, 2, 6, 16))


@pytest.mark.slow
def test_base_config_builds_on_meta_device():
    with torch.device("meta"):
        adapter = CrossTaskAdapter(AdapterConfig.base())
    n = sum(p.numel() for p in adapter.parameters())
    # 2 x (1024 -> 4096 -> 1024) MLPs = 16.8M, four 1024-d attentions = 16.8M, 16 bridge tokens, LayerNorms.
    assert 33e6 < n < 34e6
    assert adapter.bridge_tokens.shape == (1, 16, 1024)
