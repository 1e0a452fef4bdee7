"""The real weights of ``vidllm weights install`` (DINOv2-S, SmolLM2-135M-Instruct) load as plain HF folders and
behave like the trained models on real inputs."""

from __future__ import annotations

import pytest
import torch

from pipelines import weights as w

pytestmark = pytest.mark.weights


@pytest.fixture(scope="module")
def dinov2(real_weights):
    from transformers import AutoModel

    return AutoModel.from_pretrained(real_weights[w.DINOV2_SMALL], local_files_only=True, dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def images(real_weights):
    from pathlib import Path

    return {p.name: p for p in Path(real_weights[w.TEST_IMAGES]).glob("*.jpg")}


def test_installed_folders_verify_byte_for_byte(real_weights):
    for name in w.FOLDERS:
        assert w.verified(real_weights[name], deep=True), name


def test_dinov2_small_is_a_plain_hf_dinov2_s14(dinov2):
    cfg = dinov2.config
    assert type(dinov2).__name__ == "Dinov2Model"
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.patch_size) == (384, 12, 6, 14)
    assert 21e6 < sum(p.numel() for p in dinov2.parameters()) < 23e6  # ViT-S/14 backbone (22.1 M)


def test_dinov2_cls_similarities_on_real_photos(dinov2, images):
    checks = w.dinov2_cls_checks(dinov2, images)
    # A trained DINOv2: an image and its mirror nearly agree, two people are closer than a person and a bus.
    assert checks["cos_bus_mirror"] > 0.97
    assert checks["cos_zidane_kafka"] > checks["cos_bus_zidane"] + 0.1


def test_dinov2_a_random_vit_of_the_same_shape_fails_the_fingerprint(dinov2, images):
    from transformers import Dinov2Model

    torch.manual_seed(0)
    with pytest.raises(w.WeightsError, match="cos_bus_zidane"):
        w.dinov2_cls_checks(Dinov2Model(dinov2.config).eval(), images)


def test_dinov2_takes_other_resolutions_through_interpolated_position_embeddings(dinov2, images):
    with torch.inference_mode():
        small = dinov2(pixel_values=w.load_image_pixels(images["bus.jpg"], 224)).last_hidden_state
        large = dinov2(pixel_values=w.load_image_pixels(images["bus.jpg"], 448)).last_hidden_state
    assert small.shape == (1, 1 + 16 * 16, 384) and large.shape == (1, 1 + 32 * 32, 384)
    assert torch.nn.functional.cosine_similarity(small[0, 0], large[0, 0], dim=0) > 0.7


@pytest.fixture(scope="module")
def smollm2(real_weights):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = real_weights[w.SMOLLM2]
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True)


def test_smollm2_is_a_plain_llama_with_its_own_tokenizer_and_chat_template(smollm2):
    model, tokenizer = smollm2
    assert type(model).__name__ == "LlamaForCausalLM" and not hasattr(model.config, "quantization_config")
    assert len(tokenizer) == model.config.vocab_size == 49152
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied, as trained
    text = tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert "<|im_start|>user\nHi<|im_end|>" in text and text.endswith("<|im_start|>assistant\n")
    assert tokenizer.decode(tokenizer("The capital of France")["input_ids"]) == "The capital of France"


def test_smollm2_answers_the_documented_question_greedily(smollm2):
    model, tokenizer = smollm2
    assert w.greedy_answer(model, tokenizer).startswith(w.SMOLLM2_ANSWER)


def test_real_dinov2_is_a_geometry_teacher_only_when_configured_as_plain_dinov2(real_weights, images, tmp_path):
    import numpy as np
    from PIL import Image

    from pipelines.teachers.architecture import TeacherArchitectureError
    from pipelines.teachers.geometry import GeometryTeacher

    path = real_weights[w.DINOV2_SMALL]
    with pytest.raises(TeacherArchitectureError, match="Dinov2Model.*expects Dinov2WithRegistersModel"):
        GeometryTeacher(path, str(tmp_path))
    teacher = GeometryTeacher(path, str(tmp_path), architecture="Dinov2Model")
    with Image.open(images["bus.jpg"]) as img:
        frame = np.asarray(img.convert("RGB").resize((196, 252)))
    tokens = teacher(np.stack([frame, frame[:, ::-1]]))
    assert tokens.shape == (2, 18 * 14, 384) and np.isfinite(tokens).all()
    # Patch tokens of a mirrored frame are the mirrored tokens, up to what DINOv2 learnt of left and right.
    grid = tokens.reshape(2, 18, 14, 384)
    cos = (grid[0] * grid[1][:, ::-1]).sum(-1) / (np.linalg.norm(grid[0], axis=-1) * np.linalg.norm(grid[1][:, ::-1], axis=-1))
    assert cos.mean() > 0.8
