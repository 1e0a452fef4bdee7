"""ScanNet per-scene metadata: ``<scene_id>.txt``, aggregation, segmentation and the annotation mesh.

Files in ``scans/<scene_id>/`` (ScanNet v2 names):

* ``<scene_id>.txt``: ``key = value`` lines; ``axisAlignment`` holds 16 floats, a row-major 4x4 taking raw scene
  coordinates to the axis-aligned frame. Test scans lack it: the identity is used.
* ``<scene_id>.aggregation.json``: ``{"segGroups": [{"id", "objectId", "segments", "label"}, ...]}``.
* ``<scene_id>_vh_clean_2.0.010000.segs.json``: ``{"segIndices": [segment id per mesh vertex], ...}``.
* ``<scene_id>_vh_clean_2.ply``: binary little-endian PLY, vertices ``x y z`` float32 and ``red green blue alpha``
  uchar, faces ``list uchar int vertex_indices``.

Object boxes follow the benchmarks (ScanRefer, Scan2Cap, Multi3DRefer): an object's vertices are those whose segment
is in its ``segments``; they are mapped by ``axisAlignment`` and the box is their min/max in that frame.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from pipelines.scenes.errors import (
    AnnotationFormatError,
    CorruptDataError,
    MissingFileError,
    TruncatedFileError,
)
from pipelines.scenes.sens import open_for_write
from pipelines.scenes.types import Intrinsics, ObjectBox, SceneMetadata
from pipelines.storage import exists, join, read_bytes

_PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2", "int16": "i2",
    "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}  # fmt: skip


@dataclass(frozen=True)
class PlyMesh:
    """A triangle mesh: ``vertices [V, 3]`` float32 metres, ``colors [V, 3]`` uint8 RGB, ``faces [F, 3]`` int32."""

    vertices: np.ndarray
    colors: np.ndarray
    faces: np.ndarray


def write_ply(uri: str, vertices: np.ndarray, colors: np.ndarray, faces: np.ndarray) -> None:
    """Write a binary little-endian PLY laid out like ScanNet's ``_vh_clean_2.ply`` (alpha written as 255)."""
    vertices = np.asarray(vertices, dtype="<f4")
    colors = np.asarray(colors, dtype=np.uint8)
    faces = np.asarray(faces, dtype="<i4")
    if (
        vertices.ndim != 2
        or vertices.shape[1] != 3
        or colors.shape != vertices.shape
        or faces.shape[1:] != (3,)
    ):
        raise ValueError(
            f"need vertices [V,3], colors [V,3], faces [F,3]; got {vertices.shape} {colors.shape} {faces.shape}"
        )
    vdtype = np.dtype([("xyz", "<f4", 3), ("rgba", "u1", 4)])
    vrec = np.empty(len(vertices), vdtype)
    vrec["xyz"] = vertices
    vrec["rgba"][:, :3] = colors
    vrec["rgba"][:, 3] = 255
    frec = np.empty(len(faces), np.dtype([("n", "u1"), ("v", "<i4", 3)]))
    frec["n"] = 3
    frec["v"] = faces
    header = (
        "ply\nformat binary_little_endian 1.0\ncomment VCGLIB generated\n"
        f"element vertex {len(vertices)}\nproperty float x\nproperty float y\nproperty float z\n"
        "property uchar red\nproperty uchar green\nproperty uchar blue\nproperty uchar alpha\n"
        f"element face {len(faces)}\nproperty list uchar int vertex_indices\nend_header\n"
    )
    with open_for_write(uri) as f:
        f.write(header.encode("ascii"))
        f.write(vrec.tobytes())
        f.write(frec.tobytes())


