"""ScanNet ``.sens`` v4: byte layout checked by an independent parser, round trips, S3 random access, bad input."""

from __future__ import annotations

import io
import os
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


class S3Calls:
    """Every S3 API call an s3fs client makes (operation, key, range) and the body bytes of each GetObject."""

    def __init__(self, fs):
        self.client, self.calls, self.served = fs.s3, [], []

    def _on_params(self, params, event_name, **_):
        self.calls.append((event_name.rsplit(".", 1)[-1], params.get("Key", ""), params.get("Range")))

    def _on_get(self, parsed, **_):
        self.served.append(int(parsed.get("ContentLength", 0)))

    def __enter__(self):
        self.client.meta.events.register("provide-client-params.s3", self._on_params)
        self.client.meta.events.register("after-call.s3.GetObject", self._on_get)
        return self

    def __exit__(self, *exc):
        self.client.meta.events.unregister("provide-client-params.s3", self._on_params)
        self.client.meta.events.unregister("after-call.s3.GetObject", self._on_get)

    def gets(self, key_suffix: str) -> list[tuple[str, str, str | None]]:
        return [c for c in self.calls if c[0] == "GetObject" and c[1].endswith(key_suffix)]


def _assert_same_frames(got, want) -> None:
    assert got.index == want.index and got.valid == want.valid and got.timestamp_s == want.timestamp_s
    np.testing.assert_array_equal(got.rgb, want.rgb)
    np.testing.assert_array_equal(got.depth_m, want.depth_m)
    np.testing.assert_array_equal(got.cam_to_world, want.cam_to_world)


@pytest.fixture
def s3_scene(s3_bucket, tmp_path, color_intrinsics, depth_intrinsics):
    """The same 240-frame ``.sens`` (frames 3 and 100 with lost tracking) on the moto S3 server and locally."""
    n = 240
    local = str(tmp_path / "scene0000_00.sens")
    write_sens(local, color_intrinsics, depth_intrinsics, make_frames(n, invalid=(3, 100)), num_frames=n)
    uri = f"{s3_bucket}/scans/scene0000_00/scene0000_00.sens"
    fs, path = filesystem(uri)
    fs.put_file(local, path)
    return uri, local, fs


def test_whole_scene_sample_from_s3_is_one_sequential_download(s3_scene):
    uri, local, fs = s3_scene
    size = fs.size(filesystem(uri)[1])
    fs.invalidate_cache()
    with S3Calls(fs) as calls, SensReader(uri) as reader:
        assert reader.spooled and reader.index_source == "scan" and reader.num_frames == 240
        assert reader.invalid_frames == [3, 100]
        wanted = [int(i) for i in np.flatnonzero(reader.valid)[::8]]
        frames = reader.read_frames(wanted)
        streamed = list(reader)
    # One listing of the folder (size, version, no sidecar) and one GET of the whole object; nothing per frame.
    assert [op for op, _, _ in calls.calls] == ["ListObjectsV2", "GetObject"]
    assert calls.gets(".sens") == [("GetObject", "scans/scene0000_00/scene0000_00.sens", None)]
    assert calls.served == [size]
    assert reader.bytes_read == size
    with SensReader(local) as want:
        assert not want.spooled
        np.testing.assert_array_equal(reader.poses, want.poses)
        np.testing.assert_array_equal(reader.timestamps_us, want.timestamps_us)
        for got in frames:
            _assert_same_frames(got, want.read_frame(got.index))
        _assert_same_frames(streamed[100], want.read_frame(100))


def test_sidecar_index_makes_random_access_one_request_per_frame(s3_scene):
    from pipelines.scenes.sens import index_uri

    uri, local, fs = s3_scene
    with SensReader(uri, write_index=True) as first:
        assert first.index_source == "scan"
    assert fs.exists(filesystem(index_uri(uri))[1])
    wanted = [5, 17, 100, 238]
    fs.invalidate_cache()
    with S3Calls(fs) as calls, SensReader(uri) as reader:
        frames = [reader.read_frame(i) for i in wanted]
    assert reader.index_source == "sidecar" and not reader.spooled and reader.invalid_frames == [3, 100]
    frame_gets = calls.gets(".sens")
    assert len(frame_gets) == len(wanted) and all(r is not None for _, _, r in frame_gets)
    # Besides one ranged GET per frame, two at open whatever the frame count: the folder listing and the sidecar.
    assert [c for c in calls.calls if c not in frame_gets] == [
        ("ListObjectsV2", "", None), ("GetObject", "scans/scene0000_00/scene0000_00.sens.index.npz", None)]
    with SensReader(local) as want:
        for name, value in vars(want.header).items():
            np.testing.assert_array_equal(getattr(reader.header, name), value)
        np.testing.assert_array_equal(reader.poses, want.poses)
        np.testing.assert_array_equal(reader.frame_offsets, want.frame_offsets)
        np.testing.assert_allclose(reader.timestamps_s, want.timestamps_s)
        for got in frames:
            _assert_same_frames(got, want.read_frame(got.index))
        # Each frame's GET carries exactly its colour + depth payloads.
        assert calls.served[-len(wanted):] == [sum(len(b) for b in want.read_raw(i)) for i in wanted]


def test_a_stale_or_corrupt_sidecar_is_ignored_and_rewritten(s3_scene, tmp_path, color_intrinsics,
                                                             depth_intrinsics):
    from pipelines.scenes.sens import index_uri

    uri, _, fs = s3_scene
    SensReader(uri, write_index=True).close()
    # The scene is re-recorded: another file (fewer frames, other poses) under the same name.
    other = str(tmp_path / "other.sens")
    write_sens(other, color_intrinsics, depth_intrinsics, make_frames(20, seed=3, invalid=(7,)), num_frames=20)
    fs.put_file(other, filesystem(uri)[1])
    with SensReader(uri, write_index=True) as reader, SensReader(other) as want:
        assert reader.index_source == "scan" and reader.num_frames == 20 and reader.invalid_frames == [7]
        _assert_same_frames(reader.read_frame(19), want.read_frame(19))
    with SensReader(uri) as reader:
        assert reader.index_source == "sidecar" and reader.num_frames == 20
    fs.pipe_file(filesystem(index_uri(uri))[1], b"not an npz")
    with SensReader(uri) as reader:
        assert reader.index_source == "scan" and reader.num_frames == 20


def test_local_sidecar_and_seek_mode_on_s3(s3_scene):
    from pipelines.scenes.sens import index_uri

    uri, local, fs = s3_scene
    with SensReader(local, write_index=True) as scanned:
        want = scanned.read_frame(137)
    assert os.path.exists(index_uri(local))
    with SensReader(local) as reader:
        assert reader.index_source == "sidecar"
        _assert_same_frames(reader.read_frame(137), want)
    # Without spooling (spool=False) a file on S3 is read header by header: one small GET per frame at open.
    with S3Calls(fs) as calls, SensReader(uri, spool=False) as reader:
        frame = reader.read_frame(137)
        own_count = reader.bytes_read
    _assert_same_frames(frame, want)
    assert len(calls.gets(".sens")) == 4 + 240 + 1  # 4 header fields, one per frame header, the frame
    assert sum(calls.served) == own_count and own_count < 0.1 * fs.size(filesystem(uri)[1])


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
