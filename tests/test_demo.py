"""The local demo: end to end at its smallest size in a subprocess with its own Ray instance, then rerun (reuse);
plus its step runner (failure reporting, log capture) and workdir handling.

The demo starts its own local Ray (``address="local"``), so it runs as ``python -m pipelines.demo`` in a child
process: it can neither collide with the test session's shared ``ray_session`` nor inherit its state.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

DATA_AND_TRAINING_STEPS = ("scenes", "ingest", "teachers", "stage1", "stage2")
BOX_LINE = re.compile(r"-> box centre \((-?\d+\.\d+), (-?\d+\.\d+), (-?\d+\.\d+)\) m, "
                      r"size \((\d+\.\d+), (\d+\.\d+), (\d+\.\d+)\) m, score (\d\.\d+)")


def run_demo(workdir: Path, *extra: str) -> tuple[str, float]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "pipelines.demo", "--size", "smallest", "--workdir", str(workdir), *extra],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=900,
    )
    seconds = time.perf_counter() - started
    assert proc.returncode == 0, f"demo failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr[-3000:]}"
    return proc.stdout, seconds


def step_status(stdout: str, step: str) -> str:
    match = re.search(rf"^\[\d/9\] {step} \.\.\. (done|reused) in \d+\.\d s", stdout, re.MULTILINE)
    assert match, f"no result line for step {step}:\n{stdout}"
    return match.group(1)


@pytest.mark.slow
def test_demo_smallest_end_to_end_then_reuses(tmp_path):
    from mlflow.tracking import MlflowClient

    workdir = tmp_path / "demo"
    first, first_s = run_demo(workdir)

    result = json.loads((workdir / "demo_result.json").read_text())
    query = result["query"]
    # The served model's answer, printed as the demo received it over HTTP.
    assert isinstance(query["answer"], str) and query["answer"].strip()
    assert f"A: {query['answer']!r}" in first
    assert f"Q: {query['question']}" in first
    boxes = re.findall(BOX_LINE, first)
    assert len(boxes) == 1 and all(float(v) > 0 for v in boxes[0][3:6]) and 0 <= float(boxes[0][6]) <= 1
    assert query["boxes"] and all(v > 0 for v in query["boxes"][0]["size"])
    assert "RANDOM stand-ins" in first and "mlflow ui --backend-store-uri sqlite:///" in first
    assert all(step_status(first, s) == "done" for s in DATA_AND_TRAINING_STEPS)

    for folder, prefix in (("clips", "clips-"), ("train_shards", "train-")):
        manifest = json.loads((workdir / folder / "manifest.json").read_text())
        shards = sorted(p.name for p in (workdir / folder).glob(f"{prefix}*.tar"))
        assert shards and len(shards) == len(manifest["shards"]), (folder, shards, manifest)
    exported = workdir / "train" / "stage2" / "model"
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in exported.iterdir()}
    assert (workdir / "eval" / "results.json").is_file()

    state = json.loads((workdir / "demo_state.json").read_text())
    client = MlflowClient(f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}")
    version = client.get_model_version("vidllm-demo", state["stage2"]["model_version"])
    assert version.run_id == state["stage2"]["run_id"]
    assert result["model_uri"] == f"models:/vidllm-demo/{version.version}"
    assert client.get_run(version.run_id).data.tags["stage"] == "2"

    second, second_s = run_demo(workdir)
    assert all(step_status(second, s) == "reused" for s in DATA_AND_TRAINING_STEPS), second
    assert step_status(second, "eval") == "reused"
    assert re.findall(BOX_LINE, second) and "A: " in second
    # Nothing was trained or registered again.
    assert client.get_model_version("vidllm-demo", state["stage2"]["model_version"]).run_id == version.run_id
    assert len(client.search_model_versions("name='vidllm-demo'")) == 1
    assert second_s < first_s / 2, (first_s, second_s)


def test_failed_step_names_the_step_and_its_log(tmp_path, capfd):
    from pipelines.demo.runner import Progress, StepFailed

    progress = Progress(str(tmp_path / "logs"), total=2)
    try:
        with progress.step("first", "does nothing") as step:
            os.write(1, b"noise from a library\n")  # fd level, like Ray's log monitor or a C extension
            os.write(2, b"a warning on stderr\n")
            step.note("a result line")
        with pytest.raises(StepFailed) as info, progress.step("second", "breaks") as step:
            os.write(1, b"before the error\n")
            raise ValueError("bad shard /x/y.tar")
    finally:
        progress.close()
    out = capfd.readouterr().out
    assert "[1/2] first ... done in" in out and "a result line" in out and "noise" not in out
    assert "[2/2] second ... FAILED after" in out
    assert info.value.step == "second" and info.value.log_path == str(tmp_path / "logs" / "second.log")
    assert "step 'second' failed: ValueError: bad shard /x/y.tar" in str(info.value)
    assert str(tmp_path / "logs" / "second.log") in str(info.value)
    log = (tmp_path / "logs" / "second.log").read_text()
    assert "before the error" in log and "Traceback" in log and "bad shard" in log
    assert "noise from a library\na warning on stderr" in (tmp_path / "logs" / "first.log").read_text()
    assert [r.status for r in progress.records] == ["done", "failed"]


def test_workdir_is_checked_and_fresh_refuses_foreign_folders(tmp_path):
    from pipelines.demo.config import DemoConfig
    from pipelines.demo.run import prepare

    cfg = DemoConfig(workdir=str(tmp_path / "demo"), size="smallest")
    state = prepare(cfg, cfg.paths())
    assert state == {"size": "smallest", "seed": 0, "storage": str(tmp_path / "demo"), "weights_dir": ""}
    with pytest.raises(ValueError, match="--fresh"):
        prepare(cfg.replace(size="default"), cfg.paths())
    with pytest.raises(ValueError, match=r"--weights-dir .*lacks verified dinov2-small, smollm2-135m-instruct: run "
                                         r"`vidllm weights install"):
        prepare(cfg.replace(weights_dir=str(tmp_path / "no-weights")), cfg.paths())
    assert prepare(cfg.replace(size="default", fresh=True), cfg.paths())["size"] == "default"

    foreign = tmp_path / "home"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("do not delete")
    with pytest.raises(ValueError, match="refusing to delete"):
        prepare(DemoConfig(workdir=str(foreign), fresh=True), DemoConfig(workdir=str(foreign)).paths())
    assert (foreign / "thesis.tex").read_text() == "do not delete"
    with pytest.raises(ValueError, match="s3://"):
        DemoConfig(storage="/local/path")
    with pytest.raises(ValueError, match="size"):
        DemoConfig(size="huge")


def test_the_real_weight_demo_runs_the_presets_with_the_documented_overrides(tmp_path):
    """``--weights-dir``: the stage presets plus REAL_WEIGHT_OVERRIDES (what docs/weights.md documents), the presets'
    warm-up kept, a text budget for SmolLM2's tokens, and Serve at the training frame size."""
    from pipelines.demo import serving, steps
    from pipelines.demo.config import REAL_WEIGHT_OVERRIDES, DemoConfig
    from pipelines.train.config import resolve_config

    cfg = DemoConfig(workdir=str(tmp_path / "demo"), size="real", weights_dir="/weights", train_workers=1)
    paths = cfg.paths()
    stage1, stage2 = steps.train_config(cfg, paths, 1), steps.train_config(cfg, paths, 2, "models:/x/1")
    assert len(REAL_WEIGHT_OVERRIDES) == 4
    model = stage1.model
    assert model["encoder"]["pretrained_path"] == "/weights/dinov2-small"
    assert model["llm"]["pretrained_path"] == model["llm"]["tokenizer_path"] == "/weights/smollm2-135m-instruct"
    assert model["llm"]["use_chat_template"] is True and model["distill"]["teacher_geo_dim"] == 384
    for stage, config in ((1, stage1), (2, stage2)):
        preset = resolve_config(f"stage{stage}")
        assert (config.loss, config.freeze, config.optim) == (preset.loss, preset.freeze, preset.optim)
        assert config.deepspeed == preset.deepspeed and config.data.max_text_tokens == 256
        assert config.run.num_workers == 1 and config.run.cpus_per_worker == 1 and not config.run.use_gpu
    assert stage2.init_from == "models:/x/1" and not stage2.model
    assert steps.teacher_folders(cfg, paths)[::2] == ("/weights/dinov2-small", "Dinov2Model")
    served = serving.serve_config(cfg, paths, "models:/x/1", 8123)
    assert (served.limits.frame_size, served.limits.num_frames, served.limits.max_new_tokens) == (112, 6, 24)
    assert served.device == "cpu" and served.torch_dtype() == "float32"
    gpu = serving.serve_config(cfg.replace(use_gpu=True), paths, "models:/x/1", 8123)
    assert gpu.device == "cuda" and gpu.model.num_gpus == 1 and gpu.torch_dtype() == "bfloat16"
    assert steps.train_config(cfg.replace(use_gpu=True), paths, 1).run.use_gpu


def test_peak_memory_counts_the_driver_and_the_processes_it_started():
    import subprocess
    import sys

    from pipelines.demo.runner import PeakMemory

    # In a full test session this process may already have started Ray (its workers are our children too).
    before = PeakMemory(interval_s=0.05).start().stop()
    memory = PeakMemory(interval_s=0.05).start()
    child = subprocess.Popen([sys.executable, "-c", "import time; b = bytearray(300 * 1024**2); time.sleep(2)"])
    child.wait(timeout=60)
    peak = memory.stop()
    assert peak["driver"] > 20 and peak["ray"] > before["ray"] + 250
    assert peak["workers"] < before["workers"] + 100  # the child is no Ray worker
    assert peak["total"] >= peak["driver"] + 250
