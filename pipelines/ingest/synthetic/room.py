"""Procedural indoor rooms made of axis-aligned boxes, with ScanNet/nyu40 furniture classes.

Everything here lives in the scene's *axis-aligned* frame (z up, floor at ``z = 0``, walls parallel to x and y),
because that is the frame in which ScanNet benchmark boxes are expressed. The raw frame, in which poses and the mesh
are written, is obtained through :attr:`Room.axis_alignment` (``raw -> aligned``, the ScanNet ``axisAlignment``).

Furniture is composed of several boxes (a table is a top plus four legs) so that rendered geometry is not a single
cuboid per object, but every part stays axis-aligned; this keeps ray casting exact (slab test) and makes each
object's axis-aligned bounding box the union of its parts. Repeated classes get distinct colours so that language
annotations can always disambiguate instances by colour.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Named colours (sRGB). The palette is chosen so that, after the renderer's mild shading (0.75-1.0) and texture,
# the nearest palette entry to an object's mean rendered colour is still its own name.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (200, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 70, 200),
    "yellow": (225, 205, 40),
    "orange": (235, 125, 30),
    "purple": (130, 50, 170),
    "pink": (235, 130, 180),
    "brown": (115, 70, 35),
    "white": (240, 240, 235),
    "black": (25, 25, 25),
    "gray": (125, 125, 125),
}
FLOOR_RGB = (170, 140, 100)
WALL_RGB = (205, 200, 190)
STRUCTURE_LABELS = ("floor", "wall")

PartList = list[tuple[tuple[float, float, float], tuple[float, float, float]]]


def _block(x0: float, y0: float, z0: float, x1: float, y1: float, z1: float):
    return (x0, y0, z0), (x1, y1, z1)


# Part builders take (width x, depth y, height z) and return boxes in a local frame: origin at the footprint centre
# on the floor, the object's front facing +y (so the back of wall-standing furniture is at -y).
def _solid(w: float, d: float, h: float) -> PartList:
    return [_block(-w / 2, -d / 2, 0.0, w / 2, d / 2, h)]


def _table(w: float, d: float, h: float) -> PartList:
    top, leg, inset = 0.04, 0.05, 0.04
    parts = [_block(-w / 2, -d / 2, h - top, w / 2, d / 2, h)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (w / 2 - inset - leg / 2), sy * (d / 2 - inset - leg / 2)
            parts.append(_block(cx - leg / 2, cy - leg / 2, 0.0, cx + leg / 2, cy + leg / 2, h - top))
    return parts


def _chair(w: float, d: float, h: float) -> PartList:
    seat_z, seat_t, leg, back_t = 0.45, 0.05, 0.04, 0.05
    parts = [_block(-w / 2, -d / 2, seat_z, w / 2, d / 2, seat_z + seat_t)]
    for sx in (-1, 1):
        for sy in (-1, 1):
            cx, cy = sx * (w / 2 - leg / 2), sy * (d / 2 - leg / 2)
            parts.append(_block(cx - leg / 2, cy - leg / 2, 0.0, cx + leg / 2, cy + leg / 2, seat_z))
    parts.append(_block(-w / 2, -d / 2, seat_z + seat_t, w / 2, -d / 2 + back_t, h))
    return parts


def _desk(w: float, d: float, h: float) -> PartList:
    top, side = 0.04, 0.05
    return [
        _block(-w / 2, -d / 2, h - top, w / 2, d / 2, h),
        _block(-w / 2, -d / 2, 0.0, -w / 2 + side, d / 2, h - top),
        _block(w / 2 - side, -d / 2, 0.0, w / 2, d / 2, h - top),
    ]


def _bed(w: float, d: float, h: float) -> PartList:
    base, head = 0.45, 0.08
    return [
        _block(-w / 2, -d / 2 + head, 0.0, w / 2, d / 2, base),
        _block(-w / 2, -d / 2, 0.0, w / 2, -d / 2 + head, h),
    ]


def _sofa(w: float, d: float, h: float) -> PartList:
    seat, back, arm, arm_h = 0.42, 0.2, 0.15, 0.6
    return [
        _block(-w / 2 + arm, -d / 2 + back, 0.0, w / 2 - arm, d / 2, seat),
        _block(-w / 2, -d / 2, 0.0, w / 2, -d / 2 + back, h),
        _block(-w / 2, -d / 2 + back, 0.0, -w / 2 + arm, d / 2, arm_h),
        _block(w / 2 - arm, -d / 2 + back, 0.0, w / 2, d / 2, arm_h),
    ]


def _toilet(w: float, d: float, h: float) -> PartList:
    tank_d, bowl_h = 0.2, 0.4
    return [
        _block(-w / 2, -d / 2 + tank_d, 0.0, w / 2, d / 2, bowl_h),
        _block(-w / 2, -d / 2, 0.0, w / 2, -d / 2 + tank_d, h),
    ]


@dataclass(frozen=True)
class FurnitureClass:
    """A furniture category: nyu40-style label, size ranges in metres and how its parts are built."""

    label: str
    plural: str
    width: tuple[float, float]
    depth: tuple[float, float]
    height: tuple[float, float]
    against_wall: bool
    build: Callable[[float, float, float], PartList]
    max_count: int = 2


CATALOGUE: tuple[FurnitureClass, ...] = (
    FurnitureClass("chair", "chairs", (0.42, 0.5), (0.42, 0.5), (0.8, 0.95), False, _chair, max_count=3),
    FurnitureClass("table", "tables", (1.0, 1.5), (0.7, 0.9), (0.72, 0.76), False, _table),
    FurnitureClass("desk", "desks", (1.0, 1.4), (0.55, 0.7), (0.72, 0.76), True, _desk),
    FurnitureClass("bed", "beds", (1.4, 1.8), (1.9, 2.1), (0.9, 1.1), True, _bed, max_count=1),
    FurnitureClass("sofa", "sofas", (1.6, 2.1), (0.8, 0.95), (0.8, 0.9), True, _sofa),
    FurnitureClass("cabinet", "cabinets", (0.6, 1.0), (0.4, 0.6), (0.8, 1.1), True, _solid, max_count=3),
    FurnitureClass("bookshelf", "bookshelves", (0.8, 1.0), (0.3, 0.4), (1.6, 2.0), True, _solid),
    FurnitureClass("toilet", "toilets", (0.38, 0.42), (0.6, 0.7), (0.75, 0.8), True, _toilet, max_count=1),
    FurnitureClass("sink", "sinks", (0.5, 0.7), (0.45, 0.55), (0.8, 0.9), True, _solid),
    FurnitureClass("bathtub", "bathtubs", (1.5, 1.7), (0.7, 0.8), (0.5, 0.6), True, _solid, max_count=1),
    FurnitureClass(
        "refrigerator", "refrigerators", (0.6, 0.8), (0.6, 0.75), (1.7, 1.9), True, _solid, max_count=1
    ),
    FurnitureClass("nightstand", "nightstands", (0.4, 0.5), (0.35, 0.45), (0.5, 0.6), True, _solid, max_count=3),
    FurnitureClass("dresser", "dressers", (1.0, 1.3), (0.45, 0.55), (0.8, 1.0), True, _solid),
    FurnitureClass("trash can", "trash cans", (0.25, 0.35), (0.25, 0.35), (0.35, 0.5), False, _solid, max_count=3),
)
CLASS_BY_LABEL = {c.label: c for c in CATALOGUE}


@dataclass(frozen=True)
class SceneObject:
    """One annotated object: a union of axis-aligned boxes in the aligned frame.

    Attributes:
        object_id: ScanNet ``objectId`` (also ScanRefer/ScanQA ``object_id``).
        label: nyu40-style class name (``wall`` and ``floor`` for structure).
        color_name: colour word used by the language annotations (``""`` for structure).
        rgb: base colour, sRGB uint8 triple.
        parts_lo: ``[P, 3]`` box minima, metres.
        parts_hi: ``[P, 3]`` box maxima, metres.
        front: ``[2]`` unit xy vector the object faces (zeros for structure).
    """

    object_id: int
    label: str
    color_name: str
    rgb: tuple[int, int, int]
    parts_lo: np.ndarray
    parts_hi: np.ndarray
    front: np.ndarray

    @property
    def is_structure(self) -> bool:
        return self.label in STRUCTURE_LABELS

    @property
    def bbox(self) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned bounding box ``(min [3], max [3])`` of all parts."""
        return self.parts_lo.min(axis=0), self.parts_hi.max(axis=0)

    @property
    def center(self) -> np.ndarray:
        lo, hi = self.bbox
        return (lo + hi) / 2.0

    @property
    def volume(self) -> float:
        lo, hi = self.bbox
        return float(np.prod(hi - lo))


