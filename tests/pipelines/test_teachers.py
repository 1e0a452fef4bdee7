"""Teachers: model loading (path and s3://), the Ray Data actor-pool job, TRAINING shards and their resume."""

from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest

from pipelines import manifest as mf
from pipelines import storage
from pipelines.artifacts import local_dir
from pipelines.ingest.config import IngestConfig
from pipelines.schema import decode_clip_sample, decode_training_sample
from pipelines.teachers.config import TeacherPoolConfig, TeachersConfig
from pipelines.teachers.geometry import GeometryTeacher
from pipelines.teachers.semantic import SemanticTeacher


def upload_dir(local: str, uri: str) -> None:
    fs, path = storage.filesystem(uri)
    fs.put(local, path, recursive=True)


def test_teachers_load_by_path_and_give_documented_shapes(tiny_teachers, tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (3, 56, 70, 3), dtype=np.uint8)
    geo = GeometryTeacher(tiny_teachers["geo"], str(tmp_path))
    tokens = geo(frames)
    assert tokens.shape == (3, 4 * 5, 32) and tokens.dtype == np.float32 and geo.patch_grid(56, 70) == (4, 5)
    # Chunked forward passes give the same tokens as one pass (per-frame computation).
    geo.frames_per_forward = 2
    np.testing.assert_allclose(geo(frames), tokens, atol=1e-5)
    sem = SemanticTeacher(tiny_teachers["sem"], str(tmp_path))
    feats = sem(frames)
    assert feats.shape == (3, 24) and np.isfinite(feats).all()
    assert sem.preprocess(frames).shape == (3, 3, 42, 42)
    with pytest.raises(ValueError, match="multiple of the teacher patch size"):
        geo(frames[:, :50])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        local_dir(str(tmp_path / "nope"), str(tmp_path))


def test_config_validation(tiny_teachers):
    with pytest.raises(ValueError, match="required"):
        TeachersConfig()
    with pytest.raises(ValueError, match="token_codec"):
        TeachersConfig("a", "b", token_codec="int4")
    with pytest.raises(ValueError, match="batch_size"):
        TeacherPoolConfig(batch_size=0)
    cfg = TeachersConfig.tiny("a", "b")
    assert TeachersConfig.from_dict(cfg.to_dict()) == cfg
    assert dataclasses.replace(cfg, geometry=TeacherPoolConfig(concurrency=3)).hash() == cfg.hash()
    assert dataclasses.replace(cfg, token_codec="int8").hash() != cfg.hash()
    assert dataclasses.replace(cfg, io_concurrency=3).hash() == cfg.hash()
    with pytest.raises(ValueError, match="io_concurrency"):
        TeachersConfig("a", "b", io_concurrency=0)
    # tiny(): two teacher actors x 0.5 CPU + a reader and a writer x 0.25 CPU fit the 2-CPU test cluster.
    assert cfg.pool_resources() == {"CPU": 1.5, "GPU": 0.0}
    gpu = TeacherPoolConfig(num_gpus=0.5, num_cpus=2, concurrency=4)
    assert TeachersConfig("a", "b", gpu, gpu, io_concurrency=3, io_num_cpus=1).pool_resources() == {
        "CPU": 22.0, "GPU": 4.0}


def test_cli_flags_reach_the_config():
    from pipelines.teachers.__main__ import build_parser, resolve_config

    args = build_parser().parse_args([
        "--clips", "c", "--out", "o", "--geometry-teacher", "g", "--semantic-teacher", "s", "--concurrency", "2",
        "--num-gpus", "0.5", "--io-concurrency", "3", "--io-num-cpus", "0.5", "--target-shard-mb", "2"])
    config = resolve_config(args)
    assert config.geometry.concurrency == config.semantic.concurrency == 2
    assert config.geometry.num_gpus == config.semantic.num_gpus == 0.5
    assert (config.io_concurrency, config.io_num_cpus, config.target_shard_bytes) == (3, 0.5, 2 * 1024**2)


