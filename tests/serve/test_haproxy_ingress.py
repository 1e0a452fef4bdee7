"""The service under Serve's high-throughput mode (HAProxy ingress, gRPC between deployments), as deployed.

The mode is read by Ray when it starts, so the test runs ``python -m pipelines.serve --ingress haproxy`` as its own
process with its own local Ray. Needs the ``haproxy`` binary (``apt-get install -y haproxy``); skipped without it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.conftest import free_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("haproxy") is None, reason="needs the haproxy binary (apt-get install -y haproxy)"),
]


def _wait_ready(url: str, proc: subprocess.Popen, timeout_s: float = 240.0) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the service exited with {proc.returncode} before it was ready")
        try:
            r = requests.get(f"{url}/readyz", timeout=5)
            if r.status_code == 200:
                return r.json()
        except requests.RequestException:
            pass
        time.sleep(1.0)
    raise AssertionError(f"{url}/readyz not ready within {timeout_s:g} s")


def test_cli_serves_the_api_through_the_haproxy_ingress(tiny_checkpoint, clips, tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    log = (tmp_path / "serve.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.serve", "--model", str(tiny_checkpoint), "--preset", "tiny",
         "--ingress", "haproxy", "--host", "127.0.0.1", "--port", str(port), "--run-dir", str(tmp_path / "run")],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    try:
        ready = _wait_ready(url, proc)
        assert ready["ready"] is True and ready["input"]["num_frames"] > 0
        with requests.Session() as s:
            r = s.post(f"{url}/v1/scenes", files={"video": ("ok.mp4", clips["ok"], "video/mp4")}, timeout=120)
            assert r.status_code == 200, r.text
            scene = r.json()
            assert len(scene["scene_id"]) == 32 and scene["frames_used"] == ready["input"]["num_frames"]
            r = s.post(f"{url}/v1/scenes/{scene['scene_id']}/answer", json={"question": "what is here?"}, timeout=60)
            assert r.status_code == 200 and isinstance(r.json()["answer"], str), r.text
            r = s.post(f"{url}/v1/scenes/{scene['scene_id']}/answer", json={"question": 5}, timeout=60)
            assert r.status_code == 422 and r.json()["field"] == "question", r.text
            r = s.post(f"{url}/v1/scenes/{'0' * 32}/answer", json={"question": "hi"}, timeout=60)
            assert r.status_code == 404 and r.json()["error"] == "unknown_scene", r.text
            assert s.get(f"{url}/healthz", timeout=10).json() == {"status": "ok"}
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        log.close()
    assert (tmp_path / "run" / "serve_config.resolved.json").is_file()
