"""Turn an uploaded or referenced video into the model's input frames, enforcing the request limits.

Decoding is :mod:`pipelines.scenes.video` (PyAV: best video stream, display rotation applied, display-order frame
indices, presented frames only); this module adds the serving policy: the upload limits and the decode budget
(``limits.decode``) checked from the container before any frame is decoded, at least ``min_source_frames``
distinct frames, uniform sampling of ``num_frames`` frames, and a centre crop to the model's aspect ratio followed
by a bilinear resize to the model's input size (applied to each frame as it is decoded, so full-size frames are
never held together), so every scene batches with every other.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipelines.scenes.errors import (
    DecodeBudgetError,
    SceneDataError,
    TruncatedFileError,
    UnsupportedContainerError,
)
from pipelines.scenes.video import decode_frames, probe, uniform_indices
from pipelines.serve.config import LimitsConfig
from pipelines.serve.errors import ApiError
from pipelines.storage import filesystem

# Bump when the sampling/resizing below changes, so scene ids of old registrations do not collide with new ones.
SAMPLER_VERSION = 1


@dataclass(frozen=True)
class SamplingSpec:
    """How frames are sampled for the model: ``num_frames`` frames resized to ``height x width`` pixels."""

    num_frames: int
    height: int
    width: int

    def to_dict(self) -> dict[str, int]:
        return {"num_frames": self.num_frames, "height": self.height, "width": self.width,
                "sampler_version": SAMPLER_VERSION}


@dataclass
class SampledClip:
    """Frames ready for the model.

    Attributes:
        frames: ``[S, H, W, 3]`` uint8 RGB, uniformly sampled in display order.
        num_source_frames: frames in the source video.
        duration_s: source duration, seconds.
    """

    frames: np.ndarray
    num_source_frames: int
    duration_s: float


def scene_id_for(data: bytes, spec: SamplingSpec) -> str:
    """Content hash of the video bytes plus the sampling settings: the same video registers as the same scene."""
    digest = hashlib.sha256(data)
    digest.update(json.dumps(spec.to_dict(), sort_keys=True).encode())
    return digest.hexdigest()[:32]


def _fit(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre-crop ``rgb`` to the target aspect ratio, then resize bilinearly to ``height x width``."""
    h, w = rgb.shape[:2]
    target = width / height
    if w / h > target:
        new_w = max(1, round(h * target))
        x0 = (w - new_w) // 2
        rgb = rgb[:, x0:x0 + new_w]
    else:
        new_h = max(1, round(w / target))
        y0 = (h - new_h) // 2
        rgb = rgb[y0:y0 + new_h]
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((width, height), Image.BILINEAR))


def _video_error(exc: SceneDataError, field: str) -> ApiError:
    """The 422 for a video the decoder refuses (the problem text names no server path: the source is bytes)."""
    if isinstance(exc, UnsupportedContainerError):
        return ApiError(422, "unsupported_container", f"not a decodable video: {exc.problem}", field)
    if isinstance(exc, DecodeBudgetError):
        return ApiError(422, "video_over_budget", f"the video is too costly to decode: {exc.problem}", field)
    if isinstance(exc, TruncatedFileError):
        return ApiError(422, "truncated_video", f"truncated video: {exc.problem}", field)
    return ApiError(422, "invalid_video", f"not a decodable video: {exc.problem}", field)


def sample_clip(data: bytes, spec: SamplingSpec, limits: LimitsConfig, field: str = "video") -> SampledClip:
    """Check limits, decode ``spec.num_frames`` uniformly spaced frames and resize them.

    Args:
        data: the whole video file.
        spec: sampling settings (from the loaded model).
        limits: request limits, including the decode budget.
        field: request field named in errors.

    Raises:
        ApiError: 400 empty body, 413 over the byte limit, 422 not a video of an allowed container / over the
            decode budget / truncated / corrupt / too long / too many or too few frames.
    """
    if not data:
        raise ApiError(400, "empty_video", "the video is empty (0 bytes)", field)
    if len(data) > limits.max_upload_bytes:
        raise ApiError(413, "video_too_large", f"{len(data)} bytes exceeds the {limits.max_upload_bytes}-byte limit",
                       field)
    try:
        info = probe(data, budget=limits.decode)
    except SceneDataError as exc:
        raise _video_error(exc, field) from exc
    if info.duration_s > limits.max_duration_s:
        raise ApiError(422, "video_too_long",
                       f"video lasts {info.duration_s:.1f} s, the limit is {limits.max_duration_s:g} s", field)
    if info.num_frames > limits.max_source_frames:
        raise ApiError(422, "video_too_long",
                       f"video has {info.num_frames} frames, the limit is {limits.max_source_frames}", field)
    if info.num_frames < limits.min_source_frames:
        raise ApiError(422, "video_too_short",
                       f"video has {info.num_frames} frame{'s' if info.num_frames != 1 else ''}; at least "
                       f"{limits.min_source_frames} distinct frames are needed", field)
    try:
        decoded = decode_frames(data, uniform_indices(info.num_frames, spec.num_frames), budget=limits.decode,
                                expect_frames=info.num_frames, transform=lambda rgb: _fit(rgb, spec.height, spec.width))
    except SceneDataError as exc:
        raise _video_error(exc, field) from exc
    frames = np.stack([f.rgb for f in decoded])
    return SampledClip(frames=frames, num_source_frames=info.num_frames, duration_s=info.duration_s)


def read_uri_limited(uri: str, max_bytes: int) -> bytes:
    """Read a (pre-checked) object-store URI in one bounded read: at most ``max_bytes + 1`` bytes are fetched
    (one ranged GET on S3), so an object that is, or is swapped to, anything larger is refused without being
    downloaded, and no size check can go stale before the read.

    Raises:
        ApiError: 404 when the object does not exist, 413 when it is too large, 422 when it cannot be read.
    """
    try:
        fs, path = filesystem(uri)
        data = fs.cat_file(path, start=0, end=max_bytes + 1)
    except (FileNotFoundError, IsADirectoryError) as exc:
        raise ApiError(404, "uri_not_found", f"{uri}: no such object", "uri") from exc
    except (OSError, ValueError) as exc:
        raise ApiError(422, "uri_unreadable", f"{uri} could not be read: {type(exc).__name__}", "uri") from exc
    if len(data) > max_bytes:
        raise ApiError(413, "video_too_large", f"{uri} is larger than the {max_bytes}-byte limit", "uri")
    return data