def test_pools_that_do_not_fit_the_cluster_are_named_in_a_warning(ray_session, caplog):
    from pipelines.teachers.job import warn_if_pools_do_not_fit

    fits = TeachersConfig.tiny("a", "b")
    assert not warn_if_pools_do_not_fit(fits) and not caplog.records
    gpu = TeacherPoolConfig(num_gpus=1)
    with caplog.at_level("WARNING", logger="pipelines.teachers.job"):
        assert warn_if_pools_do_not_fit(TeachersConfig("a", "b", gpu, gpu))
    message = caplog.records[-1].getMessage()
    assert "need 2.5 CPU, 2 GPU" in message and "has 2 CPU, 0 GPU" in message


@pytest.fixture(scope="module")
def clips_run(ray_session, scene_set, tmp_path_factory):
    from pipelines.ingest.job import run_ingest

    out = str(tmp_path_factory.mktemp("teachers") / "clips")
    good = sorted(scene_set["good"].values())[:3]
    manifest = run_ingest(good, out, IngestConfig.tiny(), annotations_uri=scene_set["annotations"],
                          progress=False)
    clips = {s["__key__"]: decode_clip_sample(s) for s in mf.iter_manifest_samples(out)}
    return out, manifest, clips


def check_training_samples(samples, clips, tiny_teachers, tmp_path, geo_atol):
    geo = GeometryTeacher(tiny_teachers["geo"], str(tmp_path))
    sem = SemanticTeacher(tiny_teachers["sem"], str(tmp_path))
    assert sorted(s.key for s in samples) == sorted(clips)
    for sample in samples:
        clip = clips[sample.key]
        np.testing.assert_array_equal(sample.frames, clip.frames)
        np.testing.assert_array_equal(sample.extrinsics, clip.extrinsics)
        assert sample.meta == clip.meta
        want_geo, want_sem = geo(clip.frames), sem(clip.frames)
        assert sample.teacher_geo.shape == (6, 20, 32) and sample.teacher_sem.shape == (6, 24)
        scale = np.abs(want_geo).max(-1, keepdims=True)
        assert (np.abs(sample.teacher_geo - want_geo) / scale).max() <= geo_atol
        np.testing.assert_allclose(sample.teacher_sem, want_sem, rtol=2e-3, atol=2e-3)
        assert sample.teacher["patch_grid"] == [4, 5] and sample.teacher["sem_dim"] == 24
        assert sample.teacher["config_hash"] and sample.teacher["clips_config_hash"] == clip.meta["config_hash"]
        # The CLIP teacher saw the whole 70x56 frame, letterboxed into its 42 px square; the stand-in is labelled.
        assert sample.teacher["semantic_view"] == {"policy": "pad", "input_size": [42, 42],
                                                   "content_box": [0, 4, 42, 38], "frame_size": [70, 56]}
        assert "random CLIPVisionModel" in sample.teacher["semantic_teacher_standin"]
        assert "geometry_teacher_standin" not in sample.teacher
        assert sample.teacher["geometry_dtype"] == sample.teacher["semantic_dtype"] == "float32"


@pytest.mark.slow
def test_teachers_job_local_fp16(clips_run, tiny_teachers, ray_session, tmp_path):
    from pipelines.teachers.job import run_teachers

    clips_out, _, clips = clips_run
    out = str(tmp_path / "train")
    manifest = run_teachers(clips_out, out, TeachersConfig.tiny(tiny_teachers["geo"], tiny_teachers["sem"]))
    assert manifest.kind == "train" and manifest.summary["clips_written"] == 3 and not manifest.quarantine
    assert [r.name for r in manifest.shards][0] == "train-000000.tar"
    config = mf.read_manifest(out).config
    assert config["token_codec"] == "fp16" and config["semantic_view"] == "pad"
    assert "random CLIPVisionModel" in config["semantic_teacher_standin"]
    samples = [decode_training_sample(s) for s in mf.iter_manifest_samples(out, verify=True)]
    check_training_samples(samples, clips, tiny_teachers, tmp_path, geo_atol=1e-3)
    rows = ray_session.data.read_webdataset(mf.shard_uris(out)).take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(clips)
    np.testing.assert_array_equal(
        decode_training_sample(rows[0]).teacher_geo,
        next(s for s in samples if s.key == rows[0]["__key__"]).teacher_geo,
    )


