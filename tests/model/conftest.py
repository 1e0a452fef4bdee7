"""Fixtures for the Vid-LLM model tests: the tiny config, model, tokenizer and a synthetic, geometrically
consistent batch (a fronto-parallel plane seen by cameras sliding along x)."""

from __future__ import annotations

import pytest
import torch

from model import VidLLM, VidLLMBatch, VidLLMConfig, build_tokenizer
from model.tokenizer import encode_example, grounding_answer, grounding_prompt, qa_prompt

TARGET_BOX = (0.40, -0.20, 2.00, 0.60, 0.50, 0.40)


def make_batch(tokenizer, batch_size: int = 2, frames: int = 4, size: int = 28, seed: int = 0,
               teacher_tokens: int = 9, geo_dim: int = 48, sem_dim: int = 40) -> VidLLMBatch:
    """Row 0 asks a question, row 1 grounds one box (when ``batch_size >= 2``)."""
    gen = torch.Generator().manual_seed(seed)
    b, s, h, w = batch_size, frames, size, size
    u = torch.arange(w, dtype=torch.float32)
    depth = (1.0 + 0.15 * u).expand(b, s, h, w).clone()  # metres, a slanted plane (1 m to 5 m)
    intrinsics = torch.tensor([[30.0, 0.0, (w - 1) / 2], [0.0, 30.0, (h - 1) / 2], [0.0, 0.0, 1.0]])
    extrinsics = torch.eye(3, 4).expand(b, s, 3, 4).clone()
    extrinsics[..., 0, 3] = -0.1 * torch.arange(s, dtype=torch.float32)  # camera i sits at x = 0.1 i
    examples = [
        encode_example(tokenizer, qa_prompt("what color is the chair?"), "the chair is red"),
        encode_example(tokenizer, grounding_prompt("the chair near the table"), grounding_answer([TARGET_BOX])),
    ]
    examples = [examples[i % 2] for i in range(b)]
    length = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((b, length), tokenizer.pad_token_id)
    labels = torch.full((b, length), -100)
    attention_mask = torch.zeros(b, length, dtype=torch.long)
    for i, (ids, lab) in enumerate(examples):
        input_ids[i, : len(ids)] = torch.tensor(ids)
        labels[i, : len(lab)] = torch.tensor(lab)
        attention_mask[i, : len(ids)] = 1
    boxes = torch.tensor(TARGET_BOX).expand(b, 1, 6).clone()
    box_mask = torch.tensor([i % 2 == 1 for i in range(b)])[:, None]
    return VidLLMBatch(
        frames=torch.rand(b, s, 3, h, w, generator=gen),
        depth=depth,
        extrinsics=extrinsics,
        intrinsics=intrinsics.expand(b, s, 3, 3).clone(),
        teacher_geo=torch.randn(b, s, teacher_tokens, geo_dim, generator=gen),
        teacher_sem=torch.randn(b, s, sem_dim, generator=gen),
        input_ids=input_ids,
        attention_mask=attention_mask,
        labels=labels,
        boxes=boxes,
        box_mask=box_mask,
    )


@pytest.fixture
def tiny_cfg() -> VidLLMConfig:
    return VidLLMConfig.tiny()


@pytest.fixture
def tokenizer(tiny_cfg):
    return build_tokenizer(tiny_cfg)


@pytest.fixture
def tiny_model(tiny_cfg) -> VidLLM:
    torch.manual_seed(0)
    return VidLLM(tiny_cfg)


@pytest.fixture
def batch(tokenizer) -> VidLLMBatch:
    return make_batch(tokenizer)


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models are dominated by OpenMP thread hand-offs on a shared 2-core machine (a 0.1 s forward takes 15 s
    with 2 threads under load); one intra-op thread keeps these tests fast and deterministic."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
