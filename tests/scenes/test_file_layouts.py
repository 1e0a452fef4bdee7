"""SensReader export and EmbodiedScan ``posed_images`` layouts: round trips (local and S3) and bad input."""

from __future__ import annotations

import os

import numpy as np
import pytest

from pipelines.scenes.errors import (
    CorruptDataError,
    FrameCountMismatchError,
    MissingFileError,
    MissingFrameFileError,
)
from pipelines.scenes.export_layout import ExportReader, write_export
from pipelines.scenes.posed_images import PosedImagesReader, write_posed_images
from tests.scenes.frames import assert_rgb_close, depth_mm, make_frames


def _check_round_trip(reader, frames, color_intrinsics, depth_intrinsics):
    assert reader.num_frames == len(frames)
    np.testing.assert_array_equal(reader.color_intrinsics.matrix, color_intrinsics.matrix)
    np.testing.assert_array_equal(reader.depth_intrinsics.matrix, depth_intrinsics.matrix)
    assert (reader.color_intrinsics.width, reader.color_intrinsics.height) == (96, 72)
    assert (reader.depth_intrinsics.width, reader.depth_intrinsics.height) == (48, 36)
    for k, want in enumerate(frames):
        got = reader.read_frame(k)
        assert got.index == want.index
        assert got.timestamp_s == pytest.approx(
            want.index / 30.0
        )  # the export has no timestamps: index / 30 fps
        np.testing.assert_array_equal(got.cam_to_world, want.cam_to_world)  # text keeps float64 exactly
        assert got.valid == want.valid
        np.testing.assert_array_equal(depth_mm(got.depth_m), depth_mm(want.depth_m))
        assert_rgb_close(got.rgb, want.rgb)


def test_export_round_trip(tmp_path, color_intrinsics, depth_intrinsics):
    frames = make_frames(12, invalid=(3,))
    root = tmp_path / "scene0000_00" / "export"
    assert write_export(str(root), color_intrinsics, depth_intrinsics, frames) == 12
    assert sorted(os.listdir(root)) == ["color", "depth", "intrinsic", "pose"]
    assert "11.jpg" in os.listdir(root / "color") and "11.png" in os.listdir(
        root / "depth"
    )  # not zero-padded
    assert (root / "pose" / "3.txt").read_text().split()[0] == "-inf"
    reader = ExportReader(str(root))
    assert reader.invalid_frames == [3]
    assert reader.frame_numbers == list(range(12))  # numeric, not lexicographic (10 after 9)
    np.testing.assert_array_equal(reader.extrinsics["extrinsic_color"], np.eye(4))
    _check_round_trip(reader, frames, color_intrinsics, depth_intrinsics)


def test_export_round_trip_on_s3(s3_bucket, color_intrinsics, depth_intrinsics):
    frames = make_frames(4)
    uri = f"{s3_bucket}/scans/scene0001_00/export"
    write_export(uri, color_intrinsics, depth_intrinsics, frames)
    _check_round_trip(ExportReader(uri), frames, color_intrinsics, depth_intrinsics)


def test_posed_images_round_trip_with_stride(tmp_path, color_intrinsics, depth_intrinsics):
    frames = make_frames(25, invalid=(10,))
    root = tmp_path / "posed_images" / "scene0000_00"
    assert write_posed_images(str(root), color_intrinsics, depth_intrinsics, frames, stride=10) == 3
    assert sorted(os.listdir(root)) == [
        "00000.jpg", "00000.png", "00000.txt", "00010.jpg", "00010.png", "00010.txt",
        "00020.jpg", "00020.png", "00020.txt", "depth_intrinsic.txt", "intrinsic.txt",
    ]  # fmt: skip
    reader = PosedImagesReader(str(root))
    assert reader.scene_id == "scene0000_00"
    assert [reader.read_frame(k).index for k in range(3)] == [0, 10, 20]  # original frame numbers
    assert reader.invalid_frames == [1]
    _check_round_trip(reader, [frames[0], frames[10], frames[20]], color_intrinsics, depth_intrinsics)


def test_posed_images_on_s3(s3_bucket, color_intrinsics, depth_intrinsics):
    frames = make_frames(3)
    uri = f"{s3_bucket}/posed_images/scene0002_00"
    write_posed_images(uri, color_intrinsics, depth_intrinsics, frames)
    _check_round_trip(PosedImagesReader(uri), frames, color_intrinsics, depth_intrinsics)


@pytest.fixture
def export_dir(tmp_path, color_intrinsics, depth_intrinsics):
    root = tmp_path / "export"
    write_export(str(root), color_intrinsics, depth_intrinsics, make_frames(5))
    return root


def test_missing_files(export_dir):
    (export_dir / "pose" / "2.txt").unlink()
    with pytest.raises(MissingFileError, match=r"missing pose/2.txt") as info:
        ExportReader(str(export_dir))
    assert isinstance(info.value, FrameCountMismatchError) and isinstance(info.value, MissingFrameFileError)
    (export_dir / "intrinsic" / "intrinsic_depth.txt").unlink()
    for p in (export_dir / "pose").iterdir():
        p.unlink()
    with pytest.raises(MissingFileError, match="no pose files"):
        ExportReader(str(export_dir))


def test_missing_intrinsics(export_dir):
    (export_dir / "intrinsic" / "intrinsic_depth.txt").unlink()
    with pytest.raises(MissingFileError, match="intrinsic_depth.txt: intrinsics file does not exist"):
        ExportReader(str(export_dir))


def test_frame_count_mismatch(export_dir):
    (export_dir / "color" / "4.jpg").unlink()
    with pytest.raises(
        FrameCountMismatchError, match="4 colour images vs 5 pose files: no colour image for pose/4.txt"
    ):
        ExportReader(str(export_dir))


def test_corrupt_images_and_pose(export_dir):
    (export_dir / "color" / "1.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (export_dir / "depth" / "2.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    reader = ExportReader(str(export_dir))
    reader.read_frame(0)
    with pytest.raises(CorruptDataError, match=r"color/1.jpg: frame 1 colour: cannot decode"):
        reader.read_frame(1)
    with pytest.raises(CorruptDataError, match=r"depth/2.png: cannot decode depth PNG"):
        reader.read_frame(2)
    (export_dir / "pose" / "3.txt").write_text("1 0 0\n0 1 zero\n")
    with pytest.raises(CorruptDataError, match=r"pose/3.txt: matrix file holds a non-number"):
        ExportReader(str(export_dir))
