"""Decoding constraints shared by every generated answer (QA, captions, grounding text).

Every training target (``model/tokenizer.py``'s ``encode_example``) is visible text followed by EOS: no target
holds a special token after its prompt, and no target is empty. Greedy decoding of a little-trained model can
still pick EOS first, or a blank piece such as the word-level tokenizer's bare ``▁`` (the space before a digit)
followed by ``<loc>`` and EOS; with special tokens skipped the decoded answer is then ``""``. Two constraints rule
out what no target contains, and change nothing when the model's greedy choice is already a visible token:

* special tokens other than EOS are never generated (``suppress_tokens``);
* EOS is blocked until the answer holds at least one token whose text is visible, and the last token the length
  budget allows is a visible one when none came before (:class:`VisibleTextBeforeEOS`).
"""

from __future__ import annotations

import torch
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerBase


def visible_token_mask(tokenizer: PreTrainedTokenizerBase) -> torch.Tensor:
    """Bool ``[V]`` over the tokenizer's ids: True where the token decodes (special tokens skipped) to text that is
    not only whitespace."""
    texts = tokenizer.batch_decode([[i] for i in range(len(tokenizer))], skip_special_tokens=True)
    return torch.tensor([bool(text.strip()) for text in texts], dtype=torch.bool)


class VisibleTextBeforeEOS(LogitsProcessor):
    """For rows whose generated tokens hold no visible token yet: the EOS score is ``-inf``, and at the last step
    of the length budget so is every token that is not visible.

    Args:
        visible: bool ``[V]`` from :func:`visible_token_mask`.
        eos_token_id: the id generation stops at.
        max_new_tokens: the length budget of the answer.

    Generation starts from ``inputs_embeds`` alone (``model/vidllm.py``), so the ``input_ids`` transformers passes
    hold only the generated ids: no prompt column to skip.
    """

    def __init__(self, visible: torch.Tensor, eos_token_id: int, max_new_tokens: int) -> None:
        if visible.dtype != torch.bool or visible.ndim != 1:
            raise ValueError(f"visible must be a bool [V] mask, got {visible.dtype} {list(visible.shape)}")
        if not visible.any():
            raise ValueError("visible marks no token: no answer could hold visible text")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.visible = visible
        self.eos_token_id = int(eos_token_id)
        self.max_new_tokens = int(max_new_tokens)

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        # Ids past the tokenizer (an LM vocabulary padded beyond it) decode to nothing: not visible.
        visible = torch.nn.functional.pad(self.visible.to(scores.device), (0, max(0, scores.shape[-1] - len(self.visible))))
        started = visible[input_ids].any(dim=1)
        blocked = torch.zeros_like(scores, dtype=torch.bool)
        if input_ids.shape[1] >= self.max_new_tokens - 1:
            blocked[~started] = ~visible
        blocked[:, self.eos_token_id] |= ~started
        return scores.masked_fill(blocked, float("-inf"))


def answer_constraints(tokenizer: PreTrainedTokenizerBase, visible: torch.Tensor, eos_token_id: int,
                       max_new_tokens: int) -> dict[str, object]:
    """Keyword arguments for ``generate`` (from ``inputs_embeds``, at most ``max_new_tokens``) that apply both
    constraints of this module."""
    suppressed = sorted(set(tokenizer.all_special_ids) - {int(eos_token_id)})
    constraint = VisibleTextBeforeEOS(visible, eos_token_id, max_new_tokens)
    return {"suppress_tokens": suppressed, "max_new_tokens": max_new_tokens,
            "logits_processor": LogitsProcessorList([constraint])}