@dataclass(frozen=True)
class Room:
    """A generated scene: room extent, objects (furniture first, then floor and walls) and axis alignment.

    Attributes:
        scene_id: ``sceneXXXX_00``.
        extent: ``[3]`` interior size (x, y, wall height), metres; the interior spans ``[0, extent]``.
        objects: furniture, floor and walls.
        axis_alignment: ``[4, 4]`` ScanNet ``axisAlignment`` mapping raw coordinates to aligned ones.
    """

    scene_id: str
    extent: np.ndarray
    objects: tuple[SceneObject, ...]
    axis_alignment: np.ndarray

    @property
    def furniture(self) -> list[SceneObject]:
        return [o for o in self.objects if not o.is_structure]

    def boxes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """All parts flattened: ``lo [B, 3]``, ``hi [B, 3]`` and the owning object's index ``[B]``."""
        lo = np.concatenate([o.parts_lo for o in self.objects])
        hi = np.concatenate([o.parts_hi for o in self.objects])
        owner = np.concatenate([np.full(len(o.parts_lo), i) for i, o in enumerate(self.objects)])
        return lo, hi, owner


def _rotate_parts(parts: PartList, quarter_turns: int) -> tuple[np.ndarray, np.ndarray]:
    """Rotate local boxes by ``quarter_turns * 90 deg`` about z; boxes stay axis-aligned."""
    lo = np.array([p[0] for p in parts], dtype=np.float64)
    hi = np.array([p[1] for p in parts], dtype=np.float64)
    for _ in range(quarter_turns % 4):
        # (x, y) -> (-y, x): the rotated box spans [-hi_y, -lo_y] in x and [lo_x, hi_x] in y.
        lo, hi = np.stack([-hi[:, 1], lo[:, 0], lo[:, 2]], 1), np.stack([-lo[:, 1], hi[:, 0], hi[:, 2]], 1)
    return lo, hi


