"""The project's ScanNet-style video layout: round trip, frame<->pose matching, bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pipelines.scenes.decode_budget import DecodeBudget
from pipelines.scenes.errors import (
    CorruptDataError,
    DecodeBudgetError,
    FrameCountMismatchError,
    FrameSizeMismatchError,
    MissingFileError,
    TruncatedFileError,
    UnsupportedContainerError,
)
from pipelines.scenes.video import probe
from pipelines.scenes.video_layout import VideoSceneReader, match_samples, write_video_scene
from tests.scenes import video_files as vf
from tests.scenes.frames import VIDEO_MEAN_ABS_TOL, depth_mm, make_frames


def test_match_samples_rule():
    samples = np.array([0.0, 0.1, 0.2, 0.5])
    frames = np.array([0.0, 0.049, 0.05, 0.26, 0.34, 0.49, 0.9])
    # nearest sample; a tie (0.05) goes to the earlier one; gaps above 0.05 s have no sample
    np.testing.assert_array_equal(match_samples(frames, samples, 0.05), [0, 0, 0, -1, -1, 3, -1])


def test_round_trip(tmp_path, color_intrinsics, depth_intrinsics):
    frames = make_frames(40, invalid=(7,))
    for f in frames:
        f.timestamp_s += 2.0  # the sample clock need not start at 0
    root = tmp_path / "videos" / "scene0000_00"
    assert write_video_scene(str(root), color_intrinsics, depth_intrinsics, frames, fps=30, gop=10) == 40
    assert {"scene.json", "color.mp4", "poses.txt", "frame_times.txt", "depth"} <= set(os.listdir(root))
    info = probe(root / "color.mp4")
    assert (info.codec, info.pix_fmt, info.num_frames) == ("h264", "yuv420p", 40)
    reader = VideoSceneReader(str(root))
    assert reader.scene_id == "scene0000_00" and reader.num_frames == 40
    assert reader.invalid_frames == [7]  # the -inf pose is kept and flagged
    np.testing.assert_array_equal(reader.sample_of_frame, np.arange(40))
    np.testing.assert_allclose(reader.timestamps_s, [f.timestamp_s for f in frames], atol=1e-5)
    np.testing.assert_array_equal(reader.color_intrinsics.matrix, color_intrinsics.matrix)
    np.testing.assert_array_equal(reader.depth_intrinsics.matrix, depth_intrinsics.matrix)
    got = reader.read_frames([39, 0, 17, 7])
    assert [g.index for g in got] == [39, 0, 17, 7]
    for g in got:
        want = frames[g.index]
        assert g.valid == want.valid and g.timestamp_s == pytest.approx(want.timestamp_s, abs=1e-5)
        np.testing.assert_array_equal(g.cam_to_world, want.cam_to_world)
        np.testing.assert_array_equal(depth_mm(g.depth_m), depth_mm(want.depth_m))
        err = np.abs(g.rgb.astype(int) - want.rgb.astype(int)).mean()
        assert err < VIDEO_MEAN_ABS_TOL, f"frame {g.index}: mean abs error {err:.2f}"
    sequential = list(reader)
    np.testing.assert_array_equal(sequential[17].rgb, got[2].rgb)  # one-pass random access == sequential


def test_frames_without_a_pose_within_tolerance(tmp_path, color_intrinsics, depth_intrinsics):
    root = tmp_path / "scene"
    write_video_scene(str(root), color_intrinsics, depth_intrinsics, make_frames(6), fps=30)
    # Keep the samples of frames 0, 1 and 4 only; shift the last one by 10 ms (within the 16.7 ms tolerance).
    lines = (root / "poses.txt").read_text().splitlines()
    t4, *rest = lines[4].split(" ", 1)
    lines = [lines[0], lines[1], f"{float(t4) + 0.010!r} {rest[0]}"]
    (root / "poses.txt").write_text("\n".join(lines) + "\n")
    manifest = json.loads((root / "scene.json").read_text())
    manifest.update(num_samples=3, has_depth=False)
    (root / "scene.json").write_text(json.dumps(manifest))
    reader = VideoSceneReader(str(root))
    np.testing.assert_array_equal(reader.sample_of_frame, [0, 1, -1, -1, 2, -1])
    assert reader.invalid_frames == [2, 3, 5]
    frame = reader.read_frame(3)
    assert not frame.valid and np.isneginf(frame.cam_to_world).all() and frame.depth_m is None


def test_on_s3(s3_bucket, color_intrinsics, depth_intrinsics):
    frames = make_frames(12)
    uri = f"{s3_bucket}/videos/scene0003_00"
    write_video_scene(uri, color_intrinsics, depth_intrinsics, frames, gop=4)
    reader = VideoSceneReader(uri)
    got = reader.read_frames([11, 2])
    np.testing.assert_array_equal(got[0].cam_to_world, frames[11].cam_to_world)
    np.testing.assert_array_equal(depth_mm(got[1].depth_m), depth_mm(frames[2].depth_m))


def test_bad_input(tmp_path, color_intrinsics, depth_intrinsics):
    root = tmp_path / "scene"
    write_video_scene(str(root), color_intrinsics, depth_intrinsics, make_frames(4))
    (root / "color.mp4").write_bytes(b"this is plain text, not a video at all\n" * 20)
    reader = VideoSceneReader(str(root))  # opening reads sidecars only
    with pytest.raises(CorruptDataError, match=r"color.mp4: (not a readable video|decoding failed)"):
        reader.read_frames([0])
    (root / "frame_times.txt").unlink()  # now opening must demux the video
    with pytest.raises(CorruptDataError, match="color.mp4"):
        VideoSceneReader(str(root))
    (root / "color.mp4").write_bytes(
        b"GIF89a this is not a video at all" * 20
    )  # FFmpeg's gif demuxer would read this as a one-frame video; GIF is not an allowed container
    with pytest.raises(UnsupportedContainerError, match="color.mp4: not a readable video in an allowed container"):
        VideoSceneReader(str(root))
    (root / "intrinsic_depth.txt").unlink()
    with pytest.raises(MissingFileError, match="intrinsic_depth.txt"):
        VideoSceneReader(str(root))
    (root / "scene.json").unlink()
    with pytest.raises(MissingFileError, match="scene.json"):
        VideoSceneReader(str(root))


def test_writer_rejects_odd_colour_size(tmp_path, depth_intrinsics):
    from pipelines.scenes.types import Intrinsics

    odd = Intrinsics(np.eye(3), 95, 72)
    with pytest.raises(ValueError, match="95x72 must be even"):
        write_video_scene(str(tmp_path / "x"), odd, depth_intrinsics, make_frames(1))


def _scene_with_video(tmp_path, color_intrinsics, depth_intrinsics, video: bytes | None, n: int = 6,
                      keep_frame_times: bool = True):
    root = tmp_path / "scene"
    write_video_scene(str(root), color_intrinsics, depth_intrinsics, make_frames(n), fps=30)
    if video is not None:
        (root / "color.mp4").write_bytes(video)
    if not keep_frame_times:
        (root / "frame_times.txt").unlink()
        manifest = json.loads((root / "scene.json").read_text())
        manifest.pop("num_frames")
        (root / "scene.json").write_text(json.dumps(manifest))
    return root


def test_video_of_another_size_than_declared_is_an_error(tmp_path, color_intrinsics, depth_intrinsics):
    """96x72 declared, 64x48 in the file: never resized to the declared size (the intrinsics would be wrong)."""
    root = _scene_with_video(tmp_path, color_intrinsics, depth_intrinsics, vf.mp4(6, 64, 48))
    reader = VideoSceneReader(str(root))
    with pytest.raises(FrameSizeMismatchError, match="color.mp4: video frames are 64x48, the scene declares 96x72"):
        reader.read_frames([0, 5])
    with pytest.raises(FrameSizeMismatchError, match="64x48"):
        list(reader)


def test_video_shorter_or_longer_than_listed_is_a_count_mismatch(tmp_path, color_intrinsics, depth_intrinsics):
    root = _scene_with_video(tmp_path, color_intrinsics, depth_intrinsics, vf.mp4(1, 96, 72))
    reader = VideoSceneReader(str(root))
    assert reader.num_frames == 6  # the sidecars list 6 frames
    with pytest.raises(FrameCountMismatchError, match="color.mp4: the video presents 1 frames, 6 are expected"):
        reader.read_frames([0, 5])
    with pytest.raises(FrameCountMismatchError, match="video has 1 frames, 6 are listed"):
        list(reader)
    (root / "color.mp4").write_bytes(vf.mp4(9, 96, 72))
    with pytest.raises(FrameCountMismatchError, match="presents 9 frames, 6 are expected"):
        VideoSceneReader(str(root)).read_frames([0])
    with pytest.raises(FrameCountMismatchError, match="more frames than the 6 listed"):
        list(VideoSceneReader(str(root)))


def test_edit_list_video_counts_presented_frames(tmp_path, color_intrinsics, depth_intrinsics):
    video = vf.edit_list_mp4(vf.mp4(9, 96, 72, bframes=2), hide_leading=3)
    root = _scene_with_video(tmp_path, color_intrinsics, depth_intrinsics, video, keep_frame_times=False)
    reader = VideoSceneReader(str(root))
    assert reader.num_frames == 6
    np.testing.assert_allclose(reader.timestamps_s - reader.timestamps_s[0], np.arange(6) / 30, atol=1e-6)
    assert [f.index for f in reader.read_frames([5, 0])] == [5, 0] and len(list(reader)) == 6


@pytest.mark.parametrize(
    ("video", "error", "word"),
    [
        (vf.ffconcat("../../etc/passwd"), UnsupportedContainerError, "allowed container"),
        (vf.png(96, 72), UnsupportedContainerError, "allowed container"),
        (b"", TruncatedFileError, "empty"),
    ],
)
def test_hostile_video_files(tmp_path, color_intrinsics, depth_intrinsics, video, error, word):
    root = _scene_with_video(tmp_path, color_intrinsics, depth_intrinsics, video)
    with pytest.raises(error, match=f"color.mp4: .*{word}"):
        VideoSceneReader(str(root)).read_frames([0])
    with pytest.raises(error, match=word):
        _scene_with_video(tmp_path / "b", color_intrinsics, depth_intrinsics, video, keep_frame_times=False)
        VideoSceneReader(str(tmp_path / "b" / "scene"))


def test_decode_budget_reaches_the_reader(tmp_path, color_intrinsics, depth_intrinsics):
    root = _scene_with_video(tmp_path, color_intrinsics, depth_intrinsics, None)
    small = DecodeBudget(max_frame_pixels=96 * 72 - 1)
    with pytest.raises(DecodeBudgetError, match="96x72"):
        VideoSceneReader(str(root), budget=small).read_frames([0])
    with pytest.raises(DecodeBudgetError, match="96x72"):
        list(VideoSceneReader(str(root), budget=small))


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("video", "../other/color.mp4"),
        ("video", "/etc/passwd"),
        ("video", "s3://bucket/x.mp4::file:///etc/passwd"),
        ("video", ".."),
        ("video", ["color.mp4"]),
        ("color_size", [0, 72]),
        ("color_size", [96]),
        ("color_size", ["96", "72"]),
        ("color_size", [96.5, 72]),
        ("depth_size", [1e400, 36]),
        ("num_frames", -1),
        ("num_frames", "six"),
        ("num_samples", True),
        ("fps", 0),
        ("fps", float("nan")),
        ("sync_tolerance_s", "inf"),
    ],
)
def test_hostile_manifest_values_are_corrupt_data(tmp_path, color_intrinsics, depth_intrinsics, field, value):
    root = _scene_with_video(tmp_path, color_intrinsics, depth_intrinsics, None)
    manifest = json.loads((root / "scene.json").read_text())
    manifest[field] = value
    (root / "scene.json").write_text(json.dumps(manifest))
    with pytest.raises(CorruptDataError, match="scene.json"):
        VideoSceneReader(str(root))


def test_bad_frame_times_are_corrupt_data(tmp_path, color_intrinsics, depth_intrinsics):
    root = _scene_with_video(tmp_path, color_intrinsics, depth_intrinsics, None)
    for text in ("0 0.1 0.1 0.2 0.3 0.4", "0 nan 0.1 0.2 0.3 0.4", "0 0.2 0.1 0.3 0.4 0.5"):
        (root / "frame_times.txt").write_text(text)
        with pytest.raises(CorruptDataError, match="frame_times.txt: frame times must be finite"):
            VideoSceneReader(str(root))
