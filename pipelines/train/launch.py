"""Driver side of a training run: resolve tracking, build the ``TorchTrainer``, fit, then log and register the model.

The run directory of Ray Train is ``<run.storage_path>/<run.name>``: re-running with the same name resumes from the
latest complete checkpoint (and ``FailureConfig(max_failures)`` restarts a failed worker group from it within one
``fit()``). The exported model, the resolved config (``train_config.json``), the step logs and (by default) the MLflow
sqlite store live in ``run.output_dir``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import posixpath
import re
import tempfile
from dataclasses import dataclass
from typing import Any

from pipelines import storage
from pipelines.tracking import (
    bound_http_retries,
    flatten_params,
    local_artifact_location,
    resolve_tracking_uri,
)
from pipelines.train.config import TrainConfig
from pipelines.train.export import TRAIN_CONFIG_NAME, model_uri
from pipelines.train.tracking import RUN_FILE, Tracker

logger = logging.getLogger(__name__)

_RUN_URI = re.compile(r"^runs:/([0-9a-f]+)/")


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


def infer_parent_run_id(init_from: str) -> str:
    """The MLflow run that produced ``init_from``: from a ``runs:/``/``mlflow-run:`` URI, or from the
    ``mlflow_run.json`` next to a Stage-1 export directory (``<output_dir>/model``); empty when unknown."""
    if init_from.startswith("mlflow-run:"):
        return init_from.split(":", 1)[1]
    match = _RUN_URI.match(init_from)
    if match:
        return match.group(1)
    if "://" in init_from and not init_from.startswith(("file://", "s3://")):
        return ""
    run_file = storage.join(posixpath.dirname(init_from.rstrip("/")), RUN_FILE)
    if storage.exists(run_file):
        return json.loads(storage.read_bytes(run_file)).get("run_id", "")
    return ""


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


def _local_copy(uri: str, workdir: str) -> str:
    if "://" not in uri or uri.startswith("file://"):
        return uri.removeprefix("file://")
    fs, path = storage.filesystem(uri)
    dst = os.path.join(workdir, "model")
    fs.get(path.rstrip("/") + "/", dst, recursive=True)
    return dst


def build_trainer(cfg: TrainConfig, train_loop_config: dict[str, Any]):
    """The Ray Train V2 ``TorchTrainer`` for ``cfg``."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
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
        run_config=RunConfig(
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
        ray.train.TrainingFailedError: the workers failed more than ``run.max_failures`` times.
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
        cfg.parent_run_id = infer_parent_run_id(cfg.init_from)
    tags = {"stage": str(cfg.stage), **manifest_tags(cfg.data.manifest_uri), "ray_run_name": cfg.run.name,
            "zero_stage": str(cfg.deepspeed.zero_stage), "mlflow.runName": cfg.run.name}
    if cfg.parent_run_id:
        tags["parent_run_id"] = cfg.parent_run_id
        tags["mlflow.parentRunId"] = cfg.parent_run_id
    storage.write_bytes(storage.join(output_dir, TRAIN_CONFIG_NAME),
                        json.dumps(cfg.to_dict(), indent=1, sort_keys=True).encode())

    result = build_trainer(cfg, worker_config(cfg, tracking_uri, tags, artifact_location)).fit()

    exported = model_uri(output_dir)
    tracker = Tracker(tracking_uri, cfg.tracking.experiment, output_dir, params=flatten_params(cfg.to_dict()), tags=tags,
                      artifact_location=artifact_location, retry_initial_s=cfg.tracking.retry_initial_s,
                      retry_max_s=cfg.tracking.retry_max_s)
    version = None
    with tempfile.TemporaryDirectory(prefix="vidllm-artifact-") as tmp:
        local = _local_copy(exported, tmp)
        logged, _ = tracker.call("model artifact upload",
                                 lambda rid: tracker.client.log_artifacts(rid, local, artifact_path="model"))
    if logged:
        ok, version = tracker.call("model registration",
                                   lambda rid: register_model(tracker.client, cfg.tracking.registered_model, rid))
    if version is None:
        logger.warning("the model at %s was NOT registered in MLflow (%s); register it later from the export",
                       exported, tracking_uri)
    return TrainResult(
        run_id=tracker.run_id,
        tracking_uri=tracking_uri,
        model_uri=exported,
        model_version=version,
        metrics=dict(result.metrics) if result.metrics else None,
        checkpoint_path=result.checkpoint.path if result.checkpoint else None,
    )
