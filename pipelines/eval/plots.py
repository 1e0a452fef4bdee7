"""Figures and examples of an evaluation run, beyond the per-task bar charts of :mod:`pipelines.eval.report`.

* :func:`task_scores_png`: the headline metric of every evaluated table in one chart;
* :func:`depth_error_png`: histogram of the per-pixel relative depth error ``|d - d*| / d*`` (metric scale) over
  every valid ground-truth pixel of every evaluated clip;
* :func:`examples_png`: a few grounding queries drawn top-down (x-y plane of the axis-aligned scene frame): every
  annotated object of the scene in grey, the target in green, the predicted top-1 box in red, with the scene id,
  the description and the IoU in the title;
* :func:`examples_markdown`: the same queries plus a few QA answers and captions as text.

Figures are drawn through ``matplotlib.figure.Figure`` (no pyplot, no global backend state).
"""

from __future__ import annotations

import io
import textwrap
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pipelines.eval.groundtruth import GroundTruth
from pipelines.eval.metrics.boxes import box_iou_matrix
from pipelines.eval.predictions import (
    AnswerPrediction,
    BoxPrediction,
    CaptionPrediction,
    Prediction,
    ReconstructionPrediction,
)
from pipelines.eval.report import headline_metrics


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def task_scores_png(results: Mapping[str, Any]) -> bytes:
    """Horizontal bars of the headline metrics present in ``results``."""
    from matplotlib.figure import Figure

    head = headline_metrics(results)
    fig = Figure(figsize=(7.0, max(2.0, 0.35 * len(head) + 1.0)), layout="constrained")
    ax = fig.subplots()
    labels = list(head)
    bars = ax.barh(range(len(head)), list(head.values()), color="tab:green")
    ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_yticks(range(len(head)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("score (% unless a ratio)")
    ax.set_title("Headline metrics per task")
    return _png(fig)


def relative_depth_errors(predictions: Sequence[Prediction], gt: GroundTruth) -> np.ndarray:
    """``|d - d*| / d*`` over the valid (``> 0``, finite) ground-truth pixels of every clip with a prediction."""
    by_scene = {p.scene_id: p for p in predictions if isinstance(p, ReconstructionPrediction) and p.depth is not None}
    errors = []
    for target in gt.reconstruction:
        pred = by_scene.get(target.scene_id)
        if pred is None or target.depth is None or pred.depth.shape != target.depth.shape:
            continue
        valid = np.isfinite(target.depth) & (target.depth > 0)
        errors.append(np.abs(pred.depth[valid] - target.depth[valid]) / target.depth[valid])
    return np.concatenate(errors) if errors else np.zeros(0)


def depth_error_png(predictions: Sequence[Prediction], gt: GroundTruth) -> bytes:
    """Histogram of the relative depth error (AbsRel's per-pixel term); 1.25 marks the delta1 bound region."""
    from matplotlib.figure import Figure

    err = relative_depth_errors(predictions, gt)
    fig = Figure(figsize=(6.0, 3.5), layout="constrained")
    ax = fig.subplots()
    if err.size:
        ax.hist(np.clip(err, 0.0, 2.0), bins=50, color="tab:orange")
        ax.axvline(float(np.mean(err)), color="k", linestyle="--", label=f"AbsRel {np.mean(err):.3f}")
        ax.legend()
    ax.set_xlabel("|d - d*| / d*  (clipped at 2)")
    ax.set_ylabel("pixels")
    ax.set_title(f"Metric depth error, {err.size} valid pixels")
    return _png(fig)


def _grounding_examples(predictions: Sequence[Prediction], gt: GroundTruth, n: int
                        ) -> list[tuple[str, str, np.ndarray, np.ndarray, float]]:
    """``(scene_id, description, target [6], predicted top-1 [0|1, 6], IoU)`` of the first ``n`` queries."""
    index = {(p.scene_id, p.ann_id): p for p in predictions if isinstance(p, BoxPrediction) and p.task == "scanrefer"}
    out = []
    for item in gt.scanrefer[:n]:
        pred = index.get((item.scene_id, item.ann_id))
        target = gt.boxes[(item.scene_id, item.object_ids[0])]
        top = pred.top1() if pred is not None else np.zeros((0, 6))
        iou = float(box_iou_matrix(top, target[None])[0, 0]) if top.shape[0] else 0.0
        out.append((item.scene_id, item.description, target, top, iou))
    return out


def examples_png(predictions: Sequence[Prediction], gt: GroundTruth, n: int = 4) -> bytes:
    """Top-down drawings of the first ``n`` ScanRefer queries (see the module docstring)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    examples = _grounding_examples(predictions, gt, n)
    cols = max(1, min(2, len(examples)))
    rows = max(1, (len(examples) + cols - 1) // cols)
    fig = Figure(figsize=(5.0 * cols, 4.6 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax, (scene_id, text, target, top, iou) in zip(axes, examples, strict=False):
        scene_boxes = [b for (s, _), b in gt.boxes.items() if s == scene_id]
        drawn = [*scene_boxes, target, *top]
        for box, colour, width in ([(b, "0.6", 0.8) for b in scene_boxes] + [(target, "tab:green", 2.0)]
                                   + [(b, "tab:red", 2.0) for b in top]):
            ax.add_patch(Rectangle((box[0] - box[3] / 2, box[1] - box[4] / 2), box[3], box[4], fill=False,
                                   edgecolor=colour, linewidth=width))
        lo = np.min([b[:2] - b[3:5] / 2 for b in drawn], axis=0) - 0.3
        hi = np.max([b[:2] + b[3:5] / 2 for b in drawn], axis=0) + 0.3
        ax.set_xlim(lo[0], hi[0])
        ax.set_ylim(lo[1], hi[1])
        ax.set_aspect("equal")
        ax.set_xlabel("x (m)")
        ax.set_ylabel("y (m)")
        ax.set_title(f"{scene_id}  IoU {iou:.2f}\n" + textwrap.shorten(text, 70), fontsize=8)
    for ax in axes[len(examples):]:
        ax.set_axis_off()
    return _png(fig)


def examples_markdown(predictions: Sequence[Prediction], gt: GroundTruth, n: int = 4) -> str:
    """A few predictions next to their ground truth, per task, as Markdown."""
    answers = {(p.task, p.question_id): p.answer for p in predictions if isinstance(p, AnswerPrediction)}
    lines = ["# Example predictions", ""]
    for task in ("scanqa", "sqa3d"):
        items = getattr(gt, task)[:n]
        if items:
            lines += [f"## {task}", "", "| scene | question | prediction | ground truth |", "|---|---|---|---|"]
            lines += [f"| {i.scene_id} | {i.question} | {answers.get((task, i.question_id), '')} | "
                      f"{' / '.join(i.answers)} |" for i in items]
            lines.append("")
    grounding = _grounding_examples(predictions, gt, n)
    if grounding:
        lines += ["## scanrefer", "", "| scene | description | target box | predicted box | IoU |", "|---|---|---|---|---|"]
        lines += [f"| {s} | {d} | {np.round(t, 2).tolist()} | {np.round(p, 2).tolist()} | {iou:.2f} |"
                  for s, d, t, p, iou in grounding]
        lines.append("")
    captions = [(p.scene_id, b, c) for p in predictions if isinstance(p, CaptionPrediction)
                for b, c in zip(p.boxes, p.captions, strict=True)][:n]
    if captions:
        lines += ["## scan2cap", "", "| scene | box | caption |", "|---|---|---|"]
        lines += [f"| {s} | {np.round(b, 2).tolist()} | {c} |" for s, b, c in captions]
        lines.append("")
    return "\n".join(lines)
