"""Benchmark: sampling a ``.sens`` scene from object storage with per-request latency (not a test; run by hand).

A local moto S3 server sits behind a small HTTP proxy on 127.0.0.1 that delays every request by ``--latency-ms``
(default 20 ms, the order of a real object store's time to first byte) and counts requests. One ``.sens`` file
(``--frames`` frames of 640x480 colour and depth, the size of a ScanNet depth frame) is uploaded, and the same
whole-scene sample (``--sample`` frames uniform over the valid-pose frames, as ingest picks them) is read in four
ways, each run ``--repeats`` times interleaved (best run reported):

* ``download``: one sequential download of the whole file (``fs.get_file``), the yardstick.
* ``seek``: the reader as it was, seeking from frame header to frame header (``SensReader(spool=False)``, no
  sidecar): one small GET per frame header at open, then one per sampled frame.
* ``first``: the reader's default with no sidecar index: a listing of the folder, one sequential download into a
  local spool, then the sample read locally. Target: within 1.2x of ``download``.
* ``sidecar``: with the sidecar index written by a first read (``write_index=True``): the index in one GET, then one
  ranged GET per sampled frame. Target: 1 request per sampled frame. Its time is printed for context: moto
  copies the whole object for each ranged GET, so on this server a ranged GET costs more than on a real store.

Reading means fetching each sampled frame's colour and depth payloads (``read_raw``); decoding them costs the same
in every mode and is printed separately. Ends with ``RESULT <name> <value> <unit> target <op> <value>`` lines.

Run: ``python bench/bench_sens.py [--frames 300 --sample 32 --latency-ms 20 --repeats 3]``.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import http.server
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.ingest.sampling import select_clip_frames  # noqa: E402
from pipelines.scenes.sens import SensReader, index_uri, write_sens  # noqa: E402
from pipelines.scenes.types import Frame, Intrinsics  # noqa: E402
from pipelines.storage import filesystem  # noqa: E402
from tests.conftest import free_port, wait_for_http  # noqa: E402

WIDTH, HEIGHT = 640, 480
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "upgrade", "te", "trailer"}


class LatencyProxy(http.server.ThreadingHTTPServer):
    """A forward-everything HTTP proxy that sleeps ``latency_s`` before each request and counts them."""

    daemon_threads = True

    def __init__(self, upstream_port: int, latency_s: float):
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_port, self.latency_s = upstream_port, latency_s
        self.lock, self.requests = threading.Lock(), []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def take(self) -> list[tuple[str, str, str]]:
        """The requests seen since the last call: ``(method, path, range header)``."""
        with self.lock:
            seen, self.requests = self.requests, []
        return seen


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:
        pass

    def _forward(self) -> None:
        server: LatencyProxy = self.server
        with server.lock:
            server.requests.append((self.command, self.path.split("?")[0], self.headers.get("Range", "")))
        time.sleep(server.latency_s)
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        conn = getattr(self, "_upstream", None) or http.client.HTTPConnection("127.0.0.1", server.upstream_port)
        self._upstream = conn
        headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP and k.lower() != "expect"}
        conn.request(self.command, self.path, body=body, headers=headers)
        resp = conn.getresponse()
        self.send_response(resp.status, resp.reason)
        for key, value in resp.getheaders():
            if key.lower() not in _HOP_BY_HOP:
                self.send_header(key, value)
        self.end_headers()
        try:
            if self.command != "HEAD":
                while chunk := resp.read(1 << 20):
                    self.wfile.write(chunk)
        except (BrokenPipeError, ConnectionResetError):  # the client stopped reading early (a closed stream)
            self.close_connection = True
        finally:
            resp.close()

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _forward


def scene_frames(n: int, seed: int = 0):
    """``n`` 640x480 frames: a camera panning over a smooth texture with sensor noise (JPEG ~75 kB, like a real scan),
    a tilted-plane depth with 2 mm noise and 5 % holes (zlib ~200 kB), 2 % of the poses lost."""
    rng = np.random.default_rng(seed)
    low = rng.uniform(0, 255, (HEIGHT // 16 + 2, WIDTH * 2 // 16 + 2, 3)).astype(np.float32)
    texture = np.repeat(np.repeat(low, 16, axis=0), 16, axis=1)[:HEIGHT, : WIDTH * 2]
    for axis in (0, 1):  # box blur: gradients rather than block edges
        texture = sum(np.roll(texture, s, axis=axis) for s in range(-8, 9)) / 17.0
    yy, xx = np.mgrid[0:HEIGHT, 0:WIDTH]
    for i in range(n):
        shift = (i * 3) % WIDTH
        rgb = np.clip(texture[:, shift : shift + WIDTH] + rng.normal(0, 4, (HEIGHT, WIDTH, 3)), 0, 255)
        depth = (1.5 + 0.002 * yy + 0.001 * xx + rng.normal(0, 0.002, (HEIGHT, WIDTH))).astype(np.float32)
        depth[rng.random((HEIGHT, WIDTH)) < 0.05] = 0.0
        pose = np.eye(4)
        pose[:3, 3] = (i * 0.01, 0.0, 1.5)
        if rng.random() < 0.02:
            pose[:] = -np.inf
        yield Frame(index=i, timestamp_s=i / 30.0, rgb=rgb.astype(np.uint8), depth_m=depth, cam_to_world=pose,
                    valid=bool(np.isfinite(pose).all()))


def sample_indices(reader: SensReader, sample: int) -> list[int]:
    (idx,) = select_clip_frames(reader.valid, sample, 1, 0, sample, reader.uri)
    return idx


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--sample", type=int, default=32)
    parser.add_argument("--latency-ms", type=float, default=20.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)

    workdir = Path(tempfile.mkdtemp(prefix="vidllm-bench-sens-"))
    moto_port = free_port()
    exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
    moto = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(moto_port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    proxy = LatencyProxy(moto_port, args.latency_ms / 1000.0)
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    try:
        wait_for_http(f"http://127.0.0.1:{moto_port}/")
        os.environ.update({"AWS_ENDPOINT_URL": proxy.url, "AWS_ACCESS_KEY_ID": "bench",
                           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1"})
        local = str(workdir / "scene0000_00.sens")
        k = np.array([[577.9, 0, 319.5], [0, 577.9, 239.5], [0, 0, 1.0]])
        t0 = time.perf_counter()
        write_sens(local, Intrinsics(k, WIDTH, HEIGHT), Intrinsics(k, WIDTH, HEIGHT), scene_frames(args.frames),
                   args.frames, jpeg_quality=90)
        size = os.path.getsize(local)
        uri = "s3://bench/scans/scene0000_00/scene0000_00.sens"
        fs, path = filesystem(uri)
        fs.mkdir("bench")
        fs.put_file(local, path)
        proxy.take()
        print(f"{args.frames} frames, {size / 1e6:.1f} MB written and uploaded in {time.perf_counter() - t0:.1f} s; "
              f"latency {args.latency_ms:g} ms per request; sample {args.sample} frames")

        def download() -> None:
            fs.get_file(path, str(workdir / "download.sens"))

        def read(**options) -> list[tuple[bytes, bytes]]:
            with SensReader(uri, **options) as reader:
                return [reader.read_raw(i) for i in sample_indices(reader, args.sample)]

        modes = {"download": download, "seek": lambda: read(spool=False), "first": read, "sidecar": read}
        times = {m: [] for m in modes}
        requests: dict[str, list] = {}
        for _ in range(args.repeats):
            for mode, fn in modes.items():
                fs.invalidate_cache()
                if mode == "sidecar" and not fs.exists(index_uri(path)):
                    read(write_index=True)
                elif mode != "sidecar" and fs.exists(index_uri(path)):
                    fs.rm(index_uri(path))
                proxy.take()
                t0 = time.perf_counter()
                fn()
                times[mode].append(time.perf_counter() - t0)
                requests[mode] = proxy.take()
        with SensReader(local) as reader:
            idx = sample_indices(reader, args.sample)
            t0 = time.perf_counter()
            reader.read_frames(idx)
            decode_s = time.perf_counter() - t0
        best = {m: min(t) for m, t in times.items()}
        for mode in modes:
            kinds = collections.Counter(f"{m}{' range' if r else ''}" for m, _, r in requests[mode])
            print(f"{mode:>9}: best {best[mode]:.3f} s, median {sorted(times[mode])[len(times[mode]) // 2]:.3f} s, "
                  f"{len(requests[mode])} requests ({', '.join(f'{k} x{v}' for k, v in sorted(kinds.items()))})")
        print(f"decoding the {args.sample} sampled frames (any mode, local): {decode_s:.3f} s")
        frame_gets = [r for r in requests["sidecar"] if r[0] == "GET" and r[1].endswith(".sens") and r[2]]
        print(f"sidecar mode requests: {len(frame_gets)} ranged frame GETs + "
              f"{len(requests['sidecar']) - len(frame_gets)} at open")
        print(f"RESULT sens_seek_sample_vs_download {best['seek'] / best['download']:.2f} x target >= 0")
        print(f"RESULT sens_first_sample_vs_download {best['first'] / best['download']:.2f} x target <= 1.2")
        print(f"RESULT sens_sidecar_requests_per_sampled_frame {len(frame_gets) / args.sample:.2f} requests "
              f"target <= 1")
        print(f"RESULT sens_sidecar_sample_vs_download {best['sidecar'] / best['download']:.2f} x target >= 0")
    finally:
        proxy.shutdown()
        proxy.server_close()
        moto.terminate()
        moto.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
