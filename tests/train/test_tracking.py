"""Tracker tests against real MLflow stores: batching, params/tags, outage buffering, recovery and drop warnings."""

from __future__ import annotations

import logging

import pytest

from pipelines.tracking import flatten_params as flatten
from pipelines.tracking import resolve_tracking_uri
from pipelines.train.tracking import RUN_FILE, Tracker


class FakeClock:
    """Manual monotonic clock so back-off can be stepped without sleeping."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _tracker(uri, out, clock=None, **kw):
    return Tracker(uri, "exp", str(out), params={"a.b": "1", "lr": "0.1"}, tags={"stage": "1"},
                   artifact_location=str(out / "artifacts"), retry_initial_s=1.0, retry_max_s=4.0,
                   clock=clock or FakeClock(), **kw)


def test_metrics_params_tags_reach_a_sqlite_store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path}/m.db"
    tr = _tracker(uri, tmp_path)
    assert tr.start()
    for step in range(1200):  # more than one log_batch (1000 metrics) in a single flush
        tr.log_metrics({"loss": 1.0 / (step + 1)}, step)
    assert tr.close()
    run = MlflowClient(uri).get_run(tr.run_id)
    assert run.data.params == {"a.b": "1", "lr": "0.1"}
    assert run.data.tags["stage"] == "1"
    history = MlflowClient(uri).get_metric_history(tr.run_id, "loss")
    assert len(history) == 1200 and history[-1].step == 1199
    assert (tmp_path / RUN_FILE).is_file()
    again = _tracker(uri, tmp_path)  # a restarted rank 0 re-attaches to the same run
    assert again.run_id == tr.run_id


def test_unavailable_store_buffers_then_flushes_when_it_comes_back(tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    store_dir = tmp_path / "later"
    store_dir.write_text("a file where the store's directory should be")  # every call fails until it is fixed
    uri = f"sqlite:///{store_dir}/m.db"
    clock = FakeClock()
    tr = _tracker(uri, tmp_path, clock)
    with caplog.at_level(logging.WARNING):
        assert not tr.start()
        tr.log_metrics({"loss": 3.0}, 0)
        clock.t = 0.5  # still backing off: no call, nothing lost
        tr.log_metrics({"loss": 2.0}, 1)
    assert tr.failures == 1 and len(tr._buffer) == 2
    assert "retrying" in caplog.text
    store_dir.unlink()
    store_dir.mkdir()
    clock.t = 10.0
    tr.log_metrics({"loss": 1.0}, 2)
    assert tr._buffer == [] and tr.run_id is not None
    steps = [m.step for m in MlflowClient(uri).get_metric_history(tr.run_id, "loss")]
    assert sorted(steps) == [0, 1, 2]


def test_unreachable_server_never_raises_and_drops_loudly(tmp_path, caplog):
    from tests.conftest import free_port

    tr = _tracker(f"http://127.0.0.1:{free_port()}", tmp_path, max_buffered_metrics=5)
    tr.retry_initial_s = tr.retry_max_s = 0.01
    with caplog.at_level(logging.WARNING):
        assert not tr.start()
        for step in range(8):
            tr.log_metrics({"loss": float(step)}, step)
        assert not tr.close(attempts=2)
    assert tr.dropped == 3
    assert "DROPPING 5 buffered metric points" in caplog.text
    assert tr.run_id is None


def test_flatten_and_default_uri(tmp_path, monkeypatch):
    flat = flatten({"a": {"b": 1, "c": [1, 2]}, "d": "x", "e": {}})
    assert flat == {"a.b": "1", "a.c": "[1, 2]", "d": "x", "e": "{}"}
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert resolve_tracking_uri("", str(tmp_path)) == f"sqlite:///{tmp_path}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://example:5000")
    assert resolve_tracking_uri("", str(tmp_path)) == "http://example:5000"
    assert resolve_tracking_uri("sqlite:///x.db", str(tmp_path)) == "sqlite:///x.db"
    monkeypatch.delenv("MLFLOW_TRACKING_URI")
    with pytest.raises(ValueError, match="tracking_uri must be set"):
        resolve_tracking_uri("", "s3://bucket/out", "tracking.tracking_uri")
