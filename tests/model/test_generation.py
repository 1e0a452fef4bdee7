"""The decoding constraints of ``model/generation.py`` on hand-made scores and real tokenizers."""

from __future__ import annotations

import pytest
import torch

from model.generation import VisibleTextBeforeEOS, answer_constraints, visible_token_mask

EOS = 2


def test_eos_is_blocked_only_until_a_visible_token_was_generated():
    visible = torch.tensor([False, False, False, False, True, True])  # ids 0-3 blank or special, 4-5 words
    constraint = VisibleTextBeforeEOS(visible, EOS, max_new_tokens=4)
    scores = torch.zeros(3, 6)
    generated = torch.tensor([[0, 3], [3, 4], [5, 1]])  # nothing visible / a word / a word then a blank
    out = constraint(generated, scores.clone())
    assert out[0, EOS] == float("-inf") and torch.isfinite(out[1:, EOS]).all()
    assert torch.equal(out[:, [0, 1, 3, 4, 5]], scores[:, [0, 1, 3, 4, 5]]), "no other score changes"
    assert constraint(torch.empty(3, 0, dtype=torch.long), scores.clone())[:, EOS].isneginf().all()


def test_ids_past_the_tokenizer_are_not_visible():
    out = VisibleTextBeforeEOS(torch.tensor([False, False, False, True]), EOS, 4)(torch.tensor([[5]]),
                                                                                  torch.zeros(1, 8))
    assert out[0, EOS] == float("-inf")


def test_the_last_step_of_the_budget_takes_a_visible_token_when_none_came_before():
    visible = torch.tensor([False, False, False, False, True, True])
    constraint = VisibleTextBeforeEOS(visible, EOS, max_new_tokens=3)
    scores = torch.zeros(2, 6)
    assert torch.isfinite(constraint(torch.tensor([[0], [4]]), scores.clone())[:, [0, 1, 3]]).all(), "not yet"
    out = constraint(torch.tensor([[0, 3], [4, 3]]), scores.clone())
    assert out[0, :4].isneginf().all() and torch.isfinite(out[0, 4:]).all()
    assert torch.isfinite(out[1]).all(), "a row with visible text is left alone"


@pytest.mark.parametrize(("mask", "budget", "match"), [(torch.ones(4), 4, "bool"),
                                                      (torch.zeros(4, dtype=torch.bool), 4, "no token"),
                                                      (torch.ones(4, dtype=torch.bool), 0, "max_new_tokens")])
def test_bad_constraint_arguments_are_refused(mask, budget, match):
    with pytest.raises(ValueError, match=match):
        VisibleTextBeforeEOS(mask, EOS, budget)


def test_word_level_tokenizer_masks_and_suppressed_ids(tokenizer):
    visible = visible_token_mask(tokenizer)
    assert visible.shape == (len(tokenizer),)
    for token in ("▁", "<loc>", "<scene>", "<eos>"):
        assert not visible[tokenizer.convert_tokens_to_ids(token)], token
    for token in ("▁yellow", "1", "["):
        assert visible[tokenizer.convert_tokens_to_ids(token)], token
    eos = tokenizer.eos_token_id
    kwargs = answer_constraints(tokenizer, visible, eos, 8)
    suppressed = set(kwargs["suppress_tokens"])
    assert eos not in suppressed
    assert {tokenizer.convert_tokens_to_ids(t) for t in ("<loc>", "<scene>", "<bos>")} <= suppressed
    assert tokenizer.pad_token_id in suppressed


@pytest.mark.weights
def test_smollm2_tokenizer_keeps_its_eos_and_masks_whitespace(real_weights):
    from model.processor import VidLLMProcessor
    from model.tokenizer import load_pretrained_tokenizer
    from pipelines.weights import SMOLLM2

    processor = VidLLMProcessor(load_pretrained_tokenizer(real_weights[SMOLLM2]), use_chat_template=True)
    tok = processor.tokenizer
    visible = processor.visible_tokens
    assert visible.shape == (len(tok),) and processor.visible_tokens is visible, "computed once"
    assert not visible[tok.convert_tokens_to_ids("Ċ")] and not visible[tok.convert_tokens_to_ids("Ġ")]
    assert visible[tok("yellow", add_special_tokens=False)["input_ids"][0]]
    kwargs = processor.generation_constraints(tok.eos_token_id, 8)
    assert tok.eos_token_id not in kwargs["suppress_tokens"]
    assert {tok.convert_tokens_to_ids(t) for t in ("<scene>", "<loc>", "<|im_start|>")} <= set(kwargs["suppress_tokens"])
