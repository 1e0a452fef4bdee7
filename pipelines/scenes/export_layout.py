"""The official ScanNet SensReader export: one file per frame and sensor, plus 4x4 intrinsics/extrinsics.

Layout (``python reader.py --export_color_images --export_depth_images --export_poses --export_intrinsics``)::

    <dir>/color/{i}.jpg                      RGB JPEG at the colour size, i = original frame number, not zero-padded
    <dir>/depth/{i}.png                      16-bit greyscale PNG, uint16 millimetres (depth_shift 1000)
    <dir>/pose/{i}.txt                       4x4 camera-to-world, whitespace-separated rows; ``-inf`` = lost pose
    <dir>/intrinsic/intrinsic_color.txt      4x4 with K in the top-left 3x3
    <dir>/intrinsic/intrinsic_depth.txt
    <dir>/intrinsic/extrinsic_color.txt      4x4 (identity in ScanNet; optional for reading)
    <dir>/intrinsic/extrinsic_depth.txt

The export carries no timestamps and no image sizes: ``timestamp_s = i / 30`` (ScanNet's 30 Hz capture rate, ``i``
the file number) and the sizes are read from the first image's header. Frame ``k`` of the reader is the ``k``-th
file number in ascending order; ``Frame.index`` keeps the file number, so exports made with ``--frame_skip`` keep
their original frame numbers.

The per-frame-file machinery here (:class:`PerFrameFilesReader`) is shared with the ``posed_images`` layout.
"""

from __future__ import annotations

import io
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipelines.scenes.errors import (
    CorruptDataError,
    FrameCountMismatchError,
    MissingFileError,
    MissingFrameFileError,
)
from pipelines.scenes.sens import (
    decode_image,
    depth_to_mm,
    encode_jpeg,
    intrinsics_to_4x4,
    mm_to_depth,
    open_for_write,
)
from pipelines.scenes.types import Frame, Intrinsics, SceneReader, pose_is_valid
from pipelines.storage import filesystem, join

EXPORT_FPS = 30.0


# --- small file codecs --------------------------------------------------------------------------------------


def format_matrix(matrix: np.ndarray) -> str:
    """Rows of space-separated numbers with round-trip precision (``-inf`` written as ``-inf``)."""
    return "".join(" ".join(f"{v:.17g}" for v in row) + "\n" for row in np.asarray(matrix, dtype=np.float64))


def parse_matrix(text: bytes | str, uri: str, shape: tuple[int, int] = (4, 4)) -> np.ndarray:
    """Parse a whitespace-separated matrix file; :class:`CorruptDataError` on bad numbers or shape."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        values = np.array([float(tok) for tok in text.split()], dtype=np.float64)
    except ValueError as exc:
        raise CorruptDataError(uri, f"matrix file holds a non-number ({exc})") from exc
    if values.size != shape[0] * shape[1]:
        raise CorruptDataError(
            uri, f"matrix file holds {values.size} numbers, expected {shape[0]}x{shape[1]}"
        )
    return values.reshape(shape)


def encode_depth_png(depth_m: np.ndarray) -> bytes:
    """Metres to a 16-bit greyscale PNG of uint16 millimetres."""
    buf = io.BytesIO()
    Image.fromarray(depth_to_mm(depth_m)).save(buf, format="PNG")
    return buf.getvalue()


def decode_depth_png(data: bytes, uri: str) -> np.ndarray:
    """A 16-bit PNG of millimetres to ``[h, w]`` float32 metres; :class:`CorruptDataError` on bad bytes."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            if img.mode not in ("I;16", "I;16B", "I;16L", "I", "L"):
                raise CorruptDataError(uri, f"depth PNG has mode {img.mode}, expected 16-bit greyscale")
            mm = np.asarray(img)
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, CorruptDataError):
            raise
        raise CorruptDataError(uri, f"cannot decode depth PNG ({exc})") from exc
    return mm_to_depth(mm.astype(np.uint16))


def image_size(uri: str) -> tuple[int, int]:
    """``(width, height)`` of an image, reading only as much of the file as its header needs."""
    fs, path = filesystem(uri)
    try:
        with fs.open(path, "rb", block_size=2**16) as f, Image.open(f) as img:
            return img.size
    except FileNotFoundError as exc:
        raise MissingFileError(uri, "image file does not exist") from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise CorruptDataError(uri, f"cannot read image header ({exc})") from exc


# --- a generic reader for one-file-per-frame layouts --------------------------------------------------------


@dataclass(frozen=True)
class FileLayout:
    """Where a one-file-per-frame layout keeps its files (paths relative to the scene folder).

    ``color``/``depth``/``pose`` are ``(folder, extension)``; ``digits`` zero-pads file numbers (0 = no padding).
    """

    color: tuple[str, str]
    depth: tuple[str, str]
    pose: tuple[str, str]
    color_intrinsic: str
    depth_intrinsic: str
    digits: int
    fps: float = EXPORT_FPS

    def frame_path(self, kind: tuple[str, str], number: int) -> str:
        folder, ext = kind
        name = f"{number:0{self.digits}d}.{ext}" if self.digits else f"{number}.{ext}"
        return posixpath.join(folder, name) if folder else name


