"""The learning benchmark's fast variant: a model trained by the pipeline beats the blind baseline on unseen scenes.

``python bench/bench_learning.py --quick`` runs the real stages (synthetic scenes, ingest, teachers, Stage 1,
Stage 2, evaluation) for the full model and the blind baseline (the same LLM, no scene tokens) in a child process
with its own Ray instance, like the demo test. The margin asserted here comes from the seed noise measured by
running the quick variant on several (training, held-out) seed pairs; see ``MARGIN_POINTS``.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

#: Held-out exact-match margin (points) of the full model over the blind baseline that the quick run must reach.
MARGIN_POINTS = 15.0


@pytest.mark.slow
def test_quick_learning_beats_the_blind_baseline_on_heldout_scenes(tmp_path):
    out = tmp_path / "bench"
    proc = subprocess.run([sys.executable, "bench/bench_learning.py", "--quick", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    report = json.loads((out / "bench_learning.json").read_text())
    runs = {r["variant"]: r for r in report["runs"]}
    assert set(runs) == {"full", "blind"}
    for run in runs.values():
        assert (out / "runs" / run["run"] / "eval" / "results.json").is_file()
        assert (out / "runs" / run["run"] / "stage2" / "train_config.json").is_file()
    assert (out / "mlflow.db").is_file() and "RESULT qa_em_margin_over_blind" in proc.stdout
    summary = report["summary"]
    family = summary["families"][0]
    full, blind = (runs[v]["metrics"]["qa"][family]["em"] for v in ("full", "blind"))
    chance = summary["chance"][family]["chance_em"]
    assert blind <= chance + 10.0, f"the blind baseline ({blind:.1f}) should sit near chance ({chance:.1f})"
    assert full - blind >= MARGIN_POINTS, (
        f"held-out {family} EM: full {full:.1f}, blind {blind:.1f}, chance {chance:.1f}; margin below "
        f"{MARGIN_POINTS} points"
    )
