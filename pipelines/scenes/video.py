"""Video decoding and encoding with PyAV, shared by ingest, the video scene layout and serving.

Conventions:

* The decoded stream is the container's *best* video stream (FFmpeg's ``av_find_best_stream``), which need not be
  stream 0: multi-programme files (the NASA sample has six streams) put a smaller rendition first.
* Frames are the frames a player presents: an MP4 edit list may hide packets (decoded only as references, before
  the first presented frame or after the last); they are neither counted nor returned.
* Frame indices are 0-based positions in display (presentation) order. Timestamps are seconds from the first
  displayed frame, so files whose first timestamp is not zero index and time their frames from that frame.
* Frames come out as ``[H, W, 3]`` uint8 RGB with the container's display rotation applied (``H, W`` are the
  displayed size: a 90-degree rotation swaps the coded width and height).
* Random access (:func:`decode_frames`) first demuxes the stream without decoding to learn every frame's
  presentation timestamp and the keyframes. It then seeks to a keyframe only when the next target frame lies in a
  later GOP than the decoder's position and otherwise decodes forward, so each needed GOP is decoded once.
  Seeking for every target would re-decode a long GOP many times; a full scan would decode every frame. On the way
  to a target, non-reference frames that are not wanted are skipped (nothing predicts from them).

Hostile input (see :mod:`pipelines.scenes.decode_budget`): every source is opened through a Python file object
with an allow-list of demuxers, so FFmpeg never resolves a path or URL itself (no ``concat`` playlists reading
other files, no image formats, no network protocols); every open and decode is held to a :class:`DecodeBudget`,
checked from the stream metadata before the first frame is decoded and again while decoding. Truncation is
detected wherever frames are read: by the container index (an MP4 sample table lists every frame's byte range, so
frames past the end of the data, or a demux that stops short of the index, mean a cut file) and, for containers
without a full index (Matroska/WebM), by the declared stream duration against the frames present. Every failure is
a :class:`~pipelines.scenes.errors.SceneDataError` naming the file and the problem.

Sources are ``bytes``, binary file objects, local paths or fsspec URIs (``s3://``); non-local URIs are read through
fsspec with read-ahead, which suits the mostly sequential access of decoding.
"""

from __future__ import annotations

import errno
import io
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import IO

import av
import av.error
import numpy as np

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
from pipelines.storage import filesystem

Source = bytes | bytearray | memoryview | str | os.PathLike | IO[bytes]
Transform = Callable[[np.ndarray], np.ndarray]

