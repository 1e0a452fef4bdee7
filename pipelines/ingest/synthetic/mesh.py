"""Triangle mesh, over-segmentation and object aggregation for the ScanNet ``_vh_clean_2`` files.

Each box face is subdivided into a grid of roughly ``step`` metres so that the mesh has a ScanNet-like vertex density
(per-vertex colour, segment ids), and each face of each part is one segment, like ScanNet's graph-based
over-segmentation produces patches that the annotators then group into objects (``segGroups``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipelines.ingest.synthetic.room import Room


@dataclass(frozen=True)
class SceneMesh:
    """Mesh in the raw ScanNet frame plus annotation groups.

    Attributes:
        vertices: ``[V, 3]`` float32 raw-frame positions, metres.
        colors: ``[V, 3]`` uint8 per-vertex colour.
        faces: ``[F, 3]`` int32 vertex indices, counter-clockwise seen from outside.
        segment_ids: ``[V]`` int64 segment id per vertex (``segIndices``).
        objects: ``(object_id, label, segment ids)`` per annotated object (``segGroups``).
    """

    vertices: np.ndarray
    colors: np.ndarray
    faces: np.ndarray
    segment_ids: np.ndarray
    objects: list[tuple[int, str, list[int]]]


def _face_grid(lo: np.ndarray, hi: np.ndarray, axis: int, side: int, step: float):
    """Vertices and triangles of one box face, subdivided into a grid with cells of at most ``step`` metres."""
    a, b = (axis + 1) % 3, (axis + 2) % 3
    na = max(1, int(np.ceil((hi[a] - lo[a]) / step)))
    nb = max(1, int(np.ceil((hi[b] - lo[b]) / step)))
    ga, gb = np.meshgrid(np.linspace(lo[a], hi[a], na + 1), np.linspace(lo[b], hi[b], nb + 1), indexing="ij")
    verts = np.empty((ga.size, 3))
    verts[:, a], verts[:, b] = ga.ravel(), gb.ravel()
    verts[:, axis] = hi[axis] if side else lo[axis]
    i, j = np.meshgrid(np.arange(na), np.arange(nb), indexing="ij")
    v00 = (i * (nb + 1) + j).ravel()
    v10, v01, v11 = v00 + (nb + 1), v00 + 1, v00 + nb + 2
    tris = np.concatenate([np.stack([v00, v10, v11], 1), np.stack([v00, v11, v01], 1)])
    if not side:  # keep outward orientation: flip winding on the low face
        tris = tris[:, ::-1]
    return verts, tris


def build_mesh(room: Room, step: float) -> SceneMesh:
    """Triangulate every part of every object; vertices are returned in the raw frame.

    Args:
        room: the generated room (aligned frame).
        step: maximum grid cell edge on each face, metres.
    """
    raw_from_aligned = np.linalg.inv(room.axis_alignment)
    vertices, colors, faces, segments = [], [], [], []
    objects: list[tuple[int, str, list[int]]] = []
    n_vertices, next_segment = 0, 0
    for obj in room.objects:
        seg_ids: list[int] = []
        for lo, hi in zip(obj.parts_lo, obj.parts_hi, strict=True):
            for axis in range(3):
                for side in (0, 1):
                    verts, tris = _face_grid(lo, hi, axis, side, step)
                    vertices.append(verts)
                    faces.append(tris + n_vertices)
                    colors.append(np.tile(np.array(obj.rgb, dtype=np.uint8), (len(verts), 1)))
                    segments.append(np.full(len(verts), next_segment, dtype=np.int64))
                    seg_ids.append(next_segment)
                    next_segment += 1
                    n_vertices += len(verts)
        objects.append((obj.object_id, obj.label, seg_ids))
    v_aligned = np.concatenate(vertices)
    v_raw = v_aligned @ raw_from_aligned[:3, :3].T + raw_from_aligned[:3, 3]
    return SceneMesh(
        vertices=v_raw.astype(np.float32),
        colors=np.concatenate(colors),
        faces=np.concatenate(faces).astype(np.int32),
        segment_ids=np.concatenate(segments),
        objects=objects,
    )