def read_ply(uri: str) -> PlyMesh:
    """Read a binary little-endian PLY with a vertex element (x, y, z, optional red/green/blue) and triangles."""
    data = read_bytes(uri)
    end = data.find(b"end_header\n")
    if not data.startswith(b"ply") or end < 0:
        raise CorruptDataError(uri, "not a PLY file (no 'ply' magic or 'end_header')")
    elements: list[tuple[str, int, list[tuple[str, str, str | None]]]] = []
    for line in data[:end].decode("ascii", errors="replace").splitlines()[1:]:
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        if tok[0] == "format" and tok[1] != "binary_little_endian":
            raise CorruptDataError(uri, f"PLY format {tok[1]} not supported (binary_little_endian only)")
        if tok[0] == "element":
            elements.append((tok[1], int(tok[2]), []))
        elif tok[0] == "property" and elements:
            if tok[1] == "list":
                elements[-1][2].append((tok[4], _PLY_TYPES[tok[2]], _PLY_TYPES[tok[3]]))
            else:
                elements[-1][2].append((tok[2], _PLY_TYPES[tok[1]], None))
    offset = end + len(b"end_header\n")
    vertices = colors = faces = None
    for name, count, props in elements:
        if any(p[2] is not None for p in props):
            if name != "face" or len(props) != 1:
                raise CorruptDataError(uri, f"PLY element {name!r} with list properties not supported")
            _, count_t, index_t = props[0]
            dtype = np.dtype([("n", count_t), ("v", "<" + index_t, 3)])
            need = offset + count * dtype.itemsize
            if need > len(data):
                raise TruncatedFileError(uri, f"face data needs {need} bytes, file has {len(data)}")
            rec = np.frombuffer(data, dtype, count, offset)
            if count and not (rec["n"] == 3).all():
                raise CorruptDataError(uri, "only triangle faces are supported")
            faces = rec["v"].astype(np.int32)
            offset = need
            continue
        dtype = np.dtype([(p[0], "<" + p[1]) for p in props])
        need = offset + count * dtype.itemsize
        if need > len(data):
            raise TruncatedFileError(uri, f"element {name!r} needs {need} bytes, file has {len(data)}")
        rec = np.frombuffer(data, dtype, count, offset)
        offset = need
        if name == "vertex":
            vertices = np.stack([rec[a] for a in ("x", "y", "z")], axis=1).astype(np.float32)
            if all(c in rec.dtype.names for c in ("red", "green", "blue")):
                colors = np.stack([rec[c] for c in ("red", "green", "blue")], axis=1).astype(np.uint8)
    if vertices is None:
        raise CorruptDataError(uri, "PLY has no vertex element")
    if colors is None:
        colors = np.zeros_like(vertices, dtype=np.uint8)
    return PlyMesh(vertices, colors, faces if faces is not None else np.zeros((0, 3), np.int32))


def parse_scene_info(text: str, uri: str) -> dict[str, str]:
    """``key = value`` lines of ``<scene_id>.txt`` as a dict of strings."""
    info = {}
    for line_no, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise CorruptDataError(uri, f"line {line_no}: expected 'key = value', got {line[:60]!r}")
        info[key.strip()] = value.strip()
    return info


def axis_alignment_from_info(info: dict[str, str], uri: str) -> np.ndarray:
    """The ``axisAlignment`` 4x4 (row-major), or the identity when absent (ScanNet test scans)."""
    if "axisAlignment" not in info:
        return np.eye(4)
    try:
        values = [float(v) for v in info["axisAlignment"].split()]
    except ValueError as exc:
        raise CorruptDataError(uri, f"axisAlignment holds a non-number ({exc})") from exc
    if len(values) != 16:
        raise CorruptDataError(uri, f"axisAlignment holds {len(values)} numbers, expected 16")
    return np.asarray(values, dtype=np.float64).reshape(4, 4)


def read_scene_info(scene_dir_uri: str, scene_id: str | None = None) -> dict[str, str]:
    """Read ``<scene_dir>/<scene_id>.txt`` (``scene_id`` defaults to the folder name)."""
    scene_id = scene_id or scene_dir_uri.rstrip("/").rsplit("/", 1)[-1]
    uri = join(scene_dir_uri, f"{scene_id}.txt")
    if not exists(uri):
        raise MissingFileError(uri, "scene info file does not exist")
    return parse_scene_info(read_bytes(uri).decode("utf-8", errors="replace"), uri)


def _load_json(uri: str) -> dict:
    if not exists(uri):
        raise MissingFileError(uri, "annotation file does not exist")
    try:
        obj = json.loads(read_bytes(uri))
    except ValueError as exc:
        raise AnnotationFormatError(uri, f"invalid JSON ({exc})") from exc
    if not isinstance(obj, dict):
        raise AnnotationFormatError(uri, f"top level is {type(obj).__name__}, expected an object")
    return obj


