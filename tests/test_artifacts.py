"""One module resolves every model URI (local, s3://, models:/name/version, models:/name@alias, runs:/, mlflow-run:)
to a local directory (remote ones through one cache, a local MLflow store in place), and a registered version is an
MLflow pyfunc model that ``mlflow.pyfunc.load_model`` loads and asks a question of. Real moto S3 server, real sqlite
MLflow store, real tiny checkpoint, real H.264 video."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.artifacts import (
    ArtifactError,
    load_model_and_processor,
    local_dir,
    read_model_config,
    resolve_model,
    run_id_of,
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """The tiny ``VidLLM`` (random init, fixed seed) saved in HF layout with its processor, as training exports."""
    from model import VidLLM, VidLLMConfig, VidLLMProcessor

    torch.manual_seed(0)
    cfg = VidLLMConfig.tiny()
    out = tmp_path_factory.mktemp("export") / "model"
    VidLLM(cfg).save_pretrained(out)
    VidLLMProcessor.from_config(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def video(tmp_path_factory) -> Path:
    """A real H.264 MP4 of a textured scene drifting sideways (12 frames)."""
    from pipelines.scenes.video import encode_video

    rng = np.random.default_rng(3)
    base = rng.integers(0, 256, size=(48, 128, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("video") / "scene.mp4"
    encode_video(str(path), [np.ascontiguousarray(base[:, i:i + 64]) for i in range(12)], fps=12.0, gop=6)
    return path


def test_local_paths_and_what_is_wrong_with_them(checkpoint, tmp_path):
    assert resolve_model(str(checkpoint)).local_dir == str(checkpoint)
    assert resolve_model(f"file://{checkpoint}").local_dir == str(checkpoint)
    with pytest.raises(ArtifactError, match=r"^--model .*nope: directory does not exist$"):
        resolve_model(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match="init_from .*found 0"):
        resolve_model(str(tmp_path / "empty"), flag="init_from")
    with pytest.raises(FileNotFoundError):  # ArtifactError is also a FileNotFoundError for callers catching that
        local_dir(str(tmp_path / "nope"))


def test_s3_is_downloaded_once_and_again_when_rewritten(checkpoint, s3_bucket, tmp_path):
    import s3fs

    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    uri = f"{s3_bucket}/exports/tiny"
    fs.put(str(checkpoint) + "/", uri + "/", recursive=True)
    cache = str(tmp_path / "cache")
    local = Path(resolve_model(uri, cache_dir=cache).local_dir)
    assert sorted(p.name for p in local.iterdir()) == sorted(p.name for p in checkpoint.iterdir())
    assert (local / "model.safetensors").read_bytes() == (checkpoint / "model.safetensors").read_bytes()
    stamp = (local / "model.safetensors").stat().st_mtime_ns
    again = Path(resolve_model(uri, cache_dir=cache).local_dir)
    assert again == local and (again / "model.safetensors").stat().st_mtime_ns == stamp  # served from the cache
    fs.pipe(uri + "/config.json", (checkpoint / "config.json").read_bytes() + b" ")  # the export is rewritten
    fresh = Path(resolve_model(uri, cache_dir=cache).local_dir)
    assert fresh != local and (fresh / "config.json").read_bytes().endswith(b" ")
    with pytest.raises(ArtifactError, match="directory does not exist"):
        resolve_model(f"{s3_bucket}/exports/missing", cache_dir=cache)


@pytest.fixture(scope="module")
def registered(checkpoint, tmp_path_factory):
    """The checkpoint logged and registered exactly as training does (pyfunc model, version 1, alias ``champion``)."""
    from mlflow.tracking import MlflowClient

    from pipelines.train.launch import log_and_register
    from pipelines.train.tracking import Tracker

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    tracker = Tracker(uri, "artifacts-test", str(root / "run"), params={}, tags={},
                      artifact_location=str(root / "artifacts"))
    assert tracker.start()
    version = log_and_register(tracker, str(checkpoint), "vidllm-tiny")
    assert version == "1" and tracker.end("FINISHED")
    client = MlflowClient(uri, registry_uri=uri)
    client.set_registered_model_alias("vidllm-tiny", "champion", "1")
    return {"uri": uri, "run_id": tracker.run_id, "client": client, "store": root / "artifacts"}


@pytest.mark.slow
@pytest.mark.parametrize("form", ["models:/vidllm-tiny/1", "models:/vidllm-tiny@champion", "runs:/{run}/model",
                                  "mlflow-run:{run}"])
def test_registry_and_run_uris_resolve_to_the_checkpoint(registered, checkpoint, tmp_path, form):
    uri = form.format(run=registered["run_id"])
    source = resolve_model(uri, registered["uri"], str(tmp_path / "cache"))
    local = Path(source.local_dir)
    assert (local / "model.safetensors").read_bytes() == (checkpoint / "model.safetensors").read_bytes()
    # The store is on this machine's disk: its artifacts are used in place, nothing is copied into the cache.
    assert local.is_relative_to(registered["store"]) and not (tmp_path / "cache").exists()
    assert source.source_run_id == registered["run_id"]
    if uri.startswith("models:/"):
        assert (source.registered_name, source.registered_version) == ("vidllm-tiny", "1")
        assert source.tags()["registered_model_version"] == "1"
    assert read_model_config(uri, registered["uri"]) == json.loads((checkpoint / "config.json").read_text())["vidllm"]
    assert registered["client"].get_run(registered["run_id"]).info.status == "FINISHED"


def test_run_ids_from_uris_and_export_directories(tmp_path):
    assert run_id_of("runs:/abc123/model") == run_id_of("mlflow-run:abc123") == "abc123"
    (tmp_path / "model").mkdir()
    (tmp_path / "mlflow_run.json").write_text(json.dumps({"run_id": "feed01"}))
    assert run_id_of(str(tmp_path / "model")) == "feed01"
    assert run_id_of("models:/x/1") == ""


@pytest.mark.slow
def test_mlflow_pyfunc_loads_a_registered_version_and_answers(registered, checkpoint, video, monkeypatch):
    """The ecosystem's own loader: ``mlflow.pyfunc.load_model("models:/name/1")``, then ``predict`` a question
    about a video given by path or by bytes; the answer is the model's own for the same frames."""
    import mlflow.pyfunc
    import pandas as pd

    from pipelines.serve.config import LimitsConfig
    from pipelines.serve.video_input import SamplingSpec, sample_clip

    monkeypatch.setenv("MLFLOW_TRACKING_URI", registered["uri"])
    loaded = mlflow.pyfunc.load_model("models:/vidllm-tiny/1")
    inputs = loaded.metadata.get_input_schema().input_names()
    assert inputs == ["question", "video", "video_bytes"]
    question = "what color is the chair?"
    out = loaded.predict(pd.DataFrame({"question": [question], "video": [str(video)]}),
                         params={"max_new_tokens": 4, "num_frames": 4})
    by_bytes = loaded.predict(pd.DataFrame({"question": [question], "video_bytes": [video.read_bytes()]}),
                              params={"max_new_tokens": 4, "num_frames": 4})
    model, processor = load_model_and_processor(checkpoint)
    size = int(model.vidllm_config.encoder.dinov2["image_size"])
    frames = sample_clip(video.read_bytes(), SamplingSpec(4, size, size), LimitsConfig()).frames
    with torch.inference_mode():
        scene = model.encode_scene(torch.from_numpy(frames[None]).permute(0, 1, 4, 2, 3).float() / 255)
        expected = model.answer(scene, [question], processor, max_new_tokens=4)
    assert list(out["answer"]) == list(by_bytes["answer"]) == expected
    with pytest.raises(Exception, match="exactly one of"):
        loaded.predict(pd.DataFrame({"question": [question]}))


