"""Hostile and broken videos through the PyAV readers: real encoded files (see tests/scenes/video_files.py).

Each class: playlists/images/other containers refused before FFmpeg reads another file; decode bombs refused from
the metadata before decoding (and in the decoder when the metadata lies); every budget limit enforced; truncation
detected wherever frames are read; edit lists counted as a player presents them; size/count expectations; every
failure a typed error naming the file.
"""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import av
import numpy as np
import pytest

from pipelines.scenes.decode_budget import DecodeBudget
from pipelines.scenes.errors import (
    CorruptDataError,
    DecodeBudgetError,
    FrameCountMismatchError,
    FrameSizeMismatchError,
    MissingFileError,
    SceneDataError,
    TruncatedFileError,
    UnsupportedContainerError,
)
from pipelines.scenes.video import decode_frames, frame_times, iter_frames, probe, sample_uniform
from tests.conftest import REPO_ROOT
from tests.scenes import video_files as vf

VIDEOS = Path(__file__).resolve().parents[1] / "data" / "videos"
NASA = VIDEOS / "nasa_13013.mp4"
ROTATED = VIDEOS / "nasa_13013_rotated.mp4"
VP9 = VIDEOS / "testsrc2_vp9.webm"

READERS = {
    "probe": lambda src, **kw: probe(src, **kw),
    "probe_count": lambda src, **kw: probe(src, count_frames=True, **kw),
    "iter_frames": lambda src, **kw: list(iter_frames(src, **kw)),
    "decode_frames": lambda src, **kw: decode_frames(src, [0], **kw),
    "sample_uniform": lambda src, **kw: sample_uniform(src, 4, **kw),
    "frame_times": lambda src, **kw: frame_times(src, **kw),
}


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return vf.decode_bomb()


@pytest.fixture(scope="module")
def clip30() -> bytes:
    return vf.mp4(30)


# ------------------------------------------------------------------------------------- containers FFmpeg may open
@pytest.mark.parametrize("reader", sorted(READERS))
def test_ffconcat_playlist_never_reads_the_file_it_names(tmp_path, reader, monkeypatch):
    secret = tmp_path / "secret.mp4"
    secret.write_bytes(ROTATED.read_bytes())
    monkeypatch.chdir(tmp_path)  # FFmpeg resolves a playlist's relative names against the working directory
    details = []
    for name in ("secret.mp4", str(secret), "missing.mp4"):
        with pytest.raises(UnsupportedContainerError) as info:
            READERS[reader](vf.ffconcat(name))
        details.append(info.value.problem)
    # Same answer whether the named file exists or not: no oracle for paths on the server.
    assert len(set(details)) == 1 and "allowed container format" in details[0]
    # Without the allow-list FFmpeg opens it and decodes the other file: the attack is real.
    with av.open(io.BytesIO(vf.ffconcat("secret.mp4"))) as container:
        assert container.format.name == "concat"
        assert sum(1 for _ in container.decode(video=0)) == 17


@pytest.mark.parametrize(
    ("label", "make"),
    [
        ("hls", lambda: vf.hls_playlist("secret.mp4", "http://127.0.0.1:1/x.ts")),
        ("png", vf.png),
        ("gif", vf.gif),
        ("mpegts", vf.mpegts),
        ("random", lambda: np.random.default_rng(0).bytes(5000)),
        ("text", lambda: b"this is plain text, not a video\n" * 40),
        ("ansi", lambda: b"\x1b[31mred\x1b[0m text for the tty demuxer\n" * 40),
    ],
)
def test_non_video_or_disallowed_containers_are_refused(tmp_path, label, make):
    data = make()
    path = tmp_path / f"{label}.mp4"  # the name claims MP4; the bytes decide, and only allowed demuxers may
    path.write_bytes(data)
    # FFmpeg recognises images and TS (refused by the allow-list); noise, text and these playlists it does not.
    error = CorruptDataError if label in ("random", "text", "hls", "ansi") else UnsupportedContainerError
    for source in (data, path, str(path), io.BytesIO(data)):
        with pytest.raises(error, match="not a readable video"):
            probe(source)
    with pytest.raises(error, match=f"{label}.mp4: not a readable video"):
        list(iter_frames(path))


