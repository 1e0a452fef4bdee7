"""One evaluation end to end: resolve inputs, run the Ray job, score, write the report, track it in MLflow.

:func:`run_evaluation` runs a model; :func:`score_predictions` scores an existing prediction file (ours or another
system's, ``--predictions``) against the same ground truth, with the same report and MLflow run.

Output layout under ``<out>`` (local path or fsspec URI)::

    eval_config.json                  resolved job config, inputs and model identity (written first)
    predictions/predictions.jsonl     every prediction (pipelines.eval.predictions format, boxes aligned frame);
                                      with --predictions, the scored file is logged as an artifact instead
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
import posixpath
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from pipelines import storage
from pipelines.artifacts import ModelSource, resolve_model
from pipelines.eval.config import EvalJobConfig
from pipelines.eval.external import PREDICTION_FORMATS, load_external_predictions
from pipelines.eval.harness import evaluate
from pipelines.eval.job import (
    DataSourceError,
    collect_ground_truth,
    plan_clips,
    predictions_uri,
    run_inference,
)
from pipelines.eval.plots import depth_error_png, examples_markdown, examples_png, task_scores_png
from pipelines.eval.predictions import load_predictions, write_predictions
from pipelines.eval.proposals import SceneProposals, load_proposals
from pipelines.eval.report import (
    PROTOCOL_TASKS,
    flatten_metrics,
    headline_metrics,
    matplotlib_available,
    write_report,
)
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
    model: ModelSource | None  # None when a prediction file was scored
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


def _proposals(config: EvalJobConfig) -> dict[str, SceneProposals] | None:
    """The configured instance proposals, read once (None when no evaluated task uses them).

    Raises:
        ProposalFormatError: the proposal file is missing or malformed.
    """
    if not config.uses_proposals:
        return None
    return load_proposals(config.proposals, config.proposals_format, config.proposals_scans_root)


def protocols_tag(results: Mapping[str, Any]) -> str:
    """``"scanrefer=free_form,proposals;scan2cap=gt_boxes"``: the protocols behind the run's numbers."""
    return ";".join(f"{task}={','.join(p for p in protocols if p in results[task])}"
                    for task, protocols in PROTOCOL_TASKS.items() if isinstance(results.get(task), Mapping))


def _write_config(out: str, config: EvalJobConfig, inputs: Mapping[str, str], extra: Mapping[str, Any]) -> None:
    storage.write_bytes(storage.join(out, CONFIG_NAME), json.dumps(
        {"config": config.to_dict(), "inputs": dict(inputs), **extra}, indent=1, sort_keys=True
    ).encode())


