"""MLflow record of an evaluation: one run linked to the evaluated model, every metric, the report as artifacts.

* Tracking URI: ``--mlflow-uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<out>/mlflow.db`` (local ``--out``
  only) with the experiment's artifact location set explicitly to ``<out>/mlartifacts`` (MLflow's default root is
  relative to the working directory, which Ray changes).
* Tags link the run to the model: ``model_uri``; for ``models:/`` URIs ``registered_model_name`` and
  ``registered_model_version`` (and the model version gets an ``eval_run_id`` tag back); ``model_source_run_id``
  when the training run is known; plus ``data_uri`` and the manifest's sha256.
* Metrics are the report's flat ``task/split/metric`` keys made MLflow-safe by :func:`mlflow_key` (``@0.25`` ->
  ``_at_0.25``), sent in ``log_batch`` chunks.
* Tracking never fails the evaluation: any MLflow error (unreachable server, store error) comes back as a
  :class:`TrackingOutcome` with ``ok=False`` and a message; the results are already written locally by then.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass

from pipelines import storage
from pipelines.tracking import MAX_METRICS_PER_BATCH, MAX_PARAMS_PER_BATCH, RUN_FILE

logger = logging.getLogger(__name__)
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-. /]")


def mlflow_key(name: str) -> str:
    """An MLflow-safe metric key: ``@`` -> ``_at_``, any other character outside ``[A-Za-z0-9_-. /]`` -> ``_``."""
    return _UNSAFE.sub("_", name.replace("@", "_at_"))


def mlflow_metrics(flat: Mapping[str, float]) -> dict[str, float]:
    """Flat report metrics under MLflow-safe keys.

    Raises:
        ValueError: two report keys map to one MLflow key (a metric would be silently overwritten).
    """
    out: dict[str, float] = {}
    origin: dict[str, str] = {}
    for name, value in flat.items():
        key = mlflow_key(name)
        if key in out:
            raise ValueError(f"metrics {origin[key]!r} and {name!r} both map to the MLflow key {key!r}")
        out[key], origin[key] = float(value), name
    return out


@dataclass(frozen=True)
class TrackingOutcome:
    """Result of :func:`log_evaluation`: ``ok`` with the run id, or the reason it failed."""

    ok: bool
    tracking_uri: str
    run_id: str | None = None
    experiment_id: str | None = None
    message: str = ""


def log_evaluation(
    tracking_uri: str,
    experiment: str,
    metrics: Mapping[str, float],
    params: Mapping[str, str],
    tags: Mapping[str, str],
    artifacts_dir: str,
    artifact_root: str | None = None,
    run_name: str | None = None,
    registered_model: tuple[str, str] | None = None,
) -> TrackingOutcome:
    """Create the evaluation run and log everything; never raises for tracking failures.

    Args:
        tracking_uri: MLflow tracking URI.
        experiment: experiment name (created with ``artifact_root`` if missing).
        metrics: MLflow-safe metric keys -> values (:func:`mlflow_metrics`).
        params: flat run parameters.
        tags: run tags (model link, data URI).
        artifacts_dir: local directory logged as the run's artifacts (report, plots, predictions).
        registered_model: ``(name, version)`` of the evaluated model version, tagged with the run id.
    """
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.tracking import MlflowClient

    run_id = exp_id = None
    client = None
    try:
        client = MlflowClient(tracking_uri=tracking_uri)
        exp = client.get_experiment_by_name(experiment)
        exp_id = exp.experiment_id if exp else client.create_experiment(experiment, artifact_location=artifact_root)
        all_tags = {**tags, **({"mlflow.runName": run_name} if run_name else {})}
        run_id = client.create_run(exp_id, tags=all_tags).info.run_id
        items = sorted(params.items())
        for i in range(0, len(items), MAX_PARAMS_PER_BATCH):
            client.log_batch(run_id, params=[Param(k, v) for k, v in items[i:i + MAX_PARAMS_PER_BATCH]])
        points = [Metric(k, float(v), 0, 0) for k, v in sorted(metrics.items())]
        for i in range(0, len(points), MAX_METRICS_PER_BATCH):
            client.log_batch(run_id, metrics=points[i:i + MAX_METRICS_PER_BATCH])
        client.log_artifacts(run_id, artifacts_dir)
        if registered_model is not None:
            name, version = registered_model
            client.set_model_version_tag(name, version, "eval_run_id", run_id)
            client.log_batch(run_id, tags=[RunTag("registered_model_uri", f"models:/{name}/{version}")])
        client.set_terminated(run_id, "FINISHED")
    except Exception as err:  # noqa: BLE001 - tracking must never lose an evaluation that is already written
        message = f"MLflow at {tracking_uri} failed ({type(err).__name__}: {str(err)[:300]})"
        logger.warning("%s; the results are only in the output directory", message)
        if run_id is not None and client is not None:
            try:
                client.set_terminated(run_id, "FAILED")
            except Exception:  # noqa: BLE001 - the store is already failing; the warning above says so
                logger.debug("could not mark run %s as failed", run_id)
        return TrackingOutcome(False, tracking_uri, run_id, exp_id, message)
    return TrackingOutcome(True, tracking_uri, run_id, exp_id, f"logged run {run_id} to {tracking_uri}")


def write_run_file(out: str, outcome: TrackingOutcome) -> None:
    """``<out>/mlflow_run.json``: where the evaluation was tracked (or why it was not)."""
    storage.write_bytes(storage.join(out, RUN_FILE), json.dumps({
        "ok": outcome.ok, "tracking_uri": outcome.tracking_uri, "run_id": outcome.run_id,
        "experiment_id": outcome.experiment_id, "message": outcome.message}, indent=1).encode())
