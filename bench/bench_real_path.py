"""The real-weight path through every stage, timed and measured per stage (not a test; run by hand).

Runs ``python -m pipelines.demo --weights-dir DIR`` in a subprocess (its own local Ray): synthetic scenes ->
ingest -> teachers (the real DINOv2-S as geometry teacher, a labelled random CLIP stand-in) -> Stage 1 and Stage 2
of the ``small`` model from the real DINOv2-S and SmolLM2-135M-Instruct (its own tokenizer and chat template) ->
export -> evaluation -> Ray Serve over HTTP on 127.0.0.1. ``tests/test_real_path.py`` checks the same run.

For every stage it prints the wall time and the peak memory (PSS: shared pages split between the processes that
map them) of the driver, of the Ray workers (summed) and of every process (the demo's
:class:`pipelines.demo.runner.PeakMemory`). ``--size real`` (default) is 112 px, 6 frames and 2 steps per stage for a CPU machine; ``--size default``
(56 px, 8 frames, 30 + 300 steps) or a larger preset and ``--use-gpu`` measure a GPU machine.

Usage::

    python bench/bench_real_path.py --weights-dir ~/.cache/vidllm/weights
    python bench/bench_real_path.py --weights-dir DIR --size default --use-gpu --train-workers 8

There is no second method to compare with: the targets are absolute (the whole run within 10 minutes and 16 GiB on
the 2-core, 24 GiB machine at ``--size real``). Ends with lines ``RESULT <name> <value> <unit> target <op> <value>``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOTAL_S_TARGET = 600.0
PEAK_MIB_TARGET = 16 * 1024.0


def result(name: str, value: float, unit: str, op: str, target: float) -> None:
    print(f"RESULT {name} {value:.1f} {unit} target {op} {target:g}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights-dir", default=os.environ.get("VIDLLM_WEIGHTS_DIR", ""),
                        help="folder of `vidllm weights install` (default: $VIDLLM_WEIGHTS_DIR)")
    parser.add_argument("--size", default="real", help="demo size preset (default real)")
    parser.add_argument("--workdir", type=Path, help="demo workdir (default: a fresh temporary folder)")
    parser.add_argument("--train-workers", type=int, default=1, help="Ray Train workers per stage (default 1)")
    parser.add_argument("--use-gpu", action="store_true", help="train, evaluate and serve on CUDA GPUs")
    args = parser.parse_args()
    if not args.weights_dir:
        parser.error("--weights-dir (or VIDLLM_WEIGHTS_DIR) is required: run `vidllm weights install --dir DIR`")

    with tempfile.TemporaryDirectory(prefix="bench-real-path-") as tmp:
        workdir = args.workdir or Path(tmp) / "demo"
        cmd = [sys.executable, "-m", "pipelines.demo", "--size", args.size, "--weights-dir", args.weights_dir,
               "--workdir", str(workdir), "--train-workers", str(args.train_workers), "--fresh"]
        if args.use_gpu:
            cmd.append("--use-gpu")
        print("running:", " ".join(cmd), flush=True)
        started = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
        wall = time.perf_counter() - started
        print(proc.stdout, flush=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            return proc.returncode
        demo = json.loads((workdir / "demo_result.json").read_text())

    steps = demo["steps"]
    print(f"served answer to {demo['query']['question']!r}: {demo['query']['answer']!r}")
    print(f"{'stage':<10} {'time s':>8} {'driver MiB':>11} {'workers MiB':>12} {'all MiB':>9}")
    for name, step in steps.items():
        peak = step["peak_memory_mb"]
        print(f"{name:<10} {step['seconds']:8.1f} {peak['driver']:11.0f} {peak['workers']:12.0f} {peak['total']:9.0f}")
    for name, step in steps.items():
        result(f"real_path_{name}_s", step["seconds"], "s", ">=", 0)
        result(f"real_path_{name}_peak_pss", step["peak_memory_mb"]["total"], "MiB", ">=", 0)
    result("real_path_total_s", wall, "s", "<=", TOTAL_S_TARGET)
    result("real_path_peak_pss", max(s["peak_memory_mb"]["total"] for s in steps.values()), "MiB", "<=",
           PEAK_MIB_TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main())
