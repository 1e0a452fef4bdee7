"""The `vidllm` command: every subcommand's --help, and `submit` running a real job on a local Ray cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines.cli import STAGES, main
from pipelines.submit import build_runtime_env, entrypoint, parse_env
from tests.conftest import REPO_ROOT, free_port, wait_for_http


@pytest.mark.parametrize("command", [*STAGES, "submit"])
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage:" in capsys.readouterr().out


def test_top_level_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    for command in [*STAGES, "submit"]:
        assert command in out


def test_job_entrypoint_and_runtime_env():
    assert entrypoint("pipelines.train", ["--stage", "1", "--set", "a=b c"]) == (
        "python -m pipelines.train --stage 1 --set 'a=b c'"
    )
    env = build_runtime_env("/src", ["scipy"], ["MLFLOW_TRACKING_URI=http://m:5000"])
    assert env["working_dir"] == "/src" and ".venv" in env["excludes"] and env["pip"] == ["scipy"]
    assert env["env_vars"]["MLFLOW_TRACKING_URI"] == "http://m:5000"
    assert env["env_vars"]["HF_HUB_OFFLINE"] == "1"
    assert "working_dir" not in build_runtime_env(None, [], [])
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_env(["NOVALUE"])


def _wait_for_job_agent(address: str, timeout_s: float) -> None:
    """The dashboard answers before the node's job agent has registered ("No available agent to submit job"):
    submit a no-op job until one is accepted."""
    from ray.job_submission import JobSubmissionClient

    client = JobSubmissionClient(address)
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.submit_job(entrypoint="true")
            return
        except RuntimeError:
            if time.monotonic() > deadline:
                raise
            time.sleep(1.0)


@pytest.fixture
def jobs_cluster(tmp_path):
    """A separate local Ray cluster with its dashboard (the Jobs API) on 127.0.0.1, owned by a child process.

    It lives exactly as long as the child's stdin is open, so teardown never touches other Ray instances.
    """
    port = free_port()
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # jobs run `python` from this venv
    code = (
        "import ray, sys; "
        f"ray.init(num_cpus=1, include_dashboard=True, dashboard_host='127.0.0.1', dashboard_port={port}, "
        "object_store_memory=256 * 1024**2); "
        "print('ready', flush=True); sys.stdin.read(); ray.shutdown()"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, env=env, cwd=tmp_path, text=True)
    address = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{address}/api/version", timeout_s=120)
        _wait_for_job_agent(address, timeout_s=120)
        yield address
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)


@pytest.mark.slow
def test_submit_runs_the_stage_as_a_ray_job(jobs_cluster, tmp_path, capsys):
    out = tmp_path / "scenes"
    code = main([
        "submit", "synthetic", "--address", jobs_cluster, "--working-dir", str(REPO_ROOT),
        "--env", "VIDLLM_TEST_MARKER=1", "--",
        "--scenes", "1", "--out", str(out), "--seed", "3", "--size", "small", "--frames", "6", "--layouts", "sens",
    ])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "SUCCEEDED" in printed
    assert (out / "scans" / "scene0000_00" / "scene0000_00.sens").stat().st_size > 0


@pytest.mark.slow
def test_submit_reports_a_failed_job(jobs_cluster, capsys):
    code = main(["submit", "synthetic", "--address", jobs_cluster, "--", "--scenes", "0"])
    assert code == 1
    assert "FAILED" in capsys.readouterr().out
