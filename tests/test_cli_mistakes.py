"""Every common mistake, run through the real CLI in a subprocess, answers with one line on stderr and exit status 2:
what is wrong, which flag or field, how to fix it; no traceback, nothing written, nothing started."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT, free_port

pytestmark = pytest.mark.slow

AWS = ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE", "AWS_SESSION_TOKEN")


def vidllm(*args: str, env: dict[str, str | None] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    """``vidllm ARGS`` in a fresh process with this checkout first on the path; (result, seconds)."""
    full = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "PYTHONWARNINGS": "ignore"}
    for key, value in (env or {}).items():
        if value is None:
            full.pop(key, None)
        else:
            full[key] = value
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "pipelines.cli", *args], cwd=REPO_ROOT, env=full,
                            capture_output=True, text=True, timeout=300, check=False)
    return result, time.monotonic() - started


def one_line(result: subprocess.CompletedProcess, *words: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, (result.returncode, result.stderr)
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


def test_ingest_with_a_path_that_does_not_exist_writes_nothing(tmp_path):
    out = tmp_path / "out"
    result, _ = vidllm("ingest", "--scenes", str(tmp_path / "no-such-dataset"), "--out", str(out))
    one_line(result, "--scenes", "no-such-dataset", "does not exist")
    assert not out.exists()


@pytest.mark.parametrize("mistake", ["no-credentials", "no-endpoint"])
def test_s3_without_credentials_or_endpoint_fails_fast(s3_endpoint, tmp_path, mistake):
    no_files = {"AWS_CONFIG_FILE": str(tmp_path / "none"), "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "none"),
                "AWS_EC2_METADATA_DISABLED": "true"}
    if mistake == "no-credentials":
        env = {**no_files, **{k: None for k in AWS}, "AWS_ENDPOINT_URL": s3_endpoint}
        words = ("--scenes", "s3://vidllm-data/scannet", "no S3 credentials", "AWS_ACCESS_KEY_ID")
    else:
        env = {**no_files, "AWS_ENDPOINT_URL": None, "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"}
        words = ("--scenes", "cannot reach the S3 endpoint", "set AWS_ENDPOINT_URL")
    result, seconds = vidllm("ingest", "--scenes", "s3://vidllm-data/scannet", "--out", str(tmp_path / "o"), env=env)
    one_line(result, *words)
    assert seconds < 10, seconds  # python start-up included: no botocore retries


def test_teachers_without_teacher_paths(tmp_path):
    result, _ = vidllm("teachers", "--clips", str(tmp_path), "--out", str(tmp_path / "o"))
    one_line(result, "geometry_teacher", "--geometry-teacher", "--semantic-teacher")


def test_serve_with_a_missing_model_stops_before_ray(tmp_path):
    result, seconds = vidllm("serve", "--model", str(tmp_path / "no-model"), "--preset", "tiny",
                             "--run-dir", str(tmp_path / "run"))
    one_line(result, "--model", "no-model", "does not exist")
    assert "Ray" not in result.stdout + result.stderr and not (tmp_path / "run").exists()
    assert seconds < 60


def test_submit_to_an_unreachable_address():
    result, _ = vidllm("submit", "ingest", "--address", f"http://127.0.0.1:{free_port()}", "--", "--scenes", "x",
                       "--out", "y")
    one_line(result, "--address", "cannot reach the Ray dashboard", "http://HEAD:8265")


def test_train_with_a_wrong_manifest_path_stops_before_ray(tmp_path):
    result, _ = vidllm("train", "--stage", "1", "--config", "tiny", "--set", f"data.manifest_uri={tmp_path}/nope",
                       "--set", f"run.output_dir={tmp_path}/out", "--set", f"run.storage_path={tmp_path}/ray")
    one_line(result, "data.manifest_uri", "nope", "does not exist", "run the teachers job first")
    assert "Ray" not in result.stdout and not Path(tmp_path, "ray").exists()


@pytest.mark.parametrize(("args", "words"), [
    (["ingest", "--scenes", ".", "--out", "o", "--set", "frames_per_clip=abc"],
     ("'frames_per_clip'", "expected an integer", "'abc'")),
    (["ingest", "--scenes", ".", "--out", "o", "--set", "frame_per_clip=3"],
     ("unknown field 'frame_per_clip'", "frames_per_clip")),
    (["ingest", "--scenes", ".", "--out", "o", "--frames-per-clip", "eight"], ("--frames-per-clip", "invalid int")),
    (["train", "--stage", "1", "--config", "tiny", "--set", "deepspeed.zero_stage=4"],
     ("'deepspeed.zero_stage'", "must be 1, 2 or 3")),
    (["train", "--stage", "2", "--config", "stage1"], ("--config stage1", "use --config stage2")),
    (["eval", "--model", "no-model", "--data", "no-data", "--out", "o"], ("--data", "no-data")),
    (["serve", "--model", "m", "--set", "http.port=99999"], ("http.port", "1..65535")),
    (["synthetic", "--scenes", "1", "--out", "o", "--layouts", "sens,tarball"], ("layouts",)),
    (["train", "--stage", "1", "--config", "no-such-preset"], ("--config no-such-preset", "neither a preset")),
])
def test_invalid_config_values_and_missing_inputs(args, words):
    result, _ = vidllm(*args)
    one_line(result, *words)
