"""The learning benchmark's fast variant: a model trained by the pipeline beats the blind baseline on unseen scenes.

``python bench/bench_learning.py --quick`` runs the real stages (synthetic scenes, ingest, teachers, Stage 1,
Stage 2, evaluation) for the full model and the blind baseline (the same LLM, no scene tokens) in a child process
with its own Ray instance, like the demo test. It asserts the issue's target margin on seed pair (0, 1), which
measured +34.2 points at 400 Stage-2 steps and +31.6 at the committed 600; at 400 steps three of four seed pairs
cleared it (bench/README.md, "The quick size at a halved learning rate").
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

#: Held-out exact-match margin (points) of the full model over the blind baseline that the quick run must reach:
#: the issue's target, about two binomial standard deviations of a difference of two models on the ~38 held-out
#: questions; the measured margins per seed pair and their spread are in bench/README.md.
MARGIN_POINTS = 15.0

# The shared run (the first test's set-up) trains two variants: beyond the suite's per-test default on a slow machine.
pytestmark = pytest.mark.timeout(2400)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``--quick`` run shared by the tests below: ``(out folder, stdout, bench_learning.json)``."""
    out = tmp_path_factory.mktemp("bench_learning") / "bench"
    proc = subprocess.run([sys.executable, "bench/bench_learning.py", "--quick", "--out", str(out)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=2400)
    assert proc.returncode == 0, f"bench failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return out, proc.stdout, json.loads((out / "bench_learning.json").read_text())


def _qa(report: dict) -> tuple[str, float, float, float]:
    runs = {r["variant"]: r for r in report["runs"]}
    family = report["summary"]["families"][0]
    full, blind = (runs[v]["metrics"]["qa"][family]["em"] for v in ("full", "blind"))
    return family, full, blind, report["summary"]["chance"][family]["chance_em"]


@pytest.mark.slow
def test_quick_run_trains_and_scores_both_variants_on_heldout_scenes(quick_run):
    out, stdout, report = quick_run
    runs = {r["variant"]: r for r in report["runs"]}
    assert set(runs) == {"full", "blind"}
    for run in runs.values():
        assert (out / "runs" / run["run"] / "eval" / "results.json").is_file()
        assert (out / "runs" / run["run"] / "stage2" / "train_config.json").is_file()
        assert run["metrics"]["qa"]["all"]["count"] > 0
    assert (out / "mlflow.db").is_file() and "RESULT qa_em_margin_over_blind" in stdout
    family, _, blind, chance = _qa(report)
    assert blind <= chance + 10.0, f"the blind baseline ({blind:.1f}) should sit near chance ({chance:.1f})"


@pytest.mark.slow
def test_quick_learning_beats_the_blind_baseline_on_heldout_scenes(quick_run):
    family, full, blind, chance = _qa(quick_run[2])
    assert full - blind >= MARGIN_POINTS, (
        f"held-out {family} EM: full {full:.1f}, blind {blind:.1f}, chance {chance:.1f}; margin below "
        f"{MARGIN_POINTS} points"
    )