def read_scene_metadata(scene_dir_uri: str, scene_id: str | None = None) -> SceneMetadata:
    """Axis alignment and object boxes of one ``scans/<scene_id>/`` folder.

    Scenes without ``<scene_id>.aggregation.json`` (the test split) get no objects; with it, the segmentation and
    the ``_vh_clean_2.ply`` mesh are required.

    Args:
        scene_dir_uri: the scene folder (local path or URI).
        scene_id: scene name; default the folder name.

    Returns:
        :class:`SceneMetadata` with boxes (metres) in the axis-aligned frame, ordered by ``objectId``.
    """
    scene_dir_uri = scene_dir_uri.rstrip("/")
    scene_id = scene_id or scene_dir_uri.rsplit("/", 1)[-1]
    info_uri = join(scene_dir_uri, f"{scene_id}.txt")
    align = axis_alignment_from_info(read_scene_info(scene_dir_uri, scene_id), info_uri)
    agg_uri = join(scene_dir_uri, f"{scene_id}.aggregation.json")
    if not exists(agg_uri):
        return SceneMetadata(scene_id, align, ())
    groups = _load_json(agg_uri).get("segGroups")
    if not isinstance(groups, list):
        raise AnnotationFormatError(agg_uri, "'segGroups' must be a list")
    segs_uri = join(scene_dir_uri, f"{scene_id}_vh_clean_2.0.010000.segs.json")
    seg_indices = _load_json(segs_uri).get("segIndices")
    if not isinstance(seg_indices, list):
        raise AnnotationFormatError(segs_uri, "'segIndices' must be a list of per-vertex segment ids")
    seg_indices = np.asarray(seg_indices, dtype=np.int64)
    ply_uri = join(scene_dir_uri, f"{scene_id}_vh_clean_2.ply")
    if not exists(ply_uri):
        raise MissingFileError(ply_uri, "annotation mesh does not exist")
    mesh = read_ply(ply_uri)
    if len(seg_indices) != len(mesh.vertices):
        raise AnnotationFormatError(
            segs_uri, f"{len(seg_indices)} segIndices for {len(mesh.vertices)} mesh vertices in {ply_uri}"
        )
    homo = np.concatenate([mesh.vertices.astype(np.float64), np.ones((len(mesh.vertices), 1))], axis=1)
    aligned = (homo @ align.T)[:, :3]
    objects = []
    for k, group in enumerate(groups):
        try:
            object_id, label, segments = int(group["objectId"]), str(group["label"]), group["segments"]
            segments = np.asarray([int(s) for s in segments], dtype=np.int64)
        except (KeyError, TypeError, ValueError) as exc:
            raise AnnotationFormatError(
                agg_uri, f"segGroups[{k}]: needs objectId, label, segments ({exc!r})"
            ) from exc
        points = aligned[np.isin(seg_indices, segments)]
        if len(points) == 0:
            raise AnnotationFormatError(
                agg_uri, f"segGroups[{k}] (objectId {object_id}) covers no mesh vertex"
            )
        lo, hi = points.min(axis=0), points.max(axis=0)
        objects.append(ObjectBox(object_id, label, (lo + hi) / 2.0, hi - lo))
    objects.sort(key=lambda o: o.object_id)
    return SceneMetadata(scene_id, align, tuple(objects))


def format_scene_info(
    axis_alignment: np.ndarray | None,
    color_intrinsics: Intrinsics | None = None,
    depth_intrinsics: Intrinsics | None = None,
    num_frames: int | None = None,
    scene_type: str | None = None,
) -> str:
    """``<scene_id>.txt`` text with ScanNet's keys (sorted, ``%f``-style numbers like the release files).

    ``axis_alignment=None`` omits ``axisAlignment`` (as in test scans); ``None`` camera arguments omit their keys.
    """
    info: dict[str, str] = {}
    if axis_alignment is not None:
        info["axisAlignment"] = " ".join(
            f"{v:.17g}" for v in np.asarray(axis_alignment, dtype=np.float64).ravel()
        )
    for name, intr in (("color", color_intrinsics), ("depth", depth_intrinsics)):
        if intr is None:
            continue
        k = np.asarray(intr.matrix, dtype=np.float64)
        info[f"{name}Width"], info[f"{name}Height"] = str(intr.width), str(intr.height)
        info[f"fx_{name}"], info[f"fy_{name}"] = f"{k[0, 0]:.6f}", f"{k[1, 1]:.6f}"
        info[f"mx_{name}"], info[f"my_{name}"] = f"{k[0, 2]:.6f}", f"{k[1, 2]:.6f}"
    if color_intrinsics is not None and depth_intrinsics is not None:
        info["colorToDepthExtrinsics"] = " ".join(f"{v:g}" for v in np.eye(4).ravel())
    if num_frames is not None:
        info["numColorFrames"] = info["numDepthFrames"] = str(num_frames)
        info["numIMUmeasurements"] = "0"
    if scene_type is not None:
        info["sceneType"] = scene_type
    return "".join(f"{key} = {info[key]}\n" for key in sorted(info))


