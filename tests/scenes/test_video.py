"""PyAV decoding on real-world files (see tests/data/videos/README.md) and on files we encode."""

from __future__ import annotations

import io
from pathlib import Path

import av
import numpy as np
import pytest

from pipelines.scenes.errors import CorruptDataError, MissingFileError, TruncatedFileError
from pipelines.scenes.video import (
    decode_frames,
    encode_video,
    iter_frames,
    probe,
    sample_uniform,
    uniform_indices,
)
from pipelines.storage import write_bytes
from tests.scenes.frames import VIDEO_MEAN_ABS_TOL, smooth_rgb

VIDEOS = Path(__file__).resolve().parents[1] / "data" / "videos"
NASA = VIDEOS / "nasa_13013.mp4"
ROTATED = VIDEOS / "nasa_13013_rotated.mp4"
NON_ZERO_START = VIDEOS / "test_non_zero_start.mp4"
VP9 = VIDEOS / "testsrc2_vp9.webm"
ODD_444 = VIDEOS / "testsrc2_odd_height_and_width_444.mp4"


def test_picks_the_best_video_stream_not_stream_0():
    info = probe(NASA)
    assert info.num_streams == 6 and info.stream_index == 3
    assert (info.width, info.height, info.num_frames) == (480, 270, 390)
    with av.open(str(NASA)) as container:  # stream 0 is the smaller 320x180 rendition
        assert container.streams[0].type == "video" and container.streams[0].codec_context.width == 320
    frames = decode_frames(NASA, [0, 389])
    assert [f.rgb.shape for f in frames] == [(270, 480, 3)] * 2
    assert frames[1].timestamp_s == pytest.approx(389 * 1001 / 30000)


def test_rotation_is_applied():
    info = probe(ROTATED)
    assert info.rotation_deg == 90
    assert (info.coded_width, info.coded_height) == (480, 270)
    assert (info.width, info.height) == (270, 480)
    got = decode_frames(ROTATED, [0, 1, 2])
    assert got[0].rgb.shape == (480, 270, 3)  # transposed vs the coded 480x270
    # The rotated file holds stream 3 of the NASA file, unchanged, plus a +90 deg (counter-clockwise) display matrix.
    with av.open(str(NASA)) as container:
        decoded = container.decode(container.streams[3])
        coded = [next(decoded).to_ndarray(format="rgb24") for _ in range(3)]
    for frame, raw in zip(got, coded, strict=True):
        np.testing.assert_array_equal(frame.rgb, np.rot90(raw, k=1))


def test_non_zero_start_time():
    info = probe(NON_ZERO_START)
    assert info.start_time_s == pytest.approx(127995 / 15360)
    assert info.num_frames == 12
    first, second, last = decode_frames(NON_ZERO_START, [0, 1, 11])
    assert first.pts == 127995 and first.timestamp_s == 0.0  # frame 0 is the first displayed frame
    assert second.timestamp_s == pytest.approx(512 / 15360)
    assert last.timestamp_s == pytest.approx(11 / 30, abs=1e-3)
    assert first.rgb.shape == (112, 200, 3)


def test_vp9_webm():
    info = probe(VP9)
    assert (info.codec, info.width, info.height, info.num_frames) == ("vp9", 1280, 720, 30)
    assert [f.rgb.shape for f in decode_frames(VP9, [29, 0])] == [(720, 1280, 3)] * 2


def test_odd_size_444():
    info = probe(ODD_444)
    assert (info.width, info.height, info.pix_fmt) == (321, 241, "yuv444p")
    assert decode_frames(ODD_444, [24])[0].rgb.shape == (241, 321, 3)


@pytest.mark.parametrize("path", [NASA, ROTATED, NON_ZERO_START, VP9, ODD_444], ids=lambda p: p.name)
def test_uniform_sampling_equals_sequential_decode(path):
    sequential = list(iter_frames(path))
    assert [f.index for f in sequential] == list(range(len(sequential)))
    assert len(sequential) == probe(path, count_frames=True).num_frames
    indices = uniform_indices(len(sequential), 8)
    sampled = decode_frames(path, indices[::-1] + [indices[3]])  # any order, repeats allowed
    assert [f.index for f in sampled] == indices[::-1] + [indices[3]]
    for frame in sampled:
        want = sequential[frame.index]
        assert frame.pts == want.pts and frame.timestamp_s == want.timestamp_s
        np.testing.assert_array_equal(frame.rgb, want.rgb)


def test_sources_bytes_file_objects_and_s3(s3_bucket):
    data = ROTATED.read_bytes()
    want = decode_frames(ROTATED, [5])[0].rgb
    np.testing.assert_array_equal(decode_frames(data, [5])[0].rgb, want)
    np.testing.assert_array_equal(decode_frames(io.BytesIO(data), [5])[0].rgb, want)
    uri = f"{s3_bucket}/raw/rotated.mp4"
    write_bytes(uri, data)
    assert probe(uri).rotation_deg == 90
    np.testing.assert_array_equal(decode_frames(uri, [5])[0].rgb, want)


def test_short_gop_encode_round_trip(tmp_path):
    frames = [smooth_rgb(i, 64, 80) for i in range(45)]
    path = tmp_path / "clip.mp4"
    assert encode_video(str(path), frames, fps=30, gop=10, options={"crf": "18"}) == 45
    with av.open(str(path)) as container:
        keys = [p.pts for p in container.demux(container.streams.video[0]) if p.is_keyframe and p.size]
    assert len(keys) >= 5  # a keyframe at least every 10 frames
    info = probe(path)
    assert (info.width, info.height, info.num_frames, info.fps) == (80, 64, 45, 30.0)
    got = sample_uniform(path, 6)
    assert [f.index for f in got] == [0, 9, 18, 26, 35, 44]
    for f in got:
        err = np.abs(f.rgb.astype(int) - frames[f.index].astype(int))
        assert err.mean() < VIDEO_MEAN_ABS_TOL, f"frame {f.index}: mean abs error {err.mean():.2f}"


def test_not_a_video_and_truncated(tmp_path):
    with pytest.raises(CorruptDataError, match="bytes of video.*not a readable video"):
        decode_frames(b"this is plain text, not a video" * 10, [0])
    text = tmp_path / "notes.mp4"
    text.write_text("hello")
    with pytest.raises(CorruptDataError, match="notes.mp4"):
        probe(text)
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(NASA.read_bytes()[: NASA.stat().st_size // 2])  # index (moov) at the end: lost
    with pytest.raises(CorruptDataError, match="cut.mp4"):
        decode_frames(cut, [0])
    full = tmp_path / "full.mp4"
    encode_video(str(full), [smooth_rgb(i, 64, 80) for i in range(60)], gop=10)  # faststart: index first
    cut2 = tmp_path / "cut_faststart.mp4"
    cut2.write_bytes(full.read_bytes()[: full.stat().st_size * 2 // 3])
    for read in (lambda: decode_frames(cut2, [59]), lambda: probe(cut2), lambda: list(iter_frames(cut2))):
        with pytest.raises(TruncatedFileError, match=r"cut_faststart.mp4: \d+ of the 60 frames .* beyond the end"):
            read()
    with pytest.raises(MissingFileError, match="absent.mp4"):
        probe(tmp_path / "absent.mp4")
    with pytest.raises(IndexError, match=r"\[0, 17\)"):
        decode_frames(ROTATED, [17])
