"""``bench/gpu_check.py --tiny`` runs every measurement of the GPU check on the CPU and ends with its RESULT lines,
so the script a lent GPU runs is known to work before a GPU is booked."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

pytestmark = pytest.mark.slow


def test_the_gpu_check_runs_end_to_end_at_tiny_size_on_the_cpu():
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    proc = subprocess.run([sys.executable, str(REPO_ROOT / "bench" / "gpu_check.py"), "--tiny"], env=env,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            _, name, value, unit, target, op, bound = line.split()
            assert target == "target" and op in ("<=", ">=") and float(bound) >= 0
            results[name] = (float(value), unit)
    assert set(results) == {
        "gpu_check_inference_latency", "gpu_check_inference_peak_memory", "gpu_check_stage2_step_time",
        "gpu_check_stage2_mfu", "gpu_check_stage2_peak_memory", "gpu_check_geometry_teacher_throughput",
        "gpu_check_semantic_teacher_throughput"}
    assert results["gpu_check_inference_latency"][0] > 0 and results["gpu_check_stage2_step_time"][0] > 0
    assert min(results["gpu_check_geometry_teacher_throughput"][0],
               results["gpu_check_semantic_teacher_throughput"][0]) > 0
    assert math.isnan(results["gpu_check_stage2_mfu"][0])  # no GPU peak to compare with on the CPU
    assert "4 frames of 28x28" in proc.stdout and "scene tokens" in proc.stdout
