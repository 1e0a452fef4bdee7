"""Activation checkpointing: a run-time switch per component that changes memory, never values or gradients."""

from __future__ import annotations

import pytest
import torch

from model import VidLLM, VidLLMConfig
from model.config import LossWeights
from model.losses import MultitaskLoss

from .conftest import make_batch

ALL_LOSSES = LossWeights(geo=1, lang=1, sc=1, camera=5, depth=1, point=1, metric_depth=1, lm=1, box=1)
SWITCHES = ("encoder", "reconstruction", "heads", "llm")


def _step(model: VidLLM, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    total, _ = MultitaskLoss(ALL_LOSSES)(model(batch, generator=torch.Generator().manual_seed(7)), batch)
    total.backward()
    return total.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("switch", [*SWITCHES, "all"])
def test_checkpointing_gives_identical_losses_and_gradients(tokenizer, switch):
    torch.manual_seed(0)
    model = VidLLM(VidLLMConfig.tiny()).train()
    batch = make_batch(tokenizer, frames=3)
    plain_loss, plain_grads = _step(model, batch)
    model.set_activation_checkpointing(**{s: switch in (s, "all") for s in SWITCHES})
    loss, grads = _step(model, batch)
    torch.testing.assert_close(loss, plain_loss, rtol=1e-6, atol=1e-6)
    assert grads.keys() == plain_grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}")


def test_checkpointing_recomputes_in_backward_and_is_not_saved_with_the_checkpoint(tiny_model, tokenizer, tmp_path):
    """The switched blocks really run twice per training step, and the switch is not part of the model config."""
    batch = make_batch(tokenizer, batch_size=1)
    calls = {"encoder": 0, "reconstruction": 0, "heads": 0, "llm": 0}
    # Modules *inside* the checkpointed units (transformers checkpoints a layer's forward, not its hooks), watched
    # by pre-hooks (recomputation stops early once the saved tensors are rebuilt, before forward hooks would fire).
    modules = {"encoder": tiny_model.encoder.backbone.encoder.layer[0].attention,
               "reconstruction": tiny_model.reconstruction.alternating.frame_blocks[0].attn,
               "heads": tiny_model.reconstruction.depth_head.scratch.output_conv1, "llm": tiny_model.llm.model.layers[0].self_attn}
    for name, module in modules.items():
        module.register_forward_pre_hook(lambda *_, n=name: calls.__setitem__(n, calls[n] + 1))
    tiny_model.train().set_activation_checkpointing(encoder=True, reconstruction=True, heads=True, llm=True)
    MultitaskLoss(ALL_LOSSES)(tiny_model(batch), batch)[0].backward()
    assert calls == {"encoder": 2, "reconstruction": 2, "heads": 2, "llm": 2}
    tiny_model.save_pretrained(tmp_path)
    assert "checkpointing" not in (tmp_path / "config.json").read_text()
    assert VidLLM.from_pretrained(tmp_path).reconstruction.alternating.gradient_checkpointing is False
    tiny_model.set_activation_checkpointing()  # all off again
    for counter in calls:
        calls[counter] = 0
    MultitaskLoss(ALL_LOSSES)(tiny_model(batch), batch)[0].backward()
    assert calls == {"encoder": 1, "reconstruction": 1, "heads": 1, "llm": 1}


def test_no_gradient_through_a_frozen_encoder_and_no_pixel_gradients(tiny_model, tokenizer):
    """Stage 2 freezes the encoder: with every checkpoint on, nothing builds a graph through it and the frames
    need no ``requires_grad``."""
    batch = make_batch(tokenizer)
    for p in tiny_model.encoder.parameters():
        p.requires_grad_(False)
    seen = {}

    def watch(_module, _inputs, out) -> None:
        seen["grad"] = out.tokens.requires_grad

    tiny_model.encoder.register_forward_hook(watch)
    tiny_model.train().set_activation_checkpointing(encoder=True, reconstruction=True, heads=True, llm=True)
    assert not batch.frames.requires_grad
    MultitaskLoss(ALL_LOSSES)(tiny_model(batch), batch)[0].backward()
    assert seen["grad"] is False  # no autograd graph through the frozen DINOv2
    assert batch.frames.grad is None
    assert all(p.grad is None for p in tiny_model.encoder.parameters())
    assert all(p.grad is not None for p in tiny_model.adapter.parameters())