def test_checkpoints_from_before_freezing_became_training_policy_still_load(checkpoint, tmp_path):
    """Old exports carry ``freezing`` in their config.json; it is dropped on load."""
    from model import VidLLM

    old = tmp_path / "old"
    old.mkdir()
    for name in os.listdir(checkpoint):
        (old / name).write_bytes((checkpoint / name).read_bytes())
    config = json.loads((old / "config.json").read_text())
    config["vidllm"]["freezing"] = {"stage1_trainable": ["encoder.*"], "stage1_frozen": [],
                                    "stage2_trainable": ["*"], "stage2_frozen": ["encoder.*", "distill.*"]}
    (old / "config.json").write_text(json.dumps(config))
    model = VidLLM.from_pretrained(str(old))
    assert "freezing" not in model.vidllm_config.to_dict()
    reference = VidLLM.from_pretrained(str(checkpoint)).state_dict()
    assert all(torch.equal(v, reference[k]) for k, v in model.state_dict().items())


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for name in os.listdir(src):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst


def test_an_export_loads_with_its_processor_in_the_asked_dtype(checkpoint):
    """The exported processor (tokenizer + processor_config.json) comes back with the model; the weights load in
    the asked dtype; frames are converted by the processor's rule."""
    from model import VidLLMProcessor

    model, processor = load_model_and_processor(checkpoint)
    saved = VidLLMProcessor.from_pretrained(checkpoint)
    assert isinstance(processor, VidLLMProcessor) and model.dtype == torch.float32
    assert (processor.patch_size, processor.use_chat_template) == (saved.patch_size, False) == (14, False)
    prompt = processor.qa_prompt("what color is the chair?")
    assert processor.prompt_ids(prompt) == saved.prompt_ids(prompt)
    half, _ = load_model_and_processor(checkpoint, dtype="bfloat16")
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    frames = np.full((1, 2, 28, 28, 3), 255, np.uint8)
    assert torch.equal(processor.frames_to_tensor(frames), torch.ones(1, 2, 3, 28, 28))


def test_a_processor_config_that_disagrees_with_the_model_is_refused(checkpoint, tmp_path):
    from pipelines.artifacts import load_processor

    bad = _copy(checkpoint, tmp_path / "bad")
    config = json.loads((bad / "processor_config.json").read_text())
    (bad / "processor_config.json").write_text(json.dumps({**config, "patch_size": 16}))
    model, _ = load_model_and_processor(checkpoint)
    with pytest.raises(ValueError, match="patch size 16.*model config has 14"):
        load_processor(bad, model.vidllm_config)


def test_an_export_from_before_the_processor_loads_with_the_processor_its_config_describes(checkpoint, tmp_path):
    old = _copy(checkpoint, tmp_path / "old")
    (old / "processor_config.json").unlink()
    model, processor = load_model_and_processor(old)
    assert processor.patch_size == model.vidllm_config.patch_size
    assert processor.use_chat_template is model.vidllm_config.llm.use_chat_template is False
