"""Camera intrinsics presets and a smooth hand-held-like camera loop inside the room.

Poses are camera-to-world with OpenCV camera axes (x right, y down, z forward). They are computed in the aligned
frame (where the room is built) and converted to the raw ScanNet frame by the generator with
``inverse(axis_alignment) @ cam_to_world_aligned``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.scenes.types import Intrinsics


@dataclass(frozen=True)
class SizePreset:
    """Sensor resolutions and defaults for one ``--size``.

    Attributes:
        name: ``small`` or ``scannet``.
        color: colour intrinsics (ScanNet: 1296x968).
        depth: depth intrinsics (ScanNet: 640x480).
        num_frames: default number of frames per scene.
        mesh_step_m: target edge length of the subdivided mesh faces, metres.
    """

    name: str
    color: Intrinsics
    depth: Intrinsics
    num_frames: int
    mesh_step_m: float


def _k(fx: float, fy: float, cx: float, cy: float) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]])


# ScanNet-like values (scene0000_00 has colour fx = 1170.19, cx = 647.75 and depth fx = 577.59, cx = 318.91).
SIZE_PRESETS: dict[str, SizePreset] = {
    "scannet": SizePreset(
        "scannet",
        Intrinsics(_k(1170.188, 1170.188, 647.75, 483.75), 1296, 968),
        Intrinsics(_k(577.591, 578.730, 318.905, 242.684), 640, 480),
        num_frames=300,
        mesh_step_m=0.1,
    ),
    # The same fields of view at 1/8.1 (colour) and 1/8 (depth) resolution: fast enough for unit tests.
    "small": SizePreset(
        "small",
        Intrinsics(_k(144.47, 144.47, 79.7, 59.7), 160, 120),
        Intrinsics(_k(72.20, 72.34, 39.6, 30.1), 80, 60),
        num_frames=32,
        mesh_step_m=0.25,
    ),
}


@dataclass(frozen=True)
class LoopTrajectory:
    """An elliptical loop around the room centre, looking across the room at the opposite side.

    Looking across (rather than at the centre) sweeps every wall and the furniture along it during one loop, like
    a person scanning a room. Height and gaze oscillate gently so consecutive views are not coplanar.

    Attributes:
        phase: start angle of the loop, radians.
        loop_fraction: fraction of the half-extent used as the loop radius.
        height_m: mean camera height above the floor.
    """

    phase: float
    loop_fraction: float = 0.22
    height_m: float = 1.45

    def positions(self, extent: np.ndarray, angles: np.ndarray) -> np.ndarray:
        """Camera centres ``[N, 3]`` (aligned frame) at loop angles ``[N]``."""
        c = extent[:2] / 2.0
        r = self.loop_fraction * extent[:2]
        z = self.height_m + 0.1 * np.sin(2.0 * angles)
        return np.stack([c[0] + r[0] * np.cos(angles), c[1] + r[1] * np.sin(angles), z], axis=1)

    def clearance_samples(self, extent: np.ndarray) -> np.ndarray:
        """Dense samples of the whole loop (independent of the frame count) for furniture placement."""
        return self.positions(extent, self.phase + np.linspace(0.0, 2.0 * np.pi, 720, endpoint=False))

    def poses(self, extent: np.ndarray, num_frames: int) -> np.ndarray:
        """Camera-to-world poses ``[N, 4, 4]`` in the aligned frame, OpenCV axes."""
        angles = self.phase + 2.0 * np.pi * np.arange(num_frames) / num_frames
        eye = self.positions(extent, angles)
        c = extent[:2] / 2.0
        look = angles + 0.75 * np.pi + 0.15 * np.sin(3.0 * angles)
        target = np.stack(
            [
                c[0] + 0.35 * extent[0] * np.cos(look),
                c[1] + 0.35 * extent[1] * np.sin(look),
                np.full_like(look, 0.6),
            ],
            axis=1,
        )
        return np.stack([look_at(e, t) for e, t in zip(eye, target, strict=True)])


def look_at(eye: np.ndarray, target: np.ndarray, up: np.ndarray | None = None) -> np.ndarray:
    """Camera-to-world ``[4, 4]`` with OpenCV axes for a camera at ``eye`` looking at ``target`` (z up world)."""
    up = np.array([0.0, 0.0, 1.0]) if up is None else up
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, up)
    right = right / np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, eye
    return pose


def invalid_frame_indices(num_frames: int, count: int) -> list[int]:
    """Evenly spread frames whose pose is replaced by ``-inf`` (ScanNet's lost-tracking marker).

    The first frame is never invalidated so that readers which anchor on frame 0 still have a valid anchor.
    """
    if count <= 0 or num_frames < 2:
        return []
    count = min(count, num_frames - 1)
    return sorted({int(round(num_frames * (j + 1) / (count + 1))) for j in range(count)} - {0})
