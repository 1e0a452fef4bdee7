"""One evaluation end to end: resolve inputs, run the Ray job, score, write the report, track it in MLflow.

Output layout under ``<out>`` (local path or fsspec URI)::

    eval_config.json                  resolved job config, inputs and model identity (written first)
    predictions/predictions.jsonl     every prediction (pipelines.eval.predictions format, boxes aligned frame)
    predictions/reconstruction/       <key>.depth.npy [S, H, W] metres, <key>.poses.npy [S, 3, 4] camera-from-world
    results.json, metrics.json        nested and flat metrics (pipelines.eval.report)
    summary.md, examples.md           headline table; example predictions
    plots/                            per-task bars, task_scores.png, depth_error_hist.png, examples.png
    mlflow_run.json                   tracking URI and run id (or why tracking failed)
    mlflow.db, mlartifacts/           the default local MLflow store (when no tracking URI is configured)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipelines import storage
from pipelines.artifacts import ModelSource, resolve_model
from pipelines.eval.config import EvalJobConfig
from pipelines.eval.harness import evaluate
from pipelines.eval.job import DataSourceError, plan_clips, predictions_uri, run_inference
from pipelines.eval.plots import depth_error_png, examples_markdown, examples_png, task_scores_png
from pipelines.eval.predictions import load_predictions, write_predictions
from pipelines.eval.report import flatten_metrics, headline_metrics, matplotlib_available, write_report
from pipelines.eval.tracking import TrackingOutcome, log_evaluation, mlflow_metrics, write_run_file
from pipelines.tracking import flatten_params, local_artifact_location, resolve_tracking_uri

log = logging.getLogger(__name__)

CONFIG_NAME = "eval_config.json"


@dataclass
class EvalResult:
    """What :func:`run_evaluation` produced."""

    out: str
    results: dict[str, Any]
    metrics: dict[str, float]
    model: ModelSource
    tracking: TrackingOutcome
    num_clips: int
    num_prompts: int
    skipped_tasks: list[str]
    seconds: float


def _gt_present(gt, task: str) -> bool:
    return bool(getattr(gt, task))


def _manifest_sha256(data_uri: str) -> str:
    uri = data_uri if data_uri.endswith(".json") else storage.join(data_uri.rstrip("/"), "manifest.json")
    return hashlib.sha256(storage.read_bytes(uri)).hexdigest()


def _init_ray(address: str | None) -> None:
    import ray

    if not ray.is_initialized():
        ray.init(address=address, include_dashboard=False, log_to_driver=True)


def _load_annotations(uri: str) -> dict[str, dict]:
    from pipelines.ingest.job import load_scene_annotations

    if not storage.exists(uri):
        raise DataSourceError(uri, "annotations root does not exist", flag="--annotations")
    per_scene = load_scene_annotations(uri)
    if not per_scene:
        raise DataSourceError(uri, "no benchmark annotation file found (ScanQA_v1.0_<split>.json, ...)",
                              flag="--annotations")
    return per_scene


def _extra_outputs(results: Mapping[str, Any], predictions, gt, cfg: EvalJobConfig) -> dict[str, bytes]:
    extra = {"examples.md": examples_markdown(predictions, gt, cfg.num_examples).encode()}
    if cfg.plots and matplotlib_available():
        extra["plots/task_scores.png"] = task_scores_png(results)
        if gt.reconstruction:
            extra["plots/depth_error_hist.png"] = depth_error_png(predictions, gt)
        if gt.scanrefer and cfg.num_examples:
            extra["plots/examples.png"] = examples_png(predictions, gt, cfg.num_examples)
    return extra


def run_evaluation(
    model_uri: str,
    data_uri: str,
    out: str,
    config: EvalJobConfig,
    annotations_uri: str | None = None,
    tracking_uri: str | None = None,
    ray_address: str | None = None,
    progress: Callable[[str], None] = print,
) -> EvalResult:
    """Evaluate ``model_uri`` on the shards of ``data_uri``; results under ``out`` and in MLflow.

    Raises:
        ArtifactError: ``--model`` names no checkpoint.
        DataSourceError: ``--data`` / ``--annotations`` name no usable data.
    """
    started = time.perf_counter()

    def say(message: str) -> None:
        progress(f"[eval +{time.perf_counter() - started:6.1f} s] {message}")

    out = out.rstrip("/")
    if "://" not in out:
        out = os.path.abspath(out)
    tracking = resolve_tracking_uri(tracking_uri, out, "--mlflow-uri")
    plan_clips(data_uri, config.clip_index)  # fail on a bad --data before any download or Ray start
    annotations = _load_annotations(annotations_uri) if annotations_uri else None
    say(f"resolving model {model_uri}")
    source = resolve_model(model_uri, tracking, config.cache_dir)
    inputs = {"model_uri": model_uri, "data_uri": data_uri, "annotations_uri": annotations_uri or "",
              "tracking_uri": tracking, "model_local_dir": source.local_dir}
    storage.write_bytes(storage.join(out, CONFIG_NAME), json.dumps(
        {"config": config.to_dict(), "inputs": inputs, "model_tags": source.tags()}, indent=1, sort_keys=True
    ).encode())

    _init_ray(ray_address)
    collected = run_inference(model_uri, data_uri, out, config, tracking, annotations, say)
    pred_uri = predictions_uri(out)
    write_predictions(pred_uri, collected.records)
    predictions = load_predictions(pred_uri)  # the strict loader checks what we wrote
    gt = collected.ground_truth()
    tasks = [t for t in config.tasks if _gt_present(gt, t)]
    skipped = [t for t in config.tasks if t not in tasks]
    if skipped:
        log.warning("no ground truth in the evaluated clips for %s: not scored", skipped)
    say(f"scoring {len(predictions)} predictions on {tasks}")
    results = evaluate(predictions, gt, tasks, config.protocol)

    written = write_report(results, out, plots=config.plots)
    extra = _extra_outputs(results, predictions, gt, config)
    for name, data in extra.items():
        storage.write_bytes(storage.join(out, name), data)
    flat = flatten_metrics(results)
    say(f"report written to {out}; logging to MLflow at {tracking}")

    params = {**flatten_params(config.to_dict()), **{k: v[:6000] for k, v in inputs.items() if k != "model_local_dir"}}
    tags = {**source.tags(), "data_uri": data_uri, "manifest_sha256": _manifest_sha256(data_uri),
            "tasks": ",".join(tasks), "output_uri": out}
    with tempfile.TemporaryDirectory(prefix="vidllm-eval-artifacts-") as tmp:
        files = {uri[len(out) + 1:]: storage.read_bytes(uri) for uri in written}
        files.update(extra)
        files["predictions/predictions.jsonl"] = storage.read_bytes(pred_uri)
        files[CONFIG_NAME] = storage.read_bytes(storage.join(out, CONFIG_NAME))
        for name, data in files.items():
            path = os.path.join(tmp, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        outcome = log_evaluation(
            tracking, config.experiment, mlflow_metrics(flat), params, tags, tmp,
            artifact_root=local_artifact_location(tracking, out),
            run_name=f"eval-{os.path.basename(source.local_dir.rstrip('/'))}",
            registered_model=(source.registered_name, source.registered_version) if source.registered_name else None,
        )
    write_run_file(out, outcome)
    return EvalResult(out, results, flat, source, outcome, len(collected.transforms), collected.prompts, skipped,
                      time.perf_counter() - started)


def format_summary(result: EvalResult) -> str:
    """The final table: headline metrics, counts, where the results and the MLflow run are."""
    head = headline_metrics(result.results)
    width = max([len(k) for k in head] + [20])
    lines = ["", f"{'metric':<{width}}  value", f"{'-' * width}  --------"]
    lines += [f"{label:<{width}}  {value:8.2f}" for label, value in head.items()]
    lines += [
        "",
        f"clips evaluated: {result.num_clips}, prompts: {result.num_prompts}, metrics: {len(result.metrics)}, "
        f"time: {result.seconds:.1f} s",
        f"results: {storage.join(result.out, 'results.json')} (flat: metrics.json)",
    ]
    if result.skipped_tasks:
        lines.append(f"not scored (no ground truth in the data): {', '.join(result.skipped_tasks)}")
    lines.append(f"MLflow: {result.tracking.message}" if result.tracking.ok else
                 f"WARNING: {result.tracking.message}; results were written locally only")
    return "\n".join(lines)
