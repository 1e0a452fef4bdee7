"""The real-weight path a user takes, through every stage: ``vidllm demo --size real --weights-dir DIR`` in a
subprocess (its own local Ray): synthetic scenes -> ingest -> teachers (the real DINOv2-S as geometry teacher, a
labelled random CLIP stand-in) -> Stage 1 and Stage 2 of the ``stage1``/``stage2`` presets with the real-weight
overrides (the real DINOv2-S encoder, SmolLM2-135M-Instruct with its own tokenizer and chat template) -> export ->
evaluation -> Ray Serve over real HTTP on 127.0.0.1.

Reduced to 112 px, 6 frames and 2 optimizer steps per stage so that it takes minutes on 2 CPU cores. The run's wall
time and peak memory per stage are printed (``pytest -s``) and kept in ``demo_result.json``.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import REPO_ROOT

pytestmark = [pytest.mark.weights, pytest.mark.slow]

STEPS = ("ray", "scenes", "ingest", "teachers", "stage1", "stage2", "eval", "serve", "query")
ENCODER_PREFIX = "encoder.backbone."


@pytest.fixture(scope="module")
def run(real_weights, tmp_path_factory) -> dict:
    from pipelines.weights import DINOV2_SMALL

    workdir = tmp_path_factory.mktemp("real-path") / "demo"
    weights_dir = str(Path(real_weights[DINOV2_SMALL]).parent)
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.demo", "--size", "real", "--weights-dir", weights_dir,
         "--workdir", str(workdir), "--train-workers", "1"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=2700,
    )
    assert proc.returncode == 0, f"real-weight demo failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    summary = proc.stdout[proc.stdout.index("Summary"):]
    print("\nreal-weight run, wall time and peak PSS (MiB) per stage:\n" + summary)
    return {"workdir": workdir, "stdout": proc.stdout, "weights": real_weights,
            "result": json.loads((workdir / "demo_result.json").read_text())}


def _encoder_tensors(export: Path) -> dict[str, torch.Tensor]:
    """The DINOv2 backbone tensors of an exported Vid-LLM (``encoder.backbone.*``, prefix removed)."""
    from safetensors import safe_open

    with safe_open(str(export / "model.safetensors"), framework="pt") as f:
        return {k[len(ENCODER_PREFIX):]: f.get_tensor(k) for k in f.keys()  # noqa: SIM118 (not a dict)
                if k.startswith(ENCODER_PREFIX)}


def test_every_stage_ran_and_was_measured(run):
    steps = run["result"]["steps"]
    assert list(steps) == list(STEPS)
    for name, step in steps.items():
        assert step["status"] == "done", (name, step)
        assert step["seconds"] > 0
        peak = step["peak_memory_mb"]
        assert peak["driver"] > 50 and peak["total"] >= peak["driver"] + peak["workers"] - 1, (name, peak)
    # Training holds the small model (238 M parameters) and its optimizer in a Ray worker.
    assert steps["stage2"]["peak_memory_mb"]["workers"] > 2000
    for name in STEPS:
        assert re.search(rf"^\s+\[\d/9\] {name}\s+done\s+\d+\.\ds\s+\d+\s+\d+\s+\d+$", run["stdout"], re.MULTILINE)


def test_the_served_answer_is_fluent_smollm2_text(run):
    """The HTTP answer decodes with SmolLM2's own tokenizer and reads as English words (a word-level test model
    could only emit its own lower-case vocabulary, spaced punctuation included)."""
    from transformers import AutoTokenizer

    from pipelines.weights import SMOLLM2

    answer = run["result"]["query"]["answer"]
    print(f"\nserved answer to {run['result']['query']['question']!r}: {answer!r}")
    assert f"A: {answer!r}" in run["stdout"]
    real = AutoTokenizer.from_pretrained(run["weights"][SMOLLM2], local_files_only=True)
    ids = real(answer, add_special_tokens=False)["input_ids"]
    assert real.decode(ids) == answer and max(ids) < 49152  # SmolLM2's own vocabulary, no task token
    words = re.findall(r"[A-Za-z][A-Za-z']*", answer)
    assert len(words) >= 2 and sum(len(w) for w in words) >= 0.6 * len(answer.replace(" ", "")), answer
    assert len(ids) <= 2 * len(words) + 4, (answer, ids)  # real words are one or two BPE tokens, not fragments
    assert run["result"]["query"]["boxes"], "grounding returned no box"


def test_the_export_holds_the_real_tokenizer_and_the_chat_template(run):
    from model import VidLLMConfig, VidLLMProcessor
    from model.tokenizer import LOC_TOKEN, SCENE_TOKEN
    from pipelines.artifacts import load_processor, read_model_config

    export = run["workdir"] / "train" / "stage2" / "model"
    processor = VidLLMProcessor.from_pretrained(export)
    tokenizer = processor.tokenizer
    assert len(tokenizer) == 49152 + 2
    assert tokenizer.convert_tokens_to_ids([SCENE_TOKEN, LOC_TOKEN]) == [49152, 49153]
    assert processor.use_chat_template and processor.patch_size == 14
    config = read_model_config(str(export))
    assert config["llm"]["use_chat_template"] and config["llm"]["arch"]["vocab_size"] == 49154
    loaded = load_processor(export, VidLLMConfig.from_dict(config))
    prompt = tokenizer.decode(loaded.prompt_ids(loaded.qa_prompt("how many chairs are there?")))
    assert prompt.startswith("<|im_start|>") and prompt.endswith("answer:<|im_end|>\n<|im_start|>assistant\n")
    with open(export / "model.safetensors", "rb") as f:
        header = json.loads(f.read(int.from_bytes(f.read(8), "little")))
    # Resized for <scene>, <loc>; tied input and output embeddings are stored once.
    embeddings = {k: v["shape"] for k, v in header.items() if k.endswith(("embed_tokens.weight", "lm_head.weight"))}
    assert list(embeddings.values()) == [[49154, 576]], embeddings


def test_the_encoder_is_still_the_real_dinov2_after_stage_2(run):
    """Stage 2 freezes the encoder: its weights equal Stage 1's export exactly, and stay DINOv2-S's (two Stage-1
    steps early in the presets' warm-up): within 1e-4 of the installed weights and passing their CLS fingerprint on
    the real photos."""
    from transformers import Dinov2Model

    from pipelines.weights import DINOV2_SMALL, TEST_IMAGES, dinov2_cls_checks

    stage1 = _encoder_tensors(run["workdir"] / "train" / "stage1" / "model")
    stage2 = _encoder_tensors(run["workdir"] / "train" / "stage2" / "model")
    assert stage1.keys() == stage2.keys() and len(stage2) > 100
    assert all(torch.equal(stage1[k], stage2[k]) for k in stage2)
    real = Dinov2Model.from_pretrained(run["weights"][DINOV2_SMALL], local_files_only=True, dtype=torch.float32)
    reference = real.state_dict()
    assert reference.keys() == stage2.keys()
    for name, value in stage2.items():
        assert float((value - reference[name]).abs().max()) <= 1e-4, name
    real.load_state_dict(stage2, strict=True)
    images = {p.name: p for p in Path(run["weights"][TEST_IMAGES]).glob("*.jpg")}
    dinov2_cls_checks(real.eval(), images)  # raises when the fingerprint is off


def test_the_teachers_are_the_real_dinov2_and_a_labelled_clip_standin(run):
    config = json.loads((run["workdir"] / "train_shards" / "manifest.json").read_text())["config"]
    assert config["geometry_teacher"].endswith("dinov2-small") and config["geometry_teacher_standin"] == ""
    assert "random CLIPVisionModel" in config["semantic_teacher_standin"]
    assert "RANDOM stand-in CLIPVisionModel" in run["stdout"]


def test_evaluation_scored_the_stage_2_model(run):
    results = json.loads((run["workdir"] / "eval" / "results.json").read_text())
    assert {"scanqa", "scanrefer", "scan2cap", "reconstruction"} <= set(results)
    assert results["scanqa"]["answered"] >= 1
    recon = results["reconstruction"]
    assert recon["num_depth_scored"] == recon["num_scenes"] >= 1
    assert np.isfinite(recon["depth"]["abs_rel"]) and recon["depth"]["median_scale"] > 0