def _publish(results: Mapping[str, Any], predictions, gt, config: EvalJobConfig, out: str, tracking: str,
             inputs: Mapping[str, str], tags: Mapping[str, str], predictions_files: Mapping[str, bytes],
             run_name: str, registered: tuple[str, str] | None, say: Callable[[str], None]
             ) -> tuple[dict[str, float], TrackingOutcome]:
    """Write the report under ``out`` and log it as one MLflow run; returns the flat metrics and the outcome."""
    written = write_report(results, out, plots=config.plots)
    extra = _extra_outputs(results, predictions, gt, config)
    for name, data in extra.items():
        storage.write_bytes(storage.join(out, name), data)
    flat = flatten_metrics(results)
    say(f"report written to {out}; logging to MLflow at {tracking}")
    params = {**flatten_params(config.to_dict()), **{k: v[:6000] for k, v in inputs.items() if k != "model_local_dir"}}
    all_tags = {**tags, "protocols": protocols_tag(results), "output_uri": out}
    with tempfile.TemporaryDirectory(prefix="vidllm-eval-artifacts-") as tmp:
        files = {uri[len(out) + 1:]: storage.read_bytes(uri) for uri in written}
        files.update(extra)
        files.update(predictions_files)
        files[CONFIG_NAME] = storage.read_bytes(storage.join(out, CONFIG_NAME))
        for name, data in files.items():
            path = os.path.join(tmp, *name.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as f:
                f.write(data)
        outcome = log_evaluation(
            tracking, config.experiment, mlflow_metrics(flat), params, all_tags, tmp,
            artifact_root=local_artifact_location(tracking, out), run_name=run_name, registered_model=registered,
        )
    write_run_file(out, outcome)
    return flat, outcome


def _scored_tasks(config: EvalJobConfig, gt, having: set[str] | None = None) -> tuple[list[str], list[str]]:
    tasks = [t for t in config.tasks if _gt_present(gt, t) and (having is None or t in having)]
    skipped = [t for t in config.tasks if t not in tasks]
    return tasks, skipped


def _absolute(out: str) -> str:
    out = out.rstrip("/")
    return out if "://" in out else os.path.abspath(out)


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
        ProposalFormatError: the configured proposal file is missing or malformed.
    """
    started = time.perf_counter()

    def say(message: str) -> None:
        progress(f"[eval +{time.perf_counter() - started:6.1f} s] {message}")

    out = _absolute(out)
    plan_clips(data_uri, config.clip_index)  # fail on a bad --data before any download or Ray start
    annotations = _load_annotations(annotations_uri) if annotations_uri else None
    proposals = _proposals(config)
    tracking = resolve_tracking_uri(tracking_uri, out, "--mlflow-uri")  # (creates a local <out> for sqlite)
    say(f"resolving model {model_uri}")
    source = resolve_model(model_uri, tracking, config.cache_dir)
    inputs = {"model_uri": model_uri, "data_uri": data_uri, "annotations_uri": annotations_uri or "",
              "tracking_uri": tracking, "model_local_dir": source.local_dir}
    _write_config(out, config, inputs, {"model_tags": source.tags()})

    _init_ray(ray_address)
    collected = run_inference(model_uri, data_uri, out, config, tracking, annotations, say, proposals)
    pred_uri = predictions_uri(out)
    write_predictions(pred_uri, collected.records)
    predictions = load_predictions(pred_uri)  # the strict loader checks what we wrote
    gt = collected.ground_truth()
    tasks, skipped = _scored_tasks(config, gt)
    if skipped:
        log.warning("no ground truth in the evaluated clips for %s: not scored", skipped)
    say(f"scoring {len(predictions)} predictions on {tasks}")
    results = evaluate(predictions, gt, tasks, config.protocol, proposals=proposals)
    tags = {**source.tags(), "data_uri": data_uri, "manifest_sha256": _manifest_sha256(data_uri),
            "tasks": ",".join(tasks)}
    flat, outcome = _publish(
        results, predictions, gt, config, out, tracking, inputs, tags,
        {"predictions/predictions.jsonl": storage.read_bytes(pred_uri)},
        f"eval-{os.path.basename(source.local_dir.rstrip('/'))}",
        (source.registered_name, source.registered_version) if source.registered_name else None, say,
    )
    return EvalResult(out, results, flat, source, outcome, len(collected.transforms), collected.prompts, skipped,
                      time.perf_counter() - started)


def score_predictions(
    predictions_file: str,
    data_uri: str,
    out: str,
    config: EvalJobConfig,
    predictions_format: str = "vidllm",
    annotations_uri: str | None = None,
    tracking_uri: str | None = None,
    progress: Callable[[str], None] = print,
) -> EvalResult:
    """Score a prediction file (ours or another system's, :mod:`pipelines.eval.external`) without a model.

    The ground truth is that of the clips of ``data_uri`` a model run would evaluate (same config rules); the
    report, ``metrics.json`` and the MLflow run are those of a model run, tagged with the prediction file instead
    of a model. Tasks are scored when the file has predictions for them and the data has their ground truth.

    Raises:
        FileNotFoundError: the prediction file does not exist.
        PredictionFormatError: it is malformed (the message names the file, record and field).
        DataSourceError: ``--data`` / ``--annotations`` name no usable data.
        ProposalFormatError: the configured proposal file is missing or malformed.
    """
    started = time.perf_counter()

    def say(message: str) -> None:
        progress(f"[eval +{time.perf_counter() - started:6.1f} s] {message}")

    if predictions_format not in PREDICTION_FORMATS:
        raise ValueError(f"predictions format must be one of {PREDICTION_FORMATS}, got {predictions_format!r}")
    if predictions_format == "scan2cap" and len(config.protocol.captioning_protocols) != 1:
        raise ValueError("a scan2cap corpus belongs to one captioning protocol: configure exactly one "
                         f"(captioning_protocols is {list(config.protocol.captioning_protocols)})")
    if not storage.exists(predictions_file):
        raise FileNotFoundError(f"--predictions {predictions_file}: prediction file does not exist")
    out = _absolute(out)
    plan_clips(data_uri, config.clip_index)
    annotations = _load_annotations(annotations_uri) if annotations_uri else None
    proposals = _proposals(config)
    say(f"reading the ground truth of {data_uri}")
    collected = collect_ground_truth(data_uri, config, annotations)
    gt = collected.ground_truth()
    predictions = load_external_predictions(predictions_file, predictions_format, gt,
                                            config.protocol.captioning_protocols[0])
    tasks, skipped = _scored_tasks(config, gt, {p.task for p in predictions})
    if skipped:
        log.warning("no predictions or no ground truth for %s: not scored", skipped)
    say(f"scoring {len(predictions)} predictions on {tasks}")
    results = evaluate(predictions, gt, tasks, config.protocol, proposals=proposals)  # checks keys: before output
    tracking = resolve_tracking_uri(tracking_uri, out, "--mlflow-uri")  # (creates a local <out> for sqlite)
    raw = storage.read_bytes(predictions_file)
    inputs = {"predictions_uri": predictions_file, "predictions_format": predictions_format, "data_uri": data_uri,
              "annotations_uri": annotations_uri or "", "tracking_uri": tracking}
    _write_config(out, config, inputs, {"predictions_sha256": hashlib.sha256(raw).hexdigest()})
    tags = {"predictions_uri": predictions_file, "predictions_format": predictions_format,
            "predictions_sha256": hashlib.sha256(raw).hexdigest(), "data_uri": data_uri,
            "manifest_sha256": _manifest_sha256(data_uri), "tasks": ",".join(tasks)}
    name = posixpath.basename(predictions_file.rstrip("/"))
    flat, outcome = _publish(results, predictions, gt, config, out, tracking, inputs, tags,
                             {f"predictions/{name}": raw}, f"score-{name}", None, say)
    return EvalResult(out, results, flat, None, outcome, len(collected.transforms), 0, skipped,
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
