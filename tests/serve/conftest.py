"""Fixtures of the Serve tests: a tiny exported checkpoint, real MP4 clips, and Serve apps on 127.0.0.1.

Apps are deployed on the shared Ray session (``ray_session``) with their own route prefix, so several can run
side by side; each fixture deletes its app afterwards.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import requests

from tests.conftest import free_port


def _clip(path: Path, num_frames: int, fps: float, height: int = 48, width: int = 64, seed: int = 0) -> bytes:
    """A real H.264 MP4 of a textured scene drifting sideways (``num_frames`` frames at ``fps``)."""
    from pipelines.scenes.video import encode_video

    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(height, width * 2, 3), dtype=np.uint8)
    frames = [np.ascontiguousarray(base[:, i % width: i % width + width]) for i in range(num_frames)]
    encode_video(str(path), frames, fps=fps, gop=6)
    return path.read_bytes()


@pytest.fixture(scope="session")
def clips(tmp_path_factory) -> dict[str, bytes]:
    """MP4 bytes: ``ok`` (12 frames, 1 s), ``ok2`` (another scene), ``long`` (8 s), ``many`` (150 frames, 2.5 s)."""
    root = tmp_path_factory.mktemp("clips")
    return {
        "ok": _clip(root / "ok.mp4", 12, 12.0, seed=1),
        "ok2": _clip(root / "ok2.mp4", 10, 10.0, seed=2),
        "long": _clip(root / "long.mp4", 16, 2.0, seed=3),
        "many": _clip(root / "many.mp4", 150, 60.0, height=16, width=16, seed=4),
    }


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """The real tiny ``VidLLM`` (random init, fixed seed) exported with ``save_pretrained`` plus its processor."""
    import torch

    from model import VidLLM, VidLLMConfig, VidLLMProcessor

    torch.manual_seed(0)
    cfg = VidLLMConfig.tiny()
    out = tmp_path_factory.mktemp("export") / "vidllm-tiny"
    VidLLM(cfg).save_pretrained(out)
    VidLLMProcessor.from_config(cfg).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def serve_http(ray_session) -> str:
    """Serve's HTTP proxy on 127.0.0.1 (one per Ray session); yields its base URL."""
    from ray import serve

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 60})
    yield f"http://127.0.0.1:{port}"
    serve.shutdown()


@pytest.fixture(scope="session")
def scene_bucket(s3_endpoint) -> str:
    """A moto bucket for scene videos and exported checkpoints (session-wide, unlike ``s3_bucket``)."""
    import s3fs

    name = f"serve-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_endpoint, key="testing", secret="testing", skip_instance_cache=True)
    fs.mkdir(name)
    s3fs.S3FileSystem.clear_instance_cache()
    return f"s3://{name}"


def deploy(base_url: str, name: str, cfg, ingress_env: dict[str, str] | None = None, timeout_s: float = 180) -> str:
    """Deploy the app under ``/<name>`` and wait until ``/readyz`` says ready; returns the app's base URL."""
    from ray import serve

    from pipelines.serve.app import build_app

    serve.run(build_app(cfg, ingress_env), name=name, route_prefix=f"/{name}", blocking=False)
    url = f"{base_url}/{name}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url}/readyz", timeout=10).status_code == 200:
                return url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"app {name} not ready within {timeout_s} s")


def undeploy(name: str) -> None:
    from ray import serve

    serve.delete(name)
