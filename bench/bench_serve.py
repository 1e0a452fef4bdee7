"""Serving benchmark: HTTP overhead, scene-cache speed-up and batching gain of the Vid-LLM Serve app.

Runs a local Ray (2 CPUs) + Serve on 127.0.0.1 with the tiny Vid-LLM at ``--image-size`` pixels (exported to a
temp dir with save_pretrained) or ``--model URI``, and prints ``RESULT <name> <value> <unit> target <op> <value>`` lines:

* ``http_p50_overhead_ms``: p50 of ``POST /v1/scenes/{id}/answer`` on a cached scene minus p50 of calling
  ``VidLLM.answer`` directly on the same encoding in this process (also p50/p99 of both); measured with
  ``max_batch_size=1`` so that the configured batch wait is not counted as overhead.
* ``cached_followup_speedup``: p50 of a first question (``POST /v1/answer``: upload, decode, encode, answer) on
  a new video over p50 of a follow-up question on a registered scene.
* ``batching_throughput_gain``: answers/s at concurrency 8 with ``max_batch_size=8`` over ``max_batch_size=1``
  (answers of ``--throughput-new-tokens`` tokens).

``--ingress haproxy`` (default) runs Serve the way our cluster manifests do: ``RAY_SERVE_ENABLE_HA_PROXY=1`` (HAProxy
instead of Serve's Python HTTP proxy; needs the ``haproxy`` binary: ``apt-get install -y haproxy``) and
``RAY_SERVE_THROUGHPUT_OPTIMIZED=1`` (gRPC between deployments, user code on the replica's main loop).
``--ingress python`` measures Serve's default Python proxy instead.

Example: ``python bench/bench_serve.py --requests 60 --seconds 15``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from pipelines.scenes.video import encode_video
from pipelines.serve.__main__ import INGRESS_MODES
from pipelines.serve.config import AutoscalingConfig, ModelDeploymentConfig, ServeConfig
from pipelines.serve.video_input import SamplingSpec, sample_clip

QUESTION = "what is on the table next to the chair?"


def result(name: str, value: float, unit: str, op: str, target: float) -> None:
    print(f"RESULT {name} {value:.3f} {unit} target {op} {target}", flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def make_clip(path: Path, seed: int, num_frames: int = 24) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, size=(96, 256, 3), dtype=np.uint8)
    frames = [np.ascontiguousarray(base[:, i * 4: i * 4 + 128]) for i in range(num_frames)]
    encode_video(str(path), frames, fps=24.0, gop=12)
    return path.read_bytes()


def tiny_export(root: Path, clip: bytes, image_size: int, num_frames: int, max_new_tokens: int) -> str:
    """The tiny random Vid-LLM at ``image_size`` pixels, saved with its processor (tokenizer + processor config).

    The tiny preset's 28 px make the encoder unrealistically cheap next to the LLM (understating what the scene
    cache saves), and many random initialisations emit EOS first, which would make every answer a single decoder
    step. So the first seed whose greedy answer runs to at least half of ``max_new_tokens`` is used, as a trained
    model answering in sentences would.
    """
    import torch

    from model import VidLLM, VidLLMConfig, VidLLMProcessor

    cfg = VidLLMConfig.tiny()
    cfg.encoder.dinov2["image_size"] = image_size
    processor = VidLLMProcessor.from_config(cfg)
    limits = app_config("unused", 1, max_new_tokens, num_frames).limits
    sampled = sample_clip(clip, SamplingSpec(num_frames, image_size, image_size), limits).frames
    frames = processor.frames_to_tensor(sampled[None])
    for seed in range(50):
        torch.manual_seed(seed)
        model = VidLLM(cfg).eval()
        with torch.inference_mode():
            answer = model.answer(model.encode_scene(frames), [QUESTION], processor,
                                  max_new_tokens=max_new_tokens)[0]
        if len(processor.tokenizer(answer)["input_ids"]) >= max_new_tokens // 2:
            break
    out = root / "vidllm-tiny"
    model.save_pretrained(out)
    processor.save_pretrained(out)
    print(f"tiny model: seed {seed}, {image_size} px, answer {answer!r}", flush=True)
    return str(out)


def deploy(name: str, cfg: ServeConfig, base: str) -> str:
    import requests
    from ray import serve

    from pipelines.serve.app import build_app

    serve.run(build_app(cfg), name=name, route_prefix=f"/{name}", blocking=False)
    url = f"{base}/{name}"
    for _ in range(600):
        try:
            if requests.get(f"{url}/readyz", timeout=10).status_code == 200:
                return url
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise TimeoutError(f"{name} not ready")


def app_config(model: str, max_batch_size: int, max_new_tokens: int, num_frames: int,
               batch_wait_timeout_s: float = 0.01) -> ServeConfig:
    return ServeConfig.tiny(
        model,
        model=ModelDeploymentConfig(
            num_gpus=0.0, num_cpus=0.5, max_ongoing_requests=16, max_queued_requests=256,
            max_batch_size=max_batch_size, batch_wait_timeout_s=batch_wait_timeout_s, cache_bytes=256 * 1024**2,
            autoscaling=AutoscalingConfig(min_replicas=1, max_replicas=1),
        ),
        limits={"num_frames": num_frames, "max_new_tokens": max_new_tokens, "max_upload_bytes": 16 * 1024**2},
    )


def bench_overhead(url: str, session, sid: str, model_dir: str, clip: bytes, args) -> None:
    import torch

    from pipelines.artifacts import load_model_and_processor, resolve_model

    torch.set_num_threads(1)  # as in a replica with num_cpus <= 1
    model, processor = load_model_and_processor(resolve_model(model_dir).local_dir, "cpu")
    size = int(model.vidllm_config.encoder.dinov2["image_size"])
    cfg = app_config(model_dir, 1, args.max_new_tokens, args.num_frames)
    frames = sample_clip(clip, SamplingSpec(args.num_frames, size, size), cfg.limits).frames
    with torch.inference_mode():
        enc = model.encode_scene(processor.frames_to_tensor(frames[None]))
    direct, http = [], []
    for _ in range(5):
        model.answer(enc, [QUESTION], processor, max_new_tokens=args.max_new_tokens)
        session.post(f"{url}/v1/scenes/{sid}/answer", json={"question": QUESTION}, timeout=60)
    for _ in range(args.requests):
        t = time.perf_counter()
        with torch.inference_mode():
            model.answer(enc, [QUESTION], processor, max_new_tokens=args.max_new_tokens)
        direct.append((time.perf_counter() - t) * 1000)
        t = time.perf_counter()
        r = session.post(f"{url}/v1/scenes/{sid}/answer", json={"question": QUESTION}, timeout=60)
        http.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text
    result("direct_answer_p50", percentile(direct, 50), "ms", ">=", 0)
    result("direct_answer_p99", percentile(direct, 99), "ms", ">=", 0)
    result("http_answer_p50", percentile(http, 50), "ms", ">=", 0)
    result("http_answer_p99", percentile(http, 99), "ms", ">=", 0)
    result("http_p50_overhead_ms", percentile(http, 50) - percentile(direct, 50), "ms", "<=", 10)


def bench_cache(url: str, session, sid: str, root: Path, args) -> None:
    first, follow = [], []
    for i in range(args.first_questions):
        clip = make_clip(root / f"new{i}.mp4", seed=1000 + i)
        t = time.perf_counter()
        r = session.post(f"{url}/v1/answer", files={"video": ("v.mp4", clip, "video/mp4")},
                         data={"question": QUESTION}, timeout=120)
        first.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text
        t = time.perf_counter()
        r = session.post(f"{url}/v1/scenes/{r.json()['scene_id']}/answer", json={"question": QUESTION}, timeout=60)
        follow.append((time.perf_counter() - t) * 1000)
        assert r.status_code == 200, r.text
    result("first_question_p50", statistics.median(first), "ms", ">=", 0)
    result("followup_question_p50", statistics.median(follow), "ms", ">=", 0)
    result("cached_followup_speedup", statistics.median(first) / statistics.median(follow), "x", ">=", 5)


def throughput(url: str, sid: str, seconds: float, concurrency: int) -> float:
    import requests

    stop = threading.Event()
    counts = [0] * concurrency
    errors: list[str] = []

    def worker(i: int) -> None:
        with requests.Session() as s:
            while not stop.is_set():
                r = s.post(f"{url}/v1/scenes/{sid}/answer", json={"question": QUESTION}, timeout=60)
                if r.status_code == 200:
                    counts[i] += 1
                else:
                    errors.append(r.text)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    time.sleep(2.0)  # warm-up: fill the pipeline
    start_counts, start = sum(counts), time.perf_counter()
    time.sleep(seconds)
    done, elapsed = sum(counts) - start_counts, time.perf_counter() - start
    stop.set()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} failed requests, first: {errors[0]}")
    return done / elapsed


class HandleLoop:
    """An event loop on a background thread for deployment-handle calls from this (synchronous) script.

    Throughput-optimized Serve runs a handle's router on the caller's event loop, so handles must be used inside a
    running loop; one long-lived loop also keeps the handles' long-poll clients alive until the end.
    """

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def replica_stats(self, app_name: str) -> dict:
        """The model replica's ``stats()`` (cache statistics and recent batch sizes)."""
        from ray import serve

        async def fetch() -> dict:
            return await serve.get_deployment_handle("VidLLMModel", app_name=app_name).stats.remote()

        return asyncio.run_coroutine_threadsafe(fetch(), self.loop).result(timeout=60)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="checkpoint URI (default: a tiny random Vid-LLM exported to a temp dir)")
    p.add_argument("--requests", type=int, default=60, help="sequential requests for the overhead percentiles")
    p.add_argument("--first-questions", type=int, default=5, help="new videos for the first-question latency")
    p.add_argument("--seconds", type=float, default=15.0, help="measurement window per throughput run")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--batch-wait-timeout-s", type=float, default=0.05,
                   help="batch wait in the throughput runs (requests reach the model staggered by the HTTP path)")
    p.add_argument("--throughput-new-tokens", type=int, default=96, help="answer length in the throughput runs")
    p.add_argument("--num-frames", type=int, default=16)
    p.add_argument("--image-size", type=int, default=112, help="frame size of the tiny model (pixels, multiple of 14)")
    p.add_argument("--ingress", choices=INGRESS_MODES, default="haproxy",
                   help="HTTP ingress of Serve: haproxy (as deployed; needs the haproxy binary) or python (Serve default)")
    args = p.parse_args()
    if args.ingress == "haproxy" and shutil.which("haproxy") is None:
        p.error("--ingress haproxy needs the haproxy binary (apt-get install -y haproxy), or use --ingress python")
    # Read by Ray Serve when its modules are imported, in this process and in every Ray process it starts.
    for key, value in {"RAY_USAGE_STATS_ENABLED": "0", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
                       **INGRESS_MODES[args.ingress]}.items():
        os.environ.setdefault(key, value)
    print(f"ingress: {args.ingress} {INGRESS_MODES[args.ingress]}", flush=True)

    import ray
    import requests
    from ray import serve

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        clip = make_clip(root / "scene.mp4", seed=0)
        model = args.model or tiny_export(root, clip, args.image_size, args.num_frames, args.throughput_new_tokens)
        ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024**2, log_to_driver=False)
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port, "request_timeout_s": 120})
        base = f"http://127.0.0.1:{port}"
        handles = HandleLoop()
        try:
            # Overhead on the unbatched app: a lone request then pays no batch_wait_timeout_s by construction.
            url = deploy("unbatched", app_config(model, 1, args.max_new_tokens, args.num_frames), base)
            with requests.Session() as session:
                r = session.post(f"{url}/v1/scenes", files={"video": ("s.mp4", clip, "video/mp4")}, timeout=120)
                assert r.status_code == 200, r.text
                sid = r.json()["scene_id"]
                bench_overhead(url, session, sid, model, clip, args)
                bench_cache(url, session, sid, root, args)
            serve.delete("unbatched")
            # Throughput: longer answers, so the model step (not the HTTP path of this small machine) is the
            # bottleneck that batching is meant to relieve.
            gains = {}
            for name, batch in (("tp_unbatched", 1), ("tp_batched", 8)):
                cfg = app_config(model, batch, args.throughput_new_tokens, args.num_frames, args.batch_wait_timeout_s)
                url = deploy(name, cfg, base)
                r = requests.post(f"{url}/v1/scenes", files={"video": ("s.mp4", clip, "video/mp4")}, timeout=120)
                assert r.status_code == 200, r.text
                gains[name] = throughput(url, sid, args.seconds, args.concurrency)
                stats = handles.replica_stats(name)
                result(f"{name}_mean_batch_size", float(np.mean(stats["batch_sizes"])), "requests", ">=", 0)
                result(f"{name}_throughput", gains[name], "req/s", ">=", 0)
                serve.delete(name)
            result("batching_throughput_gain", gains["tp_batched"] / gains["tp_unbatched"], "x", ">=", 2)
        finally:
            serve.shutdown()
            handles.close()
            ray.shutdown()


if __name__ == "__main__":
    main()