def test_the_allow_list_is_configurable():
    ts = vf.mpegts()
    with pytest.raises(UnsupportedContainerError, match="mov, matroska"):
        probe(ts)
    info = probe(ts, budget=DecodeBudget(formats=("mpegts",)))
    assert (info.width, info.height) == (64, 48)
    with pytest.raises(UnsupportedContainerError, match="mpegts"):
        probe(ROTATED, budget=DecodeBudget(formats=("mpegts",)))
    with pytest.raises(ValueError, match="formats"):
        DecodeBudget(formats=("mov,concat",))


# ----------------------------------------------------------------------------------------------------- budgets
@pytest.mark.parametrize("reader", sorted(READERS))
def test_8k_decode_bomb_is_refused_before_decoding(bomb, reader):
    assert len(bomb) < 200_000
    with pytest.raises(DecodeBudgetError, match=r"frames are 7680x4320 \(33.2 MP\); the decode budget allows 8.3 MP"):
        READERS[reader](bomb)


def test_8k_decode_bomb_refusal_costs_no_memory(bomb, tmp_path):
    """In a fresh process (its peak RSS is all its own): refusing the bomb stays near the interpreter's baseline,
    while decoding only its first frame already costs ~80 MB more."""
    path = tmp_path / "bomb.mp4"
    path.write_bytes(bomb)
    # VmHWM is the peak RSS of this process image (ru_maxrss would carry over the forking pytest's peak).
    script = (
        "import sys\n"
        "from pipelines.scenes.video import sample_uniform\n"
        "from pipelines.scenes.errors import DecodeBudgetError\n"
        "import av\n"
        "def peak_kib():\n"
        "    line = next(l for l in open('/proc/self/status') if l.startswith('VmHWM'))\n"
        "    return int(line.split()[1])\n"
        "base = peak_kib()\n"
        "if sys.argv[2] == 'budget':\n"
        "    try:\n"
        "        sample_uniform(sys.argv[1], 2)\n"
        "    except DecodeBudgetError:\n"
        "        pass\n"
        "else:\n"
        "    with av.open(sys.argv[1]) as c:\n"
        "        next(c.decode(video=0)).to_ndarray(format='rgb24')\n"
        "print((peak_kib() - base) // 1024)\n"
    )
    growth = {}
    for mode in ("budget", "unbounded"):
        out = subprocess.run([sys.executable, "-c", script, str(path), mode], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=120, check=True)
        growth[mode] = int(out.stdout.strip())
    assert growth["budget"] < 20, growth  # MiB
    assert growth["unbounded"] > 150, growth


def test_stream_that_switches_to_8k_midway_fails_in_the_decoder(tmp_path):
    """The container (and first SPS) say 64x48; an in-band SPS switches to 8K: FFmpeg's decoder refuses the
    pictures at the budget's pixel limit before allocating them."""
    data = vf.size_switch_mp4()
    with av.open(io.BytesIO(data)) as container:
        assert (container.streams.video[0].width, container.streams.video[0].height) == (64, 48)
    for reader in ("iter_frames", "sample_uniform"):
        with pytest.raises(CorruptDataError, match="decoding failed"):
            READERS[reader](data)


def test_each_budget_limit_is_enforced(clip30):
    frames = len(list(iter_frames(clip30)))
    assert frames == 30
    exact = DecodeBudget(max_frame_pixels=64 * 48, max_frames=30)
    assert len(list(iter_frames(clip30, budget=exact))) == 30
    with pytest.raises(DecodeBudgetError, match="64x48"):
        probe(clip30, budget=DecodeBudget(max_frame_pixels=64 * 48 - 1))
    with pytest.raises(DecodeBudgetError, match="declares 30 frames; the decode budget allows 29"):
        list(iter_frames(clip30, budget=DecodeBudget(max_frames=29)))
    # WebM declares no frame count: the limit holds while demuxing.
    with pytest.raises(DecodeBudgetError, match="more than 10 frames"):
        probe(VP9, budget=DecodeBudget(max_frames=10))
    with pytest.raises(DecodeBudgetError, match="more than 10 frames"):
        list(iter_frames(VP9, budget=DecodeBudget(max_frames=10)))
    with pytest.raises(DecodeBudgetError, match="bytes of pictures, over the decode budget's 20000"):
        list(iter_frames(clip30, budget=DecodeBudget(max_decoded_bytes=20_000)))
    with pytest.raises(DecodeBudgetError, match="bytes of pictures"):
        sample_uniform(clip30, 8, budget=DecodeBudget(max_decoded_bytes=20_000))
    with pytest.raises(DecodeBudgetError, match="longer than the decode budget's 1e-06 s"):
        list(iter_frames(NASA, budget=DecodeBudget(max_decode_s=1e-6)))


