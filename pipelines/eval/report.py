"""Evaluation report: the harness's nested result dict as flat metrics, a Markdown summary and bar-chart plots.

:func:`write_report` writes, under one directory (local path or fsspec URI):

* ``results.json``: the nested result of :func:`pipelines.eval.harness.evaluate`, protocol config included;
* ``metrics.json``: the same numbers flattened to ``/``-joined keys (what a tracker logs), e.g.
  ``scanrefer/proposals/unique/acc@0.25`` or ``scanqa/by_family/counting/em``; the key grammar is documented in
  ``docs/evaluation.md``;
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
from pipelines.eval.predictions import CAPTIONING_PROTOCOLS, GROUNDING_PROTOCOLS

# (task, path in the result dict below the protocol level, label). The headline columns of Vid-LLM's and its
# peers' tables. Tasks in PROTOCOL_TASKS nest their numbers by protocol; their rows repeat per protocol present.
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
#: Tasks whose results nest by protocol (``results[task][protocol]``), in the order rows are listed.
PROTOCOL_TASKS: dict[str, tuple[str, ...]] = {
    "scanrefer": GROUNDING_PROTOCOLS, "multi3drefer": GROUNDING_PROTOCOLS, "scan2cap": CAPTIONING_PROTOCOLS,
}

# Vid-LLM's published values (the paper's result tables, arXiv 2509.24385); for orientation only. The paper
# scores ScanRefer and Scan2Cap with Mask3D proposals, so their values stand only next to the proposals rows.
PAPER_VALUES: dict[str, float] = {
    "ScanQA CIDEr": 101.9,
    "ScanQA EM@1": 27.6,
    "SQA3D EM@1": 57.3,
    "Scan2Cap CIDEr@0.5 [proposals]": 80.6,
    "Scan2Cap METEOR@0.5 [proposals]": 28.7,
    "ScanRefer Acc@0.25 [proposals]": 55.8,
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
    """The headline metrics present in ``results``, by table label; rows of protocol tasks are labelled
    ``"<label> [<protocol>]"`` (e.g. ``"ScanRefer Acc@0.25 [proposals]"``)."""
    out = {}
    for task, path, label in HEADLINE:
        if task in PROTOCOL_TASKS:
            for protocol in PROTOCOL_TASKS[task]:
                value = _lookup(results, task, (protocol, *path))
                if value is not None:
                    out[f"{label} [{protocol}]"] = value
            continue
        value = _lookup(results, task, path)
        if value is not None:
            out[label] = value
    return out


def family_rows(results: Mapping[str, Any]) -> list[tuple[str, str, float, float, int]]:
    """``(task, family, EM, EM-R, count)`` of every QA task's ``by_family`` breakdown."""
    rows = []
    for task in ("scanqa", "sqa3d"):
        for family, row in sorted((results.get(task) or {}).get("by_family", {}).items()):
            rows.append((task, family, float(row["em"]), float(row["em_refined"]), int(row["count"])))
    return rows


def summary_markdown(results: Mapping[str, Any]) -> str:
    """A Markdown table of the headline metrics next to the paper's values, per-family QA, and the protocol config.

    Grounding and captioning rows name their protocol in brackets: ``free_form`` (predicted boxes as they are),
    ``gt_boxes`` (captions of the ground-truth boxes given in the prompt) or ``proposals`` (instance proposals, the
    paper's protocol); the paper's values are shown only next to comparable rows.
    """
    lines = ["| Metric | This run | Vid-LLM (paper) |", "|---|---:|---:|"]
    for label, value in headline_metrics(results).items():
        paper = PAPER_VALUES.get(label)
        lines.append(f"| {label} | {value:.2f} | {'' if paper is None else f'{paper:.1f}'} |")
    families = family_rows(results)
    if families:
        lines += ["", "| QA task | Question family | EM@1 | EM-R | Questions |", "|---|---|---:|---:|---:|"]
        lines += [f"| {t} | {f} | {em:.2f} | {emr:.2f} | {n} |" for t, f, em, emr, n in families]
    cfg = results.get("config", {})
    protocols = (f"Protocols: grounding {', '.join(cfg.get('grounding_protocols', []))}; "
                 f"captioning {', '.join(cfg.get('captioning_protocols', []))}")
    config = json.dumps(cfg, sort_keys=True)
    return "\n".join([*lines, "", protocols, "", f"Protocol config: `{config}`", ""])


def matplotlib_available() -> bool:
    """Whether plots can be drawn (matplotlib is optional)."""
    return importlib.util.find_spec("matplotlib") is not None


# Counters, not scores: left out of the bar charts.
_NOT_PLOTTED = ("count", "num_", "answered", "matched", "median_scale", "scenes_missing")


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
        if not k.rsplit("/", 1)[-1].startswith(_NOT_PLOTTED)
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
