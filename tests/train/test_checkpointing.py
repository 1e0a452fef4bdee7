"""Unit tests of checkpoint selection: only directories whose COMPLETE.json verifies are ever chosen."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from pipelines.train.checkpointing import (
    MARKER,
    TrainState,
    checkpoint_dir_name,
    find_latest_complete,
    list_checkpoints,
    local_files,
    marker_payload,
    verify_checkpoint,
)


def _make(run: Path, step: int, marker: str = "ok") -> Path:
    d = run / checkpoint_dir_name(step)
    (d / "ds" / "engine").mkdir(parents=True)
    (d / "ds" / "engine" / "mp_rank_00_model_states.pt").write_bytes(b"m" * 100)
    (d / "ds" / "engine" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"o" * 50)
    (d / "train_state.json").write_text(json.dumps(TrainState(step, 0, step + 1).to_dict()))
    files = local_files(d)
    if marker == "ok":
        (d / MARKER).write_text(json.dumps(marker_payload(step, files)))
    elif marker == "corrupt":
        (d / MARKER).write_text("{not json")
    elif marker == "lists_missing_file":
        (d / MARKER).write_text(json.dumps(marker_payload(step, {**files, "ds/engine/zero_pp_rank_2.pt": 7})))
    elif marker == "wrong_size":
        (d / MARKER).write_text(json.dumps(marker_payload(step, {**files, "train_state.json": 1})))
    return d


@pytest.fixture
def fs():
    return pafs.LocalFileSystem()


def test_latest_complete_skips_newer_incomplete_ones(tmp_path, fs):
    _make(tmp_path, 1)
    good = _make(tmp_path, 3)
    _make(tmp_path, 5, marker="missing")
    _make(tmp_path, 7, marker="corrupt")
    _make(tmp_path, 9, marker="lists_missing_file")
    _make(tmp_path, 11, marker="wrong_size")
    (tmp_path / "not_a_checkpoint").mkdir()
    assert [s for s, _ in list_checkpoints(fs, str(tmp_path))] == [11, 9, 7, 5, 3, 1]
    assert find_latest_complete(fs, str(tmp_path)) == (3, str(good))


@pytest.mark.parametrize(
    ("marker", "reason"),
    [("missing", "missing"), ("corrupt", "unreadable"), ("lists_missing_file", "zero_pp_rank_2"),
     ("wrong_size", "bytes")],
)
def test_verify_reports_why(tmp_path, fs, marker, reason):
    d = _make(tmp_path, 2, marker=marker)
    ok, why = verify_checkpoint(fs, str(d))
    assert not ok and reason in why


def test_shard_deleted_after_marker_is_detected(tmp_path, fs):
    d = _make(tmp_path, 4)
    assert verify_checkpoint(fs, str(d)) == (True, "complete")
    (d / "ds" / "engine" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").unlink()
    assert find_latest_complete(fs, str(tmp_path)) is None


def test_no_run_dir_means_fresh_start(tmp_path, fs):
    assert find_latest_complete(fs, str(tmp_path / "absent")) is None


def test_load_refuses_incomplete_checkpoint(tmp_path, fs):
    from pipelines.train.checkpointing import load_checkpoint

    d = _make(tmp_path, 6, marker="missing")
    with pytest.raises(RuntimeError, match="refusing to load"):
        load_checkpoint(engine=None, fs=fs, path=str(d), rank=0)


def test_each_rank_loads_the_shared_files_and_only_its_own_shards():
    from pipelines.train.checkpointing import rank_files

    files = ["train_state.json", "ds/latest", "ds/engine/mp_rank_00_model_states.pt",
             *[f"ds/engine/zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1, 10, 11)],
             *[f"ds/engine/bf16_zero_pp_rank_{r}_mp_rank_00_optim_states.pt" for r in (0, 1)],
             "ds/engine/zero_pp_rank_1_mp_rank_00_model_states.pt"]
    shared = files[:3]
    assert rank_files(files, 1) == [*shared, "ds/engine/zero_pp_rank_1_mp_rank_00_optim_states.pt",
                                    "ds/engine/bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt",
                                    "ds/engine/zero_pp_rank_1_mp_rank_00_model_states.pt"]
    assert rank_files(files, 10) == [*shared, "ds/engine/zero_pp_rank_10_mp_rank_00_optim_states.pt"]
    assert rank_files(files, 2) == shared


def test_train_state_validation():
    assert TrainState.from_dict({"step": 3, "epoch": 1, "micro_in_epoch": 2}) == TrainState(3, 1, 2)
    with pytest.raises(ValueError, match="train_state.json"):
        TrainState.from_dict({"step": 3})