@pytest.mark.slow
def test_teachers_job_s3_int8_resumes_byte_identical(clips_run, tiny_teachers, ray_session, s3_bucket, tmp_path):
    from pipelines.teachers.job import run_teachers

    clips_out, _, clips = clips_run
    upload_dir(tiny_teachers["geo"], f"{s3_bucket}/models/geo")
    config = dataclasses.replace(
        TeachersConfig.tiny(f"{s3_bucket}/models/geo", tiny_teachers["sem"]), token_codec="int8",
        cache_dir=str(tmp_path / "cache"), keep_staging=True, target_shard_bytes=64 * 1024,
    )
    out = f"{s3_bucket}/train"
    manifest = run_teachers(clips_out, out, config)
    samples = list(mf.iter_manifest_samples(out, verify=True))
    assert all("teacher_geo.int8.npy" in s and "teacher_geo.npy" not in s for s in samples)
    check_training_samples([decode_training_sample(s) for s in samples], clips, tiny_teachers, tmp_path,
                           geo_atol=1 / 254 + 1e-3)
    # Crash simulation: the manifest, one final shard and one staged clip are lost; the rerun recomputes only
    # that clip and reproduces every shard byte for byte.
    fs, _ = storage.filesystem(out)
    first = manifest.shards[0]
    for uri in (mf.manifest_uri(out), storage.join(out, first.name), mf.staging_uri(out, first.keys[0])):
        fs.rm(storage.filesystem(uri)[1])
    resumed = run_teachers(clips_out, out, config)
    assert resumed.summary["frames_this_run"] == 6
    assert [(r.name, r.sha256) for r in resumed.shards] == [(r.name, r.sha256) for r in manifest.shards]
    data = storage.read_bytes(storage.join(out, first.name))
    assert hashlib.sha256(data).hexdigest() == first.sha256


def test_shard_reader_streams_one_clip_per_batch_and_only_the_todo_ones(clips_run):
    import json

    from pipelines.teachers.job import ShardReader

    clips_out, manifest, clips = clips_run
    uris = mf.shard_uris(manifest, clips_out)
    keys = [k for record in manifest.shards for k in record.keys]
    todo = keys[1:]
    reader = ShardReader()
    batches = [b for uri in uris for b in reader({"uri": [uri], "todo": [json.dumps(todo)]})]
    assert [b["key"] for b in batches] == [[k] for k in todo]
    for batch in batches:
        np.testing.assert_array_equal(batch["frames"][0], clips[batch["key"][0]].frames)
        assert batch["error"] == [""] and batch["scene_id"][0] == clips[batch["key"][0]].meta["scene_id"]


def test_teacher_datasets_get_one_clip_blocks_and_the_context_is_restored(ray_session):
    from pipelines.teachers.job import _one_clip_per_block

    context = ray_session.data.DataContext.get_current()
    before = context.target_max_block_size
    with _one_clip_per_block():
        ds = ray_session.data.from_items([{"i": 0}])
    assert context.target_max_block_size == before
    rows = ds.map_batches(lambda b: {"x": np.arange(6)}, batch_size=1)
    assert [len(b["x"]) for b in rows.iter_batches(batch_size=None)] == [1] * 6


def test_dtype_defaults_to_bf16_on_gpu_and_pools_are_sized_from_the_gpus():
    assert TeacherPoolConfig().compute_dtype == "float32"
    assert TeacherPoolConfig(num_gpus=0.5).compute_dtype == "bfloat16"
    assert TeacherPoolConfig(num_gpus=0.5, dtype="float16").compute_dtype == "float16"
    gpu = TeachersConfig.gpu("a", "b")
    # 8 GPUs, 0.5 GPU per actor: one geometry and one semantic actor on every GPU, all 8 GPUs busy.
    resolved = gpu.resolve_pools({"CPU": 96.0, "GPU": 8.0})
    assert (resolved.geometry.concurrency, resolved.semantic.concurrency) == (8, 8)
    assert resolved.pool_resources()["GPU"] == 8.0
    whole = TeacherPoolConfig(num_gpus=1)
    both = TeachersConfig("a", "b", whole, whole).resolve_pools({"GPU": 8.0})
    assert (both.geometry.concurrency, both.semantic.concurrency) == (4, 4)
    mixed = TeachersConfig("a", "b", whole, TeacherPoolConfig(num_cpus=2)).resolve_pools({"GPU": 8.0})
    assert (mixed.geometry.concurrency, mixed.semantic.concurrency) == (8, 1)
    fixed = TeachersConfig("a", "b", TeacherPoolConfig(num_gpus=1, concurrency=3), whole)
    assert fixed.resolve_pools({"GPU": 8.0}).geometry.concurrency == 3
    assert TeachersConfig("a", "b").resolve_pools({"CPU": 2.0}).geometry.concurrency == 1
    # The compute dtype is part of the shard contents: auto on GPU hashes like an explicit bf16.
    bf16 = TeacherPoolConfig(num_gpus=0.5, num_cpus=1, dtype="bfloat16")
    assert dataclasses.replace(gpu, geometry=bf16, semantic=bf16).hash() == gpu.hash()
    assert TeachersConfig("a", "b").hash() != dataclasses.replace(gpu, io_concurrency=1, io_num_cpus=0.25).hash()
    with pytest.raises(ValueError, match="semantic_view"):
        TeachersConfig("a", "b", semantic_view="crop")
    with pytest.raises(ValueError, match="geometry_architecture"):
        TeachersConfig("a", "b", geometry_architecture="ViTModel")


