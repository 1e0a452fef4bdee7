"""MLflow tracking that never crashes training: buffered, batched, retried with back-off.

Only rank 0 (and the driver, for the final artifact) talks to MLflow, through :class:`Tracker`:

* The run is created lazily on the first successful call, with the resolved config as params (flattened, sent in
  ``log_batch`` chunks of at most 100) and the tags (stage, shard manifest URI and hash, parent run). Its id is
  written to ``<output_dir>/mlflow_run.json`` so that a restarted worker group keeps logging into the same run and
  the driver finds it after ``fit()``.
* Metrics are buffered and sent in ``log_batch`` chunks of at most 1000 (one HTTP call per chunk, mlflow#5269).
* Any MLflow error is logged as a warning and retried later with exponential back-off; while the server is away
  training goes on and metrics pile up (bounded by ``max_buffered_metrics``; the oldest are dropped with a warning).
  :meth:`Tracker.close` tries once more and reports, loudly, anything it had to drop.

MLflow's own HTTP client retries 7 times with back-off factor 2 (minutes of blocking per call against a dead
server), so :func:`pipelines.tracking.bound_http_retries` bounds it: our back-off replaces it.

The default store is ``sqlite:///<output_dir>/mlflow.db`` with the experiment's artifact location set explicitly to
``<output_dir>/mlartifacts`` (Ray changes a worker's cwd, and MLflow's default artifact root is cwd-relative).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from pipelines import storage
from pipelines.tracking import MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, RUN_FILE, bound_http_retries

logger = logging.getLogger(__name__)


class Tracker:
    """An MLflow run handle that buffers, batches and retries; its methods never raise MLflow errors.

    Args:
        tracking_uri: MLflow tracking URI.
        experiment: experiment name (created if missing, with ``artifact_location``).
        output_dir: run output dir; holds ``mlflow_run.json`` with the run id.
        params: run parameters (flat), logged once when the run is created.
        tags: run tags, logged once when the run is created.
        artifact_location: experiment artifact root for a new experiment (``None``: the store's default).
        retry_initial_s: first back-off after a failure; doubles up to ``retry_max_s``.
        retry_max_s: longest back-off.
        max_buffered_metrics: cap on buffered metric points.
        clock: monotonic clock (seconds).
    """

    def __init__(self, tracking_uri: str, experiment: str, output_dir: str, params: Mapping[str, str],
                 tags: Mapping[str, str], artifact_location: str | None = None, retry_initial_s: float = 2.0,
                 retry_max_s: float = 60.0, max_buffered_metrics: int = 100_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        bound_http_retries()  # bounded per-request retries: the back-off below is the retry policy
        self.tracking_uri = tracking_uri
        self._client = None
        self.experiment = experiment
        self.output_dir = output_dir
        self.params = dict(params)
        self.tags = dict(tags)
        self.artifact_location = artifact_location
        self.retry_initial_s = retry_initial_s
        self.retry_max_s = retry_max_s
        self.max_buffered = max_buffered_metrics
        self.clock = clock
        self._buffer: list[Any] = []
        self._backoff = retry_initial_s
        self._next_try = 0.0
        self.failures = 0
        self.dropped = 0
        self.run_id: str | None = self._read_run_file()

    @property
    def client(self):
        """The ``MlflowClient``, created on first use (creating it opens a sqlite store, which can fail too)."""
        if self._client is None:
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    # -- run identity -------------------------------------------------------------------------------------------
    def _run_file(self) -> str:
        return storage.join(self.output_dir, RUN_FILE)

    def _read_run_file(self) -> str | None:
        uri = self._run_file()
        if not storage.exists(uri):
            return None
        data = json.loads(storage.read_bytes(uri))
        return data["run_id"] if data.get("tracking_uri") == self.tracking_uri else None

    def _ensure_run(self) -> str:
        if self.run_id is not None:
            return self.run_id
        exp = self.client.get_experiment_by_name(self.experiment)
        exp_id = exp.experiment_id if exp else self.client.create_experiment(
            self.experiment, artifact_location=self.artifact_location)
        run = self.client.create_run(exp_id, tags=self.tags)
        from mlflow.entities import Param

        items = sorted(self.params.items())
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            chunk = [Param(k, v) for k, v in items[i:i + MAX_PARAMS_PER_BATCH]]
            self.client.log_batch(run.info.run_id, params=chunk)
        self.run_id = run.info.run_id
        storage.write_bytes(self._run_file(), json.dumps(
            {"run_id": self.run_id, "tracking_uri": self.tracking_uri, "experiment_id": exp_id}).encode())
        return self.run_id

    # -- guarded calls ------------------------------------------------------------------------------------------
    def _attempt(self, what: str, fn: Callable[[], Any], force: bool = False) -> tuple[bool, Any]:
        """Run ``fn`` unless backing off; on failure warn, back off and return ``(False, None)``."""
        now = self.clock()
        if not force and now < self._next_try:
            return False, None
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - any tracking failure must not stop training
            self.failures += 1
            self._next_try = now + self._backoff
            logger.warning("MLflow %s failed at %s (%s: %s); retrying in %.0f s, %d metric points buffered",
                           what, self.tracking_uri, type(err).__name__, str(err)[:200], self._backoff,
                           len(self._buffer))
            self._backoff = min(self._backoff * 2, self.retry_max_s)
            return False, None
        self._backoff = self.retry_initial_s
        self._next_try = 0.0
        return True, result

    def start(self) -> bool:
        """Create (or re-attach to) the run now; False when the server is unreachable (retried later)."""
        ok, _ = self._attempt("run creation", self._ensure_run, force=True)
        return ok

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer ``metrics`` at ``step`` and flush when not backing off."""
        from mlflow.entities import Metric

        ts = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), ts, step) for k, v in metrics.items())
        overflow = len(self._buffer) - self.max_buffered
        if overflow > 0:
            del self._buffer[:overflow]
            self.dropped += overflow
            logger.warning("MLflow buffer full: dropped the %d oldest metric points", overflow)
        self.flush()

    def flush(self, force: bool = False) -> bool:
        """Send buffered metrics; True when the buffer is empty afterwards."""

        def send() -> None:
            run_id = self._ensure_run()
            while self._buffer:
                self.client.log_batch(run_id, metrics=self._buffer[:MAX_METRICS_PER_BATCH])
                del self._buffer[:MAX_METRICS_PER_BATCH]

        if not self._buffer and self.run_id is not None:
            return True
        ok, _ = self._attempt("metric flush", send, force=force)
        return ok and not self._buffer

    def call(self, what: str, fn: Callable[[str], Any], attempts: int = 3) -> tuple[bool, Any]:
        """Run ``fn(run_id)`` with up to ``attempts`` tries (sleeping the back-off between them)."""
        for i in range(attempts):
            ok, result = self._attempt(what, lambda: fn(self._ensure_run()), force=True)
            if ok:
                return True, result
            if i + 1 < attempts:
                time.sleep(min(self._backoff, self.retry_max_s))
        return False, None

    def end(self, status: str) -> bool:
        """End the run with ``status`` (``FINISHED`` or ``FAILED``) so it does not stay RUNNING; False when the
        server is unreachable or there is no run (nothing was ever logged)."""
        if self.run_id is None:
            return False
        ok, _ = self.call(f"run end ({status})", lambda rid: self.client.set_terminated(rid, status))
        return ok

    def close(self, attempts: int = 3) -> bool:
        """Final flush with retries; drops what cannot be sent with a clear warning. True when nothing was lost."""
        for i in range(attempts):
            if self.flush(force=True):
                break
            if i + 1 < attempts:
                time.sleep(min(self._backoff, self.retry_max_s))
        lost = len(self._buffer) + self.dropped
        if self._buffer:
            logger.warning("MLflow at %s unreachable at the end of training: DROPPING %d buffered metric points "
                           "(run id %s)", self.tracking_uri, len(self._buffer), self.run_id)
            self._buffer.clear()
        return lost == 0
