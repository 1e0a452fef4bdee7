"""The processor: label policy (labels never cut), prompt templates and the chat template, padding, frames."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from model import VidLLM, VidLLMBatch, VidLLMConfig, build_tokenizer
from model.config import LossWeights
from model.llm import build_llm, llm_config_from_checkpoint
from model.losses import MultitaskLoss
from model.processor import VidLLMProcessor
from model.tokenizer import (
    LOC_TOKEN,
    SCENE_TOKEN,
    Prompt,
    TextBudgetError,
    caption_prompt,
    encode_example,
    grounding_answer,
    grounding_prompt,
    load_pretrained_tokenizer,
    qa_prompt,
)

BOXES = [(0.40, -0.20, 2.00, 0.60, 0.50, 0.40), (1.13, -1.64, 0.35, 0.92, 0.03, 1.16),
         (-2.50, 0.75, 1.05, 0.33, 0.41, 1.20)]
DESCRIPTION = "the brown wooden chair that stands beside the white desk next to the window in the corner"


def _label_ids(example) -> list[int]:
    return [t for t in example.labels if t != -100]


def test_labels_and_eos_are_never_cut_the_prompt_body_shrinks(tokenizer):
    """A 3-target Multi3DRefer answer under a 64-token budget: every label token and the EOS survive (they were
    truncated to 33 of 117 before), the description is shortened from its end, <scene> and the cue stay."""
    full = encode_example(tokenizer, grounding_prompt(DESCRIPTION), grounding_answer(BOXES))
    answer = _label_ids(full)
    assert answer[-1] == tokenizer.eos_token_id and len(full.input_ids) > 110
    budget = len(answer) + 10
    cut = encode_example(tokenizer, grounding_prompt(DESCRIPTION), grounding_answer(BOXES), max_length=budget)
    assert len(cut.input_ids) == budget and _label_ids(cut) == answer
    assert cut.input_ids[-len(answer):] == answer
    prompt = tokenizer.decode(cut.input_ids[: budget - len(answer)])
    assert prompt.startswith(f"{SCENE_TOKEN} locate: the brown") and prompt.endswith("answer:")
    assert "corner" not in prompt  # cut from the end of the description
    assert encode_example(tokenizer, grounding_prompt(DESCRIPTION), grounding_answer(BOXES), max_length=None) == full


def test_question_prompts_shrink_from_the_start_keeping_the_question(tokenizer):
    situation = "i am standing by the window facing the bed with the lamp on my left and the door behind me"
    prompt = qa_prompt(f"{situation} what color is the chair?")
    ex = encode_example(tokenizer, prompt, "brown", max_length=20)
    text = tokenizer.decode(ex.input_ids)
    assert len(ex.input_ids) == 20 and text.startswith(f"{SCENE_TOKEN} question:")
    assert "what color is the chair? answer: brown" in text and "window" not in text


def test_an_example_that_cannot_fit_raises_a_typed_error_naming_it(tokenizer):
    with pytest.raises(TextBudgetError) as info:
        encode_example(tokenizer, grounding_prompt("the chair"), grounding_answer(BOXES), max_length=64,
                       example="scene0000_00/ann-7")
    err = info.value
    assert isinstance(err, ValueError) and err.example == "scene0000_00/ann-7" and err.max_length == 64
    assert err.answer_tokens == 117 and err.min_prompt_tokens == 5  # <scene> ▁locate : ▁answer :
    assert "scene0000_00/ann-7" in str(err) and f"{err.answer_tokens} tokens" in str(err)


def test_captions_and_plain_string_prompts_are_never_shortened(tokenizer):
    prompt = caption_prompt(BOXES[0])
    assert isinstance(prompt, Prompt) and prompt.body == "" and SCENE_TOKEN in prompt
    length = len(encode_example(tokenizer, prompt, "a chair").input_ids)
    with pytest.raises(TextBudgetError):
        encode_example(tokenizer, prompt, "a chair", max_length=length - 1)
    with pytest.raises(TextBudgetError):
        encode_example(tokenizer, f"{SCENE_TOKEN} question: what is it? answer:", "a chair", max_length=8)


def test_prompt_is_a_string_with_parts_that_survives_pickling():
    import pickle

    prompt = grounding_prompt("  the sofa ")
    assert prompt == f"{SCENE_TOKEN} locate: the sofa answer:" and (prompt.head, prompt.body) == (
        f"{SCENE_TOKEN} locate:", " the sofa")
    restored = pickle.loads(pickle.dumps(prompt))
    assert isinstance(restored, Prompt) and restored.truncation_side == "right" and restored == prompt
    with pytest.raises(ValueError, match="truncation_side"):
        Prompt("a", "b", "c", truncation_side="middle")


def test_padding_sides_and_collation(tokenizer):
    proc = VidLLMProcessor(tokenizer)
    examples = [proc.encode_example(qa_prompt("what is it?"), "a chair"),
                proc.encode_example(grounding_prompt("the sofa"), grounding_answer(BOXES[:1]))]
    batch = proc.collate(examples)
    lengths = [len(e.input_ids) for e in examples]
    width = max(lengths)
    assert batch["input_ids"].shape == batch["labels"].shape == (2, width)
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    short = lengths.index(min(lengths))
    assert (batch["labels"][short, min(lengths):] == -100).all()
    assert (batch["input_ids"][short, min(lengths):] == tokenizer.pad_token_id).all()
    gen = proc.generation_inputs([qa_prompt("what is it?"), qa_prompt("how many chairs are in the room?")])
    assert gen["attention_mask"][0, 0] == 0 and gen["attention_mask"][:, -1].tolist() == [1, 1]  # left padding
    with pytest.raises(ValueError, match="padding_side"):
        proc.pad([[1]], "middle")


def test_frames_become_float_channels_first_in_unit_range_with_the_size_checked(tokenizer):
    proc = VidLLMProcessor(tokenizer, patch_size=14)
    frames = np.random.default_rng(0).integers(0, 256, size=(3, 28, 42, 3), dtype=np.uint8)
    tensor = proc.frames_to_tensor(frames)
    assert tensor.shape == (3, 3, 28, 42) and tensor.dtype == torch.float32
    torch.testing.assert_close(tensor[1, 2, 5, 7], torch.tensor(frames[1, 5, 7, 2] / 255.0, dtype=torch.float32))
    assert proc.frames_to_tensor(torch.from_numpy(frames)[None]).shape == (1, 3, 3, 28, 42)
    with pytest.raises(ValueError, match="30x42 is not a multiple of the patch size 14"):
        proc.frames_to_tensor(np.zeros((3, 30, 42, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        proc.frames_to_tensor(np.zeros((3, 28, 28, 3), np.float32))
    with pytest.raises(ValueError, match=r"\[S, H, W, 3\]"):
        proc.frames_to_tensor(np.zeros((3, 3, 28, 28), np.uint8))


def test_processor_call_builds_a_batch_the_model_trains_on(tiny_model, tokenizer):
    proc = VidLLMProcessor.from_config(tiny_model.vidllm_config, tokenizer)
    frames = np.random.default_rng(0).integers(0, 256, size=(2, 2, 28, 28, 3), dtype=np.uint8)
    inputs = proc(prompts=[qa_prompt("what is it?"), grounding_prompt("the sofa")],
                  answers=["a chair", grounding_answer(BOXES[:1])], frames=frames, max_length=64)
    batch = VidLLMBatch(**inputs, boxes=torch.tensor([[BOXES[0]], [BOXES[0]]]),
                        box_mask=torch.tensor([[False], [True]]))
    total, terms = MultitaskLoss(LossWeights(lm=1.0, box=1.0))(tiny_model(batch), batch)
    assert torch.isfinite(total) and {"lm", "box"} <= set(terms)
    with pytest.raises(ValueError, match="2 prompts but 1 answers"):
        proc(prompts=["a", "b"], answers=["x"])


def test_model_inference_with_a_processor_or_a_bare_tokenizer_agree(tiny_model, tokenizer, batch, tmp_path):
    tiny_model.eval()
    proc = VidLLMProcessor.from_config(tiny_model.vidllm_config, tokenizer)
    proc.save_pretrained(tmp_path)
    proc = VidLLMProcessor.from_pretrained(tmp_path)
    assert proc.patch_size == 14 and proc.use_chat_template is False
    scene = tiny_model.encode_scene(batch.frames[:1])
    questions = ["what color is the chair?", "how many chairs are there?"]
    assert tiny_model.answer(scene, questions, proc, max_new_tokens=4) == tiny_model.answer(
        scene, questions, tokenizer, max_new_tokens=4)
    a, b = (tiny_model.ground(scene, ["the chair near the table"], p, max_new_tokens=2) for p in (proc, tokenizer))
    assert torch.equal(a.boxes, b.boxes) and a.text == b.text


def test_grounding_inference_ids_are_the_training_ids_up_to_loc(tokenizer):
    proc = VidLLMProcessor(tokenizer)
    prompt = grounding_prompt("the sofa")
    train = proc.encode_example(prompt, grounding_answer(BOXES[:1])).input_ids
    infer = proc.prompt_ids(prompt, answer_prefix=LOC_TOKEN)
    assert train[: len(infer)] == infer and infer[-1] == tokenizer.convert_tokens_to_ids(LOC_TOKEN)


# ---------------------------------------------------------------- a real-style BPE tokenizer with a chat template

def _chat_processor(bpe_chat_tokenizer_dir) -> VidLLMProcessor:
    tok = load_pretrained_tokenizer(str(bpe_chat_tokenizer_dir))
    return VidLLMProcessor(tok, use_chat_template=True)


def test_load_pretrained_tokenizer_adds_task_tokens_and_pad(bpe_chat_tokenizer_dir):
    from transformers import AutoTokenizer

    base = len(AutoTokenizer.from_pretrained(str(bpe_chat_tokenizer_dir), local_files_only=True))
    tok = load_pretrained_tokenizer(str(bpe_chat_tokenizer_dir))
    assert tok.convert_tokens_to_ids(SCENE_TOKEN) == base and tok.convert_tokens_to_ids(LOC_TOKEN) == base + 1
    assert tok.pad_token == tok.eos_token == "<|im_end|>" and len(tok) == base + 2


def test_chat_template_wraps_prompts_identically_in_training_and_inference(bpe_chat_tokenizer_dir):
    proc = _chat_processor(bpe_chat_tokenizer_dir)
    tok = proc.tokenizer
    for prompt, answer in ((qa_prompt("what color is the chair?"), "it is brown"),
                           (caption_prompt(BOXES[0]), "a brown wooden chair"),
                           (grounding_prompt("the chair near the table"), grounding_answer(BOXES[:2]))):
        ex = proc.encode_example(prompt, answer)
        n_prompt = ex.labels.count(-100)
        assert ex.input_ids[:n_prompt] == proc.prompt_ids(prompt)  # the same ids at inference
        text = tok.decode(ex.input_ids[:n_prompt])
        expected = tok.apply_chat_template([{"role": "user", "content": str(prompt)}], tokenize=False,
                                           add_generation_prompt=True)
        assert text == expected and text.startswith("<|im_start|>system\nYou are a helpful AI assistant")
        assert text.endswith(f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n")
        assert _label_ids(ex)[-1] == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
        assert tok.decode(_label_ids(ex)[:-1]) == answer  # the assistant turn holds exactly the answer
    prompt = grounding_prompt("the chair near the table")
    train = proc.encode_example(prompt, grounding_answer(BOXES[:1])).input_ids
    infer = proc.prompt_ids(prompt, answer_prefix=LOC_TOKEN)
    assert train[: len(infer)] == infer and infer[-1] == tok.convert_tokens_to_ids(LOC_TOKEN)


def test_chat_template_budget_keeps_the_template_and_labels(bpe_chat_tokenizer_dir):
    proc = _chat_processor(bpe_chat_tokenizer_dir)
    full = proc.encode_example(grounding_prompt(DESCRIPTION), grounding_answer(BOXES))
    answer = _label_ids(full)
    cut = proc.encode_example(grounding_prompt(DESCRIPTION), grounding_answer(BOXES), max_length=len(full.input_ids) - 5)
    assert _label_ids(cut) == answer and len(cut.input_ids) == len(full.input_ids) - 5
    text = proc.tokenizer.decode(cut.input_ids)
    assert "<|im_start|>user\n<scene> locate: the brown" in text and "answer:<|im_end|>\n<|im_start|>assistant\n" in text
    with pytest.raises(ValueError, match="no chat template"):
        VidLLMProcessor(build_tokenizer(VidLLMConfig.tiny()), use_chat_template=True)


def test_a_model_on_a_real_style_lm_checkpoint_with_its_own_tokenizer(bpe_chat_tokenizer_dir, tmp_path):
    """The real-LLM path: the LM's own tokenizer gets <scene>/<loc> and a pad token, the LM's embeddings are
    resized to hold them, the chat template is used, and training and inference run."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    lm_dir = tmp_path / "lm"
    raw = AutoTokenizer.from_pretrained(str(bpe_chat_tokenizer_dir), local_files_only=True)
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(vocab_size=len(raw), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2, bos_token_id=1, eos_token_id=2,
                                 max_position_embeddings=512)).save_pretrained(lm_dir)
    raw.save_pretrained(lm_dir)
    llm_cfg = llm_config_from_checkpoint(str(lm_dir), use_chat_template=True)
    n = len(raw)
    assert (llm_cfg.scene_token_id, llm_cfg.loc_token_id, llm_cfg.vocab_size) == (n, n + 1, n + 2)
    assert build_llm(llm_cfg).get_input_embeddings().weight.shape[0] == n + 2  # resized for <scene>, <loc>
    cfg = dataclasses.replace(VidLLMConfig.tiny(), llm=llm_cfg)
    model = VidLLM(cfg)
    proc = VidLLMProcessor.from_config(model.vidllm_config)
    assert proc.use_chat_template and model.vidllm_config.llm.use_chat_template
    frames = np.random.default_rng(0).integers(0, 256, size=(1, 2, 28, 28, 3), dtype=np.uint8)
    batch = VidLLMBatch(**proc(prompts=[qa_prompt("what color is the chair?")], answers=["brown"], frames=frames))
    total, _ = MultitaskLoss(LossWeights(lm=1.0))(model(batch), batch)
    total.backward()
    model.eval()
    answers = model.answer(model.encode_scene(batch.frames), ["what color is the chair?"], proc, max_new_tokens=3)
    assert len(answers) == 1 and isinstance(answers[0], str)


@pytest.mark.weights
def test_real_smollm2_with_its_own_tokenizer_and_chat_template(real_weights):
    llm_cfg = llm_config_from_checkpoint(real_weights["smollm2-135m-instruct"], use_chat_template=True)
    small = VidLLMConfig.small().llm
    assert (llm_cfg.scene_token_id, llm_cfg.loc_token_id) == (small.scene_token_id, small.loc_token_id)
    assert llm_cfg.vocab_size == small.vocab_size
    cfg = dataclasses.replace(VidLLMConfig.tiny(), llm=llm_cfg)
    cfg = dataclasses.replace(cfg, grounding=dataclasses.replace(cfg.grounding, dim=64))
    model = VidLLM(cfg).eval()
    proc = VidLLMProcessor.from_config(model.vidllm_config)
    prompt = qa_prompt("what color is the chair?")
    text = proc.tokenizer.decode(proc.prompt_ids(prompt))
    assert text.startswith("<|im_start|>") and text.endswith("<|im_start|>assistant\n")
    frames = torch.rand(1, 2, 3, 28, 28)
    answer = model.answer(model.encode_scene(frames), [str(prompt)], proc, max_new_tokens=5)[0]
    assert isinstance(answer, str)
