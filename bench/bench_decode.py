"""Video decode benchmarks for the scene data layer (not a test; run by hand).

(a) Uniform 32-frame sampling with ``pipelines.scenes.video.decode_frames`` (seek only across GOPs, decode forward
    inside a GOP) against a full sequential decode that keeps the same 32 frames, on a 60 s 1296x968 H.264 clip
    with GOP 30 (ScanNet colour size, the GOP our video layout writes). Target: >= 3x.
(b) Our sequential decode (``iter_frames``: decode + RGB conversion) against the ``ffmpeg`` CLI doing the same work
    (decode + conversion to rgb24, output discarded) with the same decoder thread count. Target: >= 0.9x. The
    decode-only ``ffmpeg`` time is printed as well for context. Skipped with a message when ``ffmpeg`` is absent.

The clip is generated with PyAV: a camera panning over a smooth texture plus mild sensor noise, libx264 CRF 23,
``preset`` veryfast (to keep generation short), yuv420p, keyframe every 30 frames.

Usage::

    python bench/bench_decode.py                      # generate the clip in a temp folder, 1 decoder thread
    python bench/bench_decode.py --clip /tmp/clip.mp4 --threads 2 --repeats 5

Methods run interleaved ``--repeats`` times; the RESULT ratio uses each method's best run (the least disturbed
on a shared machine) and the ratio of medians is printed too. Each benchmark ends with a line
``RESULT <name> <value> <unit> target <op> <value>``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipelines.scenes.video import decode_frames, encode_video, iter_frames, probe, uniform_indices  # noqa: E402

WIDTH, HEIGHT = 1296, 968


def synthetic_frames(seconds: float, fps: float, seed: int = 0):
    """A slow pan over a smooth random texture with per-frame noise (the shape of a handheld indoor scan)."""
    rng = np.random.default_rng(seed)
    th, tw = HEIGHT * 2, WIDTH * 2
    low = rng.uniform(0, 255, (th // 16 + 2, tw // 16 + 2, 3)).astype(np.float32)
    texture = np.repeat(np.repeat(low, 16, axis=0), 16, axis=1)[:th, :tw]
    # Box-blur the blocky texture so it has gradients rather than edges.
    for axis in (0, 1):
        texture = sum(np.roll(texture, s, axis=axis) for s in range(-8, 9)) / 17.0
    texture = texture.astype(np.uint8)
    n = int(round(seconds * fps))
    for i in range(n):
        phase = i / n * 2 * np.pi
        y = int((th - HEIGHT) / 2 * (1 + np.sin(phase)))
        x = int((tw - WIDTH) / 2 * (1 + np.sin(2 * phase + 1)))
        frame = texture[y : y + HEIGHT, x : x + WIDTH].astype(np.int16)
        frame += rng.integers(-3, 4, frame.shape, dtype=np.int16)
        yield np.clip(frame, 0, 255).astype(np.uint8)


def make_clip(path: str, seconds: float, fps: float, gop: int) -> None:
    t0 = time.perf_counter()
    n = encode_video(
        path, synthetic_frames(seconds, fps), fps=fps, gop=gop, options={"crf": "23", "preset": "veryfast"}
    )
    size = os.path.getsize(path)
    print(
        f"generated {path}: {n} frames {WIDTH}x{HEIGHT}, GOP {gop}, {size / 1e6:.1f} MB "
        f"({size * 8 / seconds / 1e6:.1f} Mb/s) in {time.perf_counter() - t0:.0f} s"
    )


def full_decode_keep(path: str, indices: list[int], threads: int) -> list[np.ndarray]:
    """Baseline: decode every frame in order and convert only the wanted ones to RGB."""
    wanted = set(indices)
    kept = []
    with av.open(path) as container:
        stream = container.streams.best("video")
        stream.codec_context.thread_count = threads
        stream.codec_context.thread_type = "AUTO"
        for i, frame in enumerate(container.decode(stream)):
            if i in wanted:
                kept.append(frame.to_ndarray(format="rgb24"))
    return kept


def timed(fns: dict, repeats: int) -> tuple[dict[str, float], dict[str, float], dict]:
    """Run each callable ``repeats`` times, interleaved so that load changes on a shared machine hit all alike.

    Returns the best (least-disturbed) and the median time per name, and each callable's last output.
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    outputs = {}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            outputs[name] = fn()
            times[name].append(time.perf_counter() - t0)
    best = {name: min(ts) for name, ts in times.items()}
    median = {name: statistics.median(ts) for name, ts in times.items()}
    return best, median, outputs