def _footprints_clear(
    lo: np.ndarray, hi: np.ndarray, placed: list[tuple[np.ndarray, np.ndarray]], gap: float
) -> bool:
    return all(
        lo[0] >= phi[0] + gap or hi[0] <= plo[0] - gap or lo[1] >= phi[1] + gap or hi[1] <= plo[1] - gap
        for plo, phi in placed
    )


def axis_alignment_matrix(rng: np.random.Generator) -> np.ndarray:
    """A random ScanNet-like ``axisAlignment``: rotation about z plus an xy translation (raw -> aligned)."""
    angle = rng.uniform(0.0, 2.0 * np.pi)
    c, s = np.cos(angle), np.sin(angle)
    m = np.eye(4)
    m[:2, :2] = [[c, -s], [s, c]]
    m[:2, 3] = rng.uniform(-2.5, 2.5, size=2)
    return m


#: Per-instance scale range of an object's sampled size: instances of one class differ visibly in size, so that
#: "which one is bigger" can be asked between two instances of the same class (a class alone never answers it).
INSTANCE_SCALE = (0.75, 1.3)


def generate_room(
    rng: np.random.Generator,
    scene_id: str,
    camera_positions: Callable[[np.ndarray], np.ndarray],
    class_probability: float = 0.5,
    clearance_m: float = 0.3,
    attempts: int = 20,
) -> Room:
    """Sample a room, place furniture without overlap and keep the camera path clear.

    The content is drawn so that no question about it can be answered from the class names alone: every class of
    :data:`CATALOGUE` is present independently with ``class_probability``, a present class has a uniform count in
    ``1..max_count``, instances of a class get distinct colours drawn uniformly from :data:`PALETTE`, and every
    instance's size is its class's sampled size times a uniform :data:`INSTANCE_SCALE` factor. A room with no class
    drawn gets one class chosen uniformly. If some instance cannot be placed, the whole layout is drawn again (up to
    ``attempts`` times; the last layout keeps the instances that fit), so the counts stay as drawn.

    Args:
        rng: the scene's random generator (consumed deterministically).
        scene_id: ScanNet-style id.
        camera_positions: maps the room extent ``[3]`` to the camera centres ``[N, 3]`` (aligned frame) that the
            trajectory will visit, so that no object is placed within ``clearance_m`` of the camera.
        class_probability: probability that a class is present.
        clearance_m: minimum distance between camera centres and any box.
        attempts: layouts tried before keeping one where some instance did not fit.

    Returns:
        The room with furniture ids ``0..K-1`` followed by the floor and four walls.
    """
    extent = np.array([rng.uniform(4.5, 7.0), rng.uniform(4.0, 6.0), rng.uniform(2.6, 2.9)])
    cams = camera_positions(extent)
    present = np.flatnonzero(rng.random(len(CATALOGUE)) < class_probability).tolist()
    if not present:
        present = [int(rng.integers(0, len(CATALOGUE)))]
    names = list(PALETTE)
    planned: list[tuple[FurnitureClass, str, list[float]]] = []
    for ci in present:
        cls = CATALOGUE[ci]
        count = int(rng.integers(1, cls.max_count + 1))
        for k in rng.choice(len(PALETTE), size=count, replace=False):
            scale = rng.uniform(*INSTANCE_SCALE)
            size = [rng.uniform(*cls.width) * scale, rng.uniform(*cls.depth) * scale,
                    min(rng.uniform(*cls.height) * scale, extent[2] - 0.2)]
            planned.append((cls, names[int(k)], size))
    for _ in range(attempts):
        objects: list[SceneObject] = []
        placed: list[tuple[np.ndarray, np.ndarray]] = []
        for cls, name, size in planned:
            obj = _place(rng, cls, size, extent, placed, cams, clearance_m)
            if obj is None:
                continue
            lo, hi, front = obj
            objects.append(SceneObject(len(objects), cls.label, name, PALETTE[name], lo, hi, front))
            placed.append((lo.min(0), hi.max(0)))
        if len(objects) == len(planned):
            break
    objects.extend(_structure(extent, len(objects)))
    return Room(scene_id, extent, tuple(objects), axis_alignment_matrix(rng))


