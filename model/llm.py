"""The causal LM and the splicing of scene tokens into its input embeddings.

Any HF causal LM works: it is built with ``AutoModelForCausalLM.from_config`` from ``LLMConfig.arch`` (tests,
and every load of a full Vid-LLM checkpoint) or, for a fresh model, loaded from a local directory with
``local_files_only=True`` (nothing downloads).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from model.config import LLMConfig


def hf_config(cfg: LLMConfig):
    """The HF ``PretrainedConfig`` described by ``cfg.arch`` (plus the tokenizer's special ids)."""
    kwargs = {k: v for k, v in cfg.arch.items() if k != "model_type"}
    kwargs.setdefault("pad_token_id", cfg.pad_token_id)
    kwargs.setdefault("bos_token_id", cfg.bos_token_id)
    kwargs.setdefault("eos_token_id", cfg.eos_token_id)
    return AutoConfig.for_model(cfg.arch["model_type"], **kwargs)


def build_llm(cfg: LLMConfig) -> PreTrainedModel:
    """Build the causal LM: random init from ``cfg.arch``, or weights from ``cfg.pretrained_path``.

    With a pretrained path the embeddings are resized to ``cfg.vocab_size`` (room for ``<scene>``/``<loc>``).
    """
    if cfg.pretrained_path is None:
        return AutoModelForCausalLM.from_config(hf_config(cfg))
    model = AutoModelForCausalLM.from_pretrained(cfg.pretrained_path, local_files_only=True,
                                                 dtype=torch.float32)
    if model.get_input_embeddings().weight.shape[0] != cfg.vocab_size:
        model.resize_token_embeddings(cfg.vocab_size)
    return model


def llm_config_from_checkpoint(path: str, tokenizer_path: str | None = None,
                               use_chat_template: bool = False) -> LLMConfig:
    """An :class:`LLMConfig` for a local HF checkpoint: its architecture, plus the task tokens' ids.

    Reads the checkpoint's config and tokenizer (adds ``<scene>``/``<loc>``), so that ``arch`` is complete and
    a Vid-LLM checkpoint saved later rebuilds the LM without the original directory. ``vocab_size`` grows to
    hold the two new tokens; :func:`build_llm` resizes the embeddings to it.

    Args:
        path: local directory of the HF causal LM (e.g. SmolLM2-135M-Instruct).
        tokenizer_path: local directory of its tokenizer (default: ``path``).
        use_chat_template: see :attr:`LLMConfig.use_chat_template` (checked against the tokenizer).
    """
    from model.tokenizer import LOC_TOKEN, SCENE_TOKEN, load_pretrained_tokenizer

    tok_path = tokenizer_path or path
    tok = load_pretrained_tokenizer(tok_path)
    arch = AutoConfig.from_pretrained(path, local_files_only=True).to_diff_dict()
    for key in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype",
                "quantization_config"):
        arch.pop(key, None)
    arch["vocab_size"] = max(len(tok), int(arch.get("vocab_size", 0)))
    return LLMConfig(
        arch=arch,
        scene_token_id=tok.convert_tokens_to_ids(SCENE_TOKEN),
        loc_token_id=tok.convert_tokens_to_ids(LOC_TOKEN),
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id,
        eos_token_id=tok.eos_token_id,
        pretrained_path=path,
        tokenizer_path=tok_path,
        use_chat_template=use_chat_template,
    )


@dataclass
class SplicedInputs:
    """LLM inputs after replacing ``<scene>`` with scene tokens.

    Attributes:
        inputs_embeds: ``[B, L', D]``.
        attention_mask: ``[B, L']`` long, 0 on padding.
        labels: ``[B, L']`` or ``None``; -100 on scene tokens and padding.
        positions: ``[B, L]`` long: new index of every original token (-1 for dropped padding/``<scene>``).
    """

    inputs_embeds: torch.Tensor
    attention_mask: torch.Tensor
    labels: torch.Tensor | None
    positions: torch.Tensor


def splice_scene(
    embed: torch.nn.Module,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    labels: torch.Tensor | None,
    scene_tokens: torch.Tensor,
    scene_mask: torch.Tensor,
    scene_token_id: int,
    padding_side: str = "right",
) -> SplicedInputs:
    """Replace the single ``<scene>`` of each row by that row's real scene tokens and re-pad.

    Input padding (``attention_mask == 0``, on either side) is dropped first, so rows with different scene
    lengths line up. Training uses right padding; batched generation needs ``padding_side="left"``.

    Args:
        embed: the LM's input embedding module.
        input_ids: ``[B, L]`` ids with exactly one ``scene_token_id`` per row.
        attention_mask: ``[B, L]`` or ``None`` (all real).
        labels: ``[B, L]`` or ``None``.
        scene_tokens: ``[B, M, D]`` scene tokens in the LM embedding space.
        scene_mask: ``[B, M]`` bool.
        scene_token_id: id of ``<scene>``.
        padding_side: ``"right"`` or ``"left"``.

    Raises:
        ValueError: when a row does not contain exactly one ``<scene>``.
    """
    if padding_side not in ("left", "right"):
        raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
    b, length = input_ids.shape
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    real = attention_mask.bool()
    is_scene = (input_ids == scene_token_id) & real
    counts = is_scene.sum(dim=1)
    if (counts != 1).any():
        bad = [int(i) for i in torch.nonzero(counts != 1).flatten()]
        raise ValueError(f"every input row needs exactly one <scene> token (id {scene_token_id}); rows {bad} "
                         f"have {[int(counts[i]) for i in bad]}")
    text_embeds = embed(input_ids)  # [B, L, D]
    scene_tokens = scene_tokens.to(text_embeds.dtype)
    rows, row_labels, row_pos = [], [], []
    for i in range(b):
        keep = torch.nonzero(real[i]).flatten()
        k = int(torch.nonzero(is_scene[i]).flatten()[0])
        before, after = keep[keep < k], keep[keep > k]
        scene_i = scene_tokens[i][scene_mask[i]]
        rows.append(torch.cat([text_embeds[i, before], scene_i, text_embeds[i, after]], dim=0))
        pos = torch.full((length,), -1, dtype=torch.long, device=input_ids.device)
        pos[before] = torch.arange(len(before), device=input_ids.device)
        pos[after] = torch.arange(len(after), device=input_ids.device) + len(before) + scene_i.shape[0]
        row_pos.append(pos)
        if labels is not None:
            ignore = labels.new_full((scene_i.shape[0],), -100)
            row_labels.append(torch.cat([labels[i, before], ignore, labels[i, after]]))
    new_len = max(r.shape[0] for r in rows)
    d = text_embeds.shape[-1]
    embeds = text_embeds.new_zeros(b, new_len, d)
    mask = torch.zeros(b, new_len, dtype=torch.long, device=input_ids.device)
    new_labels = None if labels is None else labels.new_full((b, new_len), -100)
    positions = torch.stack(row_pos)
    for i, row in enumerate(rows):
        n = row.shape[0]
        offset = 0 if padding_side == "right" else new_len - n
        embeds[i, offset:offset + n] = row
        mask[i, offset:offset + n] = 1
        if new_labels is not None:
            new_labels[i, offset:offset + n] = row_labels[i]
        positions[i] = torch.where(positions[i] >= 0, positions[i] + offset, positions[i])
    return SplicedInputs(inputs_embeds=embeds, attention_mask=mask, labels=new_labels, positions=positions)