EXPORT = FileLayout(
    color=("color", "jpg"),
    depth=("depth", "png"),
    pose=("pose", "txt"),
    color_intrinsic="intrinsic/intrinsic_color.txt",
    depth_intrinsic="intrinsic/intrinsic_depth.txt",
    digits=0,
)


class PerFrameFilesReader(SceneReader):
    """Reads a scene stored as numbered colour/depth/pose files. Opening lists the folders, fetches every pose
    file (one batched request set on object stores) and the headers of the first colour and depth image."""

    def __init__(self, uri: str, layout: FileLayout, scene_id: str | None = None):
        self.uri = uri.rstrip("/")
        self.scene_id = scene_id or self.uri.rsplit("/", 1)[-1]
        self.layout = layout
        self._fs, self._root = filesystem(self.uri)
        if not self._fs.isdir(self._root):
            raise MissingFileError(self.uri, "scene folder does not exist")
        listing: dict[str, list[str]] = {}
        numbers = {}
        for name, kind in (("colour", layout.color), ("depth", layout.depth), ("pose", layout.pose)):
            folder = kind[0]
            if folder not in listing:
                full = posixpath.join(self._root, folder) if folder else self._root
                listing[folder] = self._fs.ls(full, detail=False) if self._fs.isdir(full) else []
            numbers[name] = _numbered(listing[folder], kind[1])
        if not numbers["colour"]:
            raise MissingFileError(self.uri, f"no colour images {layout.frame_path(layout.color, 0)!r} found")
        if not numbers["pose"]:
            raise MissingFileError(self.uri, f"no pose files {layout.frame_path(layout.pose, 0)!r} found")
        self.frame_numbers = sorted(numbers["colour"])
        self.has_depth = bool(numbers["depth"])
        self._check_counts(numbers)

        k_color = self._read_matrix(layout.color_intrinsic)
        k_depth = self._read_matrix(layout.depth_intrinsic)
        first = self.frame_numbers[0]
        cw, ch = image_size(self._uri(layout.frame_path(layout.color, first)))
        self.color_intrinsics = Intrinsics(k_color[:3, :3].copy(), cw, ch)
        if self.has_depth:
            dw, dh = image_size(self._uri(layout.frame_path(layout.depth, first)))
        else:
            dw, dh = (
                cw,
                ch,
            )  # intrinsics still describe the depth camera even when no depth images were exported
        self.depth_intrinsics = Intrinsics(k_depth[:3, :3].copy(), dw, dh)

        pose_paths = [self._path(layout.frame_path(layout.pose, n)) for n in self.frame_numbers]
        texts = self._fs.cat(pose_paths)
        self.poses = np.stack([parse_matrix(texts[p], self._uri_of(p)) for p in pose_paths])
        self.timestamps_s = np.asarray(self.frame_numbers, dtype=np.float64) / layout.fps

    def _path(self, rel: str) -> str:
        return posixpath.join(self._root, rel)

    def _uri(self, rel: str) -> str:
        return join(self.uri, rel)

    def _uri_of(self, path: str) -> str:
        return join(self.uri, posixpath.relpath(path, self._root))

    def _read_matrix(self, rel: str) -> np.ndarray:
        try:
            data = self._fs.cat_file(self._path(rel))
        except FileNotFoundError as exc:
            raise MissingFileError(self._uri(rel), "intrinsics file does not exist") from exc
        return parse_matrix(data, self._uri(rel))

    def _check_counts(self, numbers: dict[str, set[int]]) -> None:
        colour = numbers["colour"]
        others = [("pose", self.layout.pose)] + ([("depth", self.layout.depth)] if numbers["depth"] else [])
        for name, kind in others:
            missing = sorted(colour - numbers[name])
            extra = sorted(numbers[name] - colour)
            counts = f"{len(colour)} colour images vs {len(numbers[name])} {name} files"
            if missing:
                paths = ", ".join(self.layout.frame_path(kind, n) for n in missing[:5])
                raise MissingFrameFileError(
                    self.uri, f"{counts}: missing {paths}{' ...' if len(missing) > 5 else ''}"
                )
            if extra:
                paths = ", ".join(self.layout.frame_path(kind, n) for n in extra[:5])
                raise FrameCountMismatchError(self.uri, f"{counts}: no colour image for {paths}")

    def read_frame(self, index: int) -> Frame:
        if not 0 <= index < self.num_frames:
            raise IndexError(f"{self.uri}: frame {index} out of range [0, {self.num_frames})")
        number = self.frame_numbers[index]
        color_rel = self.layout.frame_path(self.layout.color, number)
        rgb = decode_image(self._cat(color_rel), self._uri(color_rel), f"frame {number} colour")
        if rgb.shape[:2] != (self.color_intrinsics.height, self.color_intrinsics.width):
            raise CorruptDataError(
                self._uri(color_rel),
                f"colour image is {rgb.shape}, the scene's first is "
                f"{self.color_intrinsics.height}x{self.color_intrinsics.width}",
            )
        depth = None
        if self.has_depth:
            depth_rel = self.layout.frame_path(self.layout.depth, number)
            depth = decode_depth_png(self._cat(depth_rel), self._uri(depth_rel))
        pose = self.poses[index].copy()
        return Frame(number, float(self.timestamps_s[index]), rgb, depth, pose, pose_is_valid(pose))

    def _cat(self, rel: str) -> bytes:
        try:
            return self._fs.cat_file(self._path(rel))
        except FileNotFoundError as exc:
            raise MissingFileError(
                self._uri(rel), "frame file disappeared after the scene was opened"
            ) from exc


