"""The processor: everything between raw inputs (questions, descriptions, boxes, uint8 video frames) and the
tensors :class:`model.vidllm.VidLLM` consumes, in one object shared by training, evaluation and serving.

Like a transformers processor it owns the tokenizer and the input conversion:

* **prompt templates** for QA, captioning and grounding (:func:`model.tokenizer.qa_prompt` and friends) and the
  grounding answer format;
* the tokenizer's **chat template** when the model was configured with ``LLMConfig.use_chat_template`` (an
  instruction-tuned LM such as SmolLM2-Instruct): the prompt is the user turn, the answer the assistant turn, and
  training and inference build the same prompt ids because both go through :func:`model.tokenizer.prompt_pieces`;
* **tokenising with the label policy** of :func:`model.tokenizer.encode_example` (labels and EOS are never cut;
  the prompt body shrinks to fit a budget, or :class:`model.tokenizer.TextBudgetError` names the example);
* **batch padding**: right padding for training, left padding for generation;
* **frame conversion**: uint8 ``[S, H, W, 3]`` (or ``[B, S, H, W, 3]``) frames to float ``[S, 3, H, W]`` in
  ``[0, 1]``, with the frame size checked against the encoder's patch size.

``save_pretrained``/``from_pretrained`` write and read the tokenizer plus ``processor_config.json`` (patch size,
chat-template flag) in a local directory, typically next to the model checkpoint.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from model.config import VidLLMConfig
from model.generation import answer_constraints, visible_token_mask
from model.tokenizer import (
    LOC_TOKEN,
    SCENE_TOKEN,
    EncodedExample,
    answer_ids,
    build_tokenizer,
    caption_prompt,
    encode_example,
    grounding_answer,
    grounding_prompt,
    prompt_pieces,
    qa_prompt,
)

PROCESSOR_CONFIG_NAME = "processor_config.json"
PaddingSide = Literal["left", "right"]


class VidLLMProcessor:
    """Prompts, tokenising, padding and frame conversion for :class:`model.vidllm.VidLLM`.

    Args:
        tokenizer: the model's tokenizer (with ``<scene>``, ``<loc>`` and a pad token; see
            :func:`model.tokenizer.build_tokenizer`).
        patch_size: the encoder's patch size in pixels (frame sides must be multiples of it).
        use_chat_template: wrap prompts in the tokenizer's chat template (``LLMConfig.use_chat_template``).

    Raises:
        ValueError: the tokenizer lacks ``<scene>``/``<loc>`` or a pad token, or has no chat template although one
            is asked for.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, patch_size: int = 14,
                 use_chat_template: bool = False) -> None:
        unknown = tokenizer.unk_token_id
        for token in (SCENE_TOKEN, LOC_TOKEN):
            token_id = tokenizer.convert_tokens_to_ids(token)
            if token_id is None or (unknown is not None and token_id == unknown):
                raise ValueError(f"the tokenizer has no {token} token (build it with model.tokenizer.build_tokenizer)")
        if tokenizer.pad_token_id is None:
            raise ValueError("the tokenizer has no pad token")
        if use_chat_template and not getattr(tokenizer, "chat_template", None):
            raise ValueError("use_chat_template is set but the tokenizer has no chat template")
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1, got {patch_size}")
        self.tokenizer = tokenizer
        self.patch_size = int(patch_size)
        self.use_chat_template = bool(use_chat_template)

    @classmethod
    def from_config(cls, cfg: VidLLMConfig, tokenizer: PreTrainedTokenizerBase | None = None) -> VidLLMProcessor:
        """The processor of a model config: its tokenizer (built from ``cfg.llm`` unless given), patch size and
        chat-template flag."""
        return cls(tokenizer if tokenizer is not None else build_tokenizer(cfg), patch_size=cfg.patch_size,
                   use_chat_template=cfg.llm.use_chat_template)

    def save_pretrained(self, directory: str | Path) -> None:
        """Write the tokenizer and ``processor_config.json`` to a local directory."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(str(path))
        config = {"processor_class": type(self).__name__, "patch_size": self.patch_size,
                  "use_chat_template": self.use_chat_template}
        (path / PROCESSOR_CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> VidLLMProcessor:
        """Read a processor written by :meth:`save_pretrained` (local files only).

        Raises:
            FileNotFoundError: ``processor_config.json`` is missing.
        """
        path = Path(directory)
        if not (path / PROCESSOR_CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{path} has no {PROCESSOR_CONFIG_NAME}")
        config = json.loads((path / PROCESSOR_CONFIG_NAME).read_text())
        tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        return cls(tokenizer, patch_size=int(config["patch_size"]), use_chat_template=bool(config["use_chat_template"]))

    # ------------------------------------------------------------------ prompts

    qa_prompt = staticmethod(qa_prompt)
    caption_prompt = staticmethod(caption_prompt)
    grounding_prompt = staticmethod(grounding_prompt)
    grounding_answer = staticmethod(grounding_answer)

    # ------------------------------------------------------------------ text

    def encode_example(self, prompt: str, answer: str, max_length: int | None = None,
                       example: str | None = None) -> EncodedExample:
        """Ids and labels of one training example with the label policy (see
        :func:`model.tokenizer.encode_example`); ``example`` names it in a :class:`~model.tokenizer.TextBudgetError`."""
        return encode_example(self.tokenizer, prompt, answer, max_length, self.use_chat_template, example)

    def prompt_ids(self, prompt: str, answer_prefix: str = "") -> list[int]:
        """Ids of a generation prompt: exactly the prompt part of :meth:`encode_example`'s ids, followed by the
        ids of ``answer_prefix``, the beginning of the answer the model is to continue (``<loc>`` for grounding,
        whose hidden state feeds the box head)."""
        head, body, tail, _ = prompt_pieces(self.tokenizer, prompt, self.use_chat_template)
        prefix = answer_ids(self.tokenizer, answer_prefix, self.use_chat_template) if answer_prefix else []
        return head + body + tail + prefix

    def pad(self, sequences: Sequence[Sequence[int]], padding_side: PaddingSide,
            labels: Sequence[Sequence[int]] | None = None) -> dict[str, torch.Tensor]:
        """Pad id lists into ``input_ids``/``attention_mask`` ``[B, L]`` (and ``labels``, -100 on padding).

        ``padding_side="right"`` for training batches, ``"left"`` for generation (new tokens follow the prompt).
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        if not sequences:
            raise ValueError("nothing to pad: no sequences")
        width = max(len(s) for s in sequences)
        out = {"input_ids": torch.full((len(sequences), width), self.tokenizer.pad_token_id, dtype=torch.long),
               "attention_mask": torch.zeros((len(sequences), width), dtype=torch.long)}
        if labels is not None:
            out["labels"] = torch.full((len(sequences), width), -100, dtype=torch.long)
        for i, seq in enumerate(sequences):
            span = slice(0, len(seq)) if padding_side == "right" else slice(width - len(seq), width)
            out["input_ids"][i, span] = torch.tensor(seq, dtype=torch.long)
            out["attention_mask"][i, span] = 1
            if labels is not None:
                out["labels"][i, span] = torch.tensor(labels[i], dtype=torch.long)
        return out

    def collate(self, examples: Sequence[EncodedExample]) -> dict[str, torch.Tensor]:
        """A right-padded training batch (``input_ids``, ``attention_mask``, ``labels``) of encoded examples."""
        return self.pad([e.input_ids for e in examples], "right", labels=[e.labels for e in examples])

    def generation_inputs(self, prompts: Sequence[str], answer_prefix: str = "") -> dict[str, torch.Tensor]:
        """A left-padded generation batch (``input_ids``, ``attention_mask``) of prompts, see :meth:`prompt_ids`."""
        return self.pad([self.prompt_ids(p, answer_prefix) for p in prompts], "left")

    @functools.cached_property
    def visible_tokens(self) -> torch.Tensor:
        """Bool ``[V]``: the tokens whose text is visible (see :func:`model.generation.visible_token_mask`),
        computed once per processor."""
        return visible_token_mask(self.tokenizer)

    def generation_constraints(self, eos_token_id: int, max_new_tokens: int) -> dict[str, object]:
        """``generate`` keyword arguments (``max_new_tokens`` included) that keep an answer to what training
        targets hold: visible text, then EOS (see ``model/generation.py``)."""
        return answer_constraints(self.tokenizer, self.visible_tokens, eos_token_id, max_new_tokens)

    def decode(self, ids: torch.Tensor | Sequence[Sequence[int]]) -> list[str]:
        """Generated ids ``[B, T]`` to stripped texts (special tokens removed)."""
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    # ------------------------------------------------------------------ frames

    def frames_to_tensor(self, frames: Any) -> torch.Tensor:
        """uint8 RGB frames ``[S, H, W, 3]`` or ``[B, S, H, W, 3]`` (numpy array or tensor) to float32
        ``[S, 3, H, W]`` / ``[B, S, 3, H, W]`` in ``[0, 1]`` (on the input tensor's device).

        Raises:
            ValueError: not uint8, not channels-last RGB of 4 or 5 dimensions, or a frame side that is not a
                multiple of the patch size.
        """
        frames = torch.as_tensor(frames)
        if frames.dtype != torch.uint8:
            raise ValueError(f"frames must be uint8 RGB, got {frames.dtype}")
        if frames.ndim not in (4, 5) or frames.shape[-1] != 3:
            raise ValueError(f"frames must be [S, H, W, 3] or [B, S, H, W, 3], got {list(frames.shape)}")
        height, width = frames.shape[-3], frames.shape[-2]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(f"frame size {height}x{width} is not a multiple of the patch size {self.patch_size}")
        return frames.movedim(-1, -3).float().div_(255.0)

    # ------------------------------------------------------------------ HF-style entry point

    def __call__(self, prompts: Sequence[str] | None = None, answers: Sequence[str] | None = None,
                 frames: Any = None, max_length: int | None = None) -> dict[str, torch.Tensor]:
        """Model inputs from raw inputs, as a transformers processor does.

        Args:
            prompts: prompts (:class:`~model.tokenizer.Prompt` or strings with ``<scene>``).
            answers: with ``prompts``: a right-padded training batch with labels; without: a left-padded
                generation batch.
            frames: uint8 frames, see :meth:`frames_to_tensor` (key ``frames``).
            max_length: token budget per training example (``None``: follow the data).

        Returns:
            A dict with the keys of :class:`model.batch.VidLLMBatch` that were produced.
        """
        out: dict[str, torch.Tensor] = {}
        if frames is not None:
            out["frames"] = self.frames_to_tensor(frames)
        if prompts is not None:
            if answers is None:
                out.update(self.generation_inputs(prompts))
            else:
                if len(answers) != len(prompts):
                    raise ValueError(f"{len(prompts)} prompts but {len(answers)} answers")
                out.update(self.collate([self.encode_example(p, a, max_length) for p, a in
                                         zip(prompts, answers, strict=True)]))
        return out


def as_processor(processor_or_tokenizer: VidLLMProcessor | PreTrainedTokenizerBase,
                 cfg: VidLLMConfig) -> VidLLMProcessor:
    """A processor for ``cfg``: the given one, or one around a bare tokenizer (the older calling convention)."""
    if isinstance(processor_or_tokenizer, VidLLMProcessor):
        return processor_or_tokenizer
    return VidLLMProcessor.from_config(cfg, tokenizer=processor_or_tokenizer)

