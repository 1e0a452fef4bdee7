"""What the model replica feeds the model: the exported processor's prompts (its length check counts exactly the
ids the batch will see), the configured frame size and the serving dtype. The replica class runs in this process
(no Ray): real tiny checkpoint, real tokenizer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipelines.serve.config import ServeConfig
from pipelines.serve.errors import ModelInputError

LIMITS = ServeConfig.tiny("x").to_dict()["limits"]


def _replica(checkpoint, **overrides):
    from pipelines.serve.model_deployment import VidLLMModel

    cfg = ServeConfig.tiny(str(checkpoint))
    return VidLLMModel.func_or_class(ServeConfig.from_dict({**cfg.to_dict(), **overrides}).to_dict())


def _frames(replica) -> np.ndarray:
    spec = replica.input_spec()
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(spec["num_frames"], spec["height"], spec["width"], 3), dtype=np.uint8)


def test_the_length_check_counts_the_processors_prompt_ids(tiny_checkpoint):
    """A question fits exactly when its prompt ids minus <scene>, plus the scene's tokens and the answer, fit the
    LLM's positions; one more word is a 422 naming the field."""
    replica = _replica(tiny_checkpoint)
    processor = replica._processor
    with torch.inference_mode():
        encoding = replica._model.encode_scene(processor.frames_to_tensor(_frames(replica)[None]))
    room = replica._max_positions - int(encoding.mask.sum()) - replica._cfg.limits.max_new_tokens
    per_word = len(processor.prompt_ids(processor.qa_prompt("chair chair"))) - len(
        processor.prompt_ids(processor.qa_prompt("chair")))
    fixed = len(processor.prompt_ids(processor.qa_prompt("chair"))) - 1 - per_word
    fits = " ".join(["chair"] * ((room - fixed) // per_word))
    assert len(processor.prompt_ids(processor.qa_prompt(fits))) - 1 == room
    replica._check_text("question", processor.qa_prompt(fits), encoding)
    with pytest.raises(ModelInputError, match=rf"question makes a {room + 2}-token prompt") as info:
        replica._check_text("question", processor.qa_prompt(fits + " chair"), encoding)
    assert info.value.field == "question"


def test_frame_size_and_dtype_of_a_replica(tiny_checkpoint):
    default = _replica(tiny_checkpoint)
    assert (default.input_spec()["height"], default.input_spec()["width"]) == (28, 28)  # the encoder's image_size
    assert default._model.dtype == torch.float32  # auto on CPU
    sized = _replica(tiny_checkpoint, dtype="bf16", limits={**LIMITS, "frame_size": 56})
    assert (sized.input_spec()["height"], sized.input_spec()["width"]) == (56, 56)
    assert sized._model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="frame_size 50 is not a multiple of the model's patch size 14"):
        _replica(tiny_checkpoint, limits={**LIMITS, "frame_size": 50})
    assert ServeConfig.tiny("x").torch_dtype() == "float32"
    assert ServeConfig.tiny("x", dtype="bf16").torch_dtype() == "bfloat16"
    assert ServeConfig("x", device="cuda").torch_dtype() == "bfloat16"
    with pytest.raises(ValueError, match="dtype must be one of"):
        ServeConfig.tiny("x", dtype="fp8")


@pytest.mark.slow
def test_a_bf16_endpoint_at_a_chosen_frame_size_answers_over_http(serve_http, tiny_checkpoint, clips):
    """bf16 weights on CPU and 56 px frames: the scene registers, geometry stays fp32-finite, questions are answered
    and a question whose prompt cannot fit is a 422 naming the field."""
    import requests

    from tests.serve.conftest import deploy, undeploy

    cfg = ServeConfig.from_dict({**ServeConfig.tiny(str(tiny_checkpoint)).to_dict(), "dtype": "bf16",
                                 "limits": {**LIMITS, "frame_size": 56, "max_question_chars": 5000}})
    url = deploy(serve_http, "bf16", cfg)
    try:
        scene = requests.post(f"{url}/v1/scenes", files={"video": ("ok.mp4", clips["ok"], "video/mp4")}, timeout=120)
        assert scene.status_code == 200, scene.text
        sid = scene.json()["scene_id"]
        assert scene.json()["frames_used"] == LIMITS["num_frames"]
        assert np.isfinite(np.asarray(scene.json()["camera_trajectory"])).all()
        answer = requests.post(f"{url}/v1/scenes/{sid}/answer", json={"question": "what color is the chair?"},
                               timeout=120)
        assert answer.status_code == 200 and isinstance(answer.json()["answer"], str), answer.text
        long = requests.post(f"{url}/v1/scenes/{sid}/answer", json={"question": " ".join(["chair"] * 600)},
                             timeout=120)
        assert long.status_code == 422 and long.json()["field"] == "question", long.text
        assert "-token prompt" in long.json()["detail"]
    finally:
        undeploy("bf16")
