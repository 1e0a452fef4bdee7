"""Evaluation report: the harness's nested result dict as flat metrics, a Markdown summary and bar-chart plots.

:func:`write_report` writes, under one directory (local path or fsspec URI):

* ``results.json``: the nested result of :func:`pipelines.eval.harness.evaluate`, protocol config included;
* ``metrics.json``: the same numbers flattened to ``"task/split/metric"`` keys (what a tracker logs);
* ``summary.md``: the headline metrics of the paper's tables, next to Vid-LLM's published values;
* ``plots/<task>.png``: one bar chart per evaluated task (only when matplotlib is installed; it is an optional
  dependency, drawn through ``matplotlib.figure.Figure`` so no global pyplot state or backend is touched).
"""

from __future__ import annotations

import importlib.util
import io
import json
from collections.abc import Mapping
from typing import Any

from pipelines import storage

# (task, path in the result dict, label). The headline columns of Vid-LLM's and its peers' tables.
HEADLINE: tuple[tuple[str, tuple[str, ...], str], ...] = (
    ("scanqa", ("cider",), "ScanQA CIDEr"),
    ("scanqa", ("bleu4",), "ScanQA BLEU-4"),
    ("scanqa", ("meteor",), "ScanQA METEOR"),
    ("scanqa", ("rouge_l",), "ScanQA ROUGE-L"),
    ("scanqa", ("em",), "ScanQA EM@1"),
    ("sqa3d", ("em",), "SQA3D EM@1"),
    ("sqa3d", ("em_refined",), "SQA3D EM-R"),
    ("scan2cap", ("@0.5", "cider"), "Scan2Cap CIDEr@0.5"),
    ("scan2cap", ("@0.5", "bleu4"), "Scan2Cap BLEU-4@0.5"),
    ("scan2cap", ("@0.5", "meteor"), "Scan2Cap METEOR@0.5"),
    ("scan2cap", ("@0.5", "rouge_l"), "Scan2Cap ROUGE-L@0.5"),
    ("scanrefer", ("overall", "acc@0.25"), "ScanRefer Acc@0.25"),
    ("scanrefer", ("overall", "acc@0.5"), "ScanRefer Acc@0.5"),
    ("multi3drefer", ("overall", "f1@0.25"), "Multi3DRefer F1@0.25"),
    ("multi3drefer", ("overall", "f1@0.5"), "Multi3DRefer F1@0.5"),
    ("reconstruction", ("depth", "abs_rel"), "Depth AbsRel (metric)"),
    ("reconstruction", ("depth", "delta1"), "Depth delta<1.25 (metric)"),
    ("reconstruction", ("pose", "auc@30"), "Pose AUC@30"),
)

# Vid-LLM's published values (secondary source, see the reference notes §1.9); for orientation only.
PAPER_VALUES: dict[str, float] = {
    "ScanQA CIDEr": 101.9,
    "ScanQA EM@1": 27.6,
    "SQA3D EM@1": 57.3,
    "Scan2Cap CIDEr@0.5": 80.6,
    "Scan2Cap METEOR@0.5": 28.7,
    "ScanRefer Acc@0.25": 55.8,
}


def flatten_metrics(results: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Numeric leaves of the result dict as ``{"task/split/metric": value}`` (``config`` and None values skipped).

    ``@`` is kept in keys; callers whose tracker forbids it (MLflow allows ``[A-Za-z0-9_\\-. /]``) map it.
    """
    out: dict[str, float] = {}
    for key, value in results.items():
        if not prefix and key == "config":
            continue
        name = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            out.update(flatten_metrics(value, name))
        elif isinstance(value, bool):
            continue
        elif isinstance(value, int | float):
            out[name] = float(value)
    return out


def _lookup(results: Mapping[str, Any], task: str, path: tuple[str, ...]) -> float | None:
    node: Any = results.get(task)
    for part in path:
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return float(node) if isinstance(node, int | float) and not isinstance(node, bool) else None


def headline_metrics(results: Mapping[str, Any]) -> dict[str, float]:
    """The headline metrics present in ``results``, by table label."""
    out = {}
    for task, path, label in HEADLINE:
        value = _lookup(results, task, path)
        if value is not None:
            out[label] = value
    return out


def summary_markdown(results: Mapping[str, Any]) -> str:
    """A Markdown table of the headline metrics next to the paper's values, plus the protocol config."""
    lines = ["| Metric | This run | Vid-LLM (paper) |", "|---|---:|---:|"]
    for label, value in headline_metrics(results).items():
        paper = PAPER_VALUES.get(label)
        lines.append(f"| {label} | {value:.2f} | {'' if paper is None else f'{paper:.1f}'} |")
    config = json.dumps(results.get("config", {}), sort_keys=True)
    return "\n".join([*lines, "", f"Protocol: `{config}`", ""])


def matplotlib_available() -> bool:
    """Whether plots can be drawn (matplotlib is optional)."""
    return importlib.util.find_spec("matplotlib") is not None


def plot_task(results: Mapping[str, Any], task: str) -> bytes:
    """PNG bytes of a bar chart of one task's flat metrics (counts excluded).

    Raises:
        ModuleNotFoundError: matplotlib is not installed.
        KeyError: the task is not in ``results``.
    """
    from matplotlib.figure import Figure

    if task not in results:
        raise KeyError(f"task {task!r} is not in the results (have {sorted(results)})")
    flat = {
        k: v
        for k, v in flatten_metrics({task: results[task]}).items()
        if not k.rsplit("/", 1)[-1].startswith(("count", "num_", "answered", "matched", "median_scale"))
    }
    fig = Figure(figsize=(max(4.0, 0.45 * len(flat) + 1.5), 4.0), layout="constrained")
    ax = fig.subplots()
    labels = [k.split("/", 1)[1] for k in flat]
    bars = ax.bar(range(len(flat)), list(flat.values()), color="tab:blue")
    ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(range(len(flat)), labels, rotation=60, ha="right", fontsize=7)
    ax.set_title(task)
    ax.set_ylabel("score (% unless a ratio)")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


def write_report(results: Mapping[str, Any], out_dir: str, plots: bool = True) -> list[str]:
    """Write ``results.json``, ``metrics.json``, ``summary.md`` and (if possible) per-task plots.

    Args:
        results: the dict returned by :func:`pipelines.eval.harness.evaluate`.
        out_dir: directory path or URI.
        plots: draw ``plots/<task>.png`` when matplotlib is installed.

    Returns:
        The URIs written.
    """
    written = []

    def put(name: str, data: bytes) -> None:
        uri = storage.join(out_dir, name)
        storage.write_bytes(uri, data)
        written.append(uri)

    put("results.json", json.dumps(results, indent=2, sort_keys=True).encode())
    put("metrics.json", json.dumps(flatten_metrics(results), indent=2, sort_keys=True).encode())
    put("summary.md", summary_markdown(results).encode())
    if plots and matplotlib_available():
        for task in results:
            if task != "config" and isinstance(results[task], Mapping):
                put(f"plots/{task}.png", plot_task(results, task))
    return written
