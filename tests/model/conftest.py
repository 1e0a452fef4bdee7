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


# SmolLM2-Instruct's chat template (ChatML with a default system turn).
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_CORPUS = [
    "what color is the chair next to the table? it is brown.",
    "the chair near the table is red. describe the object at the window.",
    "locate the sofa in front of the tv. answer: there are two chairs and one lamp.",
    "[1.13, -1.64, 0.35, 0.92, 0.03, 1.16] [0.40, -0.20, 2.00, 0.60, 0.50, 0.40] 0123456789",
    "question: how many pillows are on the bed? a brown wooden chair stands beside a white desk.",
]


@pytest.fixture(scope="session")
def bpe_chat_tokenizer_dir(tmp_path_factory):
    """A tiny byte-level BPE tokenizer with SmolLM2's special tokens (ids 0-2) and chat template, trained offline
    with ``tokenizers`` and saved as an HF tokenizer folder (the shape of a real instruct LM's tokenizer)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    core.train_from_iterator(_CORPUS, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                  unk_token="<|endoftext|>")
    tok.chat_template = CHATML_TEMPLATE
    path = tmp_path_factory.mktemp("bpe-chat-tokenizer")
    tok.save_pretrained(str(path))
    return path


@pytest.fixture(autouse=True)
def _single_thread():
    """Tiny models are dominated by OpenMP thread hand-offs on a shared 2-core machine (a 0.1 s forward takes 15 s
    with 2 threads under load); one intra-op thread keeps these tests fast and deterministic."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
