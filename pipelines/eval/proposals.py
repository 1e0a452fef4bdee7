"""Instance proposals (a 3D instance segmentor's detections, e.g. Mask3D) for the proposal-based protocol.

The paper evaluates ScanRefer and Scan2Cap with Mask3D proposals, as LLaVA-3D, VG-LLM, Video-3D LLM and Chat-Scene
do. :func:`load_proposals` reads one proposal file (or folder) into ``{scene_id: SceneProposals}``: per scene
``boxes [N, 6]`` centre+size in metres in ScanNet's **axis-aligned** frame (the frame of the benchmark boxes),
optional ``scores [N]`` and ``labels``. The format is always named explicitly (``proposals_format``), never guessed:

``vidllm``
    This project's JSON: ``{"format": "vidllm.proposals", "version": 1, "scenes": {scene_id: {"boxes": [...],
    "scores": [...], "labels": [...]}}}``; each box is ``[cx, cy, cz, dx, dy, dz]`` or its 8 corners
    ``[[x, y, z] x 8]`` (the axis-aligned hull is taken); ``scores`` and ``labels`` are optional.
``video3dllm``
    Video-3D LLM / 3DRS / Ross3D ``data/metadata/scannet_{split}_pred_box.json`` (written by Video-3D LLM's
    ``scripts/3d/preprocessing/extract_pred_box.py`` from LEO's Mask3D masks): ``{"scannet/<scene_id>":
    [[cx, cy, cz, dx, dy, dz], ...]}``; a key without the ``scannet/`` prefix is the scene id itself. No scores.
``chatscene``
    Chat-Scene ``annotations/scannet_mask3d_{split}_attributes.pt`` (``preprocess/
    prepare_scannet_mask3d_attributes.py``): a ``torch.save``\\ d ``{scene_id: {"locs": FloatTensor [N, 6]
    centre+size, "objects": [class name, ...]}}``, read with ``torch.load(weights_only=True)`` (no pickled code).
``scannet_instance``
    The ScanNet instance-segmentation benchmark layout that Mask3D exports: a folder with one ``<scene_id>.txt``
    per scene whose lines are ``<relative mask path> <label id> <confidence>``; each mask file holds one integer per
    vertex of ``<scene_id>_vh_clean_2.ply`` (file order), non-zero = inside (ScanNet ``BenchmarkScripts/
    3d_evaluation/evaluate_semantic_instance.py``). Needs ``scans_root``.
``leo_masks``
    LEO's Mask3D masks, used by VG-LLM and Video-3D LLM: a folder of ``<scene_id>.mask.npz`` scipy sparse matrices
    ``[N, V]``, one row per proposal over the ``V`` mesh vertices (Video-3D LLM keeps the first 50 rows: set
    ``max_per_scene``). Needs ``scans_root``.

Mask formats are turned into boxes with the scene mesh ``<scans_root>/scans/<scene_id>/<scene_id>_vh_clean_2.ply``
and ``axisAlignment`` from ``<scene_id>.txt``: the box is the min/max of the masked vertices after alignment, as the
benchmark boxes are built (``pipelines.scenes.metadata.read_scene_metadata``). A mask that covers no vertex gives no
box and is dropped. Bad input raises :class:`ProposalFormatError` naming the file and what is wrong.
"""

from __future__ import annotations

import io
import json
import posixpath
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipelines import storage
from pipelines.eval.metrics.boxes import as_boxes, minmax_to_boxes

PROPOSAL_FORMATS: tuple[str, ...] = ("vidllm", "video3dllm", "chatscene", "scannet_instance", "leo_masks")
MASK_FORMATS: tuple[str, ...] = ("scannet_instance", "leo_masks")
VIDLLM_PROPOSALS_FORMAT = "vidllm.proposals"


class ProposalFormatError(ValueError):
    """A proposal file is missing or malformed; the message names the file (and the scene / field)."""

    def __init__(self, uri: str, problem: str):
        self.uri = uri
        self.problem = problem
        super().__init__(f"{uri}: {problem}")


