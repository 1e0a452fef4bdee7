"""The decode budget: how much work and memory one video may cost, and which containers may be opened at all.

One :class:`DecodeBudget` type bounds every PyAV decode of the project (ingest's scene videos and serve's uploads;
each stage configures its own values). :mod:`pipelines.scenes.video` checks it twice: from the stream metadata
right after the container is opened, before any frame is decoded (frame size, frame count), and again while
decoding (every decoded frame's size, decoded frames, decoded bytes, wall time), since a stream may change its size
midway or hold more than its header says. The frame-size bound is also handed to FFmpeg's decoder
(``max_pixels``), so a stream whose coded pictures are larger than its container claims fails inside the decoder
before the picture buffers are allocated.

Containers are opened only through Python file objects with an allow-list of demuxers (FFmpeg's
``format_whitelist``), so no playlist (``concat``, ``hls``), image format (``image2``, ``png_pipe``) or network
protocol can make FFmpeg open another file or URL.

This module has no dependencies, so configuration code can import it cheaply.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

# FFmpeg demuxer short names: "mov" is the ISO-BMFF family (mov, mp4, m4a, 3gp, 3g2, mj2), "matroska" also
# reads WebM. Neither opens other files by default (the mov demuxer's external data references are off).
DEFAULT_FORMATS = ("mov", "matroska")


@dataclass(frozen=True)
class DecodeBudget:
    """Limits of one video decode; a video over any of them raises ``DecodeBudgetError`` (a ``SceneDataError``).

    Attributes:
        max_frame_pixels: largest ``width * height`` of a frame (coded or decoded), pixels. The default admits
            4K UHD (3840x2160); an 8K frame (33 MP) is refused before it is decoded.
        max_frames: most packets (frames) a video stream may hold, counted from the container index when it has
            one and while demuxing otherwise; also bounds the frames one call decodes.
        max_decoded_bytes: most bytes of decoded pictures one call may produce (all frames the decoder outputs,
            including those decoded only to reach a target frame): bounds the decode work, since the time of a
            decode is proportional to it.
        max_decode_s: wall-clock seconds one call may take (checked between frames); ``None`` disables it.
        formats: FFmpeg demuxer names that may be opened (see ``DEFAULT_FORMATS``).
    """

    max_frame_pixels: int = 3840 * 2160
    max_frames: int = 100_000
    max_decoded_bytes: int = 64 * 1024**3
    max_decode_s: float | None = None
    formats: tuple[str, ...] = DEFAULT_FORMATS

    def __post_init__(self) -> None:
        for name in ("max_frame_pixels", "max_frames", "max_decoded_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"decode budget {name} must be a positive integer, got {value!r}")
        seconds = self.max_decode_s
        if seconds is not None and not (
            isinstance(seconds, int | float) and not isinstance(seconds, bool) and math.isfinite(seconds)
            and seconds > 0
        ):
            raise ValueError(f"decode budget max_decode_s must be a positive number or null, got {seconds!r}")
        formats = (self.formats,) if isinstance(self.formats, str) else tuple(self.formats)
        if not formats or not all(isinstance(f, str) and f.isidentifier() for f in formats):
            raise ValueError(f"decode budget formats must be FFmpeg demuxer names, got {self.formats!r}")
        object.__setattr__(self, "formats", formats)