def write_scene_info(uri: str, axis_alignment: np.ndarray | None, **kwargs) -> None:
    """Write ``<scene_id>.txt`` at ``uri``; keyword arguments as :func:`format_scene_info`."""
    with open_for_write(uri) as f:
        f.write(format_scene_info(axis_alignment, **kwargs).encode("utf-8"))


def write_scene_metadata(
    scene_dir_uri: str,
    scene_id: str,
    axis_alignment: np.ndarray | None,
    vertices: np.ndarray,
    colors: np.ndarray,
    faces: np.ndarray,
    segment_ids: np.ndarray,
    objects: Sequence[tuple[int, str, Sequence[int]]],
    color_intrinsics: Intrinsics | None = None,
    depth_intrinsics: Intrinsics | None = None,
    num_frames: int | None = None,
    scene_type: str | None = None,
) -> None:
    """Write the ScanNet metadata files of one scene folder.

    Args:
        scene_dir_uri: ``<root>/scans/<scene_id>``.
        scene_id: e.g. ``scene0000_00``.
        axis_alignment: ``[4, 4]`` raw -> axis-aligned, or ``None`` to omit it (test-scan style).
        vertices: ``[V, 3]`` float32 mesh vertices in the raw scene frame (metres).
        colors: ``[V, 3]`` uint8 vertex colours.
        faces: ``[F, 3]`` int32 triangles.
        segment_ids: ``[V]`` segment id per vertex (``segIndices``).
        objects: ``(object_id, label, segment ids)`` per annotated object (``segGroups``).
        color_intrinsics: recorded as ``colorWidth``/``fx_color``... in ``<scene_id>.txt`` when given.
        depth_intrinsics: recorded as ``depthWidth``/``fx_depth``... when given.
        num_frames: recorded as ``numColorFrames``/``numDepthFrames`` when given.
        scene_type: recorded as ``sceneType`` when given.
    """
    segment_ids = np.asarray(segment_ids)
    if segment_ids.shape != (len(vertices),):
        raise ValueError(f"segment_ids must be [V={len(vertices)}], got {segment_ids.shape}")
    write_scene_info(
        join(scene_dir_uri, f"{scene_id}.txt"),
        axis_alignment,
        color_intrinsics=color_intrinsics,
        depth_intrinsics=depth_intrinsics,
        num_frames=num_frames,
        scene_type=scene_type,
    )
    write_ply(join(scene_dir_uri, f"{scene_id}_vh_clean_2.ply"), vertices, colors, faces)
    segs_name = f"{scene_id}_vh_clean_2.0.010000.segs.json"
    segs = {"params": {"kThresh": "0.01", "segMinVerts": "20"}, "sceneId": scene_id,
            "segIndices": [int(s) for s in segment_ids]}  # fmt: skip
    aggregation = {
        "sceneId": f"scannet.{scene_id}",
        "appId": "Aggregator.v2",
        "segGroups": [
            {"id": k, "objectId": int(oid), "segments": [int(s) for s in segs_], "label": str(label)}
            for k, (oid, label, segs_) in enumerate(objects)
        ],
        "segmentsFile": f"scannet.{segs_name}",
    }
    for name, obj in ((segs_name, segs), (f"{scene_id}.aggregation.json", aggregation)):
        with open_for_write(join(scene_dir_uri, name)) as f:
            f.write(json.dumps(obj).encode("utf-8"))