@pytest.fixture(scope="module")
def other_folders(tmp_path_factory):
    """Folders of the wrong architectures: a plain DINOv2 (no registers), a CLIP text tower, a full CLIPModel."""
    import torch
    from transformers import CLIPConfig, CLIPModel, CLIPTextConfig, CLIPTextModel, Dinov2Config, Dinov2Model

    base = tmp_path_factory.mktemp("other_teachers")
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             image_size=56, patch_size=14)).save_pretrained(base / "dinov2")
    text = {"hidden_size": 24, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 48}
    CLIPTextModel(CLIPTextConfig(**text)).save_pretrained(base / "clip_text")
    vision = {"hidden_size": 24, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 48,
              "image_size": 42, "patch_size": 14}
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(base / "clip")
    return {name: str(base / name) for name in ("dinov2", "clip_text", "clip")}


def test_a_mismatched_architecture_is_refused_naming_both(tiny_teachers, other_folders, tmp_path):
    from pipelines.teachers.architecture import TeacherArchitectureError
    from pipelines.teachers.job import check_teachers

    plain = TeachersConfig(other_folders["dinov2"], tiny_teachers["sem"])
    with pytest.raises(TeacherArchitectureError) as err:
        check_teachers(plain)
    message = str(err.value)
    assert "\n" not in message and other_folders["dinov2"] in message
    assert "Dinov2Model" in message and "Dinov2WithRegistersModel" in message and "register" in message
    with pytest.raises(TeacherArchitectureError, match="CLIPTextModel.*expects CLIPVisionModel"):
        check_teachers(TeachersConfig(tiny_teachers["geo"], other_folders["clip_text"]))
    with pytest.raises(TeacherArchitectureError, match="Dinov2WithRegistersModel.*expects Dinov2Model"):
        check_teachers(TeachersConfig(tiny_teachers["geo"], tiny_teachers["sem"], geometry_architecture="Dinov2Model"))
    with pytest.raises(TeacherArchitectureError, match="Dinov2Model"):
        GeometryTeacher(other_folders["dinov2"], str(tmp_path))  # the teacher itself refuses too, before loading
    # Configured as what it is, a plain DINOv2 is a geometry teacher (no register tokens to drop).
    labels = check_teachers(dataclasses.replace(plain, geometry_architecture="Dinov2Model"))
    assert labels["geometry"] == "" and "random CLIPVisionModel" in labels["semantic"]
    frames = np.random.default_rng(0).integers(0, 256, (2, 56, 70, 3), dtype=np.uint8)
    geo = GeometryTeacher(other_folders["dinov2"], str(tmp_path), architecture="Dinov2Model")
    assert geo.num_prefix == 1 and geo(frames).shape == (2, 20, 32)


