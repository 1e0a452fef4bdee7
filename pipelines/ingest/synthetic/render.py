"""Exact ray casting of axis-aligned boxes with numpy: z-depth in metres, shaded colour and an object-id map.

Rays go through integer pixel coordinates ``(u, v)`` (OpenCV convention: pixel centres at integers, so back-projection
is ``x = (u - cx) z / fx``). Ray directions are ``R K^-1 [u, v, 1]``, whose camera-frame z component is 1, so the ray
parameter of the first hit *is* the z-depth along the optical axis, which is what ScanNet depth stores.

Cost is kept practical at 1296x968 by testing each box only on the pixels inside its projected bounding rectangle
(boxes straddling the image plane are tested on the whole image), which makes the work proportional to the covered
area rather than to ``pixels x boxes``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.scenes.types import Intrinsics

_NEAR_M = 0.05
_LIGHT = np.array([0.35, 0.55, 1.0]) / np.linalg.norm([0.35, 0.55, 1.0])
_TEXTURE_CELL_M = 0.2


@dataclass(frozen=True)
class BoxSet:
    """Boxes to render, all in one world frame (the scene's aligned frame).

    Attributes:
        lo: ``[B, 3]`` minima, metres.
        hi: ``[B, 3]`` maxima, metres.
        owner: ``[B]`` object id owning each box (reported in the id map).
        rgb: ``[B, 3]`` base colour per box, float in ``[0, 255]``.
    """

    lo: np.ndarray
    hi: np.ndarray
    owner: np.ndarray
    rgb: np.ndarray


@dataclass(frozen=True)
class Rendering:
    """Output of :func:`render_view`.

    Attributes:
        depth_m: ``[H, W]`` float32 z-depth, 0 where no surface is hit.
        object_id: ``[H, W]`` int32 owning object id, -1 where no surface is hit.
        rgb: ``[H, W, 3]`` uint8 shaded colour (black where nothing is hit), or None when not requested.
    """

    depth_m: np.ndarray
    object_id: np.ndarray
    rgb: np.ndarray | None


def render_view(
    boxes: BoxSet, intrinsics: Intrinsics, cam_to_world: np.ndarray, with_color: bool = True
) -> Rendering:
    """Ray-cast one view.

    Args:
        boxes: the scene's boxes (world frame).
        intrinsics: pinhole intrinsics of the sensor being simulated.
        cam_to_world: ``[4, 4]`` pose, OpenCV axes, same world frame as ``boxes``.
        with_color: also shade a colour image (skip for depth-only sensors).

    Returns:
        Depth, object-id map and optionally colour at ``intrinsics`` resolution.
    """
    h, w = intrinsics.height, intrinsics.width
    k_inv = np.linalg.inv(np.asarray(intrinsics.matrix, dtype=np.float64))
    rot, origin = cam_to_world[:3, :3], cam_to_world[:3, 3]
    u, v = np.meshgrid(np.arange(w, dtype=np.float64), np.arange(h, dtype=np.float64))
    pix = np.stack([u, v, np.ones_like(u)], axis=-1)
    dirs = pix @ (rot @ k_inv).T  # [H, W, 3], camera-frame z component is exactly 1
    # Replace exact zeros so that 1/d is finite and (bound - origin) * (1/d) never produces 0 * inf = nan.
    dirs = np.where(np.abs(dirs) < 1e-12, 1e-12, dirs)
    # float32 halves memory traffic in the per-box loop; hit points stay accurate to ~1e-6 m at room scale.
    inv_d = (1.0 / dirs).astype(np.float32)

    best_t = np.full((h, w), np.inf, dtype=np.float32)
    best_box = np.full((h, w), -1, dtype=np.int64)
    world_to_cam = np.linalg.inv(cam_to_world)
    for b in range(len(boxes.lo)):
        rect = _pixel_rect(boxes.lo[b], boxes.hi[b], world_to_cam, intrinsics)
        if rect is None:
            continue
        v0, v1, u0, u1 = rect
        inv = inv_d[v0:v1, u0:u1]
        t_a = (boxes.lo[b] - origin).astype(np.float32) * inv
        t_b = (boxes.hi[b] - origin).astype(np.float32) * inv
        t_near = np.minimum(t_a, t_b).max(axis=-1)
        t_far = np.maximum(t_a, t_b).min(axis=-1)
        hit = (t_far >= t_near) & (t_near > _NEAR_M)
        t_hit = np.where(hit, t_near, np.inf)
        region_t = best_t[v0:v1, u0:u1]
        closer = t_hit < region_t
        region_t[closer] = t_hit[closer]
        best_box[v0:v1, u0:u1][closer] = b

    hit = best_box >= 0
    depth = np.where(hit, best_t, 0.0).astype(np.float32)
    object_id = np.where(hit, boxes.owner[np.maximum(best_box, 0)], -1).astype(np.int32)
    rgb = _shade(boxes, best_box, best_t, origin, dirs) if with_color else None
    return Rendering(depth, object_id, rgb)


_EDGES = [(a, b) for a in range(8) for b in range(a + 1, 8) if bin(a ^ b).count("1") == 1]


def _pixel_rect(lo, hi, world_to_cam, intrinsics: Intrinsics) -> tuple[int, int, int, int] | None:
    """Pixel rows/cols ``(v0, v1, u0, u1)`` that can see the box; None when it is outside the view.

    The box is clipped against the near plane first (corners in front plus edge/plane intersections), so that big
    boxes around the camera (walls, floor) still get a tight rectangle.
    """
    corners = np.array(
        [[x, y, z, 1.0] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
    )
    cam = (corners @ world_to_cam.T)[:, :3]
    z = cam[:, 2]
    front = z > _NEAR_M
    if not front.any():
        return None
    points = [cam[front]]
    for a, b in _EDGES:
        if front[a] != front[b]:
            s = (_NEAR_M - z[a]) / (z[b] - z[a])
            points.append((cam[a] + s * (cam[b] - cam[a]))[None])
    pts = np.concatenate(points)
    pts[:, 2] = np.maximum(pts[:, 2], _NEAR_M)
    k = np.asarray(intrinsics.matrix)
    u = k[0, 0] * pts[:, 0] / pts[:, 2] + k[0, 1] * pts[:, 1] / pts[:, 2] + k[0, 2]
    v = k[1, 1] * pts[:, 1] / pts[:, 2] + k[1, 2]
    u0, u1 = max(int(np.floor(u.min())) - 1, 0), min(int(np.ceil(u.max())) + 2, intrinsics.width)
    v0, v1 = max(int(np.floor(v.min())) - 1, 0), min(int(np.ceil(v.max())) + 2, intrinsics.height)
    if u0 >= u1 or v0 >= v1:
        return None
    return v0, v1, u0, u1


def _shade(
    boxes: BoxSet, best_box: np.ndarray, best_t: np.ndarray, origin: np.ndarray, dirs: np.ndarray
) -> np.ndarray:
    """Lambert shading (0.75-1.0) times a +-5 % checker texture; the range keeps colour names recognisable.

    Works on the full image (misses are masked at the end) because dense float32 arithmetic is much cheaper than
    boolean gathers at 1296x968.
    """
    hit = best_box >= 0
    idx = np.maximum(best_box, 0)
    t = np.where(hit, best_t, 0.0).astype(np.float32)
    p = origin.astype(np.float32) + t[..., None] * dirs.astype(np.float32)
    lo, hi = boxes.lo.astype(np.float32)[idx], boxes.hi.astype(np.float32)[idx]
    d_lo, d_hi = np.abs(p - lo), np.abs(p - hi)
    axis = np.minimum(d_lo, d_hi).argmin(axis=-1)[..., None]  # which face the point lies on
    on_hi = np.take_along_axis(d_hi, axis, -1) < np.take_along_axis(d_lo, axis, -1)
    light = _LIGHT.astype(np.float32)[axis] * np.where(on_hi, 1.0, -1.0).astype(np.float32)
    shade = 0.75 + 0.25 * np.clip(light[..., 0], 0.0, 1.0)
    # Checker on the two in-plane coordinates of the face: visible texture for matching/feature tracking.
    cells = np.floor(p / _TEXTURE_CELL_M).astype(np.int64)
    parity = cells.sum(axis=-1) - np.take_along_axis(cells, axis, -1)[..., 0]
    texture = np.where(parity % 2 == 0, 1.0 / 0.95, 0.9 / 0.95).astype(np.float32)
    color = boxes.rgb.astype(np.float32)[idx] * (shade * texture)[..., None]
    out = np.clip(np.rint(color), 0, 255).astype(np.uint8)
    out[~hit] = 0
    return out