def bench_uniform(path: str, threads: int, repeats: int, num_samples: int = 32) -> None:
    n = probe(path).num_frames
    indices = uniform_indices(n, num_samples)
    best, median, out = timed(
        {
            "full": lambda: full_decode_keep(path, indices, threads),
            "uniform": lambda: decode_frames(path, indices, threads=threads),
        },
        repeats,
    )
    same = all(np.array_equal(a, b.rgb) for a, b in zip(out["full"], out["uniform"], strict=True))
    print(
        f"(a) {num_samples} of {n} frames, {threads} thread(s), best / median of {repeats} interleaved runs:"
    )
    print(f"    full sequential decode, keep {num_samples}: {best['full']:.2f} / {median['full']:.2f} s")
    print(f"    decode_frames (GOP-aware seek):     {best['uniform']:.2f} / {median['uniform']:.2f} s")
    print(f"    frames identical: {same}; speedup of medians {median['full'] / median['uniform']:.2f}x")
    if not same:
        raise SystemExit("uniform sampling returned different frames than the full decode")
    print(
        f"RESULT uniform{num_samples}_speedup_vs_full_decode {best['full'] / best['uniform']:.2f} x target >= 3"
    )


def bench_sequential(path: str, threads: int, repeats: int) -> None:
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        print("(b) skipped: the ffmpeg CLI is not installed (apt-get install -y ffmpeg)")
        return

    def ours() -> int:
        return sum(1 for _ in iter_frames(path, threads=threads))

    def cli(*extra: str) -> None:  # same decoder thread count; one filter thread for the rgb24 conversion
        cmd = [ffmpeg, "-v", "error", "-nostdin", "-threads", str(threads), "-i", path, "-an",
               "-filter_threads", "1", *extra, "-f", "null", "-"]  # fmt: skip
        subprocess.run(cmd, check=True)

    best, median, out = timed({"ours": ours, "rgb": lambda: cli("-pix_fmt", "rgb24"), "dec": cli}, repeats)
    count = out["ours"]
    print(
        f"(b) sequential decode of {count} frames, {threads} thread(s), best / median of {repeats} interleaved runs:"
    )
    for key, label in (
        ("ours", "ours (iter_frames, decode + rgb24)"),
        ("rgb", "ffmpeg CLI, decode + rgb24 -> null"),
        ("dec", "ffmpeg CLI, decode only -> null (no conversion)"),
    ):
        print(f"    {label:48s} {best[key]:.2f} / {median[key]:.2f} s  ({count / best[key]:.0f} fps)")
    print(f"    ratio of medians {median['rgb'] / median['ours']:.2f}x")
    print(f"RESULT sequential_decode_rgb_vs_ffmpeg_cli {best['rgb'] / best['ours']:.2f} x target >= 0.9")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clip", help="existing or to-be-generated clip path (default: a temporary file)")
    parser.add_argument("--seconds", type=float, default=60.0, help="clip length when generating (s)")
    parser.add_argument("--fps", type=float, default=30.0, help="clip frame rate when generating")
    parser.add_argument("--gop", type=int, default=30, help="keyframe interval when generating (frames)")
    parser.add_argument("--threads", type=int, default=1, help="decoder threads for every method")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed runs per method")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        clip = args.clip or os.path.join(tmp, "clip.mp4")
        if not os.path.exists(clip):
            make_clip(clip, args.seconds, args.fps, args.gop)
        bench_uniform(clip, args.threads, args.repeats)
        bench_sequential(clip, args.threads, args.repeats)


if __name__ == "__main__":
    main()