def test_the_teachers_cli_refuses_a_mismatched_folder_in_one_line_before_any_ray_work(tiny_teachers, other_folders,
                                                                                       tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO_ROOT

    (tmp_path / "clips").mkdir()
    (tmp_path / "clips" / "manifest.json").write_text("{}")  # only its existence is checked before the teachers
    cmd = [sys.executable, "-m", "pipelines.cli", "teachers", "--clips", str(tmp_path / "clips"), "--out",
           str(tmp_path / "out"), "--geometry-teacher", other_folders["dinov2"], "--semantic-teacher",
           tiny_teachers["sem"]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT,
                          env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("python -m pipelines.teachers: error: geometry teacher")
    assert "Ray" not in proc.stderr + proc.stdout and not (tmp_path / "out").exists()


def test_a_full_clip_folder_serves_as_the_semantic_teacher(other_folders, tmp_path):
    import torch
    from transformers import CLIPModel

    frames = np.random.default_rng(1).integers(0, 256, (2, 56, 70, 3), dtype=np.uint8)
    sem = SemanticTeacher(other_folders["clip"], str(tmp_path))
    full = CLIPModel.from_pretrained(other_folders["clip"]).eval()
    with torch.inference_mode():
        want = full.vision_model(pixel_values=sem.preprocess(frames)).pooler_output.numpy()
    np.testing.assert_allclose(sem(frames), want, atol=1e-5)
    assert sem.standin == ""


@pytest.mark.parametrize("view", ["pad", "interpolate"])
def test_every_pixel_the_student_sees_reaches_the_clip_teacher(tiny_teachers, tmp_path, view):
    import torch

    sem = SemanticTeacher(tiny_teachers["sem"], str(tmp_path), view=view)
    h, w = 56, 84  # a 3:2 frame, like the paper's 518x378
    base = np.full((1, h, w, 3), 128, np.uint8)
    ref = sem.preprocess(base)
    # Preprocessing is linear in the pixels: perturb every pixel once (in chunks) and see the input change.
    ys, xs = np.mgrid[0:h, 0:w]
    coords = np.stack([ys.ravel(), xs.ravel()], 1)
    unseen = []
    for chunk in np.array_split(coords, 8):
        frames = np.repeat(base, len(chunk), axis=0)
        frames[np.arange(len(chunk)), chunk[:, 0], chunk[:, 1]] = 255
        diff = (sem.preprocess(frames) - ref).abs().flatten(1).amax(1)
        unseen += [tuple(c) for c, d in zip(chunk, diff.tolist(), strict=True) if d == 0]
    assert unseen == []
    info = sem.view(h, w)
    x0, y0, x1, y1 = info["content_box"]
    assert info["policy"] == view and info["frame_size"] == [w, h]
    if view == "pad":
        assert info["input_size"] == [42, 42] and (x0, x1) == (0, 42) and (y1 - y0) == 28
        # The border is CLIP's mean colour (0 after normalisation), the content the whole resized frame.
        assert torch.all(ref[..., :y0, :] == 0) and torch.all(ref[..., y1:, :] == 0)
        assert torch.all(ref[..., y0:y1, :] != 0)
    else:
        assert info["input_size"] == [42, 28] and ref.shape[-2:] == (28, 42)
    feats = sem(np.repeat(base, 2, axis=0))
    edge = np.repeat(base, 2, axis=0)
    edge[:, :, :3] = 255  # the left edge strip a centre crop would cut off
    assert np.abs(sem(edge) - feats).max() > 1e-4


def test_random_clip_standin_is_labelled_and_defaults_to_clip_l_336(tmp_path):
    import json

    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModel

    from pipelines.teachers.architecture import STANDIN_KEY
    from pipelines.teachers.semantic import CLIP_L_336, write_random_clip

    write_random_clip(str(tmp_path / "x"), CLIPVisionConfig(hidden_size=16, num_hidden_layers=1,
                                                            num_attention_heads=2, intermediate_size=32,
                                                            image_size=28, patch_size=14))
    config = json.loads((tmp_path / "x" / "config.json").read_text())
    assert "random" in config[STANDIN_KEY] and "ViT-L/14-336" in config[STANDIN_KEY]
    assert SemanticTeacher(str(tmp_path / "x"), str(tmp_path)).standin == config[STANDIN_KEY]
    with torch.device("meta"):  # the default stand-in has CLIP ViT-L/14-336's vision tower: 303.5 M parameters
        default = CLIPVisionModel(CLIPVisionConfig(**CLIP_L_336))
    assert 303e6 < sum(p.numel() for p in default.parameters()) < 304e6
    assert (default.config.image_size, default.config.patch_size, default.config.hidden_size) == (336, 14, 1024)
