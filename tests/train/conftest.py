"""Fixtures of the training tests: synthetic TRAINING shards (real WebDataset tars + manifest) and an MLflow server."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_http


@pytest.fixture(scope="session")
def train_manifest(tmp_path_factory) -> str:
    """16 tiny clips (4 frames of 28x28) in 4 shards, written through ``pipelines.schema``; the manifest URI."""
    from pipelines.train.synthetic_shards import write_synthetic_shards

    return write_synthetic_shards(str(tmp_path_factory.mktemp("train_shards")), num_clips=16, num_shards=4)


@pytest.fixture(scope="session")
def stage1_export(tmp_path_factory) -> str:
    """A Stage-1 export of the tiny model (``save_pretrained`` + tokenizer), to start Stage 2 from."""
    import torch

    from model import VidLLM, VidLLMConfig, build_tokenizer

    path = tmp_path_factory.mktemp("stage1_export")
    torch.manual_seed(0)
    model = VidLLM(VidLLMConfig.tiny())
    model.save_pretrained(path)
    build_tokenizer(model.vidllm_config).save_pretrained(str(path))
    return str(path)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real ``mlflow server`` on 127.0.0.1 (sqlite backend, proxied artifacts, 1 worker, no job runner)."""
    root = Path(tmp_path_factory.mktemp("mlflow_server"))
    port = free_port()
    exe = str(Path(sys.executable).parent / "mlflow")
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    with open(root / "server.log", "wb") as log:
        proc = subprocess.Popen(
            [exe, "server", "--backend-store-uri", f"sqlite:///{root}/server.db", "--artifacts-destination",
             str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
            stdout=log, stderr=subprocess.STDOUT, env=env,
        )
        uri = f"http://127.0.0.1:{port}"
        try:
            wait_for_http(uri + "/health", timeout_s=120)
            yield uri
        finally:
            proc.terminate()  # SIGTERM to the parent stops uvicorn and its workers
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
