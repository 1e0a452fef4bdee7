"""ScanNet ``.sens`` v4: byte layout checked by an independent parser, round trips, S3 random access, bad input."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipelines.scenes.errors import (
    CorruptDataError,
    MissingFileError,
    TruncatedFileError,
    UnsupportedCompressionError,
    UnsupportedVersionError,
)
from pipelines.scenes.sens import SensReader, write_sens
from pipelines.storage import filesystem
from tests.scenes.frames import assert_rgb_close, depth_mm, make_frames


def parse_sens_independently(data: bytes) -> dict:
    """A second, minimal parser written from the published SensorData v4 layout (not the project's reader)."""
    off = 0

    def take(fmt: str):
        nonlocal off
        vals = struct.unpack_from("<" + fmt, data, off)
        off += struct.calcsize("<" + fmt)
        return vals

    out = {"version": take("I")[0]}
    (strlen,) = take("Q")
    out["sensor_name"] = data[off : off + strlen].decode()
    off += strlen
    for key in ("intrinsic_color", "extrinsic_color", "intrinsic_depth", "extrinsic_depth"):
        out[key] = np.array(take("16f"), dtype=np.float32).reshape(4, 4)
    out["color_compression"], out["depth_compression"] = take("ii")
    out["color_width"], out["color_height"], out["depth_width"], out["depth_height"] = take("IIII")
    (out["depth_shift"],) = take("f")
    (out["num_frames"],) = take("Q")
    frames = []
    for _ in range(out["num_frames"]):
        pose = np.array(take("16f"), dtype=np.float32).reshape(4, 4)
        ts_c, ts_d, c_size, d_size = take("QQQQ")
        color = data[off : off + c_size]
        off += c_size
        depth = data[off : off + d_size]
        off += d_size
        frames.append({"pose": pose, "ts_color": ts_c, "ts_depth": ts_d, "color": color, "depth": depth})
    out["frames"] = frames
    out["end"] = off
    return out


def test_written_bytes_match_the_published_layout(tmp_path, color_intrinsics, depth_intrinsics):
    frames = make_frames(4, invalid=(2,))
    path = tmp_path / "scene0000_00.sens"
    written = write_sens(str(path), color_intrinsics, depth_intrinsics, frames, num_frames=4)
    data = path.read_bytes()
    assert written == len(data)
    h = parse_sens_independently(data)
    assert h["end"] == len(data)  # nothing before, between or after the records
    assert h["version"] == 4 and h["sensor_name"] == "StructureSensor"
    assert (h["color_compression"], h["depth_compression"]) == (2, 1)  # JPEG, zlib_ushort
    assert (h["color_width"], h["color_height"]) == (color_intrinsics.width, color_intrinsics.height)
    assert (h["depth_width"], h["depth_height"]) == (depth_intrinsics.width, depth_intrinsics.height)
    assert h["depth_shift"] == 1000.0 and h["num_frames"] == 4
    want_kc = np.eye(4, dtype=np.float32)
    want_kc[:3, :3] = color_intrinsics.matrix
    want_kd = np.eye(4, dtype=np.float32)
    want_kd[:3, :3] = depth_intrinsics.matrix
    np.testing.assert_array_equal(h["intrinsic_color"], want_kc)
    np.testing.assert_array_equal(h["intrinsic_depth"], want_kd)
    np.testing.assert_array_equal(h["extrinsic_color"], np.eye(4, dtype=np.float32))
    np.testing.assert_array_equal(h["extrinsic_depth"], np.eye(4, dtype=np.float32))
    for frame, rec in zip(frames, h["frames"], strict=True):
        np.testing.assert_array_equal(rec["pose"], frame.cam_to_world.astype(np.float32))
        assert rec["ts_color"] == rec["ts_depth"] == round(frame.timestamp_s * 1e6)
        assert rec["color"][:2] == b"\xff\xd8" and rec["color"][-2:] == b"\xff\xd9"  # JPEG SOI ... EOI
        rgb = np.asarray(Image.open(io.BytesIO(rec["color"])).convert("RGB"))
        assert_rgb_close(rgb, frame.rgb)
        raw = zlib.decompress(rec["depth"])
        mm = np.frombuffer(raw, dtype="<u2").reshape(depth_intrinsics.height, depth_intrinsics.width)
        np.testing.assert_array_equal(mm, depth_mm(frame.depth_m))
    assert np.isneginf(h["frames"][2]["pose"]).all()


def test_round_trip_and_invalid_poses(tmp_path, color_intrinsics, depth_intrinsics):
    frames = make_frames(6, invalid=(0, 4))
    path = str(tmp_path / "s.sens")
    write_sens(path, color_intrinsics, depth_intrinsics, frames, num_frames=6)
    with SensReader(path) as reader:
        assert reader.scene_id == "s" and reader.num_frames == 6
        assert reader.invalid_frames == [0, 4]  # flagged, not dropped
        np.testing.assert_array_equal(reader.color_intrinsics.matrix, color_intrinsics.matrix)
        np.testing.assert_array_equal(reader.depth_intrinsics.matrix, depth_intrinsics.matrix)
        assert (reader.depth_intrinsics.width, reader.depth_intrinsics.height) == (48, 36)
        np.testing.assert_allclose(reader.timestamps_s, [f.timestamp_s for f in frames], atol=1e-6)
        for want in frames:
            got = reader.read_frame(want.index)
            assert got.index == want.index and got.valid == want.valid
            np.testing.assert_array_equal(got.cam_to_world, want.cam_to_world)
            np.testing.assert_array_equal(depth_mm(got.depth_m), depth_mm(want.depth_m))
            assert got.depth_m.dtype == np.float32
            assert_rgb_close(got.rgb, want.rgb)
        streamed = list(reader)  # sequential read-ahead path gives the same frames
        assert [f.index for f in streamed] == list(range(6))
        np.testing.assert_array_equal(streamed[5].rgb, reader.read_frame(5).rgb)
        np.testing.assert_array_equal(streamed[4].cam_to_world, frames[4].cam_to_world)


def test_random_access_on_s3_reads_a_small_fraction(s3_bucket, color_intrinsics, depth_intrinsics):
    n = 240
    uri = f"{s3_bucket}/scans/scene0000_00/scene0000_00.sens"
    write_sens(uri, color_intrinsics, depth_intrinsics, make_frames(n), num_frames=n)
    fs, path = filesystem(uri)
    size = fs.size(path)
    # Count the body bytes of every GetObject response the S3 server actually sends (botocore event hook).
    served = []

    def on_get(parsed, **_):
        served.append(int(parsed.get("ContentLength", 0)))

    fs.s3.meta.events.register("after-call.s3.GetObject", on_get)
    try:
        with SensReader(uri) as reader:
            assert reader.num_frames == n
            frame = reader.read_frame(137)
            own_count = reader.bytes_read
    finally:
        fs.s3.meta.events.unregister("after-call.s3.GetObject", on_get)
    assert frame.index == 137 and frame.rgb.shape == (72, 96, 3)
    fetched = sum(served)
    fraction = fetched / size
    print(
        f"\n.sens on S3: {n} frames, {size} bytes; open + read frame 137: {len(served)} GETs, {fetched} bytes ({fraction:.2%})"
    )
    assert fetched == own_count  # no read-ahead: S3 served exactly what the reader asked for
    assert fetched > 0 and fraction < 0.10


def _valid_file(tmp_path, color_intrinsics, depth_intrinsics, n: int = 3) -> bytes:
    path = tmp_path / "ok.sens"
    write_sens(str(path), color_intrinsics, depth_intrinsics, make_frames(n), num_frames=n)
    return path.read_bytes()


def test_empty_and_truncated_files(tmp_path, color_intrinsics, depth_intrinsics):
    data = _valid_file(tmp_path, color_intrinsics, depth_intrinsics)
    empty = tmp_path / "empty.sens"
    empty.write_bytes(b"")
    with pytest.raises(TruncatedFileError, match="empty.sens.*0 bytes"):
        SensReader(str(empty))
    header_cut = tmp_path / "header_cut.sens"
    header_cut.write_bytes(data[:100])
    with pytest.raises(TruncatedFileError, match="header_cut.sens.*header"):
        SensReader(str(header_cut))
    payload_cut = tmp_path / "payload_cut.sens"
    payload_cut.write_bytes(data[:-10])
    with pytest.raises(TruncatedFileError, match="payload_cut.sens.*frame 2 of 3"):
        SensReader(str(payload_cut))
    with pytest.raises(MissingFileError, match="absent.sens"):
        SensReader(str(tmp_path / "absent.sens"))


def test_wrong_version_and_compression(tmp_path, color_intrinsics, depth_intrinsics):
    data = bytearray(_valid_file(tmp_path, color_intrinsics, depth_intrinsics))
    v3 = tmp_path / "v3.sens"
    v3.write_bytes(struct.pack("<I", 3) + bytes(data[4:]))
    with pytest.raises(UnsupportedVersionError, match="v3.sens.*version 3"):
        SensReader(str(v3))
    strlen = struct.unpack_from("<Q", data, 4)[0]
    depth_type_at = 4 + 8 + strlen + 4 * 64 + 4
    occi = bytearray(data)
    struct.pack_into("<i", occi, depth_type_at, 2)
    (tmp_path / "occi.sens").write_bytes(bytes(occi))
    with pytest.raises(UnsupportedCompressionError, match="occi.sens.*occi_ushort"):
        SensReader(str(tmp_path / "occi.sens"))


def test_corrupt_payloads_name_the_frame(tmp_path, color_intrinsics, depth_intrinsics):
    data = _valid_file(tmp_path, color_intrinsics, depth_intrinsics)
    with SensReader(str(tmp_path / "ok.sens")) as reader:
        offset = int(reader.frame_offsets[1]) + 96  # frame 1's colour payload
        c_size, d_size = (int(s) for s in reader._payload_sizes[1])
    bad_jpeg = bytearray(data)
    bad_jpeg[offset : offset + c_size] = b"\x00" * c_size
    (tmp_path / "bad_jpeg.sens").write_bytes(bytes(bad_jpeg))
    with SensReader(str(tmp_path / "bad_jpeg.sens")) as reader:
        reader.read_frame(0)  # other frames stay readable
        with pytest.raises(CorruptDataError, match="bad_jpeg.sens: frame 1 colour"):
            reader.read_frame(1)
    bad_zlib = bytearray(data)
    start = offset + c_size + 8
    bad_zlib[start : start + 16] = b"\xaa" * 16
    (tmp_path / "bad_zlib.sens").write_bytes(bytes(bad_zlib))
    with (
        SensReader(str(tmp_path / "bad_zlib.sens")) as reader,
        pytest.raises(CorruptDataError, match="frame 1: depth"),
    ):
        reader.read_frame(1)


def test_writer_checks_frame_count_and_sizes(tmp_path, color_intrinsics, depth_intrinsics):
    with pytest.raises(ValueError, match="num_frames=5 but frames yielded 3"):
        write_sens(str(tmp_path / "a.sens"), color_intrinsics, depth_intrinsics, make_frames(3), num_frames=5)
    assert not (tmp_path / "a.sens").exists()  # no file whose header disagrees with its records
    frames = make_frames(1)
    frames[0].rgb = frames[0].rgb[:-1]
    with pytest.raises(ValueError, match="colour is"):
        write_sens(str(tmp_path / "b.sens"), color_intrinsics, depth_intrinsics, frames, num_frames=1)
