"""The serving part of the demo: Ray Serve on 127.0.0.1 with the registered model, then real HTTP requests.

The model is served by its registry URI (``models:/<name>/<version>``), resolved by the Serve replicas through
``MLFLOW_TRACKING_URI`` (set for the whole Ray job by the demo), exactly as a production deployment resolves a
registered version. The query registers a synthetic scene from its H.264 video (multipart upload), asks a ScanQA
question of that scene and grounds one of its ScanRefer descriptions.
"""

from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

import requests

from pipelines import storage
from pipelines.demo.config import DemoConfig, DemoPaths

APP_NAME = "vidllm"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Patch side of the demo's models (tiny and small): the served frame size is a multiple of it.
PATCH_SIZE = 14


def serve_config(cfg: DemoConfig, paths: DemoPaths, model_uri: str, port: int):
    """The ``tiny`` Serve preset for the demo's model: as many frames as a training clip, at the size the model was
    trained at (the clips' shorter side), on 127.0.0.1:``port``. The real-weight model gets longer timeouts (its CPU forward takes tens of
    seconds) and room for a sentence."""
    from pipelines.serve.config import ServeConfig

    size = cfg.preset.resize_to // PATCH_SIZE * PATCH_SIZE
    tree = ServeConfig.tiny(model_uri).to_dict()
    tree.update(model_cache_dir=paths.serve_cache, app_name=APP_NAME)
    tree["limits"].update(frame_size=size, num_frames=cfg.preset.frames_per_clip)
    tree["http"].update(host="127.0.0.1", port=port, request_timeout_s=60.0)
    if cfg.weights_dir:
        tree["limits"].update(max_new_tokens=24)
        tree["ingress"].update(call_timeout_s=600.0)
        tree["http"].update(request_timeout_s=900.0)
    if cfg.use_gpu:
        tree["device"] = "cuda"
        tree["model"].update(num_gpus=1.0)
    return ServeConfig.from_dict(tree)


def start(cfg: DemoConfig, paths: DemoPaths, model_uri: str, timeout_s: float = 300.0) -> str:
    """Start Serve's HTTP proxy and the Vid-LLM app; wait until ``/readyz`` says ready. Returns the base URL."""
    from ray import serve

    from pipelines.serve.app import build_app

    port = cfg.port or free_port()
    config = serve_config(cfg, paths, model_uri, port)
    run_dir = os.path.join(paths.workdir, "serve")
    os.makedirs(run_dir, exist_ok=True)
    with open(os.path.join(run_dir, "serve_config.resolved.json"), "w") as f:
        json.dump(config.to_dict(), f, indent=2)
    serve.start(http_options=config.http.to_serve())
    serve.run(build_app(config), name=config.app_name, route_prefix=config.route_prefix, blocking=False)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        try:
            response = requests.get(f"{url}/readyz", timeout=10)
            if response.status_code == 200:
                return url
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"the Serve app at {url} was not ready within {timeout_s:.0f} s (last: {last})")


def shutdown() -> None:
    from ray import serve

    serve.shutdown()


@dataclass
class QueryResult:
    """What the served model answered.

    Attributes:
        scene_id: the scene of the synthetic data set that was asked about.
        video_uri: its video, uploaded to the endpoint.
        served_scene_id: the endpoint's id of the registered scene (content hash).
        frames_used: frames the endpoint sampled from the video.
        question: the ScanQA question asked.
        answer: the model's answer.
        description: the ScanRefer description grounded.
        boxes: returned boxes (``center``, ``size`` in metres, first-camera frame; ``score``), best first.
    """

    scene_id: str
    video_uri: str
    served_scene_id: str
    frames_used: int
    question: str
    answer: str
    description: str
    boxes: list[dict[str, Any]]


def _post(url: str, **kwargs: Any) -> dict[str, Any]:
    response = requests.post(url, timeout=900, **kwargs)
    if response.status_code != 200:
        raise RuntimeError(f"POST {url} answered HTTP {response.status_code}: {response.text[:500]}")
    return response.json()


def query(url: str, paths: DemoPaths, scene_id: str) -> QueryResult:
    """Register ``scene_id``'s video over HTTP, ask one of its questions and ground one of its descriptions."""
    from pipelines.ingest.job import load_scene_annotations

    annotations = load_scene_annotations(storage.join(paths.scenes, "annotations")).get(scene_id, {})
    if not annotations.get("scanqa") or not annotations.get("scanrefer"):
        raise ValueError(f"{paths.scenes}/annotations has no ScanQA question or ScanRefer description of {scene_id}")
    question = annotations["scanqa"][0]["question"]
    description = annotations["scanrefer"][0]["description"]
    video_uri = storage.join(paths.scenes, "videos", scene_id, "color.mp4")
    video = storage.read_bytes(video_uri)
    scene = _post(f"{url}/v1/scenes", files={"video": ("color.mp4", video, "video/mp4")})
    served = scene["scene_id"]
    answer = _post(f"{url}/v1/scenes/{served}/answer", json={"question": question})["answer"]
    boxes = _post(f"{url}/v1/scenes/{served}/ground", json={"description": description})["boxes"]
    return QueryResult(scene_id, video_uri, served, int(scene["frames_used"]), question, answer, description, boxes)


def format_box(box: dict[str, Any]) -> str:
    centre = ", ".join(f"{v:.2f}" for v in box["center"])
    size = ", ".join(f"{v:.2f}" for v in box["size"])
    return f"box centre ({centre}) m, size ({size}) m, score {box['score']:.3f}"


def curl_examples(url: str, video_uri: str, question: str) -> list[str]:
    """Copy-paste commands against the running endpoint."""
    video = video_uri if "://" not in video_uri else "color.mp4"
    return [
        f"curl -s -F video=@{video} {url}/v1/scenes",
        f"curl -s -H 'Content-Type: application/json' -d '{json.dumps({'question': question})}' "
        f"{url}/v1/scenes/<scene_id>/answer",
        f"curl -s -F video=@{video} -F 'question={question}' {url}/v1/answer",
    ]