@dataclass(frozen=True)
class SceneProposals:
    """The proposals of one scene.

    Attributes:
        boxes: ``[N, 6]`` float64 centre+size boxes, metres, axis-aligned scene frame (N may be 0).
        scores: ``[N]`` detector confidences, or None when the format has none.
        labels: ``N`` class names / label ids as strings, or None.
    """

    boxes: np.ndarray
    scores: np.ndarray | None = None
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", as_boxes(self.boxes, "proposal boxes"))
        n = self.boxes.shape[0]
        if self.scores is not None:
            scores = np.asarray(self.scores, dtype=np.float64).reshape(-1)
            if scores.shape[0] != n or not np.isfinite(scores).all():
                raise ValueError(f"{scores.shape[0]} proposal scores (finite) expected {n}")
            object.__setattr__(self, "scores", scores)
        if self.labels is not None:
            labels = tuple(str(x) for x in self.labels)
            if len(labels) != n:
                raise ValueError(f"{len(labels)} proposal labels for {n} boxes")
            object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    def top(self, k: int | None) -> SceneProposals:
        """The ``k`` most confident proposals (by score, stable; file order without scores); None keeps all."""
        if k is None or k >= len(self):
            return self
        order = np.argsort(-self.scores, kind="stable")[:k] if self.scores is not None else np.arange(k)
        return SceneProposals(
            self.boxes[order],
            None if self.scores is None else self.scores[order],
            None if self.labels is None else tuple(self.labels[i] for i in order),
        )

    def to_dict(self) -> dict[str, Any]:
        """The scene's entry in the ``vidllm`` format."""
        d: dict[str, Any] = {"boxes": self.boxes.tolist()}
        if self.scores is not None:
            d["scores"] = self.scores.tolist()
        if self.labels is not None:
            d["labels"] = list(self.labels)
        return d


