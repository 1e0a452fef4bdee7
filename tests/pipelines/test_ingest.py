"""Ingest: clip sampling and geometry (unit), then the Ray Data job end to end (local, moto S3, corrupt inputs,
kill + resume byte-identity)."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from pipelines import manifest as mf
from pipelines import storage
from pipelines.ingest.config import IngestConfig
from pipelines.ingest.job import build_scene_clips, run_ingest, scene_inputs
from pipelines.ingest.sampling import (
    ResizePlan,
    TooFewValidFramesError,
    box_corners,
    boxes_payload,
    depth_sampling_map,
    relative_extrinsics,
    resample_depth,
    select_clip_frames,
)
from pipelines.scenes.types import Intrinsics, ObjectBox, SceneMetadata
from pipelines.schema import decode_clip_sample

REPO = Path(__file__).resolve().parents[2]


# ------------------------------------------------------------------------------------------------ unit tests
def test_uniform_sampling_skips_invalid_poses():
    valid = np.ones(40, bool)
    valid[[0, 5, 6, 7, 30]] = False
    (clip,) = select_clip_frames(valid, 8, 1, 0, 8, "s")
    assert len(clip) == 8 and len(set(clip)) == 8 and clip == sorted(clip)
    assert all(valid[i] for i in clip)
    valid_idx = np.flatnonzero(valid)
    assert clip[0] <= valid_idx[3] and clip[-1] >= valid_idx[-4]  # spread over the whole scene
    a, b = select_clip_frames(valid, 8, 2, 0, 8, "s")
    assert a != b and all(valid[i] for i in a + b)
    # Exactly S valid frames: every one is used.
    assert select_clip_frames(valid[:16], 12, 1, 0, 12, "s") == [np.flatnonzero(valid[:16]).tolist()]


def test_windowed_sampling_and_too_few_frames():
    valid = np.ones(30, bool)
    clips = select_clip_frames(valid, 4, 3, 2, 4, "s")
    assert clips[0] == [0, 2, 4, 6] and clips[-1] == [23, 25, 27, 29]
    with pytest.raises(TooFewValidFramesError, match="3 valid-pose frames of 30, need at least 4"):
        select_clip_frames(np.arange(30) < 3, 4, 1, 0, 4, "scene_x")
    with pytest.raises(TooFewValidFramesError, match="need at least 10"):
        select_clip_frames(valid[:8], 4, 1, 3, 4, "s")  # a 4-frame window with stride 3 spans 10 frames


def test_resize_plan_keeps_projection_consistent():
    plan = ResizePlan.for_size(1296, 968, 518, 14)
    assert (plan.out_w, plan.out_h) == (686, 518) and plan.out_w % 14 == 0
    k = np.array([[1170.0, 0, 647.7], [0, 1170.0, 483.8], [0, 0, 1]])
    k2 = plan.intrinsics(k)
    x = np.array([0.3, -0.2, 2.5])
    u, v, _ = k @ x / x[2]
    u2, v2, _ = k2 @ x / x[2]
    sx, sy = plan.resized_w / 1296, plan.resized_h / 968
    assert u2 == pytest.approx((u + 0.5) * sx - 0.5 - plan.off_x)
    assert v2 == pytest.approx((v + 0.5) * sy - 0.5 - plan.off_y)
    img = np.random.default_rng(0).integers(0, 255, (968, 1296, 3), dtype=np.uint8)
    assert plan.image(img).shape == (518, 686, 3)
    paper = ResizePlan.for_size(1296, 968, 518, 14, resize_side="long")
    assert (paper.out_w, paper.out_h) == (518, 378) and paper.image(img).shape == (378, 518, 3)


def test_depth_is_registered_onto_output_pixels():
    depth_k = Intrinsics(np.array([[40.0, 0, 39.5], [0, 40.0, 29.5], [0, 0, 1]]), 80, 60)
    depth = np.arange(80 * 60, dtype=np.float32).reshape(60, 80)
    # Output camera = depth camera at 2x resolution: every output pixel maps to depth pixel floor-ish(u / 2).
    k_out = np.array([[80.0, 0, 79.5], [0, 80.0, 59.5], [0, 0, 1]])
    out = resample_depth(depth, depth_sampling_map(k_out, 160, 120, depth_k))
    assert out.shape == (120, 160)
    assert out[0, 0] == depth[0, 0] and out[119, 159] == depth[59, 79] and out[61, 101] == depth[30, 50]
    # A wider output field of view than the depth camera: outside pixels are invalid (0).
    wide = resample_depth(depth + 1, depth_sampling_map(np.array([[20.0, 0, 79.5], [0, 20.0, 59.5], [0, 0, 1]]),
                                                        160, 120, depth_k))
    assert wide[0, 0] == 0 and wide[60, 80] > 0


def _pose(yaw: float, t) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    m = np.eye(4)
    m[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]
    m[:3, 3] = t
    return m


def test_extrinsics_relative_to_first_camera_and_boxes_in_its_frame():
    poses = np.stack([_pose(0.3, [1, 2, 3]), _pose(-0.4, [0.5, 2, 1]), _pose(1.0, [2, 1, 0])])
    ext = relative_extrinsics(poses)
    np.testing.assert_allclose(ext[0], np.eye(4)[:3], atol=1e-6)
    x_world = np.array([0.7, 1.1, 4.0, 1.0])
    x_first = np.linalg.inv(poses[0]) @ x_world
    for i in range(3):
        np.testing.assert_allclose(ext[i] @ x_first, (np.linalg.inv(poses[i]) @ x_world)[:3], atol=1e-5)
    align = _pose(0.5, [-1, 0, 0.2])
    meta = SceneMetadata("s", align, (ObjectBox(7, "chair", np.array([1.0, 0.5, 0.4]), np.array([0.4, 0.6, 0.8])),))
    (obj,) = boxes_payload(meta, poses[0])["objects"]
    corners = box_corners(obj["center"], obj["size"])
    mapped = (np.linalg.inv(poses[0]) @ np.linalg.inv(align) @ np.c_[corners, np.ones(8)].T).T[:, :3]
    lo = np.array(obj["center_first_cam"]) - np.array(obj["size_first_cam"]) / 2
    hi = np.array(obj["center_first_cam"]) + np.array(obj["size_first_cam"]) / 2
    np.testing.assert_allclose(mapped.min(0), lo, atol=1e-9)
    np.testing.assert_allclose(mapped.max(0), hi, atol=1e-9)
    same = boxes_payload(SceneMetadata("s", np.eye(4), meta.objects), np.eye(4))["objects"][0]
    assert same["center_first_cam"] == pytest.approx([1.0, 0.5, 0.4])


def test_config_validation_and_hash():
    with pytest.raises(ValueError, match="min_valid_frames"):
        IngestConfig(frames_per_clip=8, min_valid_frames=4)
    with pytest.raises(ValueError, match="frame_codec"):
        IngestConfig(frame_codec="png")
    tiny = IngestConfig.tiny()
    assert dataclasses.replace(tiny, concurrency=1).hash() == tiny.hash()
    assert dataclasses.replace(tiny, scenes_per_task=1).hash() == tiny.hash()
    with pytest.raises(ValueError, match="scenes_per_task"):
        IngestConfig(scenes_per_task=0)
    assert dataclasses.replace(tiny, resize_to=70).hash() != tiny.hash()


def test_scenes_per_task_keeps_every_cpu_busy():
    from pipelines.ingest.job import scenes_per_task

    assert scenes_per_task(192, 8, 2.0) == 8
    assert scenes_per_task(100, 8, 128.0) == 1  # fewer scenes than CPUs: one scene per task
    assert scenes_per_task(300, 8, 64.0) == 4  # 75 tasks for 64 CPUs, not 38
    assert scenes_per_task(3, 8, 0.5) == 3


# ------------------------------------------------------------------------------------------------- Ray jobs
def expected_clips(scene_set, config: IngestConfig) -> dict:
    """What the shards must hold: the same clip builder run in this process, decoded through the schema."""
    from pipelines.schema import encode_clip_sample

    inputs = scene_inputs(sorted(scene_set["good"].values()), "auto", scene_set["annotations"])
    out = {}
    for scene in inputs:
        for clip in build_scene_clips(scene, config, config.hash()):
            out[clip.key] = decode_clip_sample(encode_clip_sample(clip, config.frame_codec, config.jpeg_quality, config.depth_codec))
    return out


def assert_clip_equal(got, want, frames_atol: float = 0.0, compare_json: bool = True):
    assert got.key == want.key
    if frames_atol:
        assert np.abs(got.frames.astype(int) - want.frames).mean() <= frames_atol
    else:
        np.testing.assert_array_equal(got.frames, want.frames)
    for name in ("depth_m", "cam_to_world", "extrinsics", "intrinsics"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    assert got.meta == want.meta
    if compare_json:
        assert got.boxes == want.boxes and got.annotations == want.annotations


@pytest.fixture(scope="module")
def reference_run(ray_session, scene_set, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ingest") / "reference")
    manifest = run_ingest(scene_set["uris"], out, IngestConfig.tiny(), annotations_uri=scene_set["annotations"])
    return out, manifest


@pytest.mark.slow
def test_corrupt_inputs_are_quarantined_and_good_scenes_written(reference_run, scene_set):
    out, manifest = reference_run
    written = {sid for shard in manifest.shards for sid in shard.scenes}
    quarantined = {q.scene_id: q for q in manifest.quarantine}
    assert written == set(scene_set["good"])
    assert {sid: q.error_type for sid, q in quarantined.items()} == {
        sid: err for sid, (_, err) in scene_set["bad"].items()
    }
    assert all(q.reason and q.uri == scene_set["bad"][q.scene_id][0] for q in manifest.quarantine)
    assert written | set(quarantined) == set(scene_set["good"]) | set(scene_set["bad"])
    assert not written & set(quarantined)
    s = manifest.summary
    assert (s["scenes"], s["scenes_written"], s["scenes_quarantined"], s["samples"]) == (9, 4, 5, 4)
    assert [r.name for r in manifest.shards] == [f"clips-{i:06d}.tar" for i in range(len(manifest.shards))]
    assert len(manifest.shards) > 1  # the 64 KB target rolled shards
    assert storage.exists(storage.join(out, "quarantine.json")) and not storage.exists(
        storage.join(out, mf.STAGING_DIR))
    for record, uri in zip(manifest.shards, mf.shard_uris(out), strict=True):
        data = Path(uri).read_bytes()
        assert len(data) == record.num_bytes and hashlib.sha256(data).hexdigest() == record.sha256


@pytest.mark.slow
def test_local_shards_read_back_with_webdataset_and_ray(reference_run, scene_set, ray_session):
    import webdataset as wds

    out, manifest = reference_run
    want = expected_clips(scene_set, IngestConfig.tiny())
    urls = mf.shard_uris(out)
    # The webdataset library itself, on local paths, with its own tar grouping.
    samples = list(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    assert sorted(s["__key__"] for s in samples) == sorted(want)
    for sample in samples:
        assert_clip_equal(decode_clip_sample(sample), want[sample["__key__"]])
    assert [s["__key__"] for s in mf.iter_manifest_samples(out, verify=True)] == sorted(want)
    got = decode_clip_sample(samples[0])
    assert got.annotations["scanqa"] and got.boxes["objects"] and got.frames.shape == (6, 56, 70, 3)
    # Ray Data's reader decodes .npy/.json itself; the schema decoder accepts both forms.
    rows = ray_session.data.read_webdataset(urls).take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(want)
    for row in rows:
        assert_clip_equal(decode_clip_sample(row), want[row["__key__"]], compare_json=False)


@pytest.mark.slow
def test_s3_output_jpeg_frames(ray_session, scene_set, s3_bucket):
    import pyarrow.fs
    import s3fs

    config = dataclasses.replace(IngestConfig.tiny(), frame_codec="jpeg")
    good = sorted(scene_set["good"].values())[:3]
    out = f"{s3_bucket}/clips"
    manifest = run_ingest(good, out, config, annotations_uri=scene_set["annotations"])
    assert manifest.summary["scenes_written"] == 3 and not manifest.quarantine
    want = {k: v for k, v in expected_clips(scene_set, config).items() if k.rsplit("-c", 1)[0] in
            {Path(u).name for u in good}}
    urls = mf.shard_uris(out)
    assert all(u.startswith("s3://") for u in urls)
    # webdataset 1.0.2 has no s3 handler: hand it fsspec file objects (no library globals touched).
    samples = list(mf.webdataset_pipeline(urls))
    assert sorted(s["__key__"] for s in samples) == sorted(want)
    for sample in samples:
        assert "frame005.jpg" in sample and "frames.npy" not in sample
        assert_clip_equal(decode_clip_sample(sample), want[sample["__key__"]])
    fs = pyarrow.fs.PyFileSystem(pyarrow.fs.FSSpecHandler(s3fs.S3FileSystem(skip_instance_cache=True)))
    rows = ray_session.data.read_webdataset([u.removeprefix("s3://") for u in urls], filesystem=fs).take_all()
    assert sorted(r["__key__"] for r in rows) == sorted(want)
    for row in rows:  # Ray re-decodes the JPEGs with PIL, exactly as the schema does
        assert_clip_equal(decode_clip_sample(row), want[row["__key__"]], compare_json=False)
    before = storage.read_bytes(mf.manifest_uri(out))
    again = run_ingest(good, out, config, annotations_uri=scene_set["annotations"], progress=False)
    assert storage.read_bytes(mf.manifest_uri(out)) == before and again.shards == manifest.shards


@pytest.mark.slow
def test_killed_run_resumes_to_byte_identical_shards(reference_run, scene_set, ray_session, tmp_path):
    ref_out, ref_manifest = reference_run
    out = tmp_path / "resumed"
    listing = tmp_path / "scenes.txt"
    listing.write_text("\n".join(scene_set["uris"]) + "\n")
    env = {**os.environ, "RAY_ADDRESS": ray_session.get_runtime_context().gcs_address}
    # A task already running on the shared cluster outlives the killed driver; one scene per task keeps the
    # "crash" from finishing the whole set.
    cmd = [sys.executable, "-m", "pipelines.ingest", "--scenes", f"@{listing}", "--out", str(out), "--tiny",
           "--annotations", scene_set["annotations"], "--concurrency", "1", "--scenes-per-task", "1"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    staging = out / mf.STAGING_DIR
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if staging.exists() and len(list(staging.glob("*.tar"))) >= 2:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert not (out / "manifest.json").exists(), "the job finished before it could be killed"
    staged_before = len(list(staging.glob("*.tar"))) + len(list(staging.glob("*.quarantine.json")))
    assert 2 <= staged_before < 9
    manifest = run_ingest(scene_set["uris"], str(out), IngestConfig.tiny(),
                          annotations_uri=scene_set["annotations"])
    assert [(r.name, r.sha256, r.num_bytes, r.keys) for r in manifest.shards] == [
        (r.name, r.sha256, r.num_bytes, r.keys) for r in ref_manifest.shards
    ]
    for ref_uri, uri in zip(mf.shard_uris(ref_out), mf.shard_uris(str(out)), strict=True):
        assert hashlib.sha256(Path(uri).read_bytes()).digest() == hashlib.sha256(Path(ref_uri).read_bytes()).digest()
    keys = [k for r in manifest.shards for k in r.keys]
    assert len(keys) == len(set(keys)) == 4
    assert manifest.quarantine == ref_manifest.quarantine
    assert not list(out.glob("**/*.tmp-*"))
    # A finished job is a no-op: nothing is rewritten.
    stamp = {p: p.stat().st_mtime_ns for p in out.iterdir()}
    run_ingest(scene_set["uris"], str(out), IngestConfig.tiny(), annotations_uri=scene_set["annotations"],
               progress=False)
    assert {p: p.stat().st_mtime_ns for p in out.iterdir()} == stamp
    with pytest.raises(mf.ManifestError, match="config"):
        run_ingest(scene_set["uris"], str(out), dataclasses.replace(IngestConfig.tiny(), resize_to=70))


# --------------------------------------------------------------------------------------- hostile scene videos
HOSTILE_EXPECTED = {
    "good": None,
    "good_edit_list": None,
    "size_other_aspect": "FrameSizeMismatchError",
    "size_half": "FrameSizeMismatchError",
    "video_one_frame": "FrameCountMismatchError",
    "video_too_long": "FrameCountMismatchError",
    "too_few_frames": "TooFewValidFramesError",
    "truncated": "TruncatedFileError",
    "playlist": "UnsupportedContainerError",
    "png_as_mp4": "UnsupportedContainerError",
    "decode_bomb": "DecodeBudgetError",
    "manifest_escape": "CorruptDataError",
    "manifest_zero_size": "CorruptDataError",
    "posed_jpeg_other_size": "CorruptDataError",  # the per-frame readers compare with the first image
}


def _hostile_scenes(root: Path) -> dict[str, str]:
    """One scene folder per entry of ``HOSTILE_EXPECTED`` (video layout unless named ``posed_*``)."""
    import json

    from pipelines.scenes.posed_images import write_posed_images
    from pipelines.scenes.video_layout import write_video_scene
    from tests.scenes import video_files as vf
    from tests.scenes.frames import COLOR_H, COLOR_W, DEPTH_H, DEPTH_W, make_frames

    color = Intrinsics(np.array([[90.5, 0.0, 47.75], [0.0, 91.25, 35.5], [0.0, 0.0, 1.0]]), COLOR_W, COLOR_H)
    depth = Intrinsics(np.array([[45.25, 0.0, 23.875], [0.0, 45.625, 17.75], [0.0, 0.0, 1.0]]), DEPTH_W, DEPTH_H)
    uris = {}
    for name in HOSTILE_EXPECTED:
        scene = root / name
        uris[name] = str(scene)
        if name.startswith("posed_"):
            write_posed_images(str(scene), color, depth, make_frames(8))
            from PIL import Image

            Image.new("RGB", (COLOR_W // 2, COLOR_H // 2)).save(scene / "00004.jpg", quality=95)
            continue
        write_video_scene(str(scene), color, depth, make_frames(3 if name == "too_few_frames" else 8), fps=30,
                          gop=4)
        video = scene / "color.mp4"
        manifest = json.loads((scene / "scene.json").read_text())
        if name == "good_edit_list":  # the same 8 frames presented, after 3 hidden ones; no frame_times sidecar
            video.write_bytes(vf.edit_list_mp4(vf.mp4(11, COLOR_W, COLOR_H, bframes=2), hide_leading=3))
            (scene / "frame_times.txt").unlink()
        elif name == "size_other_aspect":
            video.write_bytes(vf.mp4(8, 64, 64))
        elif name == "size_half":  # same aspect: the old ingest resized it to 96x72 without a word
            video.write_bytes(vf.mp4(8, COLOR_W // 2, COLOR_H // 2))
        elif name == "video_one_frame":
            video.write_bytes(vf.mp4(1, COLOR_W, COLOR_H))
        elif name == "video_too_long":
            video.write_bytes(vf.mp4(12, COLOR_W, COLOR_H))
        elif name == "truncated":
            data = vf.mp4(40, COLOR_W, COLOR_H, faststart=True, tmp_path=root)
            video.write_bytes(data[: len(data) // 2])
        elif name == "playlist":
            video.write_bytes(vf.ffconcat(str(root / "good" / "color.mp4")))
        elif name == "png_as_mp4":
            video.write_bytes(vf.png(COLOR_W, COLOR_H))
        elif name == "decode_bomb":
            video.write_bytes(vf.decode_bomb())
        elif name == "manifest_escape":
            manifest["video"] = "../good/color.mp4"
        elif name == "manifest_zero_size":
            manifest["color_size"] = [0, 0]
        (scene / "scene.json").write_text(json.dumps(manifest))
    return uris


@pytest.fixture(scope="module")
def hostile_scenes(tmp_path_factory) -> dict[str, str]:
    return _hostile_scenes(tmp_path_factory.mktemp("hostile"))


def test_hostile_scenes_each_end_staged_or_quarantined_with_a_typed_reason(hostile_scenes, tmp_path):
    from pipelines.ingest.job import SceneInput, stage_scene

    config = IngestConfig.tiny()
    for name, expected in HOSTILE_EXPECTED.items():
        row = stage_scene(SceneInput(name, hostile_scenes[name], None, {}), str(tmp_path), config, config.hash())
        if expected is None:
            assert row["status"] == "staged", (name, row)
        else:
            assert (row["status"], row["error_type"]) == ("quarantined", expected), (name, row)
            assert row["reason"].startswith(hostile_scenes[name]), row  # names the file at fault
    staged, quarantined = mf.list_staged(str(tmp_path))
    assert set(staged) == {"good", "good_edit_list"}
    assert set(quarantined) == set(HOSTILE_EXPECTED) - set(staged)
    record = mf.read_quarantine_record(quarantined["size_half"])
    assert "video frames are 48x36, the scene declares 96x72" in record.reason


def test_edit_list_scene_samples_the_presented_frames(hostile_scenes):
    """The 8 presented frames are frames 3..10 of the coded stream; clips hold exactly those."""
    from pipelines.ingest.job import SceneInput
    from pipelines.scenes.video import iter_frames
    from tests.scenes import video_files as vf

    config = IngestConfig.tiny()
    (clip,) = build_scene_clips(SceneInput("e", hostile_scenes["good_edit_list"], None, {}), config, config.hash())
    idx = clip.meta["frame_indices"]
    assert len(idx) == 6 and max(idx) <= 7 and clip.frames.shape == (6, 56, 70, 3)
    np.testing.assert_allclose(clip.meta["timestamps_s"], [i / 30 for i in idx], atol=1e-5)
    coded = [f.rgb for f in iter_frames(vf.mp4(11, 96, 72, bframes=2))]
    plan = ResizePlan.for_size(96, 72, config.resize_to, config.patch_multiple)
    for frame, i in zip(clip.frames, idx, strict=True):
        np.testing.assert_array_equal(frame, plan.image(coded[i + 3]))


def test_decode_budget_is_part_of_the_config(hostile_scenes, tmp_path):
    from pipelines.ingest.job import SceneInput, stage_scene
    from pipelines.scenes.decode_budget import DecodeBudget

    config = dataclasses.replace(IngestConfig.tiny(), decode=DecodeBudget(max_frames=7))
    assert config.hash() != IngestConfig.tiny().hash()
    assert IngestConfig.from_dict(config.to_dict()) == config
    assert IngestConfig.from_dict({**IngestConfig.tiny().to_dict(), "decode": {"max_frames": 7}}) == config
    row = stage_scene(SceneInput("good", hostile_scenes["good"], None, {}), str(tmp_path), config, config.hash())
    assert (row["status"], row["error_type"]) == ("quarantined", "DecodeBudgetError")
    with pytest.raises(ValueError, match="unknown field 'decode.pixels'"):
        IngestConfig.from_dict({"decode": {"pixels": 1}})


def test_resize_plan_refuses_another_input_size():
    plan = ResizePlan.for_size(96, 72, 56, 14)
    with pytest.raises(ValueError, match="image is 48x36, the resize plan is for 96x72"):
        plan.image(np.zeros((36, 48, 3), np.uint8))


@pytest.mark.slow
def test_ray_job_over_hostile_scenes(ray_session, hostile_scenes, tmp_path):
    out = str(tmp_path / "out")
    manifest = run_ingest(sorted(hostile_scenes.values()), out, IngestConfig.tiny(), progress=False)
    written = {sid for shard in manifest.shards for sid in shard.scenes}
    quarantined = {q.scene_id: q.error_type for q in manifest.quarantine}
    assert written == {"good", "good_edit_list"}
    assert quarantined == {k: v for k, v in HOSTILE_EXPECTED.items() if v is not None}
    assert (manifest.summary["scenes"], manifest.summary["scenes_written"]) == (len(HOSTILE_EXPECTED), 2)
