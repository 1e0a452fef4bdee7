"""Checkpoints through Ray Train with a completion marker written last, and selection of the latest complete one.

Layout under the Ray Train run directory (``RunConfig(storage_path, name)`` -> ``experiment_fs_path``)::

    checkpoint_step00000004/
        ds/...                     DeepSpeed files of every rank (``mp_rank_*``, ``zero_pp_rank_*``, ``latest``)
        train_state.json           step, epoch, micro-batches consumed in the epoch (the data position)
        COMPLETE.json              marker: step + every expected file with its size; written LAST by rank 0

Protocol (:func:`save_checkpoint`): every rank saves its DeepSpeed shard into a local temporary dir and passes it to
``ray.train.report(checkpoint=..., checkpoint_dir_name=...)``; Ray uploads synchronously inside ``report`` and
merges all ranks' files into one directory. The ranks then exchange their file lists (``all_gather_object``), and
after a barrier rank 0 checks every listed file is in storage with the right size and only then writes
``COMPLETE.json``. A crash anywhere before that leaves a directory without a marker.

Restore: each rank downloads only what it loads (:func:`rank_files`): the training state, DeepSpeed's shared files
(``latest``; under ZeRO-1/2 the module states ``mp_rank_00_model_states.pt``, which every rank holds in full) and
its own ``zero_pp_rank_<rank>_*`` shards, never the other ranks' (for the paper-size model each rank's optimizer
shard is ~12 GB and a whole checkpoint ~100 GB). :func:`find_latest_complete` lists the run directory itself instead
of trusting
``ray.train.get_checkpoint()``: Ray registers a checkpoint as soon as the upload of ``report`` ends (asynchronously
to the controller), which can be before the marker exists. A directory whose marker is missing,
unparsable or lists a file that is absent or of the wrong size is never loaded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

logger = logging.getLogger(__name__)

MARKER = "COMPLETE.json"
STATE_FILE = "train_state.json"
DS_SUBDIR = "ds"
DS_TAG = "engine"
_DIR_RE = re.compile(r"^checkpoint_step(\d{8})$")
_RANK_FILE_RE = re.compile(r"zero_pp_rank_(\d+)_")


def checkpoint_dir_name(step: int) -> str:
    """Directory name of the checkpoint taken after optimizer step ``step`` (zero-padded so names sort)."""
    return f"checkpoint_step{step:08d}"


@dataclass(frozen=True)
class TrainState:
    """Where training stands: resume at ``step + 1``, skipping ``micro_in_epoch`` micro-batches of ``epoch``.

    Attributes:
        step: last finished optimizer step (0-based).
        epoch: epoch the next micro-batch belongs to.
        micro_in_epoch: micro-batches of ``epoch`` already consumed on every rank.
    """

    step: int
    epoch: int
    micro_in_epoch: int

    def to_dict(self) -> dict[str, int]:
        return {"step": self.step, "epoch": self.epoch, "micro_in_epoch": self.micro_in_epoch}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainState:
        try:
            return cls(int(data["step"]), int(data["epoch"]), int(data["micro_in_epoch"]))
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{STATE_FILE}: bad train state {dict(data)!r}: {err}") from err


def local_files(root: str | Path) -> dict[str, int]:
    """Relative path -> size of every file under ``root``."""
    root = Path(root)
    return {p.relative_to(root).as_posix(): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def marker_payload(step: int, files: Mapping[str, int]) -> dict[str, Any]:
    return {"step": step, "files": dict(sorted(files.items()))}


def verify_checkpoint(fs: pafs.FileSystem, path: str) -> tuple[bool, str]:
    """Whether the checkpoint directory ``path`` is complete; the reason when it is not.

    Complete means: ``COMPLETE.json`` parses, and every file it lists exists with the listed size.
    """
    marker_path = f"{path}/{MARKER}"
    if fs.get_file_info(marker_path).type != pafs.FileType.File:
        return False, f"{MARKER} missing"
    try:
        with fs.open_input_stream(marker_path) as f:
            marker = json.loads(f.read())
        files = dict(marker["files"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return False, f"{MARKER} unreadable: {err}"
    infos = fs.get_file_info([f"{path}/{rel}" for rel in files])
    for (rel, size), info in zip(files.items(), infos, strict=True):
        if info.type != pafs.FileType.File:
            return False, f"listed file {rel} missing"
        if info.size != size:
            return False, f"listed file {rel} has {info.size} bytes, marker says {size}"
    return True, "complete"


def list_checkpoints(fs: pafs.FileSystem, run_path: str) -> list[tuple[int, str]]:
    """``(step, path)`` of every checkpoint-like directory under the run directory, newest first."""
    if fs.get_file_info(run_path).type != pafs.FileType.Directory:
        return []
    found = []
    for info in fs.get_file_info(pafs.FileSelector(run_path, recursive=False)):
        match = _DIR_RE.match(info.base_name)
        if info.type == pafs.FileType.Directory and match:
            found.append((int(match.group(1)), info.path))
    return sorted(found, reverse=True)


def find_latest_complete(fs: pafs.FileSystem, run_path: str) -> tuple[int, str] | None:
    """The newest checkpoint directory that passes :func:`verify_checkpoint`, or ``None``.

    Incomplete directories are skipped with a warning naming the reason.
    """
    for step, path in list_checkpoints(fs, run_path):
        ok, reason = verify_checkpoint(fs, path)
        if ok:
            return step, path
        logger.warning("skipping checkpoint %s: %s", path, reason)
    return None


def save_checkpoint(engine, state: TrainState, metrics: dict[str, Any]) -> None:
    """Save a checkpoint on every rank, report it to Ray Train, then write the marker (rank 0, after a barrier).

    Must be called by all ranks at the same step (DeepSpeed's save and Ray's report are collective).

    Args:
        engine: the DeepSpeed engine.
        state: training position stored with the checkpoint.
        metrics: reported to Ray Train with the checkpoint (rank 0's are kept).
    """
    import ray.train
    import torch.distributed as dist

    name = checkpoint_dir_name(state.step)
    rank = dist.get_rank()
    with tempfile.TemporaryDirectory(prefix="vidllm-ckpt-") as tmp:
        engine.save_checkpoint(os.path.join(tmp, DS_SUBDIR), tag=DS_TAG, client_state=state.to_dict())
        if rank == 0:
            Path(tmp, STATE_FILE).write_text(json.dumps(state.to_dict()))
        mine = local_files(tmp)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp), checkpoint_dir_name=name)
    gathered: list[dict[str, int] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    dist.barrier()  # every rank's upload inside report() has returned
    if rank == 0:
        storage = ray.train.get_context().get_storage()
        fs, path = storage.storage_filesystem, f"{storage.experiment_fs_path}/{name}"
        expected: dict[str, int] = {}
        for files in gathered:
            expected.update(files or {})
        infos = fs.get_file_info([f"{path}/{rel}" for rel in expected])
        missing = [rel for rel, info in zip(expected, infos, strict=True) if info.type != pafs.FileType.File]
        if missing:
            raise RuntimeError(f"checkpoint {path}: files missing after upload: {missing}")
        with fs.open_output_stream(f"{path}/{MARKER}") as f:
            f.write(json.dumps(marker_payload(state.step, expected), indent=1).encode())
    dist.barrier()


def rank_files(files: list[str], rank: int) -> list[str]:
    """The files of a checkpoint (relative paths, as its marker lists them) that data-parallel ``rank`` loads:
    everything but the other ranks' ``zero_pp_rank_<r>_*`` shards."""
    mine = []
    for rel in files:
        match = _RANK_FILE_RE.search(rel.rsplit("/", 1)[-1])
        if match is None or int(match.group(1)) == rank:
            mine.append(rel)
    return mine


def load_checkpoint(engine, fs: pafs.FileSystem, path: str, rank: int) -> TrainState:
    """Load the complete checkpoint at ``path`` into ``engine`` and return its train state; ``rank`` downloads only
    its :func:`rank_files`.

    Raises:
        RuntimeError: when the checkpoint fails :func:`verify_checkpoint` (checked again here, on every rank).
    """
    ok, reason = verify_checkpoint(fs, path)
    if not ok:
        raise RuntimeError(f"refusing to load checkpoint {path}: {reason}")
    with fs.open_input_stream(f"{path}/{MARKER}") as f:
        listed = sorted(json.loads(f.read())["files"])
    with tempfile.TemporaryDirectory(prefix="vidllm-restore-") as tmp:
        for rel in rank_files(listed, rank):
            local = Path(tmp, rel)
            local.parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(f"{path}/{rel}", str(local), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())
        load_path, client_state = engine.load_checkpoint(os.path.join(tmp, DS_SUBDIR), tag=DS_TAG)
        if load_path is None:
            raise RuntimeError(f"DeepSpeed could not load checkpoint {path}")
        state = TrainState.from_dict(json.loads(Path(tmp, STATE_FILE).read_text()))
    if int(client_state.get("step", -1)) != state.step:
        raise RuntimeError(f"checkpoint {path}: engine step {client_state.get('step')} != {STATE_FILE} {state}")
    return state
