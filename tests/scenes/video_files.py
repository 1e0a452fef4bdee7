"""Real encoded test videos, good and hostile, made with PyAV in memory (shared by the scene, serve and ingest tests).

Each helper returns the file's bytes. The hostile ones reproduce what an attacker or a broken uploader sends: FFmpeg
playlists that name other files, images renamed ``.mp4``, decode bombs (tiny files of huge frames), files cut
short, MP4 edit lists that hide packets, and videos of another size than their scene declares.
"""

from __future__ import annotations

import io
import struct
from fractions import Fraction

import av
import numpy as np
from PIL import Image


def frame_pattern(i: int, height: int, width: int) -> np.ndarray:
    """A textured RGB frame that changes with ``i`` (so frames are distinct and compress like video)."""
    y, x = np.mgrid[0:height, 0:width]
    r = (x * 4 + i * 7) % 256
    g = (y * 4 + i * 3) % 256
    b = ((x + y) * 2 + i * 11) % 256
    return np.stack([r, g, b], axis=-1).astype(np.uint8)


def mp4(num_frames: int, width: int = 64, height: int = 48, fps: int = 30, gop: int = 10,
        bframes: int = 0, faststart: bool = False, tmp_path=None, seed_offset: int = 0) -> bytes:
    """An H.264 MP4 of ``num_frames`` distinct frames (``seed_offset`` shifts the pattern, for other content);
    ``faststart`` (index first) needs a ``tmp_path``."""
    if faststart:
        path = tmp_path / f"faststart-{num_frames}-{width}x{height}.mp4"
        out = str(path)
        options = {"movflags": "+faststart"}
    else:
        out = io.BytesIO()
        options = {}
    with av.open(out, "w", format="mp4", options=options) as container:
        stream = container.add_stream("libx264", rate=fps, options={"preset": "ultrafast", "bf": str(bframes)})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.gop_size = gop
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i + seed_offset, height, width), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path.read_bytes() if faststart else out.getvalue()


def edit_list_mp4(data: bytes, hide_leading: int, keep: int | None = None) -> bytes:
    """Remux ``data`` so an MP4 edit list hides its first ``hide_leading`` frames (and all after ``keep`` presented
    frames): the packets stay in the file, as ``ffmpeg -ss ... -c copy`` leaves them, but a player skips them.

    The leading ones come from shifting the timestamps below zero (the muxer writes the edit list itself); the
    trailing ones from shortening the edit's segment duration in the ``elst`` box.
    """
    src = av.open(io.BytesIO(data))
    ist = src.streams.video[0]
    period = int(round(1 / (ist.average_rate * ist.time_base)))
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as dst:
        ost = dst.add_stream_from_template(ist)
        for packet in src.demux(ist):
            if packet.dts is None:
                continue
            packet.pts -= hide_leading * period
            packet.dts -= hide_leading * period
            packet.stream = ost
            dst.mux(packet)
    src.close()
    result = bytearray(out.getvalue())
    if keep is not None:
        at = result.find(b"elst")
        mvhd = result.find(b"mvhd")
        timescale = struct.unpack(">I", result[mvhd + 16:mvhd + 20])[0]  # version-0 mvhd
        duration = int(keep / float(ist.average_rate) * timescale)  # floor: no sliver of frame ``keep``
        result[at + 12:at + 16] = struct.pack(">I", duration)  # first entry's segment_duration (version 0)
    return bytes(result)


def decode_bomb(num_frames: int = 2, width: int = 7680, height: int = 4320) -> bytes:
    """A ~100 KB H.264 MP4 of black 8K frames (33 MP each; 200 MB of RGB per frame once decoded)."""
    out = io.BytesIO()
    with av.open(out, "w", format="mp4") as container:
        # One thread, no lookahead: encoding needs ~300 MB instead of ~500 MB.
        stream = container.add_stream("libx264", rate=30, options={
            "preset": "ultrafast", "qp": "51", "threads": "1", "tune": "zerolatency"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        frame = av.VideoFrame(width, height, "yuv420p")
        for plane in frame.planes:
            plane.update(bytes(plane.buffer_size))
        for i in range(num_frames):
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def ffconcat(*paths: str) -> bytes:
    """An FFmpeg concat playlist naming other files (FFmpeg auto-detects it from its first line)."""
    return b"ffconcat version 1.0\n" + b"".join(f"file '{p}'\n".encode() for p in paths)


def hls_playlist(*paths: str) -> bytes:
    """An HLS playlist naming other files or URLs."""
    body = "".join(f"#EXTINF:1.0,\n{p}\n" for p in paths)
    return f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n{body}#EXT-X-ENDLIST\n".encode()


def png(width: int = 64, height: int = 48) -> bytes:
    """A PNG image (FFmpeg opens it as a one-frame video through its image demuxers)."""
    buf = io.BytesIO()
    Image.fromarray(frame_pattern(0, height, width)).save(buf, format="PNG")
    return buf.getvalue()


def gif(num_frames: int = 3) -> bytes:
    """An animated GIF (a video to FFmpeg's gif demuxer)."""
    buf = io.BytesIO()
    frames = [Image.fromarray(frame_pattern(i, 32, 32)) for i in range(num_frames)]
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=40)
    return buf.getvalue()


def mpegts(num_frames: int = 10) -> bytes:
    """H.264 in an MPEG transport stream (a container outside the default allow-list)."""
    out = io.BytesIO()
    with av.open(out, "w", format="mpegts") as container:
        stream = container.add_stream("libx264", rate=30, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(num_frames):
            frame = av.VideoFrame.from_ndarray(frame_pattern(i, 48, 64), format="rgb24")
            frame.pts = i
            frame.time_base = Fraction(1, 30)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def _annexb(width: int, height: int, num_frames: int, black: bool) -> bytes:
    out = io.BytesIO()
    with av.open(out, "w", format="h264") as container:
        stream = container.add_stream("libx264", rate=30, options={
            "preset": "ultrafast", "qp": "51", "threads": "1", "tune": "zerolatency",
            "x264-params": "repeat-headers=1"})  # SPS/PPS in band, before every keyframe
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(num_frames):
            if black:
                frame = av.VideoFrame(width, height, "yuv420p")
                for plane in frame.planes:
                    plane.update(bytes(plane.buffer_size))
            else:
                frame = av.VideoFrame.from_ndarray(frame_pattern(i, height, width), format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def size_switch_mp4() -> bytes:
    """An MP4 whose sample description (and first SPS) say 64x48 and whose later packets switch, by an in-band
    SPS, to 8K: a decode bomb that lies in its metadata."""
    raw = _annexb(64, 48, 3, black=False) + _annexb(7680, 4320, 2, black=True)
    tick = Fraction(1, 30)
    out = io.BytesIO()
    with av.open(io.BytesIO(raw), format="h264") as src, av.open(out, "w", format="mp4") as dst:
        ist = src.streams.video[0]
        ost = dst.add_stream_from_template(ist)
        for i, packet in enumerate(p for p in src.demux(ist) if p.size):
            packet.pts = packet.dts = i
            packet.duration = 1
            packet.time_base = tick
            packet.stream = ost
            dst.mux(packet)
    return out.getvalue()
