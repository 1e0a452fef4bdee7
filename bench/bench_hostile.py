"""Decode-bomb benchmark: what one small hostile upload costs the serving path, bounded vs unbounded (not a test).

The bomb is a ~100 KB H.264 MP4 of black 7680x4320 frames (generated with PyAV). Each method runs in a fresh
Python process (so its peak RSS, ``VmHWM``, is its own) and goes through serving's ``sample_clip`` (probe, uniform
sampling of 32 frames, resize to 518x518):

* ``ours``: the default serving limits, whose decode budget refuses the 33 MP frames from the stream metadata.
* ``baseline``: the same call with a decode budget large enough to admit the bomb, i.e. what the code did before
  it had a budget: every sampled 8K frame is decoded (and, before, all 32 were held at full size at once).

Usage::

    python bench/bench_hostile.py                 # 8-frame bomb, 3 runs per method
    python bench/bench_hostile.py --frames 4 --repeats 5

Each process first samples a small valid clip (FFmpeg's one-time setup is not counted). Prints per-method best
wall time and peak-RSS growth over the warmed-up process, then
``RESULT <name> <value> <unit> target <op> <value>`` lines. Times are taken on whatever else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

_CHILD = """
import json, sys, time
from pipelines.scenes.decode_budget import DecodeBudget
from pipelines.serve.config import LimitsConfig
from pipelines.serve.errors import ApiError
from pipelines.serve.video_input import SamplingSpec, sample_clip

def peak_kib():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])

data = open(sys.argv[1], "rb").read()
limits = LimitsConfig()
if sys.argv[2] == "baseline":
    limits = LimitsConfig(decode=DecodeBudget(max_frame_pixels=10**9, max_decoded_bytes=2**62))
sample_clip(open(sys.argv[3], "rb").read(), SamplingSpec(32, 518, 518), limits)  # warm-up: FFmpeg's lazy setup
base = peak_kib()
started = time.perf_counter()
try:
    outcome = f"decoded {sample_clip(data, SamplingSpec(32, 518, 518), limits).frames.shape}"
except ApiError as exc:
    outcome = f"{exc.status} {exc.error}: {exc.detail}"
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "rss_growth_mib": (peak_kib() - base) / 1024, "outcome": outcome}))
"""


def run(path: Path, warmup: Path, method: str) -> dict:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(path), method, str(warmup)], cwd=REPO, capture_output=True,
                         text=True, timeout=600, check=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=8, help="8K frames in the bomb (>= 8, serving's minimum)")
    p.add_argument("--repeats", type=int, default=3, help="runs per method (best time, largest RSS reported)")
    args = p.parse_args()
    from tests.scenes.video_files import decode_bomb, mp4

    with tempfile.TemporaryDirectory() as tmp:
        path, warmup = Path(tmp) / "bomb.mp4", Path(tmp) / "warmup.mp4"
        path.write_bytes(decode_bomb(num_frames=args.frames))
        warmup.write_bytes(mp4(12))
        print(f"bomb: {path.stat().st_size} bytes, {args.frames} frames of 7680x4320")
        results: dict[str, list[dict]] = {"ours": [], "baseline": []}
        for _ in range(args.repeats):
            for method in results:
                results[method].append(run(path, warmup, method))
    best = {m: min(r["seconds"] for r in rs) for m, rs in results.items()}
    rss = {m: max(r["rss_growth_mib"] for r in rs) for m, rs in results.items()}
    for method, rs in results.items():
        print(f"  {method:8s} best {best[method] * 1000:9.1f} ms, peak RSS growth {rss[method]:7.1f} MiB -> "
              f"{rs[0]['outcome'][:110]}")
    print(f"RESULT decode_bomb_refusal_time {best['ours'] * 1000:.1f} ms target < 100")
    print(f"RESULT decode_bomb_refusal_speedup {best['baseline'] / best['ours']:.0f} x target >= 50")
    print(f"RESULT decode_bomb_refusal_rss_growth {rss['ours']:.1f} MiB target < 20")
    print(f"RESULT decode_bomb_baseline_rss_growth {rss['baseline']:.1f} MiB target >= 0")


if __name__ == "__main__":
    main()
