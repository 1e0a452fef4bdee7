"""The shard contract: what a CLIP sample and a TRAINING sample hold, and how they are encoded in WebDataset tars.

Every stage encodes and decodes through this module; nothing else knows field names or dtypes.

Keys and names
    ``__key__`` is ``<scene_id>-c<clip:04d>`` (e.g. ``scene0000_00-c0003``); scene ids must not contain dots or
    slashes because WebDataset splits a member name at the first dot of its basename. Shards are
    ``clips-000000.tar`` (ingest) and ``train-000000.tar`` (teachers), numbered in sorted scene-id order.

Fields of a CLIP sample (``S`` frames, ``H x W`` output resolution, both multiples of the patch size)
    * ``frames.npy``: uint8 ``[S, H, W, 3]`` RGB, or, with the ``jpeg`` codec, one ``frameNNN.jpg`` per frame
      (``NNN`` = position in the clip, 3 digits).
    * ``depth_mm.zlib`` (default; zlib level 6 of the ``.npy`` bytes) or ``depth_mm.npy``: uint16 ``[S, H, W]``
      depth in millimetres (0 = no measurement), resampled with nearest neighbour onto the colour pixels. ScanNet
      depth is uint16 mm at the source, so this is lossless for it; :func:`decode_clip_sample` returns float32
      metres.
    * ``cam_to_world.npy``: float64 ``[S, 4, 4]`` raw camera-to-world poses (ScanNet world frame, OpenCV axes).
    * ``extrinsics.npy``: float32 ``[S, 3, 4]`` camera-from-world with world = the clip's FIRST camera (metres),
      so ``extrinsics[0] == [I | 0]``.
    * ``intrinsics.npy``: float32 ``[S, 3, 3]`` pinhole ``K`` in pixels of the output frames.
    * ``boxes.json``: ``{"axis_alignment": 4x4, "objects": [{"object_id", "label", "center", "size",
      "center_first_cam", "size_first_cam"}]}``; ``center``/``size`` are the box in the scene's axis-aligned frame,
      ``*_first_cam`` the axis-aligned box (AABB) of its 8 corners mapped into the first-camera frame
      (``inv(cam_to_world[0]) @ inv(axis_alignment)``), which is looser than the box when the camera is rotated
      about a non-vertical axis.
    * ``annotations.json``: the scene's entries of each annotation set, ``{set_name: [entry, ...]}``.
    * ``meta.json``: scene id, clip index, source frame indices, timestamps, source URI, layout, schema version,
      config hash, output and source sizes.

Extra fields of a TRAINING sample (``P = (H/14) * (W/14)`` patches, ``Cg``/``Cs`` teacher widths)
    * ``teacher_geo.npy``: float16 ``[S, P, Cg]`` geometry-teacher patch tokens (codec ``fp16``), or
      ``teacher_geo.int8.npy`` int8 ``[S, P, Cg]`` + ``teacher_geo_scale.npy`` float32 ``[S, P]`` (codec ``int8``,
      symmetric per-token absmax: ``value = q * scale``).
    * ``teacher_sem.npy``: float16 ``[S, Cs]`` semantic-teacher pooled features per frame.
    * ``teacher.json``: teacher identities, patch grid, widths, codec, the teachers config hash and the clips one.

Measured codec costs (``python bench/bench_shard_codecs.py``, 2 cores; tokens = tiny random DINOv2-with-registers outputs,
``[32, 999, 64]``; relative error = ``||x - x'|| / ||x||`` vs fp32):

    ================  ===================  =================  ==========================
    codec             bytes / token value  relative L2 error  max abs error / token absmax
    ================  ===================  =================  ==========================
    fp16              2.00                 2.1e-4             4.8e-4
    int8 + fp32 scale 1.06 (1 + 4/64)      5.9e-3             3.9e-3
    ================  ===================  =================  ==========================

Frames and depth, measured on a synthetic ScanNet-size scene (1296x968 colour, 640x480 depth) resized to
686x518, one 32-frame clip (``python bench/bench_shard_codecs.py --scene <scans/sceneXXXX_YY>``; synthetic rooms are
smoother than real scans, so real JPEGs and depth compress less):

    ================  ==========  =========================
    field / codec     MB / clip   error
    ================  ==========  =========================
    frames npy        34.1        lossless
    frames jpeg q95   1.93        PSNR 49.9 dB (mean abs 0.37)
    frames jpeg q90   1.36        PSNR 47.3 dB
    depth npy         22.7        lossless
    depth zlib-6      3.11        lossless
    ================  ==========  =========================

``jpeg`` q95 (17x smaller, decode 4 ms/frame) and ``zlib`` depth (7x smaller) are the defaults.

At production width (DINOv2-L, 1024 channels) a 32-frame clip costs 65.5 MB in fp16 and 32.9 MB in int8 at
518x378 (999 patches per frame, ``resize_side="long"``), and 119 MB / 60 MB at 686x518 (1813 patches, the default
shorter-side-518 resize). int8 is the teachers job's DEFAULT (``TeachersConfig.token_codec``): ``bench/bench_codec.py``
trained Stage 1 on both from the same clips (real DINOv2-S tokens) and int8 changed neither the held-out distillation
losses nor the student's features beyond the run-to-run noise of another batch order; a student matching the int8
targets exactly would lose 6e-5 of L_geo against the fp16 ones. fp16 stays available for exact comparisons.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import IO, Any

import numpy as np
from PIL import Image

SCHEMA_VERSION = 1
CLIP_SHARD_PREFIX = "clips"
TRAIN_SHARD_PREFIX = "train"
FRAME_CODECS = ("npy", "jpeg")
DEPTH_CODECS = ("zlib", "npy")
TOKEN_CODECS = ("fp16", "int8")
_FRAME_JPG = re.compile(r"^frame(\d{3})\.jpg$")
_SCENE_ID = re.compile(r"^[A-Za-z0-9_\-]+$")


class SchemaError(ValueError):
    """A sample violates the shard contract (missing field, wrong dtype/shape, bad key)."""

    def __init__(self, where: str, problem: str):
        self.where = where
        self.problem = problem
        super().__init__(f"{where}: {problem}")


def sample_key(scene_id: str, clip_index: int) -> str:
    """``<scene_id>-c<clip:04d>``; the scene id must be dot- and slash-free."""
    if not _SCENE_ID.match(scene_id):
        raise SchemaError(scene_id, "scene id must match [A-Za-z0-9_-]+ (no dots or slashes) to be a WebDataset key")
    if clip_index < 0:
        raise SchemaError(scene_id, f"clip index must be >= 0, got {clip_index}")
    return f"{scene_id}-c{clip_index:04d}"


def split_key(key: str) -> tuple[str, int]:
    """Inverse of :func:`sample_key`: ``(scene_id, clip_index)``."""
    scene_id, sep, clip = key.rpartition("-c")
    if not sep or not clip.isdigit():
        raise SchemaError(key, "not a sample key of the form <scene_id>-c<clip>")
    return scene_id, int(clip)


def shard_name(prefix: str, index: int) -> str:
    """``clips-000000.tar`` / ``train-000000.tar``."""
    return f"{prefix}-{index:06d}.tar"


def config_hash(config: Mapping[str, Any]) -> str:
    """sha256 (first 16 hex digits) of the canonical JSON of a resolved config."""
    blob = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


@dataclass
class ClipSample:
    """One clip as arrays (see the module docstring for frames, units and shapes)."""

    key: str
    frames: np.ndarray  # [S, H, W, 3] uint8
    depth_m: np.ndarray  # [S, H, W] float32 metres, 0 = invalid
    cam_to_world: np.ndarray  # [S, 4, 4] float64
    extrinsics: np.ndarray  # [S, 3, 4] float32, world = first camera
    intrinsics: np.ndarray  # [S, 3, 3] float32
    boxes: dict[str, Any]
    annotations: dict[str, list]
    meta: dict[str, Any]

    def __post_init__(self) -> None:
        s = self.frames.shape[0] if self.frames.ndim == 4 else -1
        if self.frames.dtype != np.uint8 or self.frames.ndim != 4 or self.frames.shape[-1] != 3:
            raise SchemaError(self.key, f"frames must be uint8 [S,H,W,3], got {self.frames.dtype} {self.frames.shape}")
        expected = {
            "depth_m": (s, *self.frames.shape[1:3]),
            "cam_to_world": (s, 4, 4),
            "extrinsics": (s, 3, 4),
            "intrinsics": (s, 3, 3),
        }
        for name, shape in expected.items():
            if getattr(self, name).shape != shape:
                raise SchemaError(self.key, f"{name} must have shape {shape}, got {getattr(self, name).shape}")

    @property
    def num_frames(self) -> int:
        return int(self.frames.shape[0])

    def boxes_first_cam(self) -> tuple[np.ndarray, np.ndarray]:
        """``([T, 6] float32 centre+size in the first-camera frame, [T] int64 object ids)``."""
        objs = self.boxes.get("objects", [])
        arr = np.array([o["center_first_cam"] + o["size_first_cam"] for o in objs], np.float32).reshape(-1, 6)
        return arr, np.array([o["object_id"] for o in objs], np.int64)


@dataclass
class TrainingSample(ClipSample):
    """A clip plus its teacher targets, decoded to float32."""

    teacher_geo: np.ndarray = field(default_factory=lambda: np.zeros((0, 0, 0), np.float32))  # [S, P, Cg]
    teacher_sem: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # [S, Cs]
    teacher: dict[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- array codecs
def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def npy_load(data: bytes, where: str = "npy") -> np.ndarray:
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise SchemaError(where, f"not a valid .npy payload ({err})") from err


def json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def jpeg_bytes(rgb: np.ndarray, quality: int) -> bytes:
    buf = io.BytesIO()
    # Fixed encoder settings (no optimize/progressive passes that depend on library defaults) keep bytes reproducible.
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def jpeg_load(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"))


def quantize_tokens(tokens: np.ndarray, codec: str) -> dict[str, np.ndarray]:
    """Encode teacher tokens ``[..., C]`` with ``fp16`` or ``int8`` (per-token symmetric absmax scale)."""
    tokens = np.asarray(tokens, np.float32)
    if codec == "fp16":
        return {"teacher_geo.npy": tokens.astype(np.float16)}
    if codec == "int8":
        scale = np.abs(tokens).max(axis=-1) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        q = np.clip(np.rint(tokens / scale[..., None]), -127, 127).astype(np.int8)
        return {"teacher_geo.int8.npy": q, "teacher_geo_scale.npy": scale}
    raise SchemaError("teacher_geo", f"unknown token codec {codec!r}; expected one of {TOKEN_CODECS}")


def dequantize_tokens(fields: Mapping[str, np.ndarray]) -> np.ndarray:
    """Inverse of :func:`quantize_tokens`, returning float32."""
    if "teacher_geo.npy" in fields:
        return np.asarray(fields["teacher_geo.npy"], np.float32)
    if "teacher_geo.int8.npy" in fields and "teacher_geo_scale.npy" in fields:
        q = np.asarray(fields["teacher_geo.int8.npy"], np.float32)
        return q * np.asarray(fields["teacher_geo_scale.npy"], np.float32)[..., None]
    raise SchemaError("teacher_geo", "sample has neither teacher_geo.npy nor teacher_geo.int8.npy + scale")


# ---------------------------------------------------------------------------------------------- sample codecs
def encode_clip_sample(
    clip: ClipSample, frame_codec: str = "jpeg", jpeg_quality: int = 95, depth_codec: str = "zlib"
) -> dict[str, bytes]:
    """Encode a clip into WebDataset fields ``{"__key__": key, ext: bytes}``."""
    if frame_codec not in FRAME_CODECS:
        raise SchemaError(clip.key, f"unknown frame codec {frame_codec!r}; expected one of {FRAME_CODECS}")
    if depth_codec not in DEPTH_CODECS:
        raise SchemaError(clip.key, f"unknown depth codec {depth_codec!r}; expected one of {DEPTH_CODECS}")
    out: dict[str, Any] = {"__key__": clip.key}
    if frame_codec == "npy":
        out["frames.npy"] = npy_bytes(clip.frames)
    else:
        if clip.num_frames > 999:
            raise SchemaError(clip.key, "the jpeg codec names frames with 3 digits; use at most 999 frames")
        for i, rgb in enumerate(clip.frames):
            out[f"frame{i:03d}.jpg"] = jpeg_bytes(rgb, jpeg_quality)
    depth_mm = np.clip(np.rint(np.nan_to_num(clip.depth_m, nan=0.0) * 1000.0), 0, 65535).astype(np.uint16)
    if depth_codec == "npy":
        out["depth_mm.npy"] = npy_bytes(depth_mm)
    else:
        out["depth_mm.zlib"] = zlib.compress(npy_bytes(depth_mm), 6)
    out["cam_to_world.npy"] = npy_bytes(clip.cam_to_world.astype(np.float64))
    out["extrinsics.npy"] = npy_bytes(clip.extrinsics.astype(np.float32))
    out["intrinsics.npy"] = npy_bytes(clip.intrinsics.astype(np.float32))
    out["boxes.json"] = json_bytes(clip.boxes)
    out["annotations.json"] = json_bytes(clip.annotations)
    out["meta.json"] = json_bytes({**clip.meta, "schema_version": SCHEMA_VERSION, "frame_codec": frame_codec})
    return out


def encode_teacher_geo(teacher_geo: np.ndarray, token_codec: str = "fp16") -> dict[str, bytes]:
    """The ``teacher_geo*`` fields of geometry patch tokens ``[S, P, Cg]``."""
    if teacher_geo.ndim != 3:
        raise SchemaError("teacher_geo", f"expected [S, P, Cg], got {teacher_geo.shape}")
    return {name: npy_bytes(arr) for name, arr in quantize_tokens(teacher_geo, token_codec).items()}


def encode_teacher_sem(teacher_sem: np.ndarray, info: Mapping[str, Any], token_codec: str = "fp16") -> dict[str, bytes]:
    """The ``teacher_sem.npy`` (float16 ``[S, Cs]``) and ``teacher.json`` fields."""
    if teacher_sem.ndim != 2:
        raise SchemaError("teacher_sem", f"expected [S, Cs], got {teacher_sem.shape}")
    return {
        "teacher_sem.npy": npy_bytes(np.asarray(teacher_sem, np.float32).astype(np.float16)),
        "teacher.json": json_bytes({**info, "token_codec": token_codec}),
    }


def encode_teacher_fields(
    teacher_geo: np.ndarray, teacher_sem: np.ndarray, info: Mapping[str, Any], token_codec: str = "fp16"
) -> dict[str, bytes]:
    """Encode teacher outputs ``[S, P, Cg]`` and ``[S, Cs]`` into the extra TRAINING fields."""
    if teacher_geo.shape[:1] != teacher_sem.shape[:1]:
        raise SchemaError("teacher", f"frame counts differ: {teacher_geo.shape} vs {teacher_sem.shape}")
    return {**encode_teacher_geo(teacher_geo, token_codec), **encode_teacher_sem(teacher_sem, info, token_codec)}


def _field(sample: Mapping[str, Any], name: str, key: str) -> Any:
    if name not in sample:
        raise SchemaError(key, f"missing field {name!r} (has {sorted(k for k in sample if not k.startswith('__'))})")
    return sample[name]


def _as_array(value: Any, where: str) -> np.ndarray:
    # Readers differ: raw tar bytes (our own iterator, webdataset without decoders) or already-decoded arrays
    # (ray.data.read_webdataset decodes .npy/.jpg by extension).
    return npy_load(value, where) if isinstance(value, bytes | bytearray | memoryview) else np.asarray(value)


def _as_json(value: Any) -> Any:
    return json.loads(bytes(value)) if isinstance(value, bytes | bytearray | memoryview) else value


def decode_frames(sample: Mapping[str, Any], key: str) -> np.ndarray:
    """``[S, H, W, 3]`` uint8 frames from either frame codec."""
    if "frames.npy" in sample:
        return _as_array(sample["frames.npy"], f"{key}.frames.npy").astype(np.uint8)
    names = sorted(n for n in sample if _FRAME_JPG.match(n))
    if not names:
        raise SchemaError(key, "sample has neither frames.npy nor frameNNN.jpg fields")
    if [int(_FRAME_JPG.match(n).group(1)) for n in names] != list(range(len(names))):
        raise SchemaError(key, f"frame fields are not consecutive from frame000.jpg: {names}")
    frames = [jpeg_load(bytes(sample[n])) if isinstance(sample[n], bytes) else np.asarray(sample[n]) for n in names]
    return np.stack(frames).astype(np.uint8)


def decode_clip_sample(sample: Mapping[str, Any]) -> ClipSample:
    """Decode a CLIP sample dict (``__key__`` + fields, raw bytes or reader-decoded values)."""
    key = str(_field(sample, "__key__", "<sample>"))
    meta = _as_json(_field(sample, "meta.json", key))
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise SchemaError(key, f"schema version {meta.get('schema_version')} != supported {SCHEMA_VERSION}")
    if "depth_mm.zlib" in sample:
        try:
            depth_mm = npy_load(zlib.decompress(bytes(sample["depth_mm.zlib"])), f"{key}.depth_mm.zlib")
        except zlib.error as err:
            raise SchemaError(f"{key}.depth_mm.zlib", f"not a zlib stream ({err})") from err
    else:
        depth_mm = _as_array(_field(sample, "depth_mm.npy", key), f"{key}.depth_mm.npy")
    return ClipSample(
        key=key,
        frames=decode_frames(sample, key),
        depth_m=depth_mm.astype(np.float32) / 1000.0,
        cam_to_world=_as_array(_field(sample, "cam_to_world.npy", key), key).astype(np.float64),
        extrinsics=_as_array(_field(sample, "extrinsics.npy", key), key).astype(np.float32),
        intrinsics=_as_array(_field(sample, "intrinsics.npy", key), key).astype(np.float32),
        boxes=_as_json(_field(sample, "boxes.json", key)),
        annotations=_as_json(_field(sample, "annotations.json", key)),
        meta=meta,
    )


def decode_training_sample(sample: Mapping[str, Any]) -> TrainingSample:
    """Decode a TRAINING sample dict into arrays; teacher tokens come back as float32 whatever the codec."""
    clip = decode_clip_sample(sample)
    geo_fields = {
        name: _as_array(sample[name], f"{clip.key}.{name}")
        for name in ("teacher_geo.npy", "teacher_geo.int8.npy", "teacher_geo_scale.npy")
        if name in sample
    }
    teacher_geo = dequantize_tokens(geo_fields) if geo_fields else dequantize_tokens({})
    teacher_sem = _as_array(_field(sample, "teacher_sem.npy", clip.key), clip.key).astype(np.float32)
    if teacher_geo.shape[0] != clip.num_frames or teacher_sem.shape[0] != clip.num_frames:
        raise SchemaError(clip.key, f"teacher outputs cover {teacher_geo.shape[0]} frames, clip has {clip.num_frames}")
    return TrainingSample(
        **clip.__dict__,
        teacher_geo=teacher_geo,
        teacher_sem=teacher_sem,
        teacher=_as_json(_field(sample, "teacher.json", clip.key)),
    )


# ------------------------------------------------------------------------------------------------ tar codecs
def sample_members(sample: Mapping[str, Any]) -> list[tuple[str, bytes]]:
    """Tar members ``(key.ext, bytes)`` of one encoded sample, fields in sorted order."""
    key = sample["__key__"]
    return [(f"{key}.{ext}", bytes(sample[ext])) for ext in sorted(k for k in sample if not k.startswith("__"))]


def write_tar(members: Iterable[tuple[str, bytes]]) -> bytes:
    """A byte-reproducible tar: members in the given order, mtime 0, uid/gid 0, mode 0644, no owner names."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid = len(data), 0, 0o644, 0, 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def read_tar(data: bytes, where: str = "tar") -> list[tuple[str, bytes]]:
    """Members ``(name, bytes)`` of a tar, in archive order."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            return [(m.name, tar.extractfile(m).read()) for m in tar.getmembers() if m.isfile()]
    except tarfile.TarError as err:
        raise SchemaError(where, f"not a readable tar ({err})") from err


def iter_tar_samples(stream: IO[bytes], where: str = "tar") -> Iterator[dict[str, Any]]:
    """Sample dicts of a tar read front to back from a file object, one sample in memory at a time.

    Same grouping as :func:`group_members`; for shards too large to hold in memory.
    """
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            yield from _iter_grouped((m.name, tar.extractfile(m).read()) for m in tar if m.isfile())
    except tarfile.TarError as err:
        raise SchemaError(where, f"not a readable tar ({err})") from err


def group_members(members: Iterable[tuple[str, bytes]]) -> list[dict[str, Any]]:
    """Group tar members into sample dicts by key (WebDataset rule: key = basename up to its first dot)."""
    return list(_iter_grouped(members))


def _iter_grouped(members: Iterable[tuple[str, bytes]]) -> Iterator[dict[str, Any]]:
    """``webdataset.tariterators.group_by_keys`` on our members (same keys, fields and duplicate check; a test
    compares the two on real shards). Written out here because importing webdataset imports torch (~1 s of CPU),
    and the Ray tasks that stage, pack or list shards through this module must start light."""
    sample: dict[str, Any] | None = None
    for name, data in members:
        key, _, ext = name.partition(".")
        if sample is not None and sample["__key__"] != key:
            yield sample
            sample = None
        if sample is None:
            sample = {"__key__": key}
        if ext in sample:
            raise SchemaError(key, f"duplicate field {ext!r} in one sample")
        sample[ext] = data
    if sample is not None:
        yield sample
