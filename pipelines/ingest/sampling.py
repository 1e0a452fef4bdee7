"""Clip sampling and per-frame geometry: which frames, how they are resized, and how poses/boxes are re-expressed.

Frames (all OpenCV camera axes: x right, y down, z forward; metres):

* ``cam_to_world`` is the reader's raw pose ``T_i`` (camera i -> ScanNet world).
* ``extrinsics[i] = inv(T_i) @ T_0`` restricted to ``[:3, :4]``: camera-from-world where world is the clip's first
  camera, so ``extrinsics[0] = [I | 0]`` and translations stay metric.
* boxes come in the axis-aligned scene frame ``A``; a point there maps to the first camera by
  ``inv(T_0) @ inv(axis_alignment)``. The first-camera box is the AABB of the 8 mapped corners.

Images: the colour frame is resized (bicubic, antialiased by PIL) so its shorter (default) or longer side is
``resize_to`` and then centre-cropped to multiples of ``patch_multiple`` (1296x968 -> 686x518 with the shorter
side, 518x378 with the longer one, the paper's size); ``K`` follows exactly (pixel-centre convention). Depth is resampled
with nearest neighbour onto the OUTPUT colour pixels through ``K_depth @ inv(K_out)``, which also registers depth
taken at another resolution/intrinsics (ScanNet: 640x480 depth vs 1296x968 colour; the small colour-depth baseline
is ignored, as ScanNet's own exporters do).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipelines.scenes.errors import SceneDataError
from pipelines.scenes.types import Intrinsics, SceneMetadata


class TooFewValidFramesError(SceneDataError):
    """A scene has fewer valid-pose frames than a clip needs."""


def select_clip_frames(
    valid: np.ndarray, frames_per_clip: int, clips_per_scene: int, stride: int, min_valid: int, uri: str
) -> list[list[int]]:
    """Source frame indices of each clip, chosen among valid-pose frames only.

    Args:
        valid: ``[N]`` bool, True where the frame's pose is finite.
        frames_per_clip: S.
        clips_per_scene: K.
        stride: 0 = uniform over the whole scene (phase-shifted per clip); > 0 = windows with this spacing.
        min_valid: fewer valid frames than this raises :class:`TooFewValidFramesError`.
        uri: the scene, for error messages.

    Returns:
        K lists of S increasing source indices (distinct within a clip).
    """
    valid_idx = np.flatnonzero(np.asarray(valid, bool))
    n = len(valid_idx)
    need = max(min_valid, frames_per_clip if stride == 0 else (frames_per_clip - 1) * stride + 1)
    if n < need:
        raise TooFewValidFramesError(uri, f"{n} valid-pose frames of {len(valid)}, need at least {need}")
    clips = []
    for k in range(clips_per_scene):
        if stride == 0:
            # Bin centres of S equal bins over the n valid frames, shifted by the clip's phase: with n >= S every
            # bin holds at least one frame, so indices are distinct.
            phase = (k + 0.5) / clips_per_scene
            pos = np.floor((np.arange(frames_per_clip) + phase) * n / frames_per_clip).astype(int)
        else:
            span = (frames_per_clip - 1) * stride + 1
            starts = np.linspace(0, n - span, clips_per_scene).round().astype(int) if clips_per_scene > 1 else [
                (n - span) // 2
            ]
            pos = starts[k] + stride * np.arange(frames_per_clip)
        clips.append([int(i) for i in valid_idx[np.clip(pos, 0, n - 1)]])
    return clips


@dataclass(frozen=True)
class ResizePlan:
    """Resize ``(src_w, src_h) -> (resized_w, resized_h)`` then crop ``(out_w, out_h)`` at ``(off_x, off_y)``."""

    src_w: int
    src_h: int
    resized_w: int
    resized_h: int
    out_w: int
    out_h: int
    off_x: int
    off_y: int

    @classmethod
    def for_size(cls, width: int, height: int, side: int, multiple: int, resize_side: str = "short") -> ResizePlan:
        """Scale so the ``resize_side`` (``short`` or ``long``) side is ``side``, then crop to ``multiple``."""
        scale = side / (min(width, height) if resize_side == "short" else max(width, height))
        rw, rh = max(multiple, round(width * scale)), max(multiple, round(height * scale))
        ow, oh = rw - rw % multiple, rh - rh % multiple
        return cls(width, height, rw, rh, ow, oh, (rw - ow) // 2, (rh - oh) // 2)

    def image(self, rgb: np.ndarray) -> np.ndarray:
        """``[src_h, src_w, 3]`` uint8 -> ``[out_h, out_w, 3]`` uint8 (another input size is a ``ValueError``: the
        plan's intrinsics hold for ``src_w x src_h`` only)."""
        if rgb.shape[:2] != (self.src_h, self.src_w):
            raise ValueError(f"image is {rgb.shape[1]}x{rgb.shape[0]}, the resize plan is for {self.src_w}x{self.src_h}")
        im = Image.fromarray(rgb).resize((self.resized_w, self.resized_h), Image.Resampling.BICUBIC)
        box = (self.off_x, self.off_y, self.off_x + self.out_w, self.off_y + self.out_h)
        return np.asarray(im.crop(box), dtype=np.uint8)

    def intrinsics(self, k: np.ndarray) -> np.ndarray:
        """``K`` of the source image -> ``K`` of the output image (pixel centres at integer + 0.5)."""
        sx, sy = self.resized_w / self.src_w, self.resized_h / self.src_h
        out = np.array(k, dtype=np.float64)
        out[0, 0], out[1, 1] = k[0, 0] * sx, k[1, 1] * sy
        out[0, 2] = (k[0, 2] + 0.5) * sx - 0.5 - self.off_x
        out[1, 2] = (k[1, 2] + 0.5) * sy - 0.5 - self.off_y
        out[0, 1] = k[0, 1] * sx
        return out


def depth_sampling_map(k_out: np.ndarray, out_w: int, out_h: int, depth_intr: Intrinsics) -> np.ndarray:
    """Flat indices into the depth image for each output pixel (nearest), or -1 where it falls outside."""
    u, v = np.meshgrid(np.arange(out_w, dtype=np.float64), np.arange(out_h, dtype=np.float64))
    pix = np.stack([u, v, np.ones_like(u)], axis=-1) @ (depth_intr.matrix @ np.linalg.inv(k_out)).T
    du = np.rint(pix[..., 0] / pix[..., 2]).astype(np.int64)
    dv = np.rint(pix[..., 1] / pix[..., 2]).astype(np.int64)
    inside = (du >= 0) & (du < depth_intr.width) & (dv >= 0) & (dv < depth_intr.height)
    return np.where(inside, dv * depth_intr.width + du, -1)


def resample_depth(depth: np.ndarray, index_map: np.ndarray) -> np.ndarray:
    """Nearest-neighbour depth at the output pixels; 0 (invalid) outside the depth image."""
    flat = np.asarray(depth, np.float32).reshape(-1)
    return np.where(index_map >= 0, flat[np.maximum(index_map, 0)], 0.0).astype(np.float32)


def relative_extrinsics(cam_to_world: np.ndarray) -> np.ndarray:
    """``[S, 4, 4]`` camera-to-world -> ``[S, 3, 4]`` camera-from-first-camera ``inv(T_i) @ T_0``."""
    t0 = cam_to_world[0]
    return np.stack([np.linalg.inv(t) @ t0 for t in cam_to_world])[:, :3, :4].astype(np.float32)


def box_corners(center: np.ndarray, size: np.ndarray) -> np.ndarray:
    """``[8, 3]`` corners of an axis-aligned box."""
    signs = np.array([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)])
    return np.asarray(center, np.float64) + signs * np.asarray(size, np.float64)


def boxes_payload(metadata: SceneMetadata, first_cam_to_world: np.ndarray) -> dict:
    """``boxes.json`` content: every object in the axis-aligned frame and as an AABB in the first-camera frame."""
    to_first = np.linalg.inv(first_cam_to_world) @ np.linalg.inv(metadata.axis_alignment)
    objects = []
    for obj in sorted(metadata.objects, key=lambda o: o.object_id):
        corners = box_corners(obj.center, obj.size)
        mapped = corners @ to_first[:3, :3].T + to_first[:3, 3]
        lo, hi = mapped.min(axis=0), mapped.max(axis=0)
        objects.append({
            "object_id": int(obj.object_id),
            "label": obj.label,
            "center": [float(x) for x in obj.center],
            "size": [float(x) for x in obj.size],
            "center_first_cam": [float(x) for x in (lo + hi) / 2.0],
            "size_first_cam": [float(x) for x in hi - lo],
        })
    return {"axis_alignment": np.asarray(metadata.axis_alignment, float).tolist(), "objects": objects}
