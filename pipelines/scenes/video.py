"""Video decoding and encoding with PyAV, shared by ingest, the video scene layout and serving.

Conventions:

* The decoded stream is the container's *best* video stream (FFmpeg's ``av_find_best_stream``), which need not be
  stream 0: multi-programme files (the NASA sample has six streams) put a smaller rendition first.
* Frame indices are 0-based positions in display (presentation) order. Timestamps are seconds from the first
  displayed frame, so files whose first timestamp is not zero index and time their frames from that frame.
* Frames come out as ``[H, W, 3]`` uint8 RGB with the container's display rotation applied (``H, W`` are the
  displayed size: a 90-degree rotation swaps the coded width and height).
* Random access (:func:`decode_frames`) first demuxes the stream without decoding to learn every frame's
  presentation timestamp and the keyframes. It then seeks to a keyframe only when the next target frame lies in a
  later GOP than the decoder's position and otherwise decodes forward, so each needed GOP is decoded once.
  Seeking for every target would re-decode a long GOP many times; a full scan would decode every frame. On the way
  to a target, non-reference frames that are not wanted are skipped (nothing predicts from them).

Sources are ``bytes``, binary file objects, local paths or fsspec URIs (``s3://``); non-local URIs are read through
fsspec with read-ahead, which suits the mostly sequential access of decoding.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from fractions import Fraction
from typing import IO

import av
import av.error
import numpy as np

from pipelines.scenes.errors import CorruptDataError, MissingFileError
from pipelines.storage import filesystem

Source = bytes | bytearray | memoryview | str | os.PathLike | IO[bytes]


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
        num_frames: number of frames (container count, or a demux count when the container has none).
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
    frame, and ``rgb`` ``[H, W, 3]`` uint8 with rotation applied."""

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
def open_video(source: Source, threads: int = 0, thread_type: str = "AUTO"):
    """Open ``source`` and yield ``(container, stream)`` for its best video stream.

    Args:
        source: bytes, a binary file object, a local path or an fsspec URI.
        threads: decoder threads (0 = FFmpeg's choice).
        thread_type: ``"SLICE"``, ``"FRAME"`` or ``"AUTO"`` (frame threading adds latency, not work).

    Raises:
        MissingFileError: a path/URI that does not exist.
        CorruptDataError: bytes that are not a video, or a container without a video stream.
    """
    name = source_name(source)
    handle = None
    if isinstance(source, (bytes, bytearray, memoryview)):
        target = io.BytesIO(bytes(source))
    elif isinstance(source, (str, os.PathLike)):
        uri = os.fspath(source)
        fs, path = filesystem(uri)
        protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        if not fs.exists(path):
            raise MissingFileError(name, "video file does not exist")
        if "file" in protocols or "local" in protocols:
            target = path  # FFmpeg's own file I/O is faster than a Python file object
        else:
            handle = fs.open(path, "rb", block_size=2**22, cache_type="readahead")
            target = handle
    else:
        target = source
    try:
        try:
            container = av.open(target, mode="r")
        except av.error.FFmpegError as exc:
            raise CorruptDataError(name, f"not a readable video container ({exc})") from exc
        try:
            stream = container.streams.best("video")
            if stream is None:
                raise CorruptDataError(name, f"no video stream among {len(container.streams)} streams")
            stream.codec_context.thread_count = threads
            stream.codec_context.thread_type = thread_type
            yield container, stream
        finally:
            container.close()
    finally:
        if handle is not None:
            handle.close()