def _numbered(paths: list[str], ext: str) -> set[int]:
    """File numbers of ``<digits>.<ext>`` entries (other names are ignored)."""
    out = set()
    for p in paths:
        stem, dot, suffix = posixpath.basename(p).rpartition(".")
        if dot and suffix == ext and stem.isdigit():
            out.add(int(stem))
    return out


def write_frame_files(
    dir_uri: str,
    layout: FileLayout,
    color_intrinsics: Intrinsics,
    depth_intrinsics: Intrinsics,
    frames: Iterable[Frame],
    jpeg_quality: int = 95,
    keep: Callable[[Frame], bool] | None = None,
) -> int:
    """Write ``frames`` in ``layout``; returns the number of frames written. Frames without depth get no PNG."""
    k_color, k_depth = intrinsics_to_4x4(color_intrinsics), intrinsics_to_4x4(depth_intrinsics)
    _write_text(join(dir_uri, layout.color_intrinsic), format_matrix(k_color))
    _write_text(join(dir_uri, layout.depth_intrinsic), format_matrix(k_depth))
    cshape = (color_intrinsics.height, color_intrinsics.width, 3)
    dshape = (depth_intrinsics.height, depth_intrinsics.width)
    count = 0
    for frame in frames:
        if keep is not None and not keep(frame):
            continue
        if frame.rgb.shape != cshape:
            raise ValueError(f"{dir_uri}: frame {frame.index} colour is {frame.rgb.shape}, expected {cshape}")
        _write_bytes(
            join(dir_uri, layout.frame_path(layout.color, frame.index)), encode_jpeg(frame.rgb, jpeg_quality)
        )
        if frame.depth_m is not None:
            if frame.depth_m.shape != dshape:
                raise ValueError(
                    f"{dir_uri}: frame {frame.index} depth is {frame.depth_m.shape}, expected {dshape}"
                )
            _write_bytes(
                join(dir_uri, layout.frame_path(layout.depth, frame.index)), encode_depth_png(frame.depth_m)
            )
        _write_text(
            join(dir_uri, layout.frame_path(layout.pose, frame.index)), format_matrix(frame.cam_to_world)
        )
        count += 1
    return count


def _write_bytes(uri: str, data: bytes) -> None:
    with open_for_write(uri) as f:
        f.write(data)


def _write_text(uri: str, text: str) -> None:
    _write_bytes(uri, text.encode("utf-8"))


# --- the export layout --------------------------------------------------------------------------------------


class ExportReader(PerFrameFilesReader):
    """Reader of the official SensReader export folder (see the module docstring)."""

    def __init__(self, uri: str, scene_id: str | None = None):
        super().__init__(uri, EXPORT, scene_id)
        extrinsics = {}
        for name in ("extrinsic_color", "extrinsic_depth"):
            path = self._path(f"intrinsic/{name}.txt")
            if self._fs.exists(path):
                extrinsics[name] = parse_matrix(self._fs.cat_file(path), self._uri(f"intrinsic/{name}.txt"))
        self.extrinsics = extrinsics


def write_export(
    dir_uri: str,
    color_intrinsics: Intrinsics,
    depth_intrinsics: Intrinsics,
    frames: Iterable[Frame],
    jpeg_quality: int = 95,
) -> int:
    """Write ``frames`` as a SensReader export under ``dir_uri`` (file numbers = ``frame.index``).

    Args:
        dir_uri: the export folder (``.../scans/<scene_id>/export``).
        color_intrinsics: colour camera; ``frame.rgb`` must match its size.
        depth_intrinsics: depth camera; ``frame.depth_m`` (metres) must match its size.
        frames: frames to write; poses are written with round-trip precision, ``-inf`` kept.
        jpeg_quality: JPEG quality of the colour images.

    Returns:
        The number of frames written.
    """
    for name in ("extrinsic_color", "extrinsic_depth"):
        _write_text(join(dir_uri, f"intrinsic/{name}.txt"), format_matrix(np.eye(4)))
    return write_frame_files(dir_uri, EXPORT, color_intrinsics, depth_intrinsics, frames, jpeg_quality)
