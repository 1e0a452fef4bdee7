"""The report: flat metrics, Markdown summary and PNG plots from a harness result."""

from __future__ import annotations

import json

import pytest

from pipelines.eval.harness import evaluate
from pipelines.eval.report import (
    flatten_metrics,
    headline_metrics,
    matplotlib_available,
    summary_markdown,
    write_report,
)
from tests.eval.builders import FAST, make_ground_truth, oracle


@pytest.fixture(scope="module")
def results(ptb_scorer):
    gt = make_ground_truth()
    return evaluate(oracle(gt), gt, config=FAST, scorer=ptb_scorer)


def test_flatten_and_headline(results):
    flat = flatten_metrics(results)
    assert flat["scanrefer/free_form/overall/acc@0.5"] == 100.0
    assert flat["multi3drefer/free_form/zt_w_d/count"] == 1.0
    assert flat["scan2cap/gt_boxes/@0.5/matched"] == 4.0
    assert flat["scanqa/by_family/counting/count"] == 1.0 and flat["scanqa/by_family/relative_position/em"] == 100.0
    assert not any(k.startswith("config") for k in flat)
    head = headline_metrics(results)
    assert head["SQA3D EM@1"] == 100.0 and head["Pose AUC@30"] == 100.0
    assert "ScanQA METEOR" not in head  # METEOR off in this config: absent, not zero
    md = summary_markdown(results)
    # the paper's value is shown only next to the protocol it was measured with (proposals)
    assert "| ScanRefer Acc@0.25 [free_form] | 100.00 |  |" in md
    assert "| SQA3D EM@1 | 100.00 | 57.3 |" in md
    assert "| scanqa | counting | 100.00 | 100.00 | 1 |" in md
    assert "Protocols: grounding free_form; captioning gt_boxes" in md
    assert '"caption_tokenizer": "ptb"' in md


def test_write_report(results, tmp_path):
    written = write_report(results, str(tmp_path / "report"))
    assert json.loads((tmp_path / "report" / "results.json").read_text()) == results
    assert json.loads((tmp_path / "report" / "metrics.json").read_text()) == flatten_metrics(results)
    if matplotlib_available():
        png = tmp_path / "report" / "plots" / "scan2cap.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert len(written) == 3 + 6
    assert write_report(results, str(tmp_path / "noplots"), plots=False)[-1].endswith("summary.md")
