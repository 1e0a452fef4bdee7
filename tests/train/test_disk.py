"""The disk a training run writes on this machine is estimated from its parameter counts and checked against the
real free space before Ray starts: a run that cannot fit stops with one line naming the location; a dry run only
reports it."""

from __future__ import annotations

import dataclasses
import re
import shutil
import tempfile

import pytest

from pipelines.train.config import resolve_config
from pipelines.train.disk import GIB, TEMP_DIR, check_disk, checkpoint_bytes, checkpoints_saved, disk_uses


def test_a_checkpoint_is_module_states_plus_fp32_master_and_adam_moments():
    # The real-weight demo's Stage 1: 238.31 M parameters, 27.09 M train; 1.28 GB measured on disk.
    assert checkpoint_bytes(238_310_000, 27_090_000, bf16=False) == pytest.approx(1.278e9, rel=1e-3)
    assert checkpoint_bytes(1000, 10, bf16=True) == 2 * 1000 + 12 * 10
    assert [checkpoints_saved(n, 4) for n in (1, 4, 8, 10)] == [1, 1, 2, 3]
    assert checkpoints_saved(None, 4) is None and checkpoints_saved(0, 4) is None


def _config(tmp_path, *sets: str):
    return resolve_config(["tiny"], [f"run.storage_path={tmp_path / 'ray'}", f"run.output_dir={tmp_path / 'out'}",
                                     *sets], stage=1)


def test_what_each_location_holds_in_each_phase(tmp_path):
    cfg = _config(tmp_path, "run.num_checkpoints_to_keep=3", "schedule.checkpoint_every=10")
    ckpt, export = checkpoint_bytes(1000, 100, False), 4000.0

    def by(uses):
        return {(u.what, u.phase): u.bytes for u in uses}

    # 100 steps save 10 checkpoints: 3 kept plus the one being written; the export is also in the local store.
    uses = by(disk_uses(cfg, 1000, 100, False, 100, "sqlite:///x.db"))
    assert uses == {("run.storage_path", "checkpoint"): 4 * ckpt, (TEMP_DIR, "checkpoint"): ckpt,
                    ("run.storage_path", "export"): 3 * ckpt, ("run.output_dir", "export"): 2 * export,
                    (TEMP_DIR, "export"): export}
    # One checkpoint saved: never more than one; a tracking server keeps the artifact elsewhere.
    uses = by(disk_uses(cfg, 1000, 100, False, 5, "http://127.0.0.1:5000"))
    assert uses[("run.storage_path", "checkpoint")] == ckpt and uses[("run.storage_path", "export")] == ckpt
    assert uses[("run.output_dir", "export")] == export
    # Unknown length (epochs, no data read): the most Ray Train can hold.
    assert by(disk_uses(cfg, 1000, 100, False, None, "sqlite:///x.db"))[("run.storage_path", "checkpoint")] == 4 * ckpt
    # Object storage is not this machine's disk: only the driver's copies (download, package) are local.
    remote = dataclasses.replace(cfg.run, storage_path="s3://b/ray", output_dir="s3://b/out")
    uses = disk_uses(dataclasses.replace(cfg, run=remote), 1000, 100, False, 100, "http://127.0.0.1:5000")
    assert [(u.what, u.phase, u.path, u.bytes) for u in uses] == [(TEMP_DIR, "export", tempfile.gettempdir(),
                                                                    2 * export)]


def test_the_larger_phase_is_checked_against_the_real_free_space(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    cfg = _config(tmp_path)
    lines, problems = check_disk(disk_uses(cfg, 1000, 100, False, 10, "sqlite:///x.db"))
    assert problems == [] and lines and all(re.search(r"GiB free$", line) for line in lines)
    # More parameters than any disk holds: the problem names the field, the location, the need and the free space.
    huge = int(free)
    lines, problems = check_disk(disk_uses(cfg, huge, huge, False, 1, "sqlite:///x.db"))
    [problem] = [p for p in problems if str(tmp_path) in p]
    assert problem.startswith("train config field 'run.storage_path': the run writes up to ")
    need = float(re.search(r"up to (\d+\.\d+) GiB", problem).group(1))
    assert need == pytest.approx(checkpoint_bytes(huge, huge, False) * 2 / GIB, rel=1e-3)  # stored + staged
    assert f"{free / GIB:.2f} GiB free" in problem.replace("has ", "")


@pytest.mark.slow
def test_a_run_too_big_for_the_disk_stops_before_ray_and_a_dry_run_only_reports_it(train_manifest, tmp_path,
                                                                                   capsys):
    """Keeping a billion checkpoints of a run that saves one every step cannot fit any disk."""
    from pipelines.train.__main__ import main

    sets = [f"data.manifest_uri={train_manifest}", f"run.storage_path={tmp_path / 'ray'}",
            f"run.output_dir={tmp_path / 'out'}", "schedule.max_steps=1000000000", "schedule.checkpoint_every=1",
            "run.num_checkpoints_to_keep=1000000000"]
    argv = ["--stage", "1", "--config", "tiny", *[a for s in sets for a in ("--set", s)]]
    capsys.readouterr()
    code = main(argv)
    err = capsys.readouterr().err
    assert code == 2 and not (tmp_path / "ray").exists()  # Ray Train never started
    [line] = err.strip().splitlines()
    assert line.startswith("python -m pipelines.train: error: train config field 'run.storage_path': the run writes")
    assert str(tmp_path / "ray") in line and "lower run.num_checkpoints_to_keep" in line
    code = main([*argv, "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert re.search(r"^disk: up to \d+\.\d+ GiB while the (checkpoint|export) is written .*GiB free$", out, re.M), out
    assert "not enough here, if this machine runs the job: train config field 'run.storage_path'" in out