@pytest.mark.parametrize(
    "kwargs",
    [{"max_frame_pixels": 0}, {"max_frames": -1}, {"max_decoded_bytes": 1.5}, {"max_decode_s": 0},
     {"max_decode_s": float("inf")}, {"max_frames": True}, {"formats": ()}],
)
def test_budget_validation(kwargs):
    with pytest.raises(ValueError, match="decode budget"):
        DecodeBudget(**kwargs)


# -------------------------------------------------------------------------------------------------- truncation
@pytest.fixture(scope="module")
def faststart_nasa(tmp_path_factory) -> bytes:
    """The NASA sample's main stream remuxed with its index first (+faststart), as our writer makes them."""
    path = tmp_path_factory.mktemp("faststart") / "nasa_faststart.mp4"
    with av.open(str(NASA)) as src, av.open(str(path), "w", format="mp4",
                                             options={"movflags": "+faststart"}) as dst:
        ist = src.streams.best("video")
        ost = dst.add_stream_from_template(ist)
        for packet in src.demux(ist):
            if packet.dts is not None:
                packet.stream = ost
                dst.mux(packet)
    return path.read_bytes()


@pytest.mark.parametrize("fraction", [0.2, 0.5, 0.9, 0.999])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_truncated_faststart_mp4_raises_everywhere(faststart_nasa, fraction, reader, tmp_path):
    assert probe(faststart_nasa).num_frames == 390
    path = tmp_path / "cut.mp4"
    path.write_bytes(faststart_nasa[: int(len(faststart_nasa) * fraction)])
    with pytest.raises(TruncatedFileError, match=r"cut.mp4: \d+ of the 390 frames .* beyond the end"):
        READERS[reader](path)


@pytest.mark.parametrize("fraction", [0.3, 0.66, 0.95])
@pytest.mark.parametrize("reader", sorted(READERS))
def test_truncated_webm_raises_everywhere(fraction, reader, tmp_path):
    """WebM has no frame table; its declared duration (1 s) against the frames present gives the cut away."""
    path = tmp_path / "cut.webm"
    path.write_bytes(VP9.read_bytes()[: int(VP9.stat().st_size * fraction)])
    with pytest.raises(TruncatedFileError, match=r"cut.webm: the stream declares 1.000 s but its \d+ frames span"):
        READERS[reader](path)


