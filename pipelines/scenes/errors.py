"""Typed errors of the scene data layer. Every error names the file (URI) and the problem."""

from __future__ import annotations


class SceneDataError(ValueError):
    """Base class: bad or unreadable scene data at ``uri``."""

    def __init__(self, uri: str, problem: str):
        self.uri = uri
        self.problem = problem
        super().__init__(f"{uri}: {problem}")


class MissingFileError(SceneDataError, FileNotFoundError):
    """A file the layout requires is absent (pose, intrinsics, video, ...)."""


class TruncatedFileError(SceneDataError):
    """A file ends before its header or a frame record says it should (includes zero-byte files)."""


class UnsupportedVersionError(SceneDataError):
    """A versioned format (e.g. ``.sens``) carries a version this reader does not implement."""


class CorruptDataError(SceneDataError):
    """A payload cannot be decoded (corrupt JPEG/PNG/zlib, unparsable numbers, non-video bytes)."""


class FrameCountMismatchError(SceneDataError):
    """Per-frame files or streams disagree on how many frames a scene has."""


class AnnotationFormatError(SceneDataError):
    """An annotation JSON does not match the published field names or types."""


class UnsupportedCompressionError(SceneDataError):
    """A stream uses a compression this reader does not implement (e.g. ``.sens`` depth ``occi_ushort``)."""


class MissingFrameFileError(MissingFileError, FrameCountMismatchError):
    """A per-frame file (pose, depth) is absent for a frame the colour images have: both a missing file and a
    frame-count mismatch, so callers may catch either."""


class UnsupportedContainerError(CorruptDataError):
    """A file is not in one of the container formats the reader may open (playlists, images and other demuxers
    are refused before FFmpeg reads past the probe)."""


class DecodeBudgetError(SceneDataError):
    """A video would cost more than its decode budget (frame size, frame count, decoded bytes or wall time)."""


class FrameSizeMismatchError(SceneDataError):
    """Decoded frames do not have the size the scene declares for them (their intrinsics would be wrong)."""
