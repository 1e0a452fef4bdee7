"""Raw ScanNet ``.sens`` files (SensorData version 4): a random-access reader and a byte-exact writer.

Layout (all little-endian, as written by ScanNet's ``SensorData``; see ``docs/formats.md``)::

    uint32 version (= 4) | uint64 strlen | sensor_name[strlen]
    float32[4x4] intrinsic_color | extrinsic_color | intrinsic_depth | extrinsic_depth   (row-major)
    int32 color_compression_type (2 = JPEG) | int32 depth_compression_type (1 = zlib_ushort)
    uint32 color_width, color_height, depth_width, depth_height | float32 depth_shift | uint64 num_frames
    per frame: float32[4x4] camera_to_world | uint64 timestamp_color, timestamp_depth (microseconds)
               uint64 color_size_bytes, depth_size_bytes | color bytes | depth bytes

Files written by the C++ tools may carry IMU records after the last frame; they are ignored.

A :class:`SensReader` gets the frame index (poses, offsets) from a sidecar index file when there is one, else from
one sequential download of a file on object storage, else by seeking over a local file's frame headers; see the
class. Random reads go through an fsspec file without read-ahead (``cache_type="none"``): with s3fs's default 5 MiB
read-ahead every small read would fetch megabytes of image data.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import posixpath
import struct
import tempfile
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from pipelines.scenes.errors import (
    CorruptDataError,
    MissingFileError,
    TruncatedFileError,
    UnsupportedCompressionError,
    UnsupportedVersionError,
)
from pipelines.scenes.types import Frame, Intrinsics, SceneReader, pose_is_valid
from pipelines.storage import filesystem, read_bytes, write_bytes

SENS_VERSION = 4
COLOR_COMPRESSION = {-1: "unknown", 0: "raw", 1: "png", 2: "jpeg"}
DEPTH_COMPRESSION = {-1: "unknown", 0: "raw_ushort", 1: "zlib_ushort", 2: "occi_ushort"}
_SUPPORTED_COLOR = {0, 1, 2}
_SUPPORTED_DEPTH = {0, 1}
_FRAME_HEADER = struct.Struct(
    "<16f4Q"
)  # camera_to_world, timestamp_color, timestamp_depth, color/depth sizes
DEFAULT_FPS = 30.0  # ScanNet's capture rate, used when a file carries no timestamps
DEFAULT_SENSOR_NAME = "StructureSensor"
INDEX_SUFFIX = ".index.npz"
INDEX_FORMAT = 1
_INDEX_KEYS = ("format", "size", "version", "header", "offsets", "sizes", "poses", "stamps")

log = logging.getLogger(__name__)


# --- codecs shared by the ScanNet layouts -------------------------------------------------------------------


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an ``[H, W, 3]`` uint8 RGB image as baseline JPEG (4:2:0, like ScanNet's capture app)."""
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"colour image must be [H, W, 3] uint8, got {rgb.shape} {rgb.dtype}")
    buf = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def decode_image(data: bytes, uri: str, what: str) -> np.ndarray:
    """Decode a JPEG/PNG colour image to ``[H, W, 3]`` uint8 RGB; raise :class:`CorruptDataError` on bad bytes."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            img.load()
            return np.asarray(img.convert("RGB"))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise CorruptDataError(uri, f"{what}: cannot decode colour image ({exc})") from exc


def depth_to_mm(depth_m: np.ndarray, depth_shift: float = 1000.0) -> np.ndarray:
    """Metres (float, 0 or non-finite = no measurement) to ScanNet's uint16 units (millimetres for shift 1000)."""
    depth = np.nan_to_num(np.asarray(depth_m, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return np.clip(np.rint(depth * depth_shift), 0, np.iinfo(np.uint16).max).astype(np.uint16)


def mm_to_depth(depth_mm: np.ndarray, depth_shift: float = 1000.0) -> np.ndarray:
    """ScanNet's uint16 depth units to float32 metres."""
    return (np.asarray(depth_mm, dtype=np.float32) / np.float32(depth_shift)).astype(np.float32)


def intrinsics_to_4x4(intr: Intrinsics) -> np.ndarray:
    """ScanNet stores ``K`` in the top-left 3x3 of an otherwise-identity 4x4 matrix."""
    m = np.eye(4)
    m[:3, :3] = np.asarray(intr.matrix, dtype=np.float64)
    return m


def open_for_write(uri: str):
    """Open ``uri`` for binary writing, creating parent folders on local filesystems (object stores have none)."""
    fs, path = filesystem(uri)
    if _is_local(fs):
        fs.makedirs(posixpath.dirname(path), exist_ok=True)
    return fs.open(path, "wb")


def _is_local(fs) -> bool:
    protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
    return "file" in protocols or "local" in protocols


# --- reader -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SensHeader:
    """The fixed header of a ``.sens`` file (matrices as stored, float32 promoted to float64)."""

    version: int
    sensor_name: str
    intrinsic_color: np.ndarray
    extrinsic_color: np.ndarray
    intrinsic_depth: np.ndarray
    extrinsic_depth: np.ndarray
    color_compression: int
    depth_compression: int
    color_width: int
    color_height: int
    depth_width: int
    depth_height: int
    depth_shift: float
    num_frames: int
    size_bytes: int  # bytes the header occupies


class SensReader(SceneReader):
    """Random access to the frames of a ScanNet ``.sens`` file at a local path or URI.

    Opening needs every frame's pose (to skip frames with lost tracking) and offset, which are spread over the
    whole file between the payloads. Where they come from, cheapest first:

    1. The sidecar index ``<file>.index.npz`` (:func:`index_uri`), when present and matching the file (size and
       ETag/mtime): one GET, and then each frame costs one range GET (colour and depth are contiguous).
    2. Otherwise, for a file on object storage (``spool=None`` default): one sequential download (a single GET) into
       a local spool file, unlinked at once and gone when the reader closes; every later read is local. That is
       the cost of a whole-scene sample, whose frames lie all over the file anyway, instead of a request per frame
       header.
    3. Otherwise (local files, or ``spool=False``): seek from frame header to frame header reading 96 bytes each.

    Before any of these, one listing of the file's folder gives its size and version and tells whether a sidecar
    exists (on S3 one LIST, often already cached by layout detection). With ``write_index=True`` a reader that had
    to scan writes the sidecar (one PUT), so later opens take route 1. A sidecar that cannot be written (read-only
    storage) is skipped with a warning.

    Attributes (besides :class:`SceneReader`'s):
        header: the parsed :class:`SensHeader`.
        timestamps_us: ``[N, 2]`` uint64 raw colour/depth timestamps in microseconds.
        frame_offsets: ``[N]`` int64 byte offset of each frame record.
        index_source: ``"sidecar"`` or ``"scan"`` (where the frame index came from).
        spooled: whether the file was downloaded into a local spool file.

    ``timestamps_s`` are colour timestamps relative to the first frame; files whose timestamps are all zero (some
    ScanNet scans) get ``index / 30`` seconds.
    """

    def __init__(self, uri: str, scene_id: str | None = None, block_size: int = 2**16, spool: bool | None = None,
                 spool_dir: str = "", write_index: bool = False):
        self.uri = uri
        self.scene_id = scene_id or _stem(uri)
        fs, path = filesystem(uri)
        # One listing of the folder gives the file's size and version and tells whether a sidecar index exists
        # (on object stores: one LIST, often already cached by the layout detection, instead of two HEADs).
        try:
            listing = {e["name"].rstrip("/"): e for e in fs.ls(posixpath.dirname(path), detail=True)}
        except FileNotFoundError:
            listing = {}
        info = listing.get(path.rstrip("/"), {})
        if info.get("type") != "file":
            raise MissingFileError(uri, ".sens file does not exist")
        self._size = int(info["size"])
        self._version = _object_version(info)
        self._bytes_read = 0
        index = self._read_sidecar() if path + INDEX_SUFFIX in listing else None
        self.index_source = "sidecar" if index is not None else "scan"
        self.spooled = bool(spool) if spool is not None else index is None and not _is_local(fs)
        if self.spooled:
            self._file = _spool(fs, path, spool_dir)
            self._bytes_read = self._size
            self._source = None
        else:
            # The size is known already: passing it saves object stores a metadata request per open.
            self._file = fs.open(path, "rb", block_size=block_size, cache_type="none", size=self._size)
            self._source = (fs, path)
        try:
            if index is not None:
                self.header = self._read_header(io.BytesIO(index["header"].tobytes()), count=False)
                self._set_index(index["offsets"], index["sizes"], index["poses"], index["stamps"])
            else:
                self.header = self._read_header(self._file, count=not self.spooled)
                self._index_frames()
                if write_index:
                    self._write_sidecar()
        except BaseException:
            self._file.close()
            raise
        h = self.header
        self.color_intrinsics = Intrinsics(h.intrinsic_color[:3, :3].copy(), h.color_width, h.color_height)
        self.depth_intrinsics = Intrinsics(h.intrinsic_depth[:3, :3].copy(), h.depth_width, h.depth_height)

    # The file handle is the only resource; fsspec files are not thread-safe, so share a reader per thread only.
    def close(self) -> None:
        self._file.close()

    @property
    def bytes_read(self) -> int:
        """Bytes this reader has read from the file's storage so far (the whole file once when spooled)."""
        return self._bytes_read

    def _read_exact(self, f, n: int, what: str, count: bool = True) -> bytes:
        pos = f.tell()
        data = f.read(n)
        if count:
            self._bytes_read += len(data)
        if len(data) != n:
            raise TruncatedFileError(
                self.uri,
                f"file ends at byte {pos + len(data)} while reading {what} ({n} bytes at offset {pos})",
            )
        return data

    def _read_header(self, f, count: bool) -> SensHeader:
        if self._size == 0:
            raise TruncatedFileError(self.uri, "file is empty (0 bytes), expected a .sens header")
        (version,) = struct.unpack("<I", self._read_exact(f, 4, "header version", count))
        if version != SENS_VERSION:
            raise UnsupportedVersionError(
                self.uri, f".sens version {version}, this reader implements {SENS_VERSION}"
            )
        (strlen,) = struct.unpack("<Q", self._read_exact(f, 8, "header sensor-name length", count))
        if strlen > self._size:
            raise TruncatedFileError(
                self.uri, f"sensor-name length {strlen} exceeds the file size {self._size}"
            )
        name = self._read_exact(f, strlen, "header sensor name", count).decode("utf-8", errors="replace")
        rest = struct.Struct("<64f2i4If Q")
        vals = rest.unpack(self._read_exact(f, rest.size, "header matrices and sizes", count))
        mats = [
            np.asarray(vals[i * 16 : (i + 1) * 16], dtype=np.float32).reshape(4, 4).astype(np.float64)
            for i in range(4)
        ]
        color_c, depth_c, cw, ch, dw, dh, shift, n = vals[64:]
        if color_c not in _SUPPORTED_COLOR:
            raise UnsupportedCompressionError(
                self.uri,
                f"colour compression {color_c} ({COLOR_COMPRESSION.get(color_c, 'invalid')}) not supported",
            )
        if depth_c not in _SUPPORTED_DEPTH:
            raise UnsupportedCompressionError(
                self.uri,
                f"depth compression {depth_c} ({DEPTH_COMPRESSION.get(depth_c, 'invalid')}) not supported",
            )
        if min(cw, ch, dw, dh) == 0 or not shift > 0:
            raise CorruptDataError(
                self.uri, f"header has image sizes {cw}x{ch}/{dw}x{dh} and depth_shift {shift}"
            )
        return SensHeader(
            version, name, *mats, color_c, depth_c, cw, ch, dw, dh, float(shift), int(n), f.tell()
        )

    def _index_frames(self) -> None:
        n = self.header.num_frames
        offsets = np.zeros(n, dtype=np.int64)
        sizes = np.zeros((n, 2), dtype=np.int64)
        poses = np.zeros((n, 4, 4), dtype=np.float32)
        stamps = np.zeros((n, 2), dtype=np.uint64)
        pos = self.header.size_bytes
        for i in range(n):
            if pos + _FRAME_HEADER.size > self._size:
                raise TruncatedFileError(
                    self.uri,
                    f"frame {i} of {n}: record header at offset {pos} runs past the end ({self._size} bytes)",
                )
            self._file.seek(pos)
            vals = _FRAME_HEADER.unpack(
                self._read_exact(self._file, _FRAME_HEADER.size, f"frame {i} header", not self.spooled))
            poses[i] = np.asarray(vals[:16], dtype=np.float32).reshape(4, 4)
            stamps[i] = vals[16:18]
            sizes[i] = vals[18:20]
            offsets[i] = pos
            pos += _FRAME_HEADER.size + int(vals[18]) + int(vals[19])
            if pos > self._size:
                raise TruncatedFileError(
                    self.uri,
                    f"frame {i} of {n}: payload ends at offset {pos} past the end ({self._size} bytes)",
                )
        self._set_index(offsets, sizes, poses, stamps)

    def _set_index(self, offsets: np.ndarray, sizes: np.ndarray, poses: np.ndarray, stamps: np.ndarray) -> None:
        """Install the frame index; ``poses`` are the stored float32 values (``-inf`` kept)."""
        n = self.header.num_frames
        self.frame_offsets = offsets
        self._payload_sizes = sizes
        self._stored_poses = poses
        self.poses = poses.astype(np.float64)
        self.timestamps_us = stamps
        if n and stamps[:, 0].any():
            self.timestamps_s = (stamps[:, 0].astype(np.float64) - float(stamps[0, 0])) / 1e6
        else:
            self.timestamps_s = np.arange(n, dtype=np.float64) / DEFAULT_FPS

    def _read_sidecar(self) -> dict[str, np.ndarray] | None:
        """The sidecar index, or None when it is unreadable or describes another version of the file."""
        try:
            data = read_bytes(index_uri(self.uri))
        except FileNotFoundError:
            return None
        except OSError as exc:  # e.g. no read permission on the sidecar: the file itself is still readable
            log.warning("%s: cannot read the sidecar index (%s)", self.uri, exc)
            return None
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as npz:
                index = {k: npz[k] for k in _INDEX_KEYS}
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            log.warning("%s: ignoring unreadable sidecar index (%s)", self.uri, exc)
            return None
        n = len(index["offsets"])
        fits = (
            int(index["format"]) == INDEX_FORMAT
            and int(index["size"]) == self._size
            and str(index["version"]) == self._version
            and index["sizes"].shape == (n, 2) and index["poses"].shape == (n, 4, 4) and index["stamps"].shape == (n, 2)
            and (n == 0 or int(index["offsets"][-1]) + _FRAME_HEADER.size + int(index["sizes"][-1].sum()) <= self._size)
        )
        if not fits:
            log.info("%s: the sidecar index describes another version of the file; scanning instead", self.uri)
            return None
        return index

    def _write_sidecar(self) -> None:
        """Write ``<file>.index.npz`` (header bytes, offsets, payload sizes, stored poses, timestamps)."""
        self._file.seek(0)
        header = np.frombuffer(self._read_exact(self._file, self.header.size_bytes, "header", not self.spooled),
                               np.uint8)
        buf = io.BytesIO()
        np.savez(buf, format=np.int64(INDEX_FORMAT), size=np.int64(self._size), version=np.str_(self._version),
                 header=header, offsets=self.frame_offsets, sizes=self._payload_sizes, poses=self._stored_poses,
                 stamps=self.timestamps_us)
        try:
            write_bytes(index_uri(self.uri), buf.getvalue())
        except OSError as exc:  # the index is an optimisation: read-only storage still reads correctly
            log.warning("%s: cannot write the sidecar index (%s)", self.uri, exc)

    def read_raw(self, index: int) -> tuple[bytes, bytes]:
        """The compressed colour and depth payloads of frame ``index`` (one range read: they are contiguous)."""
        if not 0 <= index < self.num_frames:
            raise IndexError(f"{self.uri}: frame {index} out of range [0, {self.num_frames})")
        start = int(self.frame_offsets[index]) + _FRAME_HEADER.size
        csize, dsize = (int(s) for s in self._payload_sizes[index])
        self._file.seek(start)
        data = self._read_exact(self._file, csize + dsize, f"frame {index} payloads", not self.spooled)
        return data[:csize], data[csize:]

    def read_frame(self, index: int) -> Frame:
        return self._decode(index, *self.read_raw(index))

    def __iter__(self) -> Iterator[Frame]:
        """All frames in order: from the spool file when spooled, else through one sequential, read-ahead stream
        (a few large range requests instead of one per frame)."""
        if self.spooled:
            stream = contextlib.nullcontext(self._file)
        else:
            fs, path = self._source
            stream = fs.open(path, "rb", block_size=2**23, cache_type="readahead", size=self._size)
        with stream as f:
            for i in range(self.num_frames):
                csize, dsize = (int(s) for s in self._payload_sizes[i])
                f.seek(int(self.frame_offsets[i]) + _FRAME_HEADER.size)
                data = f.read(csize + dsize)
                if len(data) != csize + dsize:
                    raise TruncatedFileError(self.uri, f"frame {i}: payload shorter than its header says")
                yield self._decode(i, data[:csize], data[csize:])

    def _decode(self, index: int, color_bytes: bytes, depth_bytes: bytes) -> Frame:
        h = self.header
        where = f"frame {index}"
        if h.color_compression == 0:
            rgb = _raw_array(
                color_bytes, np.uint8, (h.color_height, h.color_width, 3), self.uri, f"{where} colour"
            )
        else:
            rgb = decode_image(color_bytes, self.uri, f"{where} colour")
        if rgb.shape != (h.color_height, h.color_width, 3):
            raise CorruptDataError(
                self.uri,
                f"{where}: colour image is {rgb.shape}, header says {h.color_height}x{h.color_width}",
            )
        if h.depth_compression == 1:
            try:
                depth_bytes = zlib.decompress(depth_bytes)
            except zlib.error as exc:
                raise CorruptDataError(self.uri, f"{where}: depth zlib stream is corrupt ({exc})") from exc
        depth_mm = _raw_array(depth_bytes, "<u2", (h.depth_height, h.depth_width), self.uri, f"{where} depth")
        pose = self.poses[index].copy()
        return Frame(
            index=index,
            timestamp_s=float(self.timestamps_s[index]),
            rgb=rgb,
            depth_m=mm_to_depth(depth_mm, h.depth_shift),
            cam_to_world=pose,
            valid=pose_is_valid(pose),
        )


def index_uri(uri: str) -> str:
    """Where the sidecar index of the ``.sens`` file at ``uri`` lives: ``<uri>.index.npz``."""
    return uri + INDEX_SUFFIX


def _object_version(info: dict) -> str:
    """What tells one version of a file from another besides its size: the ETag on object stores, else mtime."""
    return str(info.get("ETag") or info.get("mtime") or "")


def _spool(fs, path: str, spool_dir: str):
    """Download ``path`` (one GET) into a local file, open it, and unlink it at once: the open handle keeps the
    bytes until it is closed, so no spool file outlives its reader, even after a crash."""
    fd, local = tempfile.mkstemp(prefix="vidllm-sens-", suffix=".sens", dir=spool_dir or None)
    os.close(fd)
    try:
        fs.get_file(path, local)
        return open(local, "rb")  # noqa: SIM115 - the reader owns and closes the handle
    finally:
        os.unlink(local)


def _raw_array(data: bytes, dtype, shape: tuple[int, ...], uri: str, what: str) -> np.ndarray:
    expected = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if len(data) != expected:
        raise CorruptDataError(uri, f"{what}: {len(data)} bytes, expected {expected} for shape {shape}")
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(np.dtype(dtype).newbyteorder("="))


def _stem(uri: str) -> str:
    name = uri.rstrip("/").rsplit("/", 1)[-1]
    return name[: -len(".sens")] if name.endswith(".sens") else name


# --- writer -------------------------------------------------------------------------------------------------


def write_sens(
    uri: str,
    color_intrinsics: Intrinsics,
    depth_intrinsics: Intrinsics,
    frames: Iterable[Frame],
    num_frames: int,
    jpeg_quality: int = 95,
    sensor_name: str = DEFAULT_SENSOR_NAME,
) -> int:
    """Write a ScanNet ``.sens`` v4 file, streaming frame by frame (the header needs ``num_frames`` up front).

    Colour is JPEG (type 2), depth zlib-compressed uint16 millimetres (type 1, ``depth_shift`` 1000), extrinsics
    identity, intrinsics ``K`` in the top-left of a 4x4. Poses are stored as float32 exactly as given, ``-inf``
    included. Timestamps are ``round(timestamp_s * 1e6)`` microseconds for both colour and depth.

    Args:
        uri: destination path or URI (``s3://`` uploads in multipart chunks).
        color_intrinsics: colour camera; every ``frame.rgb`` must be ``[height, width, 3]`` uint8.
        depth_intrinsics: depth camera; every ``frame.depth_m`` must be ``[height, width]`` metres.
        frames: the frames, in stream order.
        num_frames: how many frames ``frames`` yields (checked).
        jpeg_quality: JPEG quality 1-95.
        sensor_name: the header's sensor name.

    Returns:
        The number of bytes written.
    """
    if num_frames < 0:
        raise ValueError(f"num_frames must be >= 0, got {num_frames}")
    name = sensor_name.encode("utf-8")
    header = bytearray(struct.pack("<IQ", SENS_VERSION, len(name)) + name)
    for m in (intrinsics_to_4x4(color_intrinsics), np.eye(4), intrinsics_to_4x4(depth_intrinsics), np.eye(4)):
        header += np.asarray(m, dtype="<f4").tobytes()
    header += struct.pack(
        "<2i4IfQ",
        2,
        1,
        color_intrinsics.width,
        color_intrinsics.height,
        depth_intrinsics.width,
        depth_intrinsics.height,
        1000.0,
        num_frames,
    )
    cshape = (color_intrinsics.height, color_intrinsics.width, 3)
    dshape = (depth_intrinsics.height, depth_intrinsics.width)
    try:
        written, count = _write_records(uri, bytes(header), frames, num_frames, cshape, dshape, jpeg_quality)
        if count != num_frames:
            raise ValueError(f"{uri}: header promised num_frames={num_frames} but frames yielded {count}")
    except BaseException:
        # Never leave a .sens whose header disagrees with its records (object stores upload on close anyway).
        fs, path = filesystem(uri)
        if fs.exists(path):
            fs.rm(path)
        raise
    return written


def _write_records(uri, header, frames, num_frames, cshape, dshape, jpeg_quality) -> tuple[int, int]:
    written = count = 0
    with open_for_write(uri) as f:
        f.write(header)
        written += len(header)
        for frame in frames:
            if count >= num_frames:
                raise ValueError(f"{uri}: frames yielded more than num_frames={num_frames}")
            if frame.rgb.shape != cshape:
                raise ValueError(f"{uri}: frame {frame.index} colour is {frame.rgb.shape}, expected {cshape}")
            if frame.depth_m is None or frame.depth_m.shape != dshape:
                got = None if frame.depth_m is None else frame.depth_m.shape
                raise ValueError(f"{uri}: frame {frame.index} depth is {got}, expected {dshape}")
            color = encode_jpeg(frame.rgb, jpeg_quality)
            depth = zlib.compress(depth_to_mm(frame.depth_m).astype("<u2").tobytes())
            stamp = round(frame.timestamp_s * 1e6)
            if stamp < 0:
                raise ValueError(f"{uri}: frame {frame.index} has a negative timestamp {frame.timestamp_s}")
            pose = np.asarray(frame.cam_to_world, dtype="<f4").reshape(16).tobytes()
            record = pose + struct.pack("<4Q", stamp, stamp, len(color), len(depth))
            f.write(record)
            f.write(color)
            f.write(depth)
            written += len(record) + len(color) + len(depth)
            count += 1
    return written, count