def boxes_from_any(raw: Any, where: str) -> np.ndarray:
    """``[N, 6]`` centre+size or ``[N, 8, 3]`` corners (any order) -> ``[N, 6]`` float64 axis-aligned boxes.

    Raises:
        ValueError: another shape, non-finite values or negative sizes (``where`` names the source).
    """
    try:
        arr = np.asarray(raw, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: boxes must be numbers in [N, 6] or [N, 8, 3]") from None
    if arr.size == 0:
        return np.zeros((0, 6), dtype=np.float64)
    if arr.ndim == 3 and arr.shape[1:] == (8, 3):
        if not np.isfinite(arr).all():
            raise ValueError(f"{where}: box corners contain non-finite values")
        return minmax_to_boxes(arr.min(axis=1), arr.max(axis=1))
    if arr.ndim == 2 and arr.shape[1] == 6:
        return as_boxes(arr, where)
    raise ValueError(f"{where}: expected [N, 6] centre+size boxes or [N, 8, 3] corners, got shape {arr.shape}")


def _scene_entry(uri: str, scene_id: str, entry: Any) -> SceneProposals:
    if not isinstance(entry, Mapping) or "boxes" not in entry:
        raise ProposalFormatError(uri, f"scene {scene_id!r}: expected an object with 'boxes'")
    unknown = sorted(set(entry) - {"boxes", "scores", "labels"})
    if unknown:
        raise ProposalFormatError(uri, f"scene {scene_id!r}: unknown field(s) {unknown}")
    try:
        boxes = boxes_from_any(entry["boxes"], f"scene {scene_id!r} field 'boxes'")
        return SceneProposals(boxes, entry.get("scores"), entry.get("labels"))
    except (TypeError, ValueError) as exc:
        raise ProposalFormatError(uri, f"scene {scene_id!r}: {exc}") from None


def _read_json(uri: str) -> Any:
    try:
        return json.loads(storage.read_bytes(uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProposalFormatError(uri, f"not valid JSON ({exc})") from None


def _load_vidllm(uri: str) -> dict[str, SceneProposals]:
    data = _read_json(uri)
    if not isinstance(data, Mapping) or data.get("format") != VIDLLM_PROPOSALS_FORMAT:
        raise ProposalFormatError(uri, f"expected a JSON object with \"format\": \"{VIDLLM_PROPOSALS_FORMAT}\"")
    if data.get("version") != 1:
        raise ProposalFormatError(uri, f"unsupported version {data.get('version')!r} (expected 1)")
    scenes = data.get("scenes")
    if not isinstance(scenes, Mapping):
        raise ProposalFormatError(uri, "field 'scenes' must be an object {scene_id: {...}}")
    return {str(s): _scene_entry(uri, str(s), e) for s, e in scenes.items()}


def _load_video3dllm(uri: str) -> dict[str, SceneProposals]:
    data = _read_json(uri)
    if not isinstance(data, Mapping):
        raise ProposalFormatError(uri, "expected a JSON object {\"scannet/<scene_id>\": [[cx, cy, cz, dx, dy, dz]]}")
    out: dict[str, SceneProposals] = {}
    for key, boxes in data.items():
        scene_id = str(key).removeprefix("scannet/")
        try:
            out[scene_id] = SceneProposals(boxes_from_any(boxes, f"scene {key!r}"))
        except ValueError as exc:
            raise ProposalFormatError(uri, str(exc)) from None
    return out


def _load_chatscene(uri: str) -> dict[str, SceneProposals]:
    import torch

    try:
        data = torch.load(io.BytesIO(storage.read_bytes(uri)), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for a bad file; name the file
        raise ProposalFormatError(uri, f"not a readable torch file of tensors ({type(exc).__name__}: {exc})"[:400]) \
            from None
    if not isinstance(data, Mapping):
        raise ProposalFormatError(uri, f"expected a dict {{scene_id: {{'locs', 'objects'}}}}, got {type(data).__name__}")
    out: dict[str, SceneProposals] = {}
    for scene_id, entry in data.items():
        if not isinstance(entry, Mapping) or "locs" not in entry:
            raise ProposalFormatError(uri, f"scene {scene_id!r}: expected a dict with 'locs' [N, 6]")
        locs = entry["locs"]
        locs = locs.numpy() if isinstance(locs, torch.Tensor) else locs
        labels = entry.get("objects")
        try:
            boxes = boxes_from_any(locs, f"scene {scene_id!r} field 'locs'")
            out[str(scene_id)] = SceneProposals(boxes, None, None if labels is None else list(labels))
        except (TypeError, ValueError) as exc:
            raise ProposalFormatError(uri, f"scene {scene_id!r}: {exc}") from None
    return out


# --------------------------------------------------------------------------------------------- mask formats
def _aligned_vertices(scans_root: str, scene_id: str, source: str) -> np.ndarray:
    """``[V, 3]`` vertices of the scene's ``_vh_clean_2.ply`` in the axis-aligned frame."""
    from pipelines.scenes.errors import SceneDataError
    from pipelines.scenes.metadata import axis_alignment_from_info, read_ply, read_scene_info

    scene_dir = storage.join(scans_root, "scans", scene_id)
    ply_uri = storage.join(scene_dir, f"{scene_id}_vh_clean_2.ply")
    if not storage.exists(ply_uri):
        raise ProposalFormatError(source, f"scene {scene_id!r}: its mesh {ply_uri} does not exist (scans_root)")
    try:
        mesh = read_ply(ply_uri)
        align = axis_alignment_from_info(read_scene_info(scene_dir, scene_id),
                                         storage.join(scene_dir, f"{scene_id}.txt"))
    except SceneDataError as exc:
        raise ProposalFormatError(source, f"scene {scene_id!r}: {exc}") from None
    homo = np.concatenate([mesh.vertices.astype(np.float64), np.ones((len(mesh.vertices), 1))], axis=1)
    return (homo @ align.T)[:, :3]


def mask_boxes(masks: np.ndarray, vertices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of instance masks over mesh vertices.

    Args:
        masks: ``[N, V]`` (bool or int, non-zero = inside).
        vertices: ``[V, 3]`` vertex positions, axis-aligned frame.

    Returns:
        ``(boxes [M, 6], kept [M])``: the min/max box of every non-empty mask and the indices of those masks.
    """
    masks = np.asarray(masks) != 0
    if masks.ndim != 2 or masks.shape[1] != vertices.shape[0]:
        raise ValueError(f"masks of shape {masks.shape} do not cover the {vertices.shape[0]} mesh vertices")
    kept = np.flatnonzero(masks.any(axis=1))
    boxes = np.zeros((len(kept), 6), dtype=np.float64)
    for j, i in enumerate(kept):
        pts = vertices[masks[i]]
        boxes[j] = minmax_to_boxes(pts.min(axis=0)[None], pts.max(axis=0)[None])[0]
    return boxes, kept


def _list(uri: str, pattern: str) -> list[str]:
    fs, path = storage.filesystem(uri)
    if not fs.isdir(path):
        raise ProposalFormatError(uri, "expected a folder of per-scene proposal files")
    names = sorted(posixpath.basename(p) for p in fs.glob(posixpath.join(path, pattern)))
    return names


def _load_scannet_instance(uri: str, scans_root: str) -> dict[str, SceneProposals]:
    out: dict[str, SceneProposals] = {}
    for name in _list(uri, "*.txt"):
        scene_id = name[: -len(".txt")]
        list_uri = storage.join(uri, name)
        rows = []
        for lineno, line in enumerate(storage.read_bytes(list_uri).decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                rows.append((parts[0], str(int(parts[1])), float(parts[2])))
            except (IndexError, ValueError):
                raise ProposalFormatError(f"{list_uri}:{lineno}", "expected '<mask path> <label id> <confidence>'") \
                    from None
        vertices = _aligned_vertices(scans_root, scene_id, list_uri)
        masks = np.zeros((len(rows), vertices.shape[0]), dtype=bool)
        for i, (rel, _, _) in enumerate(rows):
            mask_uri = storage.join(uri, rel)
            if not storage.exists(mask_uri):
                raise ProposalFormatError(list_uri, f"mask file {mask_uri} does not exist")
            try:
                values = np.array(storage.read_bytes(mask_uri).split(), dtype=np.int64)
            except ValueError:
                raise ProposalFormatError(mask_uri, "a mask file holds one integer per mesh vertex") from None
            if values.shape[0] != vertices.shape[0]:
                raise ProposalFormatError(
                    mask_uri, f"{values.shape[0]} values for the {vertices.shape[0]} vertices of the scene mesh"
                )
            masks[i] = values != 0
        boxes, kept = mask_boxes(masks, vertices)
        out[scene_id] = SceneProposals(boxes, np.array([rows[i][2] for i in kept]), tuple(rows[i][1] for i in kept))
    return out


def _load_leo_masks(uri: str, scans_root: str) -> dict[str, SceneProposals]:
    from scipy import sparse

    suffix = ".mask.npz"
    out: dict[str, SceneProposals] = {}
    for name in _list(uri, f"*{suffix}"):
        scene_id = name[: -len(suffix)]
        mask_uri = storage.join(uri, name)
        try:
            masks = sparse.load_npz(io.BytesIO(storage.read_bytes(mask_uri))).toarray()
        except (ValueError, OSError, KeyError) as exc:
            raise ProposalFormatError(mask_uri, f"not a scipy sparse .npz matrix ({exc})") from None
        vertices = _aligned_vertices(scans_root, scene_id, mask_uri)
        try:
            boxes, _ = mask_boxes(masks, vertices)
        except ValueError as exc:
            raise ProposalFormatError(mask_uri, str(exc)) from None
        out[scene_id] = SceneProposals(boxes)
    return out


def load_proposals(uri: str, fmt: str = "vidllm", scans_root: str = "") -> dict[str, SceneProposals]:
    """Read instance proposals: ``{scene_id: SceneProposals}`` with boxes in the axis-aligned frame.

    Args:
        uri: the proposal file (``vidllm``, ``video3dllm``, ``chatscene``) or folder (mask formats).
        fmt: one of :data:`PROPOSAL_FORMATS` (see the module docstring).
        scans_root: ScanNet root holding ``scans/<scene_id>/`` meshes and ``.txt`` files (mask formats only).

    Raises:
        ProposalFormatError: missing or malformed input; the message names the file.
        ValueError: unknown ``fmt``, or a mask format without ``scans_root``.
    """
    if fmt not in PROPOSAL_FORMATS:
        raise ValueError(f"proposals format must be one of {PROPOSAL_FORMATS}, got {fmt!r}")
    if fmt in MASK_FORMATS and not scans_root:
        raise ValueError(f"proposals format {fmt!r} holds masks: it needs scans_root (the meshes) to build boxes")
    if not storage.exists(uri):
        raise ProposalFormatError(uri, "proposal file does not exist")
    if fmt == "vidllm":
        return _load_vidllm(uri)
    if fmt == "video3dllm":
        return _load_video3dllm(uri)
    if fmt == "chatscene":
        return _load_chatscene(uri)
    if fmt == "scannet_instance":
        return _load_scannet_instance(uri.rstrip("/"), scans_root)
    return _load_leo_masks(uri.rstrip("/"), scans_root)


def write_proposals(uri: str, proposals: Mapping[str, SceneProposals]) -> None:
    """Write proposals in the ``vidllm`` format (local path or fsspec URI)."""
    doc = {"format": VIDLLM_PROPOSALS_FORMAT, "version": 1,
           "scenes": {s: p.to_dict() for s, p in sorted(proposals.items())}}
    storage.write_bytes(uri, json.dumps(doc).encode())
