"""Synthetic frames for the scene-format tests, with exactly representable poses and whole-millimetre depth."""

from __future__ import annotations

import numpy as np

from pipelines.scenes.types import Frame

COLOR_W, COLOR_H = 96, 72
DEPTH_W, DEPTH_H = 48, 36
JPEG_MEAN_ABS_TOL = (
    2.0  # smooth test images at quality 95: mean |error| per channel, 0..255 units (measured 1.2)
)
JPEG_MAX_ABS_TOL = 24  # measured 16
# H.264 yuv420p at CRF 18-20 on the same images: measured mean |error| 4.6, of which 3.8 is 4:2:0 chroma subsampling
# and RGB<->YUV rounding alone (measured at CRF 0).
VIDEO_MEAN_ABS_TOL = 6.0


def smooth_rgb(i: int, h: int = COLOR_H, w: int = COLOR_W) -> np.ndarray:
    """A smooth, moving colour pattern (compresses well, so codec error stays small and measurable)."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    channels = [
        np.sin(xx / 9.0 + i * 0.3),
        np.cos(yy / 7.0 - i * 0.2),
        np.sin((xx + yy) / 13.0 + i * 0.1),
    ]
    return np.stack([np.rint(127.5 + 120 * c) for c in channels], axis=-1).astype(np.uint8)


def make_frames(n: int, seed: int = 0, invalid: tuple[int, ...] = (), fps: float = 30.0) -> list[Frame]:
    """``n`` frames: float32-exact poses, depth in whole millimetres with holes, ``-inf`` poses at ``invalid``."""
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        pose = np.eye(4)
        pose[:3, :3] = np.linalg.qr(rng.normal(size=(3, 3)))[0]
        pose[:3, 3] = rng.uniform(-3, 3, 3)
        pose = pose.astype(np.float32).astype(np.float64)  # exactly representable in the .sens float32 fields
        if i in invalid:
            pose[:] = -np.inf
        depth_mm = rng.integers(0, 6000, (DEPTH_H, DEPTH_W))
        depth_mm[rng.random((DEPTH_H, DEPTH_W)) < 0.1] = 0  # holes
        frames.append(
            Frame(
                index=i,
                timestamp_s=i / fps,
                rgb=smooth_rgb(i),
                depth_m=(depth_mm / 1000.0).astype(np.float32),
                cam_to_world=pose,
                valid=i not in invalid,
            )
        )
    return frames


def assert_rgb_close(
    got: np.ndarray, want: np.ndarray, mean_tol: float = JPEG_MEAN_ABS_TOL, max_tol: int = JPEG_MAX_ABS_TOL
):
    assert got.shape == want.shape and got.dtype == np.uint8
    err = np.abs(got.astype(np.int32) - want.astype(np.int32))
    assert err.mean() <= mean_tol, f"mean abs error {err.mean():.2f} > {mean_tol}"
    assert err.max() <= max_tol, f"max abs error {err.max()} > {max_tol}"


def depth_mm(depth_m: np.ndarray) -> np.ndarray:
    return np.rint(np.asarray(depth_m, dtype=np.float64) * 1000).astype(np.int64)