DEFAULT_BUDGET = DecodeBudget()
# Bytes FFmpeg asks the Python file object for per read (PyAV's default of 32 KiB costs a Python call per 32 KiB).
_IO_BUFFER_BYTES = 256 * 1024


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe` learns about the decoded stream.

    Attributes:
        stream_index: index of the chosen video stream in the container.
        num_streams: streams of all types in the container.
        codec: decoder name (``h264``, ``vp9``, ...).
        width: displayed width in pixels (after rotation).
        height: displayed height in pixels (after rotation).
        coded_width: width of the coded pictures.
        coded_height: height of the coded pictures.
        pix_fmt: coded pixel format (``yuv420p``, ``yuv444p``, ...).
        fps: average frame rate (frames per second; 0 when unknown).
        num_frames: number of presented frames (from the container's sample table where it has one, less the
            packets an edit list hides; else counted by demuxing).
        duration_s: stream duration in seconds (``num_frames / fps`` when the container has none).
        start_time_s: presentation time of the first frame in the container's clock (seconds).
        rotation_deg: counter-clockwise display rotation applied to decoded frames (0, 90, 180, -90).
    """

    stream_index: int
    num_streams: int
    codec: str
    width: int
    height: int
    coded_width: int
    coded_height: int
    pix_fmt: str
    fps: float
    num_frames: int
    duration_s: float
    start_time_s: float
    rotation_deg: int


@dataclass
class DecodedFrame:
    """One decoded frame: display-order ``index``, raw ``pts`` (stream time base), ``timestamp_s`` from the first
    frame, and ``rgb`` ``[H, W, 3]`` uint8 with rotation applied (or what the caller's transform made of it)."""

    index: int
    pts: int
    timestamp_s: float
    rgb: np.ndarray


def source_name(source: Source) -> str:
    """A printable name of ``source`` for error messages."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return f"<{len(source)} bytes of video>"
    if isinstance(source, (str, os.PathLike)):
        return os.fspath(source)
    return str(getattr(source, "name", None) or getattr(source, "path", None) or repr(source))


@contextmanager
def _binary(source: Source, name: str) -> Iterator[tuple[IO[bytes], int]]:
    """``source`` as a seekable binary file object and its size in bytes (FFmpeg never sees a path or URL)."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        yield io.BytesIO(source), len(source)
        return
    if not isinstance(source, (str, os.PathLike)):
        position = source.tell()
        size = source.seek(0, io.SEEK_END)
        source.seek(position)
        yield source, size
        return
    fs, path = filesystem(os.fspath(source))
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    local = "file" in protocols or "local" in protocols
    try:
        if local:
            handle = open(path, "rb")  # noqa: SIM115 - closed below; plain buffered I/O for local files
        else:
            handle = fs.open(path, "rb", block_size=2**22, cache_type="readahead")
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise MissingFileError(name, "video file does not exist") from exc
    except OSError as exc:
        raise CorruptDataError(name, f"video file cannot be read ({type(exc).__name__}: {exc})") from exc
    try:
        size = os.fstat(handle.fileno()).st_size if local else int(handle.size)
        yield handle, size
    finally:
        handle.close()


def _check_stream(name: str, stream, budget: DecodeBudget) -> None:
    """Refuse a stream whose metadata already breaks the budget (nothing has been decoded yet)."""
    cc = stream.codec_context
    if cc is None:
        raise CorruptDataError(name, f"no decoder for the video codec ({stream.codec.name if stream.codec else '?'})")
    width, height = int(cc.width), int(cc.height)
    if width <= 0 or height <= 0:
        raise CorruptDataError(name, f"the video stream declares no frame size ({width}x{height})")
    if width * height > budget.max_frame_pixels:
        raise DecodeBudgetError(
            name, f"frames are {width}x{height} ({width * height / 1e6:.1f} MP); the decode budget allows "
                  f"{budget.max_frame_pixels / 1e6:.1f} MP per frame")
    declared = max(int(stream.frames or 0), len(stream.index_entries))
    if declared > budget.max_frames:
        raise DecodeBudgetError(
            name, f"the stream declares {declared} frames; the decode budget allows {budget.max_frames}")


def _check_index(name: str, stream, size: int) -> None:
    """Refuse a file whose container index places frames beyond the end of the data (a truncated file)."""
    entries = stream.index_entries
    if len(entries) and max(e.pos + e.size for e in entries) > size:
        beyond = sum(1 for e in entries if e.pos + e.size > size)
        raise TruncatedFileError(
            name, f"{beyond} of the {len(entries)} frames the container indexes lie beyond the end of its "
                  f"{size} bytes (truncated file)")


def _check_expected_size(name: str, stream, expect_size: tuple[int, int] | None) -> None:
    """Refuse, before decoding, a stream whose coded size cannot display as ``expect_size`` (width, height)."""
    if expect_size is None:
        return
    coded = (int(stream.codec_context.width), int(stream.codec_context.height))
    if coded != tuple(expect_size) and coded[::-1] != tuple(expect_size):
        raise FrameSizeMismatchError(
            name, f"video frames are {coded[0]}x{coded[1]}, the scene declares {expect_size[0]}x{expect_size[1]}")


@contextmanager
def open_video(source: Source, threads: int = 0, thread_type: str = "AUTO", budget: DecodeBudget = DEFAULT_BUDGET):
    """Open ``source`` and yield ``(container, stream)`` for its best video stream, checked against ``budget``.

    The container is opened from a Python file object with FFmpeg's demuxer allow-list set to ``budget.formats``
    and no protocols allowed, so nothing but these bytes is ever read. The stream's frame size and frame count are
    checked before anything is decoded, and the decoder is told the pixel limit, so a coded size larger than the
    container declares fails in the decoder before its picture buffers are allocated.

    Args:
        source: bytes, a binary file object, a local path or an fsspec URI.
        threads: decoder threads (0 = FFmpeg's choice).
        thread_type: ``"SLICE"``, ``"FRAME"`` or ``"AUTO"`` (frame threading adds latency, not work).
        budget: the decode budget and allowed container formats.

    Raises:
        MissingFileError: a path/URI that does not exist.
        UnsupportedContainerError: a container FFmpeg recognises but the allow-list refuses (playlists, images,
            other formats).
        DecodeBudgetError: frames larger, or more of them, than the budget allows.
        TruncatedFileError: the container's index places frames beyond the end of the data.
        CorruptDataError: bytes no demuxer recognises, a container without a video stream, or one the demuxer
            cannot read.
    """
    name = source_name(source)
    with _binary(source, name) as (handle, size):
        if size == 0:
            raise TruncatedFileError(name, "the video file is empty (0 bytes)")
        try:
            container = av.open(
                handle, mode="r", buffer_size=_IO_BUFFER_BYTES,
                container_options={"format_whitelist": ",".join(budget.formats), "protocol_whitelist": ""},
                # Also reaches the decoders that stream-info probing runs while opening.
                options={"max_pixels": str(budget.max_frame_pixels)},
            )
        except av.error.FFmpegError as exc:
            allowed = ", ".join(budget.formats)
            if exc.errno == errno.EINVAL:  # what the demuxer allow-list answers for a recognised other format
                raise UnsupportedContainerError(
                    name, f"not a readable video in an allowed container format ({allowed})") from exc
            raise CorruptDataError(
                name, f"not a readable video container ({allowed} allowed; FFmpeg: {exc.strerror})") from exc
        try:
            stream = container.streams.best("video")
            if stream is None:
                raise CorruptDataError(name, f"no video stream among {len(container.streams)} streams")
            _check_stream(name, stream, budget)
            _check_index(name, stream, size)
            stream.codec_context.options = {"max_pixels": str(budget.max_frame_pixels)}
            stream.codec_context.thread_count = threads
            stream.codec_context.thread_type = thread_type
            yield container, stream
        finally:
            container.close()


class _Meter:
    """Holds one decode call to its budget: every decoded frame's size, the frame count, bytes and wall time."""

    def __init__(self, name: str, budget: DecodeBudget):
        self.name = name
        self.budget = budget
        self.frames = 0
        self.bytes = 0
        self.deadline = None if budget.max_decode_s is None else time.monotonic() + budget.max_decode_s

    def packets(self, count: int) -> None:
        if count > self.budget.max_frames:
            raise DecodeBudgetError(self.name, f"the stream holds more than {self.budget.max_frames} frames, the "
                                               "decode budget's limit")
        self._clock()

    def frame(self, frame: av.VideoFrame) -> None:
        pixels = frame.width * frame.height
        if pixels > self.budget.max_frame_pixels:
            raise DecodeBudgetError(self.name, f"a decoded frame is {frame.width}x{frame.height}; the decode budget "
                                               f"allows {self.budget.max_frame_pixels / 1e6:.1f} MP per frame")
        self.frames += 1
        self.bytes += sum(p.buffer_size for p in frame.planes)
        if self.frames > self.budget.max_frames:
            raise DecodeBudgetError(self.name, f"decoded more than {self.budget.max_frames} frames, the decode "
                                               "budget's limit")
        if self.bytes > self.budget.max_decoded_bytes:
            raise DecodeBudgetError(self.name, f"decoded {self.bytes} bytes of pictures, over the decode budget's "
                                               f"{self.budget.max_decoded_bytes}")
        self._clock()

    def _clock(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise DecodeBudgetError(self.name, f"decoding took longer than the decode budget's "
                                               f"{self.budget.max_decode_s:g} s")


def _full_index(stream) -> bool:
    """Whether the container lists every packet of the stream: a container that counts its frames (MP4) indexes
    them all, after edit-list processing (Matroska counts none, and its cues list keyframes only)."""
    return bool(stream.frames) and len(stream.index_entries) > 0


def _declared_packets(stream) -> int:
    """Packets a whole demux pass must deliver: the sample table's entries where there is one (an edit list may
    drop leading packets the presented frames do not need, so this can be below the stream's frame count), else
    the declared frame count; 0 when the container declares none."""
    if not stream.frames:
        return 0
    return len(stream.index_entries) or int(stream.frames)


def _presented_in_index(stream) -> int:
    """Frames of a full index that a player presents (an edit list marks the hidden ones)."""
    return sum(1 for e in stream.index_entries if not e.is_discard)


def _declared_duration_s(stream) -> float | None:
    """The video stream's own declared duration in seconds (mdhd/edit list, or Matroska's per-track tag)."""
    if stream.duration:
        return float(stream.duration * stream.time_base)
    tag = (stream.metadata or {}).get("DURATION")
    if tag:
        try:
            hours, minutes, seconds = tag.split(":")
            return int(hours) * 3600 + int(minutes) * 60 + float(seconds)
        except ValueError:
            return None
    return None


def _check_complete(name: str, stream, declared: int, packets: int, presented_pts: Sequence[int]) -> None:
    """Raise :class:`TruncatedFileError` when a whole demux pass saw fewer packets than the container declares.

    A container that indexes its frames (an MP4 sample table, which also lists the packets an edit list hides)
    must deliver ``declared`` packets (:func:`_declared_packets`, taken before demuxing). One that does not
    (Matroska/WebM) is held to its declared stream duration: the presented frames must span it to within 1.5
    frame periods.
    """
    if declared:
        if packets < declared:
            raise TruncatedFileError(
                name, f"the container declares {declared} frames but only {packets} are present (truncated file)")
        return
    declared_s = _declared_duration_s(stream)
    if declared_s is None or not len(presented_pts):
        return
    tb = float(stream.time_base)
    pts = np.sort(np.asarray(presented_pts, dtype=np.int64))
    rate = float(stream.average_rate or stream.guessed_rate or 0)
    period = 1.0 / rate if rate > 0 else (float(np.median(np.diff(pts))) * tb if len(pts) > 1 else 0.0)
    present_s = float(pts[-1] - pts[0]) * tb + period
    if period > 0 and declared_s - present_s > 1.5 * period:
        raise TruncatedFileError(
            name, f"the stream declares {declared_s:.3f} s but its {len(pts)} frames span {present_s:.3f} s "
                  "(truncated file)")


@dataclass(frozen=True)
class _PacketIndex:
    pts: np.ndarray  # [N] presented frames' pts, display order (stream time base)
    keys: np.ndarray  # [K] keyframes' pts, sorted
    hidden: int  # packets an edit list hides (decoded as references only)


def _scan(container, stream, name: str, budget: DecodeBudget) -> _PacketIndex:
    """Demux ``stream`` without decoding: the presented frames' pts and the keyframes, with truncation checks."""
    pts, keys = [], []
    packets = hidden = 0
    declared = _declared_packets(stream)
    meter = _Meter(name, budget)
    try:
        for packet in container.demux(stream):
            if packet.size == 0:
                continue
            packets += 1
            meter.packets(packets)
            if packet.pts is None:
                raise CorruptDataError(name, "video packets carry no timestamps")
            if packet.is_discard:
                hidden += 1
            else:
                pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
    except av.error.FFmpegError as exc:
        raise CorruptDataError(name, f"demuxing failed after {packets} packets ({exc})") from exc
    if not pts:
        raise CorruptDataError(name, "the video stream holds no presented frames")
    _check_complete(name, stream, declared, packets, pts)
    if not keys:
        raise CorruptDataError(name, "the video stream holds no keyframe")
    return _PacketIndex(np.sort(np.asarray(pts, dtype=np.int64)), np.sort(np.asarray(keys, dtype=np.int64)),
                        hidden)


def _rgb(frame: av.VideoFrame) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    quarter_turns = (int(frame.rotation) // 90) % 4
    if quarter_turns:
        # The display matrix rotates counter-clockwise, as does np.rot90 with positive k.
        rgb = np.ascontiguousarray(np.rot90(rgb, k=quarter_turns))
    return rgb


def _checked_rgb(name: str, frame: av.VideoFrame, index: int, expect_size: tuple[int, int] | None) -> np.ndarray:
    rgb = _rgb(frame)
    if expect_size is not None and rgb.shape[:2] != (expect_size[1], expect_size[0]):
        raise FrameSizeMismatchError(
            name, f"frame {index} is {rgb.shape[1]}x{rgb.shape[0]}, the scene declares "
                  f"{expect_size[0]}x{expect_size[1]}")
    return rgb


def frame_times(source: Source, budget: DecodeBudget = DEFAULT_BUDGET) -> np.ndarray:
    """``[N]`` float64 presentation times of the presented frames, seconds from the first, by one demux pass (no
    decoding)."""
    name = source_name(source)
    with open_video(source, budget=budget) as (container, stream):
        pts = _scan(container, stream, name, budget).pts
        return (pts - pts[0]).astype(np.float64) * float(stream.time_base)


def probe(source: Source, count_frames: bool = False, budget: DecodeBudget = DEFAULT_BUDGET) -> VideoInfo:
    """Describe the best video stream of ``source``; decodes one frame to read the display rotation.

    Args:
        source: bytes, a binary file object, a local path or an fsspec URI.
        count_frames: demux the whole stream to count frames even when the container lists them all.
        budget: the decode budget and allowed container formats.
    """
    name = source_name(source)
    with open_video(source, budget=budget) as (container, stream):
        cc = stream.codec_context
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        tb = float(stream.time_base)
        if _full_index(stream) and not count_frames:
            num = _presented_in_index(stream)
        else:
            num = len(_scan(container, stream, name, budget).pts)
            container.seek(0)
        meter = _Meter(name, budget)
        try:
            first = next(container.decode(stream))
            meter.frame(first)
        except (StopIteration, av.error.FFmpegError) as exc:
            raise CorruptDataError(name, f"no decodable frame ({exc!r})") from exc
        rotation = int(first.rotation)
        start = first.pts if first.pts is not None else (stream.start_time or 0)
        if stream.duration:
            duration = stream.duration * tb
        elif container.duration:
            duration = container.duration / av.time_base
        else:
            duration = num / fps if fps else 0.0
        swap = (rotation // 90) % 2 == 1
        return VideoInfo(
            stream_index=stream.index,
            num_streams=len(container.streams),
            codec=cc.name,
            width=cc.height if swap else cc.width,
            height=cc.width if swap else cc.height,
            coded_width=cc.width,
            coded_height=cc.height,
            pix_fmt=str(cc.pix_fmt),
            fps=fps,
            num_frames=num,
            duration_s=float(duration),
            start_time_s=float(start * tb),
            rotation_deg=rotation,
        )


def iter_frames(
    source: Source,
    threads: int = 0,
    thread_type: str = "AUTO",
    budget: DecodeBudget = DEFAULT_BUDGET,
    expect_size: tuple[int, int] | None = None,
) -> Iterator[DecodedFrame]:
    """Decode every presented frame sequentially, in display order (the fastest way to read a whole video).

    Args:
        source: bytes, a binary file object, a local path or an fsspec URI.
        threads: decoder threads (0 = FFmpeg's choice).
        thread_type: FFmpeg threading mode.
        budget: the decode budget and allowed container formats.
        expect_size: ``(width, height)`` every displayed frame must have, or ``None``.

    Raises:
        TruncatedFileError: the data ends before the frames the container declares (after the frames present
            were yielded: a consumer never receives a silent prefix).
        FrameSizeMismatchError: a frame is not ``expect_size``.
        DecodeBudgetError, CorruptDataError, UnsupportedContainerError: as in :func:`open_video`.
    """
    name = source_name(source)
    with open_video(source, threads, thread_type, budget) as (container, stream):
        _check_expected_size(name, stream, expect_size)
        tb = float(stream.time_base)
        cc = stream.codec_context
        meter = _Meter(name, budget)
        declared = _declared_packets(stream)
        first_pts = None
        packets = 0
        presented: list[int] = []
        try:
            for packet in container.demux(stream):
                if packet.size:
                    packets += 1
                    meter.packets(packets)
                    if not packet.is_discard and packet.pts is not None:
                        presented.append(packet.pts)
                for frame in cc.decode(packet):
                    meter.frame(frame)
                    pts = frame.pts if frame.pts is not None else meter.frames - 1
                    if first_pts is None:
                        first_pts = pts
                    index = meter.frames - 1
                    yield DecodedFrame(index, int(pts), (pts - first_pts) * tb,
                                       _checked_rgb(name, frame, index, expect_size))
        except av.error.FFmpegError as exc:
            raise CorruptDataError(name, f"decoding failed after {meter.frames} frames ({exc})") from exc
        _check_complete(name, stream, declared, packets, presented)
        if meter.frames < len(presented):
            raise CorruptDataError(
                name, f"{len(presented)} frames are present but only {meter.frames} decode")


def decode_frames(
    source: Source,
    indices: Sequence[int],
    threads: int = 0,
    thread_type: str = "AUTO",
    budget: DecodeBudget = DEFAULT_BUDGET,
    expect_frames: int | None = None,
    expect_size: tuple[int, int] | None = None,
    transform: Transform | None = None,
) -> list[DecodedFrame]:
    """Decode the frames at display-order ``indices`` in one pass (see the module docstring for the strategy).

    Args:
        source: bytes, a binary file object, a local path or an fsspec URI.
        indices: 0-based display-order frame indices, any order, repeats allowed.
        threads: decoder threads (0 = FFmpeg's choice).
        thread_type: FFmpeg threading mode.
        budget: the decode budget and allowed container formats.
        expect_frames: the number of presented frames the caller knows the video has (e.g. from a sidecar), or
            ``None``; a different count raises :class:`FrameCountMismatchError` before decoding.
        expect_size: ``(width, height)`` every displayed frame must have, or ``None``.
        transform: applied to each decoded ``[H, W, 3]`` frame as soon as it is decoded (e.g. a resize, so that
            full-size frames are never held together).

    Returns:
        One :class:`DecodedFrame` per entry of ``indices``, in the order given.

    Raises:
        IndexError: an index outside ``[0, num_frames)``.
        FrameCountMismatchError, FrameSizeMismatchError: the video disagrees with ``expect_frames``/``expect_size``.
        TruncatedFileError, DecodeBudgetError, CorruptDataError, UnsupportedContainerError: bad or oversized data.
    """
    if len(indices) == 0:
        return []
    return _decode_picked(source, lambda _n: indices, threads, thread_type, budget, expect_frames, expect_size,
                          transform)


def _decode_picked(
    source: Source,
    pick: Callable[[int], Sequence[int]],
    threads: int,
    thread_type: str,
    budget: DecodeBudget,
    expect_frames: int | None = None,
    expect_size: tuple[int, int] | None = None,
    transform: Transform | None = None,
) -> list[DecodedFrame]:
    """Decode the frames ``pick(num_frames)`` names, with ``num_frames`` counted by the demux pass."""
    name = source_name(source)
    with open_video(source, threads, thread_type, budget) as (container, stream):
        _check_expected_size(name, stream, expect_size)
        index = _scan(container, stream, name, budget)
        all_pts, key_pts = index.pts, index.keys
        n = len(all_pts)
        if expect_frames is not None and n != expect_frames:
            raise FrameCountMismatchError(name, f"the video presents {n} frames, {expect_frames} are expected")
        indices = pick(n)
        wanted = sorted(set(int(i) for i in indices))
        if wanted[0] < 0 or wanted[-1] >= n:
            raise IndexError(f"{name}: frame indices must lie in [0, {n}), got {wanted[0]}..{wanted[-1]}")
        tb = float(stream.time_base)
        first_pts = int(all_pts[0])
        by_pts = {int(all_pts[i]): i for i in wanted}
        out: dict[int, DecodedFrame] = {}
        meter = _Meter(name, budget)
        decoder = None
        last_pts = None  # pts of the last frame the decoder produced
        try:
            for i in wanted:
                if i in out:
                    continue
                target = int(all_pts[i])
                # The GOP of a frame starts at the latest keyframe presented at or before it.
                k = int(np.searchsorted(key_pts, target, side="right")) - 1
                gop_start = int(key_pts[max(k, 0)])
                if decoder is None or last_pts is None or gop_start > last_pts:
                    container.seek(gop_start, backward=True, any_frame=False, stream=stream)
                    decoder = _decode_skipping(container, stream, by_pts.keys())
                    last_pts = None
                for frame in decoder:
                    meter.frame(frame)
                    if frame.pts is None:
                        continue
                    last_pts = int(frame.pts)
                    if last_pts in by_pts and by_pts[last_pts] not in out:
                        j = by_pts[last_pts]
                        rgb = _checked_rgb(name, frame, j, expect_size)
                        out[j] = DecodedFrame(j, last_pts, (last_pts - first_pts) * tb,
                                              transform(rgb) if transform is not None else rgb)
                    if last_pts >= target:
                        break
                if i not in out:
                    raise CorruptDataError(
                        name, f"frame {i} (pts {target}) is listed by the container but never decodes"
                    )
        except av.error.FFmpegError as exc:
            raise CorruptDataError(name, f"decoding failed ({exc})") from exc
    return [out[int(i)] for i in indices]


def _decode_skipping(container, stream, keep_pts) -> Iterator[av.VideoFrame]:
    """Decode from the demuxer's position, skipping non-reference frames that are not wanted.

    No other frame predicts from a non-reference frame, so skipping one changes no other output; between sparse
    targets this saves their decode time (x264's default B-frames are largely non-reference). ``skip_frame`` is set
    per packet before it is sent, which FFmpeg honours per packet also with frame threading. Reference packets
    that an edit list hides are decoded too (later frames predict from them); FFmpeg drops their pictures.
    """
    cc = stream.codec_context
    for packet in container.demux(stream):
        wanted = packet.pts is None or packet.size == 0 or packet.pts in keep_pts
        cc.skip_frame = "DEFAULT" if wanted else "NONREF"
        yield from cc.decode(packet)


def uniform_indices(num_frames: int, num_samples: int) -> list[int]:
    """``num_samples`` indices spread evenly over ``[0, num_frames)`` (``np.linspace`` rounded, as the peers do)."""
    if num_frames <= 0 or num_samples <= 0:
        raise ValueError(f"need positive counts, got num_frames={num_frames}, num_samples={num_samples}")
    return [int(i) for i in np.linspace(0, num_frames - 1, num_samples).round()]


def sample_uniform(
    source: Source,
    num_samples: int,
    threads: int = 0,
    budget: DecodeBudget = DEFAULT_BUDGET,
    transform: Transform | None = None,
) -> list[DecodedFrame]:
    """Decode ``num_samples`` frames spread uniformly over the video (32 for Vid-LLM) in one open of ``source``.

    The frame count comes from the demux pass, so it counts exactly the presented frames (edit lists that hide
    leading or trailing packets). ``budget`` and ``transform`` are as in :func:`decode_frames`.
    """
    return _decode_picked(source, lambda n: uniform_indices(n, num_samples), threads, "AUTO", budget,
                          transform=transform)


def encode_video(
    dest: str,
    frames: Iterable[np.ndarray],
    fps: float = 30.0,
    gop: int = 30,
    codec: str = "libx264",
    pix_fmt: str = "yuv420p",
    options: dict[str, str] | None = None,
    pts: Iterable[int] | None = None,
    time_base: Fraction | None = None,
) -> int:
    """Encode RGB frames into an MP4 at a local path or URI; returns the number of frames written.

    The MP4 is written with ``+faststart`` (index at the front) so readers on object storage need no tail read.
    Object stores cannot take the muxer's back-patching writes, so the file is built in a local temporary file
    and uploaded.

    Args:
        dest: destination path or URI.
        frames: ``[H, W, 3]`` uint8 RGB frames of one size (even ``H, W`` for 4:2:0 ``pix_fmt``).
        fps: nominal frame rate; the stream time base is ``1 / fps`` ticks.
        gop: maximum keyframe interval in frames.
        codec: FFmpeg encoder name.
        pix_fmt: coded pixel format.
        options: encoder options passed to FFmpeg as-is (e.g. ``{"crf": "20", "preset": "fast"}`` for libx264).
        pts: presentation times in ``time_base`` ticks (strictly increasing); default one frame period apart.
        time_base: the stream's tick; default ``1 / fps``. A fine tick (``1/90000``) keeps irregular
            capture times exact.
    """
    rate = Fraction(fps).limit_denominator(1001)
    fs, path = filesystem(dest)
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    local = "file" in protocols or "local" in protocols
    with tempfile.TemporaryDirectory() as tmp:
        out_path = path if local else os.path.join(tmp, "video.mp4")
        if local:
            fs.makedirs(os.path.dirname(path), exist_ok=True)
        count = 0
        with av.open(out_path, mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream(codec, rate=rate, options=dict(options or {}))
            stream.codec_context.gop_size = gop
            stream.pix_fmt = pix_fmt
            tick = time_base or 1 / rate
            stream.codec_context.time_base = tick
            period = round(1 / (rate * tick))
            pts_iter = iter(pts) if pts is not None else None
            last = None
            for rgb in frames:
                if count == 0:
                    stream.height, stream.width = rgb.shape[:2]
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
                frame.pts = next(pts_iter) if pts_iter is not None else count * period
                frame.time_base = tick
                if last is not None and frame.pts <= last:
                    raise ValueError(
                        f"{dest}: frame {count} pts {frame.pts} does not increase (previous {last})"
                    )
                last = frame.pts
                for packet in stream.encode(frame):
                    container.mux(packet)
                count += 1
            if count == 0:
                raise ValueError(f"{dest}: no frames to encode")
            for packet in stream.encode(None):
                container.mux(packet)
        if not local:
            with open(out_path, "rb") as src, fs.open(path, "wb") as dst:
                shutil.copyfileobj(src, dst, length=2**22)
    return count