def _place(rng, cls: FurnitureClass, size, extent, placed, cams, clearance_m, tries: int = 200):
    parts = cls.build(*size)
    for _ in range(tries):
        if cls.against_wall:
            wall = int(rng.integers(0, 4))
            # Quarter turns that make local +y (front) point into the room from walls y=0, x=X, y=Y, x=0.
            turns = (0, 1, 2, 3)[wall]
            lo, hi = _rotate_parts(parts, turns)
            half = (hi.max(0) - lo.min(0))[:2] / 2.0
            gap = 0.02
            if wall in (0, 2):
                x = rng.uniform(half[0] + 0.05, extent[0] - half[0] - 0.05)
                y = half[1] + gap if wall == 0 else extent[1] - half[1] - gap
            else:
                y = rng.uniform(half[1] + 0.05, extent[1] - half[1] - 0.05)
                x = extent[0] - half[0] - gap if wall == 1 else half[0] + gap
        else:
            turns = int(rng.integers(0, 4))
            lo, hi = _rotate_parts(parts, turns)
            half = (hi.max(0) - lo.min(0))[:2] / 2.0
            x = rng.uniform(half[0] + 0.3, extent[0] - half[0] - 0.3)
            y = rng.uniform(half[1] + 0.3, extent[1] - half[1] - 0.3)
        offset = np.array([x, y, 0.0])
        lo_w, hi_w = lo + offset, hi + offset
        if not _footprints_clear(lo_w.min(0), hi_w.max(0), placed, gap=0.1):
            continue
        if _min_distance(cams, lo_w, hi_w) < clearance_m:
            continue
        angle = turns * np.pi / 2.0
        front = np.array([-np.sin(angle), np.cos(angle)])
        return lo_w, hi_w, np.round(front, 12)
    return None


def _min_distance(points: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> float:
    """Smallest Euclidean distance from any point ``[N, 3]`` to any box ``lo/hi [B, 3]``."""
    d = np.maximum(np.maximum(lo[None] - points[:, None], points[:, None] - hi[None]), 0.0)
    return float(np.sqrt((d**2).sum(-1)).min())


def _structure(extent: np.ndarray, first_id: int) -> list[SceneObject]:
    """Floor slab below ``z = 0`` and four 10 cm walls just outside the interior."""
    x, y, h, t = extent[0], extent[1], extent[2], 0.1
    slabs = [
        ("floor", FLOOR_RGB, (-t, -t, -0.05), (x + t, y + t, 0.0)),
        ("wall", WALL_RGB, (-t, -t, 0.0), (x + t, 0.0, h)),
        ("wall", WALL_RGB, (x, 0.0, 0.0), (x + t, y, h)),
        ("wall", WALL_RGB, (-t, y, 0.0), (x + t, y + t, h)),
        ("wall", WALL_RGB, (-t, 0.0, 0.0), (0.0, y, h)),
    ]
    return [
        SceneObject(first_id + i, label, "", rgb, np.array([lo], float), np.array([hi], float), np.zeros(2))
        for i, (label, rgb, lo, hi) in enumerate(slabs)
    ]
