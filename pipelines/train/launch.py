"""Driver side of a training run: resolve tracking, build the ``TorchTrainer``, fit, then log and register the model.

The run directory of Ray Train is ``<run.storage_path>/<run.name>``: re-running with the same name resumes from the
latest complete checkpoint (and ``FailureConfig(max_failures)`` restarts a failed worker group from it within one
``fit()``). The exported model, the resolved config (``train_config.json``), the step logs and (by default) the MLflow
sqlite store live in ``run.output_dir``.

After ``fit()`` the driver logs the export to the MLflow run as a pyfunc model (:mod:`pipelines.serve.pyfunc`: the
HF folder plus an ``MLmodel`` file, so ``mlflow.pyfunc.load_model("models:/<name>/<version>")`` answers questions),
registers it as a new version and ends the run FINISHED; a failed ``fit()`` ends it FAILED.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from typing import Any

from pipelines import storage
from pipelines.artifacts import local_dir, run_id_of
from pipelines.tracking import (
    bound_http_retries,
    flatten_params,
    local_artifact_location,
    resolve_tracking_uri,
)
from pipelines.train.config import TrainConfig
from pipelines.train.export import TRAIN_CONFIG_NAME, model_uri
from pipelines.train.tracking import Tracker
from pipelines.train.trainer import TrackingContext

logger = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a finished run produced.

    Attributes:
        run_id: MLflow run id (``None`` if the tracking server never answered).
        tracking_uri: MLflow tracking URI used.
        model_uri: URI of the exported HF-layout model directory.
        model_version: registered model version (``None`` if registration failed; a warning says why).
        metrics: rank 0's metrics of the last checkpointed step.
        checkpoint_path: Ray Train's last registered checkpoint.
    """

    run_id: str | None
    tracking_uri: str
    model_uri: str
    model_version: str | None
    metrics: dict[str, Any] | None
    checkpoint_path: str | None


def manifest_tags(manifest_uri: str) -> dict[str, str]:
    """``manifest_uri`` and the sha256 of the manifest's bytes (identifies the exact shard set trained on)."""
    uri = manifest_uri if manifest_uri.endswith(".json") else storage.join(manifest_uri, "manifest.json")
    return {"manifest_uri": uri, "manifest_sha256": hashlib.sha256(storage.read_bytes(uri)).hexdigest()}


def register_model(client, name: str, run_id: str, artifact_path: str = "model") -> str:
    """Register ``runs:/<run_id>/<artifact_path>`` as a new version of ``name``; returns the version."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    source = f"{client.get_run(run_id).info.artifact_uri}/{artifact_path}"
    version = client.create_model_version(name, source, run_id=run_id)
    client.set_tag(run_id, "registered_model_version", f"{name}/{version.version}")
    return str(version.version)


def build_trainer(cfg: TrainConfig, train_loop_config: dict[str, Any]):
    """The Ray Train V2 ``TorchTrainer`` for ``cfg``."""
    from ray.train import CheckpointConfig, FailureConfig, ScalingConfig
    from ray.train import RunConfig as RayRunConfig
    from ray.train.torch import TorchTrainer

    from pipelines.train.loop import train_loop_per_worker

    storage_path = cfg.run.storage_path
    if "://" not in storage_path:
        storage_path = os.path.abspath(storage_path)  # Ray Train needs an absolute local path
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=train_loop_config,
        scaling_config=ScalingConfig(num_workers=cfg.run.num_workers, use_gpu=cfg.run.use_gpu,
                                     resources_per_worker={"CPU": cfg.run.cpus_per_worker}),
        run_config=RayRunConfig(
            name=cfg.run.name,
            storage_path=storage_path,
            failure_config=FailureConfig(max_failures=cfg.run.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=cfg.run.num_checkpoints_to_keep),
        ),
    )


def run_training(cfg: TrainConfig) -> TrainResult:
    """Train ``cfg`` on the connected Ray cluster, then log the exported model to MLflow and register it.

    Raises:
        ConfigError: a field needed to run is missing.
        ray.train.TrainingFailedError: the workers failed more than ``run.max_failures`` times (the MLflow run is
            ended FAILED).
    """
    from pipelines.train.loop import worker_config

    cfg.validate_for_run()
    bound_http_retries()
    output_dir = cfg.run.output_dir
    if "://" not in output_dir:
        output_dir = cfg.run.output_dir = os.path.abspath(output_dir)
    tracking_uri = resolve_tracking_uri(cfg.tracking.tracking_uri, output_dir, "tracking.tracking_uri")
    artifact_location = local_artifact_location(tracking_uri, output_dir)
    if cfg.init_from and not cfg.parent_run_id:
        cfg.parent_run_id = run_id_of(cfg.init_from)
    tags = {"stage": str(cfg.stage), **manifest_tags(cfg.data.manifest_uri), "ray_run_name": cfg.run.name,
            "zero_stage": str(cfg.deepspeed.zero_stage), "mlflow.runName": cfg.run.name}
    if cfg.parent_run_id:
        tags["parent_run_id"] = cfg.parent_run_id
        tags["mlflow.parentRunId"] = cfg.parent_run_id
    storage.write_bytes(storage.join(output_dir, TRAIN_CONFIG_NAME),
                        json.dumps(cfg.to_dict(), indent=1, sort_keys=True).encode())

    def tracker() -> Tracker:
        return Tracker(tracking_uri, cfg.tracking.experiment, output_dir, params=flatten_params(cfg.to_dict()),
                       tags=tags, artifact_location=artifact_location, retry_initial_s=cfg.tracking.retry_initial_s,
                       retry_max_s=cfg.tracking.retry_max_s)

    tracking = TrackingContext(tracking_uri, tags, artifact_location)
    try:
        result = build_trainer(cfg, worker_config(cfg, tracking)).fit()
    except BaseException:
        tracker().end("FAILED")
        raise
    exported = model_uri(output_dir)
    final = tracker()
    version = log_and_register(final, exported, cfg.tracking.registered_model)
    final.end("FINISHED")
    return TrainResult(
        run_id=final.run_id,
        tracking_uri=tracking_uri,
        model_uri=exported,
        model_version=version,
        metrics=dict(result.metrics) if result.metrics else None,
        checkpoint_path=result.checkpoint.path if result.checkpoint else None,
    )


def log_and_register(tracker: Tracker, exported: str, registered_model: str) -> str | None:
    """Log the export as the run's ``model`` artifact (an MLflow pyfunc model) and register it; the version, or
    ``None`` with a warning when MLflow is unreachable (training results are never lost: the export stays)."""
    from pipelines.serve.pyfunc import save_pyfunc_model

    version = None
    with tempfile.TemporaryDirectory(prefix="vidllm-artifact-") as tmp:
        local = local_dir(exported, os.path.join(tmp, "cache"), flag="run.output_dir")
        packaged = os.path.join(tmp, "model")
        save_pyfunc_model(local, packaged)
        logged, _ = tracker.call("model artifact upload",
                                 lambda rid: tracker.client.log_artifacts(rid, packaged, artifact_path="model"))
    if logged:
        _, version = tracker.call("model registration",
                                  lambda rid: register_model(tracker.client, registered_model, rid))
    if version is None:
        logger.warning("the model at %s was NOT registered in MLflow (%s); register it later from the export",
                       exported, tracker.tracking_uri)
    return version