def _rgb(frame: av.VideoFrame) -> np.ndarray:
    rgb = frame.to_ndarray(format="rgb24")
    quarter_turns = (int(frame.rotation) // 90) % 4
    if quarter_turns:
        # The display matrix rotates counter-clockwise, as does np.rot90 with positive k.
        rgb = np.ascontiguousarray(np.rot90(rgb, k=quarter_turns))
    return rgb


def packet_index(container, stream, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Demux ``stream`` (no decoding) and return its frames' presentation timestamps in display order and the
    keyframes' timestamps, both sorted ``int64`` in the stream time base. ``name`` labels errors."""
    pts, keys = [], []
    try:
        for packet in container.demux(stream):
            if packet.size == 0 or packet.is_discard:
                continue
            if packet.pts is None:
                raise CorruptDataError(
                    name, "video packets carry no timestamps; use iter_frames for this file"
                )
            pts.append(packet.pts)
            if packet.is_keyframe:
                keys.append(packet.pts)
    except av.error.FFmpegError as exc:
        raise CorruptDataError(name, f"demuxing failed after {len(pts)} packets ({exc})") from exc
    if not pts:
        raise CorruptDataError(name, "the video stream holds no frames")
    if stream.frames and len(pts) < stream.frames:
        raise CorruptDataError(
            name, f"container declares {stream.frames} frames but only {len(pts)} are present"
        )
    if not keys:
        raise CorruptDataError(name, "the video stream holds no keyframe")
    return np.sort(np.asarray(pts, dtype=np.int64)), np.sort(np.asarray(keys, dtype=np.int64))


def probe(source: Source, count_frames: bool = False) -> VideoInfo:
    """Describe the best video stream of ``source``; decodes one frame to read the display rotation.

    Args:
        source: bytes, a binary file object, a local path or an fsspec URI.
        count_frames: demux the whole stream to count frames even when the container states a count.
    """
    name = source_name(source)
    with open_video(source) as (container, stream):
        cc = stream.codec_context
        fps = float(stream.average_rate or stream.guessed_rate or 0)
        tb = float(stream.time_base)
        num = int(stream.frames or 0)
        if count_frames or num == 0:
            num = len(packet_index(container, stream, name)[0])
            container.seek(0)
        try:
            first = next(container.decode(stream))
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


def iter_frames(source: Source, threads: int = 0, thread_type: str = "AUTO") -> Iterator[DecodedFrame]:
    """Decode every frame sequentially, in display order (the fastest way to read a whole video)."""
    name = source_name(source)
    with open_video(source, threads, thread_type) as (container, stream):
        tb = float(stream.time_base)
        first_pts = None
        try:
            for i, frame in enumerate(container.decode(stream)):
                pts = frame.pts if frame.pts is not None else i
                if first_pts is None:
                    first_pts = pts
                yield DecodedFrame(i, int(pts), (pts - first_pts) * tb, _rgb(frame))
        except av.error.FFmpegError as exc:
            raise CorruptDataError(name, f"decoding failed ({exc})") from exc


def decode_frames(
    source: Source, indices: Sequence[int], threads: int = 0, thread_type: str = "AUTO"
) -> list[DecodedFrame]:
    """Decode the frames at display-order ``indices`` in one pass (see the module docstring for the strategy).

    Args:
        source: bytes, a binary file object, a local path or an fsspec URI.
        indices: 0-based display-order frame indices, any order, repeats allowed.
        threads: decoder threads (0 = FFmpeg's choice).
        thread_type: FFmpeg threading mode.

    Returns:
        One :class:`DecodedFrame` per entry of ``indices``, in the order given.

    Raises:
        IndexError: an index outside ``[0, num_frames)``.
        CorruptDataError: the stream cannot be decoded, or a frame listed by the container never decodes.
    """
    if len(indices) == 0:
        return []
    return _decode_picked(source, lambda _n: indices, threads, thread_type)


def _decode_picked(
    source: Source, pick: Callable[[int], Sequence[int]], threads: int, thread_type: str
) -> list[DecodedFrame]:
    """Decode the frames ``pick(num_frames)`` names, with ``num_frames`` counted by the demux pass."""
    name = source_name(source)
    with open_video(source, threads, thread_type) as (container, stream):
        all_pts, key_pts = packet_index(container, stream, name)
        n = len(all_pts)
        indices = pick(n)
        wanted = sorted(set(int(i) for i in indices))
        if wanted[0] < 0 or wanted[-1] >= n:
            raise IndexError(f"{name}: frame indices must lie in [0, {n}), got {wanted[0]}..{wanted[-1]}")
        tb = float(stream.time_base)
        first_pts = int(all_pts[0])
        by_pts = {int(all_pts[i]): i for i in wanted}
        out: dict[int, DecodedFrame] = {}
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
                    if frame.pts is None:
                        continue
                    last_pts = int(frame.pts)
                    if last_pts in by_pts and by_pts[last_pts] not in out:
                        j = by_pts[last_pts]
                        out[j] = DecodedFrame(j, last_pts, (last_pts - first_pts) * tb, _rgb(frame))
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
    per packet before it is sent, which FFmpeg honours per packet also with frame threading.
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


def sample_uniform(source: Source, num_samples: int, threads: int = 0) -> list[DecodedFrame]:
    """Decode ``num_samples`` frames spread uniformly over the video (32 for Vid-LLM) in one open of ``source``.

    The frame count comes from the demux pass, so it is exact even where a container's stated count is not (edit
    lists that drop leading frames).
    """
    return _decode_picked(source, lambda n: uniform_indices(n, num_samples), threads, "AUTO")


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
