"""Open a scene in any supported layout, and list the scenes under a dataset root.

Layouts and the files that define them (what ``layout="auto"`` looks for, in this order):

* ``"video"``: ``scene.json`` (the manifest of :mod:`pipelines.scenes.video_layout`).
* ``"sens"``: a ``*.sens`` file (the URI itself, or ``<dir>/<scene_id>.sens``, or the only ``.sens`` in ``<dir>``).
* ``"export"``: ``color/`` + ``pose/`` + ``intrinsic/`` folders.
* ``"posed_images"``: ``intrinsic.txt`` + ``depth_intrinsic.txt``.

Dataset roots follow the agreed convention: ``<root>/scans/<scene_id>/<scene_id>.sens`` (and ``.../export/``),
``<root>/posed_images/<scene_id>/`` and ``<root>/videos/<scene_id>/``.
"""

from __future__ import annotations

import posixpath

from pipelines.scenes.decode_budget import DecodeBudget
from pipelines.scenes.errors import MissingFileError, SceneDataError
from pipelines.scenes.export_layout import ExportReader
from pipelines.scenes.posed_images import PosedImagesReader
from pipelines.scenes.sens import SensReader
from pipelines.scenes.types import SceneReader
from pipelines.scenes.video_layout import MANIFEST, VideoSceneReader
from pipelines.storage import filesystem, join

LAYOUTS = ("sens", "export", "posed_images", "video")
_ROOT_FOLDER = {"sens": "scans", "export": "scans", "posed_images": "posed_images", "video": "videos"}


class UnknownLayoutError(SceneDataError):
    """No supported scene layout was recognised at a URI."""


def _find_sens(uri: str) -> str | None:
    fs, path = filesystem(uri)
    if path.endswith(".sens") and fs.isfile(path):
        return uri
    if not fs.isdir(path):
        return None
    name = posixpath.basename(path.rstrip("/"))
    own = join(uri, f"{name}.sens")
    if fs.isfile(posixpath.join(path, f"{name}.sens")):
        return own
    found = [p for p in fs.ls(path, detail=False) if p.endswith(".sens")]
    return join(uri, posixpath.basename(found[0])) if len(found) == 1 else None


def detect_layout(uri: str) -> str:
    """Name the layout at ``uri`` by its defining files; :class:`UnknownLayoutError` lists what was looked for."""
    fs, path = filesystem(uri)
    if not fs.exists(path):
        raise MissingFileError(uri, "scene path does not exist")
    if fs.isdir(path):
        names = {posixpath.basename(p.rstrip("/")) for p in fs.ls(path, detail=False)}
        if MANIFEST in names:
            return "video"
        if {"color", "pose", "intrinsic"} <= names:
            return "export"
        if {"intrinsic.txt", "depth_intrinsic.txt"} <= names:
            return "posed_images"
    if _find_sens(uri) is not None:
        return "sens"
    raise UnknownLayoutError(
        uri,
        f"no scene layout recognised; looked for {MANIFEST} (video), a .sens file (sens), "
        "color/ + pose/ + intrinsic/ (export), intrinsic.txt + depth_intrinsic.txt (posed_images)",
    )


def open_scene(uri: str, layout: str = "auto", write_sens_index: bool = False,
               decode_budget: DecodeBudget | None = None) -> SceneReader:
    """Open the scene at ``uri`` (local path or URI) and return its reader.

    Args:
        uri: a scene folder, or a ``.sens`` file.
        layout: one of ``"sens"``, ``"export"``, ``"posed_images"``, ``"video"``, or ``"auto"`` to detect it.
        write_sens_index: a ``.sens`` reader that had to scan the file writes its sidecar index (see
            :class:`~pipelines.scenes.sens.SensReader`).
        decode_budget: the budget of video decoding (the ``video`` layout); ``None`` = the default budget.

    Raises:
        ValueError: an unknown ``layout`` name.
        UnknownLayoutError: ``"auto"`` found no layout.
        SceneDataError: the layout's own errors (missing, truncated or corrupt files).
    """
    if layout == "auto":
        layout = detect_layout(uri)
    if layout == "sens":
        sens = _find_sens(uri)
        if sens is None:
            raise MissingFileError(uri, "no .sens file at this path")
        return SensReader(sens, write_index=write_sens_index)
    if layout == "export":
        return ExportReader(uri)
    if layout == "posed_images":
        return PosedImagesReader(uri)
    if layout == "video":
        return VideoSceneReader(uri, budget=decode_budget or DecodeBudget())
    raise ValueError(f"unknown layout {layout!r}; expected 'auto' or one of {LAYOUTS}")


def scene_uri(root_uri: str, layout: str, scene_id: str) -> str:
    """Where ``scene_id`` lives under a dataset root in ``layout`` (the agreed directory convention)."""
    if layout == "sens":
        return join(root_uri, "scans", scene_id, f"{scene_id}.sens")
    if layout == "export":
        return join(root_uri, "scans", scene_id, "export")
    if layout in _ROOT_FOLDER:
        return join(root_uri, _ROOT_FOLDER[layout], scene_id)
    raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")


def list_scenes(root_uri: str, layout: str) -> list[str]:
    """Sorted scene ids under a dataset root that have the defining file(s) of ``layout``."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    fs, path = filesystem(root_uri)
    folder = posixpath.join(path, _ROOT_FOLDER[layout])
    if not fs.isdir(folder):
        return []
    found = []
    for entry in fs.ls(folder, detail=False):
        scene_id = posixpath.basename(entry.rstrip("/"))
        defining = {
            "sens": f"{scene_id}.sens",
            "export": "export/intrinsic/intrinsic_color.txt",
            "posed_images": "intrinsic.txt",
            "video": MANIFEST,
        }[layout]
        if fs.exists(posixpath.join(entry, defining)):
            found.append(scene_id)
    return sorted(found)
