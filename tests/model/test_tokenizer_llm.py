"""The offline tokenizer, prompt templates and the splicing of scene tokens into the LLM inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from model.config import LLMConfig, VidLLMConfig
from model.llm import build_llm, hf_config, splice_scene
from model.tokenizer import (
    LOC_TOKEN,
    SCENE_TOKEN,
    build_tokenizer,
    encode_example,
    format_box,
    grounding_answer,
    word_vocab_size,
)


def test_word_tokenizer_ids_match_config_and_coordinates_round_trip(tokenizer, tiny_cfg):
    assert tokenizer.convert_tokens_to_ids(SCENE_TOKEN) == tiny_cfg.llm.scene_token_id
    assert tokenizer.convert_tokens_to_ids(LOC_TOKEN) == tiny_cfg.llm.loc_token_id
    assert len(tokenizer) == word_vocab_size() == tiny_cfg.llm.vocab_size
    text = "[1.13, -1.64, 0.35, 0.92, 0.03, 1.16]"
    ids = tokenizer(text)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    sentence = "What color is the chair next to the table? It is brown."
    ids = tokenizer(sentence)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == sentence.lower()


def test_special_tokens_are_single_ids(tokenizer):
    ids = tokenizer(f"{SCENE_TOKEN} locate: the sofa answer: {LOC_TOKEN} [0.00, 1.00, 2.00, 1.00, 1.00, 1.00]")
    toks = tokenizer.convert_ids_to_tokens(ids["input_ids"])
    assert toks.count(SCENE_TOKEN) == 1 and toks.count(LOC_TOKEN) == 1


def test_format_box_and_grounding_answer():
    assert format_box([1.134, -2, 0.005, 1, 2, 3]) == "[1.13, -2.00, 0.01, 1.00, 2.00, 3.00]"
    assert grounding_answer([[0] * 6, [1] * 6]).startswith(LOC_TOKEN + " [0.00")
    with pytest.raises(ValueError, match="6 numbers"):
        format_box([1, 2, 3])


def test_encode_example_masks_prompt(tokenizer):
    ids, labels = encode_example(tokenizer, f"{SCENE_TOKEN} question: what is it? answer:", "a chair")
    n_prompt = labels.count(-100)
    assert ids[:n_prompt] == tokenizer(f"{SCENE_TOKEN} question: what is it? answer:")["input_ids"]
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="max_length=3"):
        encode_example(tokenizer, f"{SCENE_TOKEN} a b c d e", "x", max_length=3)
    with pytest.raises(ValueError, match="<scene> placeholder"):
        encode_example(tokenizer, "a b c d e", "x")


def test_build_tokenizer_rejects_mismatched_config(tiny_cfg):
    bad = LLMConfig(arch=dict(tiny_cfg.llm.arch), scene_token_id=5, loc_token_id=4, pad_token_id=0, bos_token_id=1,
                    eos_token_id=2)
    with pytest.raises(ValueError, match="disagree"):
        build_tokenizer(bad)


def test_llm_config_validation():
    with pytest.raises(ValueError, match="model_type"):
        LLMConfig(arch={"hidden_size": 8, "vocab_size": 10}, scene_token_id=1, loc_token_id=2, pad_token_id=0,
                  bos_token_id=0, eos_token_id=0)
    with pytest.raises(ValueError, match="vocab_size"):
        LLMConfig.word_level(hidden_size=8, vocab_size=3)


def test_build_llm_from_config_and_from_local_path(tmp_path, tiny_cfg):
    llm = build_llm(tiny_cfg.llm)
    assert llm.config.hidden_size == 64 and llm.get_input_embeddings().weight.shape[0] == tiny_cfg.llm.vocab_size
    llm.save_pretrained(tmp_path)
    reloaded = build_llm(LLMConfig(**{**vars(tiny_cfg.llm), "pretrained_path": str(tmp_path)}))
    ids = torch.tensor([[1, 7, 9]])
    assert torch.allclose(llm(ids).logits, reloaded(ids).logits)
    assert hf_config(tiny_cfg.llm).num_key_value_heads == 2


def _embed():
    table = nn.Embedding(10, 2)
    with torch.no_grad():
        table.weight.copy_(torch.arange(10.0)[:, None].expand(10, 2))
    return table


def test_splice_scene_variable_lengths_right_and_left_padding():
    scene_id = 9
    ids = torch.tensor([[0, 1, scene_id, 2, 3], [4, scene_id, 5, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    labels = torch.tensor([[-100, -100, -100, 2, 3], [-100, -100, 5, -100, -100]])
    scene = torch.full((2, 3, 2), -1.0)
    scene[1, 1] = -2.0
    scene_mask = torch.tensor([[True, True, False], [True, True, True]])
    out = splice_scene(_embed(), ids, mask, labels, scene, scene_mask, scene_id)
    # row 0: 0 1 [s s] 2 3 -> 6 tokens; row 1: 4 [s s s] 5 -> 5 tokens (+1 pad)
    assert out.inputs_embeds.shape == (2, 6, 2)
    assert out.inputs_embeds[0, :, 0].tolist() == [0, 1, -1, -1, 2, 3]
    assert out.inputs_embeds[1, :, 0].tolist() == [4, -1, -2, -1, 5, 0]
    assert out.attention_mask.tolist() == [[1] * 6, [1, 1, 1, 1, 1, 0]]
    assert out.labels.tolist() == [[-100, -100, -100, -100, 2, 3], [-100, -100, -100, -100, 5, -100]]
    assert out.positions.tolist() == [[0, 1, -1, 4, 5], [0, -1, 4, -1, -1]]
    left = splice_scene(_embed(), ids, mask, None, scene, scene_mask, scene_id, padding_side="left")
    assert left.attention_mask[1].tolist() == [0, 1, 1, 1, 1, 1]
    assert left.inputs_embeds[1, 1:, 0].tolist() == [4, -1, -2, -1, 5]
    assert left.positions[1].tolist() == [1, -1, 5, -1, -1]


def test_splice_scene_requires_exactly_one_placeholder():
    ids = torch.tensor([[9, 1, 9]])
    with pytest.raises(ValueError, match="exactly one <scene>"):
        splice_scene(_embed(), ids, None, None, torch.zeros(1, 1, 2), torch.ones(1, 1, dtype=torch.bool), 9)


def test_presets_have_documented_llm_shapes():
    small = VidLLMConfig.small().llm.arch
    assert (small["hidden_size"], small["num_hidden_layers"], small["num_attention_heads"],
            small["num_key_value_heads"], small["vocab_size"]) == (576, 30, 9, 3, 49154)
    base = VidLLMConfig.base()
    assert base.llm.hidden_size == 4096 and base.encoder.hidden_size == 1024 and base.adapter.num_bridge_tokens == 16
