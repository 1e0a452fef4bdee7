"""The generator CLI end to end: ``--help``, a local directory and the moto S3 bucket (real s3 protocol)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pipelines import storage
from pipelines.ingest.synthetic.room import CATALOGUE
from pipelines.scenes.annotations import benchmark_paths, read_multi3drefer, read_scanqa, read_scene_list
from pipelines.scenes.metadata import read_scene_metadata
from pipelines.scenes.open import list_scenes, open_scene, scene_uri
from tests.conftest import REPO_ROOT


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.ingest.synthetic", *args],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


def test_help_explains_options():
    result = _cli("--help")
    assert result.returncode == 0
    for option in ("--scenes", "--out", "--seed", "--size", "--frames", "--layouts", "--invalid-frames",
                   "--class-probability"):
        assert option in result.stdout
    assert "1296x968" in result.stdout


def test_bad_arguments_exit_with_usage_error(tmp_path):
    result = _cli("--scenes", "1", "--out", str(tmp_path), "--seed", "0", "--layouts", "sens,tarball")
    assert result.returncode == 2 and "layouts" in result.stderr


def _check_dataset(root: str, num_scenes: int) -> None:
    for layout in ("sens", "export", "posed_images", "video"):
        assert list_scenes(root, layout) == [f"scene{i:04d}_00" for i in range(num_scenes)]
    with open_scene(scene_uri(root, "video", "scene0001_00"), "video") as r:
        frame = r.read_frame(5)
        assert frame.rgb.shape == (120, 160, 3) and (frame.depth_m > 0).mean() > 0.9
    meta = read_scene_metadata(storage.join(root, "scans", "scene0001_00"))
    labels = {o.label for o in meta.objects}
    assert {"floor", "wall"} <= labels and labels & {c.label for c in CATALOGUE}
    assert not np.allclose(meta.axis_alignment, np.eye(4))
    ann = storage.join(root, "annotations")
    assert read_scene_list(benchmark_paths(ann, "val")["scene_list"]) == ["scene0001_00"]
    assert read_scanqa(benchmark_paths(ann, "train")["scanqa"])
    assert read_multi3drefer(benchmark_paths(ann, "val")["multi3drefer"])
    manifest = json.loads(storage.read_bytes(storage.join(ann, "synthetic_manifest.json")))
    assert manifest["seed"] == 3 and manifest["size"] == "small" and len(manifest["scenes"]) == num_scenes


def test_cli_writes_a_local_dataset_and_skips_on_rerun(tmp_path):
    args = (
        "--scenes",
        "2",
        "--out",
        str(tmp_path / "ds"),
        "--seed",
        "3",
        "--size",
        "small",
        "--frames",
        "12",
    )
    result = _cli(*args)
    assert result.returncode == 0, result.stderr
    assert "[1/2] scene0000_00" in result.stdout and "s/frame" in result.stdout
    _check_dataset(str(tmp_path / "ds"), 2)
    again = _cli(*args)
    assert again.returncode == 0 and again.stdout.count("complete, skipped") == 2


def test_cli_family_and_situated_flags_choose_the_annotations_written(tmp_path):
    """``--question-families`` and ``--no-situated`` are config aliases: only colour questions, empty SQA3D files."""
    out = tmp_path / "ds"
    result = _cli("--scenes", "2", "--out", str(out), "--seed", "3", "--frames", "6", "--layouts", "sens",
                  "--question-families", "color", "--no-situated", "--class-probability", "0.9")
    assert result.returncode == 0, result.stderr
    records = read_scanqa(benchmark_paths(str(out / "annotations"), "train")["scanqa"])
    assert records and {r.question_type for r in records} == {"color"}
    sqa = json.loads((out / "annotations" / "sqa_task" / "balanced"
                      / "v1_balanced_questions_train_scannetv2.json").read_text())
    assert sqa["questions"] == []
    config = json.loads((out / "annotations" / "synthetic_manifest.json").read_text())["config"]
    assert config["question_families"] == ["color"] and config["situated_questions"] is False
    assert config["class_probability"] == 0.9
    bad = _cli("--scenes", "1", "--out", str(tmp_path / "bad"), "--question-families", "colour")
    assert bad.returncode == 2 and "question_families" in bad.stderr


@pytest.mark.slow
def test_cli_writes_to_s3(s3_bucket):
    root = f"{s3_bucket}/synthetic"
    result = _cli("--scenes", "2", "--out", root, "--seed", "3", "--size", "small", "--frames", "12")
    assert result.returncode == 0, result.stderr
    _check_dataset(root, 2)
