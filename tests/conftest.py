"""Shared test fixtures: one local Ray session, one moto S3 server on 127.0.0.1, offline environment.

Servers run on 127.0.0.1 only and are started and stopped here. Fixtures that need a subsystem import it lazily so
that pure unit tests never pay for Ray or moto start-up.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
TEST_DATA = TESTS_DIR / "data"

_OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_AUTH_MODE": "disabled",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "DS_ACCELERATOR": "cpu",
    "TOKENIZERS_PARALLELISM": "false",
    # Tiny models on 2 shared cores: one intra-op thread avoids spinning threads that make each matmul ~100x slower.
    "OMP_NUM_THREADS": "1",
}


def pytest_configure(config):
    for key, value in _OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


def _missing_weights_reason() -> str | None:
    from pipelines.weights import WEIGHTS_DIR_ENV, missing

    weights_dir = os.environ.get(WEIGHTS_DIR_ENV)
    absent = missing(weights_dir)
    if not absent:
        return None
    where = f"{WEIGHTS_DIR_ENV}={weights_dir} lacks verified {', '.join(absent)}" if weights_dir else (
        f"{WEIGHTS_DIR_ENV} is not set")
    return (f"real weights not installed ({where}): run `vidllm weights install --dir DIR` "
            f"and set {WEIGHTS_DIR_ENV}=DIR")


def pytest_collection_modifyitems(config, items):
    """Tiers: ``weights`` tests skip (naming the install command) without installed weights, ``gpu`` without CUDA."""
    weights = [item for item in items if item.get_closest_marker("weights")]
    reason = _missing_weights_reason() if weights else None
    for item in weights if reason else ():
        item.add_marker(pytest.mark.skip(reason=reason))
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if gpu:
        import torch

        if not torch.cuda.is_available():
            for item in gpu:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is False)"))


@pytest.fixture(scope="session")
def real_weights() -> dict[str, str]:
    """``{folder name: path}`` of the verified real-weight folders (``pipelines.weights``); skips without them."""
    from pipelines.weights import WEIGHTS_DIR_ENV, installed

    reason = _missing_weights_reason()
    if reason:
        pytest.skip(reason)
    return installed(os.environ[WEIGHTS_DIR_ENV])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(url: str, timeout_s: float = 60.0) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # the server answered, even if with an error status
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"{url} did not answer within {timeout_s} s")


@pytest.fixture(scope="session")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (s3fs's own tests use the same), with AWS env pointing at it.

    The environment is set before any Ray session starts (``ray_session`` depends on this fixture) so that Ray
    workers inherit the endpoint and credentials, exactly as on a cluster configured through the AWS environment.
    """
    port = free_port()
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(endpoint + "/")
        env = {
            "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        yield endpoint
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_endpoint):
    """A fresh, empty bucket on the moto server; yields its ``s3://`` URI."""
    import s3fs

    name = f"test-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir(name)
    s3fs.S3FileSystem.clear_instance_cache()
    yield f"s3://{name}"


@pytest.fixture(scope="session")
def ray_session(s3_endpoint):
    """One local Ray session (2 CPUs, no dashboard) shared by every test that needs Ray."""
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        object_store_memory=512 * 1024**2,
        log_to_driver=True,
        runtime_env={"env_vars": {k: os.environ[k] for k in _OFFLINE_ENV}},
    )
    yield ray
    ray.shutdown()
