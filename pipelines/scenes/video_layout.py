"""The ScanNet-style video layout defined by this project: an RGB video plus pose/intrinsics/depth sidecars.

ScanNet ships per-frame JPEGs; re-encoding colour as a short-GOP video cuts storage and makes uniform sampling cheap
(``bench/bench_decode.py`` measures uniform sampling of such a video). The sensor samples (pose, optional depth) keep their own clock and are matched to video frames
by timestamp. Layout of ``<root>/videos/<scene_id>/``::

    scene.json           manifest (the layout's defining file), see below
    color.mp4            RGB video; any container/codec PyAV decodes (the writer uses H.264, yuv420p, short GOP)
    intrinsic_color.txt  4x4, K in the top-left 3x3 (ScanNet convention)
    intrinsic_depth.txt  4x4
    poses.txt            one line per sensor sample: ``timestamp_s`` then the 16 row-major entries of the 4x4
                         camera-to-world pose (``-inf`` entries = lost tracking, kept as-is)
    frame_times.txt      optional: one line per video frame in display order, its presentation time in seconds
                         from the first video frame (the reader demuxes the video when absent)
    depth/{k:05d}.png    optional: depth of sensor sample ``k`` (0-based line of poses.txt), uint16 millimetres

``scene.json`` fields: ``format`` (``"vidllm.scannet_video"``), ``version`` (1), ``scene_id``, ``video``
(file name), ``fps`` (nominal), ``video_start_s`` (sample-clock time of the first video frame),
``sync_tolerance_s``, ``color_size`` and ``depth_size`` (``[width, height]``), ``has_depth``, ``num_samples``
(lines of poses.txt) and optionally ``num_frames`` (video frames, checked against the video or frame_times.txt).
``video`` must name a file inside the scene folder. The video must present exactly the frames the sidecars list,
each of ``color_size`` (the colour intrinsics hold for that size only): a video that disagrees is an error, never
resampled. Decoding is held to the reader's :class:`~pipelines.scenes.decode_budget.DecodeBudget`.

Frame <-> pose rule: video frame ``i`` happens at ``t_i = video_start_s + frame_time_i`` on the sample clock; it takes
the sample with the nearest ``timestamp_s`` (ties go to the earlier sample). If ``|t_i - timestamp_s| >
sync_tolerance_s`` (default half a frame period, ``0.5 / fps``) the frame has no pose: its pose is all ``-inf``,
``valid`` is False and its depth is ``None``. A matched sample whose pose holds ``-inf`` is invalid too.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from fractions import Fraction

import numpy as np

from pipelines.scenes.decode_budget import DecodeBudget
from pipelines.scenes.errors import CorruptDataError, FrameCountMismatchError, MissingFileError
from pipelines.scenes.export_layout import decode_depth_png, encode_depth_png, format_matrix, parse_matrix
from pipelines.scenes.sens import intrinsics_to_4x4, open_for_write
from pipelines.scenes.types import Frame, Intrinsics, SceneReader, pose_is_valid
from pipelines.scenes.video import DEFAULT_BUDGET, decode_frames, encode_video, frame_times, iter_frames
from pipelines.storage import exists, join, read_bytes

MANIFEST = "scene.json"
FORMAT_NAME = "vidllm.scannet_video"
FORMAT_VERSION = 1
VIDEO_TICK = Fraction(1, 90000)  # MPEG's 90 kHz clock: capture times survive the round trip to within 6 us


def match_samples(frame_times_s: np.ndarray, sample_times_s: np.ndarray, tolerance_s: float) -> np.ndarray:
    """Index of the nearest sample for each frame time, or -1 when none lies within ``tolerance_s``.

    Args:
        frame_times_s: ``[N]`` frame times on the sample clock.
        sample_times_s: ``[M]`` sample times, ascending.
        tolerance_s: largest accepted ``|frame - sample|`` gap in seconds.
    """
    frame_times_s = np.asarray(frame_times_s, dtype=np.float64)
    sample_times_s = np.asarray(sample_times_s, dtype=np.float64)
    if sample_times_s.size == 0:
        return np.full(frame_times_s.shape, -1, dtype=np.int64)
    right = np.clip(np.searchsorted(sample_times_s, frame_times_s), 0, sample_times_s.size - 1)
    left = np.clip(right - 1, 0, sample_times_s.size - 1)
    pick_left = np.abs(frame_times_s - sample_times_s[left]) <= np.abs(sample_times_s[right] - frame_times_s)
    nearest = np.where(pick_left, left, right)
    gap = np.abs(frame_times_s - sample_times_s[nearest])
    return np.where(gap <= tolerance_s + 1e-9, nearest, -1).astype(np.int64)


class VideoSceneReader(SceneReader):
    """Reader of the video layout (see the module docstring). Opening reads only ``scene.json`` and the text
    sidecars; frames are decoded on demand, several at once in a single pass by :meth:`read_frames`, within
    ``budget``.

    Attributes (besides :class:`SceneReader`'s):
        manifest: the parsed ``scene.json``.
        sample_times_s: ``[M]`` sensor sample times (sample clock).
        sample_poses: ``[M, 4, 4]`` sensor sample poses.
        sample_of_frame: ``[N]`` matched sample per video frame, -1 when unmatched.
    """

    def __init__(
        self, uri: str, scene_id: str | None = None, threads: int = 0, budget: DecodeBudget = DEFAULT_BUDGET
    ):
        self.uri = uri.rstrip("/")
        self.threads = threads
        self.budget = budget
        manifest_uri = join(self.uri, MANIFEST)
        if not exists(manifest_uri):
            raise MissingFileError(manifest_uri, "video-layout manifest does not exist")
        try:
            m = json.loads(read_bytes(manifest_uri))
            self.fps = float(m["fps"])
            self.video_start_s = float(m["video_start_s"])
            self.tolerance_s = float(m["sync_tolerance_s"])
            cw, ch = _size(m["color_size"])
            dw, dh = _size(m["depth_size"])
            self.has_depth = bool(m["has_depth"])
            video_name = m["video"]
            expected_frames = None if m.get("num_frames") is None else _count(m["num_frames"])
            expected_samples = None if m.get("num_samples") is None else _count(m["num_samples"])
        except (ValueError, KeyError, TypeError, OverflowError, RecursionError) as exc:
            raise CorruptDataError(manifest_uri, f"bad manifest ({exc!r})") from exc
        if m.get("format") != FORMAT_NAME or m.get("version") != FORMAT_VERSION:
            raise CorruptDataError(manifest_uri, f"not a {FORMAT_NAME} v{FORMAT_VERSION} manifest")
        if not (isinstance(video_name, str) and video_name and "/" not in video_name and "\\" not in video_name
                and video_name not in (".", "..") and "::" not in video_name):
            raise CorruptDataError(manifest_uri, "'video' must name a file inside the scene folder")
        if not all(np.isfinite(v) for v in (self.fps, self.video_start_s, self.tolerance_s)) or self.fps <= 0:
            raise CorruptDataError(manifest_uri, "fps, video_start_s and sync_tolerance_s must be finite, fps > 0")
        self._expected_samples = expected_samples
        self.manifest = m
        self.scene_id = scene_id or str(m.get("scene_id") or self.uri.rsplit("/", 1)[-1])
        self.video_uri = join(self.uri, video_name)
        if not exists(self.video_uri):
            raise MissingFileError(self.video_uri, "video file named by the manifest does not exist")
        self.color_intrinsics = Intrinsics(self._matrix("intrinsic_color.txt")[:3, :3].copy(), cw, ch)
        self.depth_intrinsics = Intrinsics(self._matrix("intrinsic_depth.txt")[:3, :3].copy(), dw, dh)
        self.sample_times_s, self.sample_poses = self._read_poses()
        times = self._read_frame_times()
        if expected_frames is not None and expected_frames != times.size:
            raise FrameCountMismatchError(
                self.video_uri, f"{times.size} video frames found, manifest says {expected_frames}"
            )
        self.timestamps_s = self.video_start_s + times
        self.sample_of_frame = match_samples(self.timestamps_s, self.sample_times_s, self.tolerance_s)
        poses = np.full((times.size, 4, 4), -np.inf)
        matched = self.sample_of_frame >= 0
        poses[matched] = self.sample_poses[self.sample_of_frame[matched]]
        self.poses = poses

    def _matrix(self, name: str) -> np.ndarray:
        uri = join(self.uri, name)
        if not exists(uri):
            raise MissingFileError(uri, "intrinsics file does not exist")
        return parse_matrix(read_bytes(uri), uri)

    def _read_poses(self) -> tuple[np.ndarray, np.ndarray]:
        uri = join(self.uri, "poses.txt")
        if not exists(uri):
            raise MissingFileError(uri, "pose sidecar does not exist")
        rows = []
        for line_no, line in enumerate(read_bytes(uri).decode("utf-8", errors="replace").splitlines(), 1):
            if not line.strip():
                continue
            try:
                values = [float(tok) for tok in line.split()]
            except ValueError as exc:
                raise CorruptDataError(uri, f"line {line_no}: non-number ({exc})") from exc
            if len(values) != 17:
                raise CorruptDataError(uri, f"line {line_no}: {len(values)} numbers, expected timestamp + 16")
            rows.append(values)
        table = np.asarray(rows, dtype=np.float64).reshape(-1, 17)
        times = table[:, 0]
        if times.size and not (np.isfinite(times).all() and (np.diff(times) > 0).all()):
            raise CorruptDataError(uri, "sample timestamps must be finite and strictly increasing")
        expected = self._expected_samples
        if expected is not None and expected != times.size:
            raise FrameCountMismatchError(uri, f"{times.size} pose samples, manifest says {expected}")
        return times, table[:, 1:].reshape(-1, 4, 4)

    def _read_frame_times(self) -> np.ndarray:
        uri = join(self.uri, "frame_times.txt")
        if exists(uri):
            try:
                times = np.asarray([float(t) for t in read_bytes(uri).split()], dtype=np.float64)
            except ValueError as exc:
                raise CorruptDataError(uri, f"non-number ({exc})") from exc
            if not (np.isfinite(times).all() and (np.diff(times) > 0).all()):
                raise CorruptDataError(uri, "frame times must be finite and strictly increasing")
            return times
        # No sidecar: demux the video for presentation times (reads the whole file, decodes nothing).
        return frame_times(self.video_uri, self.budget)

    def _depth(self, sample: int) -> np.ndarray | None:
        if not self.has_depth or sample < 0:
            return None
        uri = join(self.uri, f"depth/{sample:05d}.png")
        if not exists(uri):
            raise MissingFileError(uri, f"depth image of pose sample {sample} does not exist")
        return decode_depth_png(read_bytes(uri), uri)

    def _frame(self, index: int, rgb: np.ndarray) -> Frame:
        pose = self.poses[index].copy()
        sample = int(self.sample_of_frame[index])
        return Frame(
            index, float(self.timestamps_s[index]), rgb, self._depth(sample), pose, pose_is_valid(pose)
        )

    def read_frame(self, index: int) -> Frame:
        return self.read_frames([index])[0]

    @property
    def _color_size(self) -> tuple[int, int]:
        return self.color_intrinsics.width, self.color_intrinsics.height

    def read_frames(self, indices: Sequence[int]) -> list[Frame]:
        """Decode ``indices`` in one pass over the video (seeking only across GOPs).

        Raises:
            IndexError: an index outside ``[0, num_frames)``.
            FrameCountMismatchError: the video presents another number of frames than the sidecars list.
            FrameSizeMismatchError: the video's frames are not the manifest's ``color_size``.
            SceneDataError: the video's own errors (truncated, corrupt, over the decode budget, ...).
        """
        for i in indices:
            if not 0 <= i < self.num_frames:
                raise IndexError(f"{self.uri}: frame {i} out of range [0, {self.num_frames})")
        decoded = decode_frames(self.video_uri, list(indices), threads=self.threads, budget=self.budget,
                                expect_frames=self.num_frames, expect_size=self._color_size)
        return [self._frame(d.index, d.rgb) for d in decoded]

    def __iter__(self):
        """All frames by one sequential decode (faster than random access for a whole scene); raises like
        :meth:`read_frames` when the video holds more or fewer frames than listed."""
        count = 0
        for d in iter_frames(self.video_uri, threads=self.threads, budget=self.budget,
                             expect_size=self._color_size):
            if d.index >= self.num_frames:
                raise FrameCountMismatchError(
                    self.video_uri, f"video has more frames than the {self.num_frames} listed"
                )
            count += 1
            yield self._frame(d.index, d.rgb)
        if count != self.num_frames:
            raise FrameCountMismatchError(self.video_uri, f"video has {count} frames, {self.num_frames} are listed")


def _size(value) -> tuple[int, int]:
    """A manifest ``[width, height]`` of positive integers."""
    if not isinstance(value, list) or len(value) != 2:
        raise ValueError(f"a size must be [width, height], got {value!r}")
    width, height = (_count(v) for v in value)
    if width < 1 or height < 1:
        raise ValueError(f"a size must be positive, got {value!r}")
    return width, height


def _count(value) -> int:
    """A manifest integer (JSON numbers without a fraction; no booleans, no strings)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != int(value) or value < 0:
        raise ValueError(f"expected a non-negative integer, got {value!r}")
    return int(value)


def write_video_scene(
    dir_uri: str,
    color_intrinsics: Intrinsics,
    depth_intrinsics: Intrinsics,
    frames: Iterable[Frame],
    fps: float = 30.0,
    gop: int = 30,
    codec: str = "libx264",
    crf: int = 20,
    preset: str = "medium",
    scene_id: str | None = None,
) -> int:
    """Write ``frames`` in the video layout: H.264 (yuv420p, keyframe every ``gop`` frames) plus sidecars.

    Every frame becomes one video frame presented at ``frame.timestamp_s - first timestamp`` (90 kHz tick) and one
    sensor sample with the same timestamp, pose and (if present) depth, so each frame matches its own sample.

    Args:
        dir_uri: the scene folder (``<root>/videos/<scene_id>``).
        color_intrinsics: colour camera; its width and height must be even (4:2:0 chroma).
        depth_intrinsics: depth camera; ``frame.depth_m`` (metres) must match its size when present.
        frames: frames with strictly increasing ``timestamp_s``.
        fps: nominal frame rate (sets the sync tolerance ``0.5 / fps``).
        gop: keyframe interval in frames (30 = 1 s at 30 fps keeps uniform sampling cheap).
        codec: encoder; options below are libx264's (``crf``, ``preset``).
        crf: libx264 constant-rate factor (lower = better quality, larger files).
        preset: libx264 speed preset.
        scene_id: recorded in the manifest; default the folder name.

    Returns:
        The number of frames written.
    """
    if color_intrinsics.width % 2 or color_intrinsics.height % 2:
        raise ValueError(
            f"colour size {color_intrinsics.width}x{color_intrinsics.height} must be even for yuv420p video"
        )
    cshape = (color_intrinsics.height, color_intrinsics.width, 3)
    dshape = (depth_intrinsics.height, depth_intrinsics.width)
    samples: list[tuple[float, np.ndarray]] = []
    has_depth: list[bool] = []
    first_t: list[float] = []

    def rgb_stream():
        for k, frame in enumerate(frames):
            if frame.rgb.shape != cshape:
                raise ValueError(
                    f"{dir_uri}: frame {frame.index} colour is {frame.rgb.shape}, expected {cshape}"
                )
            if samples and frame.timestamp_s <= samples[-1][0]:
                raise ValueError(f"{dir_uri}: frame {frame.index} timestamp does not increase")
            if not first_t:
                first_t.append(frame.timestamp_s)
            samples.append((frame.timestamp_s, np.asarray(frame.cam_to_world, dtype=np.float64)))
            has_depth.append(frame.depth_m is not None)
            if frame.depth_m is not None:
                if frame.depth_m.shape != dshape:
                    raise ValueError(
                        f"{dir_uri}: frame {frame.index} depth is {frame.depth_m.shape}, expected {dshape}"
                    )
                with open_for_write(join(dir_uri, f"depth/{k:05d}.png")) as f:
                    f.write(encode_depth_png(frame.depth_m))
            yield frame.rgb

    pts: list[int] = []

    def pts_stream():
        # Pulled by the encoder right after rgb_stream yields the frame, so samples[-1] is that frame.
        while True:
            pts.append(round((samples[-1][0] - first_t[0]) / VIDEO_TICK))
            yield pts[-1]

    count = encode_video(
        join(dir_uri, "color.mp4"),
        rgb_stream(),
        fps=fps,
        gop=gop,
        codec=codec,
        options={"crf": str(crf), "preset": preset},
        pts=pts_stream(),
        time_base=VIDEO_TICK,
    )
    if any(has_depth) and not all(has_depth):
        raise ValueError(f"{dir_uri}: some frames have depth and some do not")
    pose_lines = "".join(f"{t:.17g} " + format_matrix(p.reshape(1, 16)) for t, p in samples)
    texts = {
        "poses.txt": pose_lines,
        "frame_times.txt": "".join(f"{float(p * VIDEO_TICK):.17g}\n" for p in pts),
        "intrinsic_color.txt": format_matrix(intrinsics_to_4x4(color_intrinsics)),
        "intrinsic_depth.txt": format_matrix(intrinsics_to_4x4(depth_intrinsics)),
        MANIFEST: json.dumps(
            {
                "format": FORMAT_NAME,
                "version": FORMAT_VERSION,
                "scene_id": scene_id or dir_uri.rstrip("/").rsplit("/", 1)[-1],
                "video": "color.mp4",
                "fps": fps,
                "video_start_s": first_t[0] if first_t else 0.0,
                "sync_tolerance_s": 0.5 / fps,
                "color_size": [color_intrinsics.width, color_intrinsics.height],
                "depth_size": [depth_intrinsics.width, depth_intrinsics.height],
                "has_depth": bool(has_depth) and all(has_depth),
                "num_samples": len(samples),
                "num_frames": count,
            },
            indent=2,
        ),
    }
    for name, text in texts.items():  # the manifest goes last: a folder with scene.json is complete
        with open_for_write(join(dir_uri, name)) as f:
            f.write(text.encode("utf-8"))
    return count
