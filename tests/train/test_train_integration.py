"""End-to-end training on Ray Train V2 + DeepSpeed (2 CPU workers, tiny model): Stage 1 then Stage 2 under ZeRO-2
(sqlite MLflow store) and ZeRO-3 (a real ``mlflow server``), the exported model answering a question, and a worker
SIGKILLed mid-run that resumes from the last COMPLETE checkpoint while the tracking server is unreachable."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.train.checkpointing import checkpoint_dir_name
from pipelines.train.config import resolve_config
from pipelines.train.launch import run_training
from pipelines.train.progress import read_step_logs
from pipelines.train.trainer import FAULT_MARKER

pytestmark = pytest.mark.slow

STEPS = 6


def _config(stage: int, zero: int, manifest: str, root: Path, name: str, *extra: str):
    return resolve_config("tiny", [
        f"data.manifest_uri={manifest}", f"run.storage_path={root / 'ray'}", f"run.output_dir={root / name}",
        f"run.name={name}", f"deepspeed.zero_stage={zero}", f"schedule.max_steps={STEPS}",
        f"tracking.registered_model=vidllm-z{zero}-s{stage}", "tracking.experiment=vidllm-tests", *extra,
    ], stage=stage)


def _steps(output_dir: str) -> list[dict]:
    return [r for attempt in read_step_logs(output_dir) for r in attempt if "step" in r and "loss" in r]


def _falls(values: list[float]) -> bool:
    return float(np.mean(values[-2:])) < float(np.mean(values[:2]))


def _check_mlflow(result, stage: int, zero: int, manifest: str, parent: str | None = None) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(result.tracking_uri, registry_uri=result.tracking_uri)
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["deepspeed.zero_stage"] == str(zero)
    assert run.data.params["stage"] == str(stage)
    assert run.data.tags["stage"] == str(stage)
    assert run.data.tags["manifest_uri"] == manifest
    assert run.data.tags["manifest_sha256"] == hashlib.sha256(Path(manifest).read_bytes()).hexdigest()
    if parent:
        assert run.data.tags["parent_run_id"] == parent
    history = client.get_metric_history(result.run_id, "loss")
    assert sorted(m.step for m in history) == list(range(STEPS))
    assert run.data.metrics["samples_per_s"] > 0 and run.data.metrics["eta_s"] == 0.0
    if stage == 2:
        assert run.data.metrics["tokens_per_s"] > 0
    version = client.get_model_version(f"vidllm-z{zero}-s{stage}", result.model_version)
    assert version.run_id == result.run_id
    assert {"model/MLmodel", "model/artifacts"} <= {a.path for a in client.list_artifacts(result.run_id, "model")}


def _answer(model_dir: str) -> list[str]:
    from model import VidLLM, build_tokenizer

    model = VidLLM.from_pretrained(model_dir)
    tok = build_tokenizer(model.vidllm_config)
    frames = torch.rand(1, 4, 3, 28, 28)
    return model.answer(model.encode_scene(frames), ["what color is the chair?"], tok, max_new_tokens=4)


@pytest.mark.parametrize("zero,store", [(2, "sqlite"), (3, "server")])
def test_stage1_then_stage2(ray_session, train_manifest, tmp_path, request, zero, store):
    tracking = [] if store == "sqlite" else [f"tracking.tracking_uri={request.getfixturevalue('mlflow_server')}"]
    r1 = run_training(_config(1, zero, train_manifest, tmp_path, "stage1", *tracking))
    steps1 = _steps(r1.model_uri.rsplit("/", 1)[0])
    assert [s["step"] for s in steps1] == list(range(STEPS))
    assert _falls([s["loss"] for s in steps1]), steps1
    _check_mlflow(r1, 1, zero, train_manifest)

    # Stage 2 from Stage 1: by export path (sqlite case) or by MLflow run id (server case).
    init = r1.model_uri if store == "sqlite" else f"mlflow-run:{r1.run_id}"
    r2 = run_training(_config(2, zero, train_manifest, tmp_path, "stage2", f"init_from={init}", *tracking))
    steps2 = _steps(r2.model_uri.rsplit("/", 1)[0])
    assert [s["step"] for s in steps2] == list(range(STEPS))
    assert _falls([s["loss_lm"] for s in steps2]), steps2
    assert _falls([s["loss_camera"] for s in steps2]), steps2
    _check_mlflow(r2, 2, zero, train_manifest, parent=r1.run_id)

    exported = Path(r2.model_uri)
    assert {"config.json", "model.safetensors", "train_config.json", "tokenizer.json"} <= set(os.listdir(exported))
    assert json.loads((exported / "train_config.json").read_text())["stage"] == 2
    if store == "server":  # the registered version resolves and downloads through the registry
        from pipelines.artifacts import resolve_model

        exported = Path(resolve_model(f"models:/vidllm-z{zero}-s2/{r2.model_version}", r2.tracking_uri,
                                      str(tmp_path / "dl")).local_dir)
        assert exported.is_relative_to(tmp_path / "dl")  # a proxied (HTTP) store is downloaded into the cache
    answers = _answer(str(exported))
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_worker_killed_midrun_resumes_from_last_complete_checkpoint(ray_session, train_manifest, tmp_path):
    from tests.conftest import free_port

    kill_at = 5
    cfg = _config(1, 2, train_manifest, tmp_path, "faulty", "schedule.max_steps=8", "schedule.checkpoint_every=2",
                  f"fault.kill_at_step={kill_at}", "fault.kill_rank=1", "run.max_failures=1",
                  f"tracking.tracking_uri=http://127.0.0.1:{free_port()}", "tracking.retry_initial_s=0.5",
                  "tracking.retry_max_s=1")
    # A newer checkpoint directory without its COMPLETE.json marker (as left by a crash during upload): never loaded.
    decoy = tmp_path / "ray" / "faulty" / checkpoint_dir_name(99)
    (decoy / "ds").mkdir(parents=True)
    (decoy / "ds" / "latest").write_text("engine")
    (decoy / "train_state.json").write_text(json.dumps({"step": 99, "epoch": 9, "micro_in_epoch": 0}))

    result = run_training(cfg)

    out = tmp_path / "faulty"
    assert json.loads((out / FAULT_MARKER).read_text())["step"] == kill_at
    attempts = read_step_logs(str(out))
    assert len(attempts) == 2
    first, second = attempts
    assert first[0]["resumed_from"] is None  # the decoy was skipped: a fresh start
    done_first = [r["step"] for r in first if "loss" in r]
    assert done_first and max(done_first) < kill_at
    resumed = second[0]["resumed_from"]
    assert resumed in (1, 3) and resumed < kill_at  # the last checkpoint whose marker was written
    assert [r["step"] for r in second if "loss" in r] == list(range(resumed + 1, 8))
    # Model, optimizer, LR schedule and data position all restored: a replayed step has the same loss.
    before = {r["step"]: r["loss"] for r in first if "loss" in r}
    after = {r["step"]: r["loss"] for r in second if "loss" in r}
    assert set(before) & set(after)
    for step in set(before) & set(after):
        assert after[step] == pytest.approx(before[step], rel=1e-5), step
    assert second[-1] == {"event": "end", "step": 7}
    # Tracking was unreachable the whole time: no crash, no run, no registration, but the model was exported.
    assert result.run_id is None and result.model_version is None
    assert (out / "model" / "model.safetensors").is_file()
    assert decoy.is_dir() and not (decoy / "COMPLETE.json").exists()

    # The offline route (python -m pipelines.train.export: zero_to_fp32 over the final checkpoint's ZeRO shards)
    # gives the same weights as the in-run export.
    from model import VidLLM
    from pipelines.train.export import main as export_main

    model = VidLLM.from_pretrained(str(out / "model"))
    final = tmp_path / "ray" / "faulty" / checkpoint_dir_name(7)
    assert export_main(["--checkpoint", str(final), "--run-config", str(out / "train_config.json"),
                        "--dest", str(tmp_path / "offline")]) == 0
    offline = VidLLM.from_pretrained(str(tmp_path / "offline")).state_dict()
    for key, value in model.state_dict().items():
        assert torch.equal(offline[key], value), key
