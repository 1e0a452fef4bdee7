"""The in-memory scene representation that every reader returns and every writer takes.

Conventions (the same for all layouts):

* Colour frames are RGB ``uint8`` arrays ``[H, W, 3]`` at the colour resolution.
* Depth is ``float32`` metres ``[h, w]`` at the depth resolution; ``0`` means "no measurement".
* Poses are camera-to-world ``4x4`` ``float64`` matrices, OpenCV camera axes (x right, y down, z forward), world =
  the scene's raw ScanNet frame (not axis-aligned; apply ``SceneMetadata.axis_alignment`` for that).
* ScanNet marks a lost pose with ``-inf`` entries: such a frame has ``valid=False`` and must never be used silently.
* Timestamps are seconds from the start of the stream.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole intrinsics of one sensor.

    Attributes:
        matrix: ``[3, 3]`` float64 ``K`` in pixels (fx, fy, cx, cy).
        width: image width in pixels.
        height: image height in pixels.
    """

    matrix: np.ndarray
    width: int
    height: int

    def __post_init__(self) -> None:
        if np.asarray(self.matrix).shape != (3, 3):
            raise ValueError(f"intrinsics matrix must be 3x3, got {np.asarray(self.matrix).shape}")
        if self.width <= 0 or self.height <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")


@dataclass
class Frame:
    """One time step of a scene recording.

    Attributes:
        index: frame number in the source stream (0-based).
        timestamp_s: capture time of the colour image, seconds from stream start.
        rgb: ``[H, W, 3]`` uint8 colour image.
        depth_m: ``[h, w]`` float32 depth in metres (0 = invalid), or ``None`` when the layout has no depth.
        cam_to_world: ``[4, 4]`` float64 camera-to-world pose (may hold ``-inf`` when ``valid`` is False).
        valid: False when the pose is not finite.
    """

    index: int
    timestamp_s: float
    rgb: np.ndarray
    depth_m: np.ndarray | None
    cam_to_world: np.ndarray
    valid: bool


def pose_is_valid(cam_to_world: np.ndarray) -> bool:
    """A pose is valid when every entry is finite (ScanNet writes ``-inf`` for lost tracking)."""
    return bool(np.isfinite(cam_to_world).all())


@dataclass(frozen=True)
class ObjectBox:
    """An annotated object as an axis-aligned box in the scene's axis-aligned frame (metres)."""

    object_id: int
    label: str
    center: np.ndarray  # [3]
    size: np.ndarray  # [3], full extents (dx, dy, dz)


@dataclass(frozen=True)
class SceneMetadata:
    """Per-scene metadata: axis alignment (identity when the ``.txt`` lacks it) and object boxes."""

    scene_id: str
    axis_alignment: np.ndarray = field(default_factory=lambda: np.eye(4))  # [4, 4] raw -> axis-aligned
    objects: tuple[ObjectBox, ...] = ()


class SceneReader(ABC):
    """Random access to the frames of one scene, whatever its on-disk layout.

    Subclasses fill the header attributes in ``__init__`` by reading only headers/sidecars, and read frame payloads
    lazily in :meth:`read_frame`, so that opening a scene on object storage is cheap.
    """

    uri: str
    scene_id: str
    color_intrinsics: Intrinsics
    depth_intrinsics: Intrinsics | None
    poses: np.ndarray  # [N, 4, 4] float64 camera-to-world
    timestamps_s: np.ndarray  # [N] float64

    @property
    def num_frames(self) -> int:
        return int(self.poses.shape[0])

    @property
    def valid(self) -> np.ndarray:
        """``[N]`` bool: which frames have a finite pose."""
        return np.isfinite(self.poses).all(axis=(1, 2))

    @property
    def invalid_frames(self) -> list[int]:
        return [int(i) for i in np.flatnonzero(~self.valid)]

    @abstractmethod
    def read_frame(self, index: int) -> Frame:
        """Read and decode frame ``index`` (0-based)."""

    def read_frames(self, indices: Sequence[int]) -> list[Frame]:
        """Read several frames; layouts with sequential codecs (video) override this to decode in one pass."""
        return [self.read_frame(i) for i in indices]

    def __iter__(self) -> Iterator[Frame]:
        for i in range(self.num_frames):
            yield self.read_frame(i)

    def close(self) -> None:  # noqa: B027 - optional hook; most readers hold no open handles
        """Release open file handles, if any."""

    def __enter__(self) -> SceneReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
