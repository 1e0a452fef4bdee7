"""``vidllm weights``: verification stamps, idempotent reruns, rebuilds of altered folders, one-line CLI errors.

These run without the real weights (no download): folders are built from small files through the same
``_build``/stamp path the install uses.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines import weights as w
from tests.conftest import REPO_ROOT


def _fake_folder(path: Path, content: bytes = b"weights") -> None:
    def build(tmp: Path):
        (tmp / "model.safetensors").write_bytes(content)
        (tmp / "config.json").write_text("{}")
        return ["pkg==1"], {"check": 1.0}

    w._build(path, path.name, build, log=lambda _msg: None)


def test_stamped_folder_verifies_and_any_change_unverifies_it(tmp_path):
    folder = tmp_path / "dinov2-small"
    _fake_folder(folder)
    record = json.loads((folder / w.MARKER).read_text())
    assert record["sources"] == ["pkg==1"] and set(record["files"]) == {"model.safetensors", "config.json"}
    assert w.verified(folder) and w.verified(folder, deep=False)
    (folder / "model.safetensors").write_bytes(b"weightz")  # same size, other bytes
    assert w.verified(folder, deep=False) and not w.verified(folder)
    (folder / "model.safetensors").write_bytes(b"weights, cut off")  # another size
    assert not w.verified(folder, deep=False)
    _fake_folder(folder)
    (folder / "config.json").unlink()  # a half-written folder
    assert not w.verified(folder, deep=False)
    _fake_folder(folder)
    (folder / "extra.bin").write_bytes(b"")
    assert not w.verified(folder, deep=False)
    assert not w.verified(tmp_path / "absent")


def test_a_failed_build_leaves_nothing_and_keeps_the_old_folder(tmp_path):
    folder = tmp_path / "smollm2-135m-instruct"
    _fake_folder(folder, b"old")

    def failing(tmp: Path):
        (tmp / "model.safetensors").write_bytes(b"half")
        raise w.WeightsError("conversion failed")

    with pytest.raises(w.WeightsError, match="conversion failed"):
        w._build(folder, folder.name, failing, log=lambda _msg: None)
    assert (folder / "model.safetensors").read_bytes() == b"old" and w.verified(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == [folder.name]  # no temporary folder left behind


def test_install_with_verified_folders_is_a_fast_no_op(tmp_path):
    for name in w.FOLDERS:
        _fake_folder(tmp_path / name)
    lines: list[str] = []
    paths = w.install(tmp_path, log=lines.append)
    assert paths == {n: str(tmp_path / n) for n in w.FOLDERS}
    assert [ln.split(":")[0] for ln in lines[:3]] == list(w.FOLDERS) and all("kept" in ln for ln in lines[:3])
    assert not any("pip install" in ln for ln in lines)
    assert w.installed(tmp_path) == paths and w.missing(tmp_path) == []
    (tmp_path / w.SMOLLM2 / w.MARKER).unlink()
    assert w.missing(tmp_path) == [w.SMOLLM2] and w.missing(None) == list(w.FOLDERS)


def _cli(*args: str, env_dir: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != w.WEIGHTS_DIR_ENV}
    if env_dir:
        env[w.WEIGHTS_DIR_ENV] = env_dir
    env["PYTHONPATH"] = str(REPO_ROOT)
    return subprocess.run([sys.executable, "-m", "pipelines.cli", "weights", *args], capture_output=True, text=True,
                          env=env, cwd=REPO_ROOT, timeout=300)


def test_cli_help_and_one_line_errors(tmp_path):
    helped = _cli("install", "--help")
    assert helped.returncode == 0 and "--dir" in helped.stdout and w.WEIGHTS_DIR_ENV in helped.stdout
    no_dir = _cli("install")
    assert no_dir.returncode == 2 and "--dir" in no_dir.stderr.strip().splitlines()[-1]
    absent = _cli("convert-vggt", str(tmp_path / "vggt.pt"), "--out", str(tmp_path / "out"))
    assert absent.returncode == 2
    assert absent.stderr.strip().splitlines() == [
        f"vidllm weights convert-vggt: error: {tmp_path / 'vggt.pt'}: checkpoint does not exist"]
    for name in w.FOLDERS:
        _fake_folder(tmp_path / "w" / name)
    kept = _cli("install", env_dir=str(tmp_path / "w"))  # the directory comes from the environment
    assert kept.returncode == 0 and kept.stdout.count("verified, kept") == 3


def _vggt_checkpoint(model) -> dict:
    """A VGGT-format state dict (facebookresearch/dinov2 names under ``aggregator.patch_embed.``, fused qkv) holding
    the HF ``Dinov2WithRegistersModel`` ``model``, plus a reconstruction-branch key the encoder conversion ignores."""
    import torch

    hf = model.state_dict()
    p = "aggregator.patch_embed."
    out = {p + "cls_token": hf["embeddings.cls_token"], p + "mask_token": hf["embeddings.mask_token"],
           p + "register_tokens": hf["embeddings.register_tokens"],
           p + "pos_embed": hf["embeddings.position_embeddings"],
           p + "patch_embed.proj.weight": hf["embeddings.patch_embeddings.projection.weight"],
           p + "patch_embed.proj.bias": hf["embeddings.patch_embeddings.projection.bias"],
           p + "norm.weight": hf["layernorm.weight"], p + "norm.bias": hf["layernorm.bias"],
           "aggregator.camera_token": torch.zeros(1, 2, 1, 8)}
    for i in range(model.config.num_hidden_layers):
        hl, vl = f"encoder.layer.{i}.", f"{p}blocks.{i}."
        for part in ("weight", "bias"):
            out[f"{vl}attn.qkv.{part}"] = torch.cat([hf[f"{hl}attention.{x}_proj.{part}"] for x in "qkv"])
            out[f"{vl}attn.proj.{part}"] = hf[f"{hl}attention.o_proj.{part}"]
            for norm in ("norm1", "norm2"):
                out[f"{vl}{norm}.{part}"] = hf[f"{hl}{norm}.{part}"]
            for fc in ("fc1", "fc2"):
                out[f"{vl}mlp.{fc}.{part}"] = hf[f"{hl}mlp.{fc}.{part}"]
        out[f"{vl}ls1.gamma"] = hf[f"{hl}layer_scale1.lambda1"]
        out[f"{vl}ls2.gamma"] = hf[f"{hl}layer_scale2.lambda1"]
    return out


def test_convert_vggt_from_s3_gives_a_verified_geometry_teacher_folder(s3_bucket, tmp_path):
    import numpy as np
    import torch
    from transformers import Dinov2WithRegistersConfig, Dinov2WithRegistersModel

    from pipelines.storage import filesystem
    from pipelines.teachers.geometry import GeometryTeacher

    torch.manual_seed(0)
    model = Dinov2WithRegistersModel(Dinov2WithRegistersConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128, image_size=56,
        patch_size=14, num_register_tokens=4)).eval()
    torch.save(_vggt_checkpoint(model), tmp_path / "model.pt")
    uri = f"{s3_bucket}/vggt/model.pt"
    fs, path = filesystem(uri)
    fs.put_file(str(tmp_path / "model.pt"), path)
    out = tmp_path / "vggt-encoder"
    proc = _cli("convert-vggt", uri, "--out", str(out), "--num-attention-heads", "2")
    assert proc.returncode == 0, proc.stderr
    assert w.verified(out) and json.loads((out / w.MARKER).read_text())["sources"] == [uri]
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    bad = _cli("convert-vggt", str(garbage), "--out", str(tmp_path / "bad"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "neither safetensors nor a torch checkpoint" in bad.stderr and not (tmp_path / "bad").exists()
    frames = np.random.default_rng(0).integers(0, 256, (2, 56, 42, 3), dtype=np.uint8)
    teacher = GeometryTeacher(str(out), str(tmp_path))  # Dinov2WithRegistersModel, the default architecture
    with torch.inference_mode():
        x = (torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255 - torch.tensor((0.485, 0.456, 0.406))[
            :, None, None]) / torch.tensor((0.229, 0.224, 0.225))[:, None, None]
        want = model(pixel_values=x).last_hidden_state[:, 5:].numpy()
    np.testing.assert_allclose(teacher(frames), want, atol=1e-5)
