"""Fixtures of the ingest/teachers tests: synthetic scenes (``pipelines.ingest.synthetic``), corrupt inputs, tiny
teachers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

GOOD = ["scene0000_00", "scene0001_00", "scene0002_00", "scene0003_00"]
FRAMES_PER_SCENE = 12


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory) -> Path:
    """Nine small synthetic scenes in every layout (12 frames, 2 with lost tracking), annotations included."""
    from pipelines.ingest.synthetic import SyntheticConfig, generate

    root = tmp_path_factory.mktemp("synthetic")
    generate(SyntheticConfig(out=str(root), num_scenes=9, seed=7, size="small", num_frames=FRAMES_PER_SCENE),
             log=lambda _msg: None)
    return root


def _corrupt(root: Path) -> dict[str, tuple[str, str]]:
    """Break scenes 4-8 in five different ways; returns ``{scene_id: (uri, expected error class)}``."""
    bad: dict[str, tuple[str, str]] = {}
    zero = root / "scans" / "scene0004_00" / "scene0004_00.sens"
    zero.write_bytes(b"")
    bad["scene0004_00"] = (str(zero.parent), "TruncatedFileError")
    trunc = root / "scans" / "scene0005_00" / "scene0005_00.sens"
    trunc.write_bytes(trunc.read_bytes()[: trunc.stat().st_size // 2])
    bad["scene0005_00"] = (str(trunc.parent), "TruncatedFileError")
    video = root / "videos" / "scene0006_00"
    (video / "color.mp4").write_bytes(np.random.default_rng(0).bytes(4096))
    bad["scene0006_00"] = (str(video), "CorruptDataError")
    export = root / "scans" / "scene0007_00" / "export"
    for name in ("3.txt", "4.txt"):
        (export / "pose" / name).unlink()
    bad["scene0007_00"] = (str(export), "MissingFrameFileError")
    posed = root / "posed_images" / "scene0008_00"
    for pose in sorted(posed.glob("*.txt")):
        if pose.name[:5].isdigit() and int(pose.name[:5]) >= 3:
            pose.write_text("\n".join(" ".join(["-inf"] * 4) for _ in range(4)) + "\n")
    bad["scene0008_00"] = (str(posed), "TooFewValidFramesError")
    return bad


@pytest.fixture(scope="session")
def scene_set(synthetic_root) -> dict:
    """Inputs of the ingest tests: 4 good scenes (``.sens``) and 5 broken ones across layouts."""
    bad = _corrupt(synthetic_root)
    good = {sid: str(synthetic_root / "scans" / sid) for sid in GOOD}
    uris = sorted(good.values()) + sorted(u for u, _ in bad.values())
    return {"root": synthetic_root, "good": good, "bad": bad, "uris": uris,
            "annotations": str(synthetic_root / "annotations")}


@pytest.fixture(scope="session")
def tiny_teachers(tmp_path_factory) -> dict[str, str]:
    """Tiny random DINOv2-with-registers and CLIP vision towers saved in HF layout (loaded by path, like real ones).

    The CLIP one is written by ``write_random_clip``, so it carries the random stand-in label.
    """
    import torch
    from transformers import CLIPVisionConfig, Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from pipelines.teachers.semantic import write_random_clip

    base = tmp_path_factory.mktemp("teachers")
    torch.manual_seed(0)
    geo = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=56,
        patch_size=14, num_register_tokens=4))
    geo.save_pretrained(base / "geo")
    write_random_clip(str(base / "sem"), CLIPVisionConfig(
        hidden_size=24, num_hidden_layers=2, num_attention_heads=2, intermediate_size=48, image_size=42,
        patch_size=14))
    return {"geo": str(base / "geo"), "sem": str(base / "sem")}