def test_iteration_never_ends_silently_on_a_prefix(faststart_nasa):
    cut = faststart_nasa[: len(faststart_nasa) // 2]
    got = []
    with pytest.raises(TruncatedFileError):
        for frame in iter_frames(cut):
            got.append(frame.index)
    assert got == []  # the index gives the cut away before the first frame


# --------------------------------------------------------------------------------------------------- edit lists
@pytest.mark.parametrize("bframes", [0, 3])
def test_edit_list_hiding_leading_frames(bframes):
    base = vf.mp4(30, bframes=bframes, gop=30)
    data = vf.edit_list_mp4(base, hide_leading=5)
    with av.open(io.BytesIO(data)) as container:  # the container still lists all 30 samples
        assert container.streams.video[0].frames == 30
    info = probe(data)
    assert info.num_frames == 25 and probe(data, count_frames=True).num_frames == 25
    original = [f.rgb for f in iter_frames(base)]
    presented = list(iter_frames(data))
    assert [f.index for f in presented] == list(range(25))
    assert presented[0].timestamp_s == 0.0 and presented[24].timestamp_s == pytest.approx(24 / 30)
    for frame in presented:
        np.testing.assert_array_equal(frame.rgb, original[frame.index + 5])
    sampled = sample_uniform(data, 6)
    assert [f.index for f in sampled] == [0, 5, 10, 14, 19, 24]
    for frame in sampled:
        np.testing.assert_array_equal(frame.rgb, original[frame.index + 5])
    assert len(frame_times(data)) == 25
    with pytest.raises(IndexError, match=r"\[0, 25\)"):
        decode_frames(data, [25])


def test_edit_list_starting_on_a_keyframe():
    """The edit starts on a keyframe: FFmpeg drops the 10 earlier packets from its index (the stream still says
    12 frames); the 2 presented frames are a complete, valid video, not a truncated one."""
    data = vf.edit_list_mp4(vf.mp4(12, gop=10), hide_leading=10)
    with av.open(io.BytesIO(data)) as container:
        assert container.streams.video[0].frames == 12
    assert probe(data).num_frames == probe(data, count_frames=True).num_frames == 2
    assert len(list(iter_frames(data))) == 2 and len(sample_uniform(data, 4)) == 4


def test_edit_list_hiding_leading_and_trailing_frames():
    base = vf.mp4(30, bframes=2, gop=12)
    data = vf.edit_list_mp4(base, hide_leading=4, keep=20)
    assert probe(data).num_frames == 20
    original = [f.rgb for f in iter_frames(base)]
    presented = list(iter_frames(data))
    assert len(presented) == 20
    for frame in presented:
        np.testing.assert_array_equal(frame.rgb, original[frame.index + 4])
    for frame in decode_frames(data, [19, 0, 11]):
        np.testing.assert_array_equal(frame.rgb, original[frame.index + 4])


# ---------------------------------------------------------------------------------------- expectations, names
def test_one_frame_video():
    data = vf.mp4(1)
    assert probe(data).num_frames == 1
    assert [f.index for f in iter_frames(data)] == [0]
    assert [f.index for f in sample_uniform(data, 4)] == [0, 0, 0, 0]  # the caller decides if that is enough


def test_expected_size_and_count(clip30):
    with pytest.raises(FrameSizeMismatchError, match="video frames are 64x48, the scene declares 48x40"):
        decode_frames(clip30, [0], expect_size=(48, 40))
    with pytest.raises(FrameSizeMismatchError, match="64x48, the scene declares 32x24"):
        list(iter_frames(clip30, expect_size=(32, 24)))
    assert len(decode_frames(clip30, [3], expect_size=(64, 48))) == 1
    # Rotation: coded 480x270, displayed 270x480; only the displayed size is right.
    assert decode_frames(ROTATED, [0], expect_size=(270, 480))[0].rgb.shape == (480, 270, 3)
    with pytest.raises(FrameSizeMismatchError, match="frame 0 is 270x480, the scene declares 480x270"):
        decode_frames(ROTATED, [0], expect_size=(480, 270))
    with pytest.raises(FrameCountMismatchError, match="presents 30 frames, 31 are expected"):
        decode_frames(clip30, [0], expect_frames=31)


def test_transform_is_applied_as_frames_decode(clip30):
    got = decode_frames(clip30, [0, 29, 0], transform=lambda rgb: rgb[::4, ::4].copy())
    assert [g.rgb.shape for g in got] == [(12, 16, 3)] * 3
    full = decode_frames(clip30, [29])[0].rgb
    np.testing.assert_array_equal(got[1].rgb, full[::4, ::4])


def test_every_failure_is_typed_and_names_the_file(tmp_path, bomb, faststart_nasa):
    cases = {
        "playlist.mp4": vf.ffconcat("x.mp4"),
        "image.mp4": vf.png(),
        "bomb.mp4": bomb,
        "cut.mp4": faststart_nasa[:30_000],
        "empty.mp4": b"",
        "noise.mp4": np.random.default_rng(1).bytes(3000),
    }
    for name, data in cases.items():
        path = tmp_path / name
        path.write_bytes(data)
        for reader in READERS.values():
            with pytest.raises(SceneDataError) as info:
                reader(path)
            assert info.value.uri == str(path) and str(path) in str(info.value)
    with pytest.raises(MissingFileError, match="absent.mp4: video file does not exist"):
        probe(tmp_path / "absent.mp4")
    (tmp_path / "folder.mp4").mkdir()
    with pytest.raises(MissingFileError, match="folder.mp4"):
        probe(tmp_path / "folder.mp4")
