"""Disk a training run writes on this machine, estimated before it starts so that a run too big for the disk fails
at start-up naming the location, instead of minutes or hours later inside a checkpoint write.

What a run writes (sizes from the parameter counts; ``width`` is 2 bytes under bf16, else 4):

=====================  ===================================================  ========================================
what                   bytes                                                where
=====================  ===================================================  ========================================
checkpoint             ``total * width`` (module states) + ``trainable *    ``run.storage_path``; while one is
                       12`` (fp32 master weights and Adam's two moments)    saved, also its staging copy in the
                                                                            temporary directory (Ray Train uploads
                                                                            from there)
export                 ``total * 4`` (fp32 safetensors)                     ``run.output_dir``; again in the MLflow
                                                                            artifact store when the tracking store
                                                                            is local, and once more, while it is
                                                                            packaged, in the temporary directory
                                                                            (twice when ``run.output_dir`` is
                                                                            remote: download, then package)
=====================  ===================================================  ========================================

Ray Train keeps ``run.num_checkpoints_to_keep`` checkpoints and deletes the oldest only after a new one is
complete, so one more than that can exist at once (never more than the run saves). The checkpoint size is an upper
bound: it is exact for ZeRO-1/2 runs whose trainable parameters are few (measured: Stage 1 of the real-weight demo,
238 M parameters of which 27 M train, 1.28 GB on disk, 1.28 GB estimated) and about a third high when most of the
model trains (its Stage 2: 2.68 GB on disk, 3.55 GB estimated). Checkpoints on object storage (``s3://``) and
their staging on the workers of other nodes are not counted: only locations on this machine are.

The two phases of a run, saving a checkpoint and exporting at the end, do not overlap, so a file system needs the
larger of its two sums.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass

from pipelines.artifacts import is_local
from pipelines.tracking import local_artifact_location
from pipelines.train.config import TrainConfig
from pipelines.train.memory import GIB

#: Bytes per trainable parameter in a checkpoint's optimizer state: fp32 master weights, Adam's exp_avg and
#: exp_avg_sq.
OPTIMIZER_BYTES = 12
TEMP_DIR = "the temporary directory"


@dataclass(frozen=True)
class DiskUse:
    """Bytes one location needs in one phase of the run.

    Attributes:
        path: the local directory written.
        what: the config field (or :data:`TEMP_DIR`) that names it.
        phase: ``"checkpoint"`` (while a checkpoint is saved) or ``"export"`` (at the end).
        bytes: bytes written there, at most.
    """

    path: str
    what: str
    phase: str
    bytes: float


def checkpoint_bytes(total_params: int, trainable_params: int, bf16: bool) -> float:
    """Upper bound of one checkpoint's bytes, all ranks together."""
    return total_params * (2 if bf16 else 4) + trainable_params * OPTIMIZER_BYTES


def checkpoints_saved(total_steps: int | None, every: int) -> int | None:
    """Checkpoints a run of ``total_steps`` saves (every ``every`` steps and at the last); ``None`` when unknown."""
    if not total_steps:
        return None
    return total_steps // every + (1 if total_steps % every else 0)


def _local(uri: str) -> str | None:
    """The absolute local path of a local path or ``file://`` URI; ``None`` for object storage or empty."""
    return os.path.abspath(uri.removeprefix("file://")) if uri and is_local(uri) else None


def disk_uses(cfg: TrainConfig, total_params: int, trainable_params: int, bf16: bool, total_steps: int | None,
              tracking_uri: str) -> list[DiskUse]:
    """Everything the run writes on this machine's disks, by location and phase (see the module table)."""
    checkpoint = checkpoint_bytes(total_params, trainable_params, bf16)
    export = total_params * 4.0
    saved = checkpoints_saved(total_steps, cfg.schedule.checkpoint_every)
    keep = cfg.run.num_checkpoints_to_keep
    alive = keep + 1 if saved is None else min(keep + 1, saved)
    kept = keep if saved is None else min(keep, saved)
    uses: list[DiskUse] = []
    storage_path = _local(cfg.run.storage_path)
    if storage_path:
        uses += [DiskUse(storage_path, "run.storage_path", "checkpoint", alive * checkpoint),
                 DiskUse(tempfile.gettempdir(), TEMP_DIR, "checkpoint", checkpoint),
                 DiskUse(storage_path, "run.storage_path", "export", kept * checkpoint)]
    output_dir = _local(cfg.run.output_dir)
    if output_dir:
        local_store = local_artifact_location(tracking_uri, output_dir) is not None
        uses.append(DiskUse(output_dir, "run.output_dir", "export", export * (2 if local_store else 1)))
    # MLflow packages the export from a local copy: the export itself when local, else a download of it first.
    uses.append(DiskUse(tempfile.gettempdir(), TEMP_DIR, "export", export * (1 if output_dir else 2)))
    return uses


def _existing(path: str) -> str:
    """``path`` or its nearest existing ancestor (the run creates the rest)."""
    while not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def check_disk(uses: list[DiskUse]) -> tuple[list[str], list[str]]:
    """``(plan lines, problems)``: per file system, the larger phase's sum against its free bytes now."""
    by_device: dict[int, dict[str, list[DiskUse]]] = {}
    anchor: dict[int, str] = {}
    for use in uses:
        existing = _existing(use.path)
        device = os.stat(existing).st_dev
        anchor.setdefault(device, existing)
        by_device.setdefault(device, {}).setdefault(use.phase, []).append(use)
    lines, problems = [], []
    for device, phases in by_device.items():
        phase, worst = max(phases.items(), key=lambda item: sum(u.bytes for u in item[1]))
        need = sum(u.bytes for u in worst)
        free = shutil.disk_usage(anchor[device]).free
        parts = ", ".join(f"{u.what} {u.path} {u.bytes / GIB:.2f} GiB" for u in worst if u.bytes)
        lines.append(f"disk: up to {need / GIB:.2f} GiB while the {phase} is written ({parts}); "
                     f"{free / GIB:.1f} GiB free")
        if need > free:
            largest = max((u for u in worst if u.what != TEMP_DIR), key=lambda u: u.bytes, default=None)
            where = f"train config field {largest.what!r}" if largest else f"{TEMP_DIR} {anchor[device]}"
            problems.append(
                f"{where}: the run writes up to {need / GIB:.2f} GiB on the file system of {anchor[device]} "
                f"({parts}), which has {free / GIB:.2f} GiB free: free space, lower run.num_checkpoints_to_keep, "
                "put run.storage_path and run.output_dir on object storage (s3://) or a bigger disk, or point "
                "TMPDIR at one")
    return lines, problems
