"""Scene data layer: ScanNet formats (``.sens``, export, ``posed_images``, ScanNet-style video), scene metadata and
benchmark annotations, all read through fsspec so that ``s3://`` URIs work like local paths."""

from pipelines.scenes.errors import (
    AnnotationFormatError,
    CorruptDataError,
    FrameCountMismatchError,
    MissingFileError,
    MissingFrameFileError,
    SceneDataError,
    TruncatedFileError,
    UnsupportedCompressionError,
    UnsupportedVersionError,
)
from pipelines.scenes.export_layout import ExportReader, write_export
from pipelines.scenes.metadata import (
    read_ply,
    read_scene_info,
    read_scene_metadata,
    write_ply,
    write_scene_info,
    write_scene_metadata,
)
from pipelines.scenes.open import (
    LAYOUTS,
    UnknownLayoutError,
    detect_layout,
    list_scenes,
    open_scene,
    scene_uri,
)
from pipelines.scenes.posed_images import PosedImagesReader, write_posed_images
from pipelines.scenes.sens import SensReader, write_sens
from pipelines.scenes.types import Frame, Intrinsics, ObjectBox, SceneMetadata, SceneReader, pose_is_valid
from pipelines.scenes.video import (
    VideoInfo,
    decode_frames,
    iter_frames,
    probe,
    sample_uniform,
    uniform_indices,
)
from pipelines.scenes.video_layout import VideoSceneReader, write_video_scene

__all__ = [
    "LAYOUTS",
    "AnnotationFormatError",
    "CorruptDataError",
    "ExportReader",
    "Frame",
    "FrameCountMismatchError",
    "Intrinsics",
    "MissingFileError",
    "MissingFrameFileError",
    "ObjectBox",
    "PosedImagesReader",
    "SceneDataError",
    "SceneMetadata",
    "SceneReader",
    "SensReader",
    "TruncatedFileError",
    "UnknownLayoutError",
    "UnsupportedCompressionError",
    "UnsupportedVersionError",
    "VideoInfo",
    "VideoSceneReader",
    "decode_frames",
    "detect_layout",
    "iter_frames",
    "list_scenes",
    "open_scene",
    "pose_is_valid",
    "probe",
    "read_ply",
    "read_scene_info",
    "read_scene_metadata",
    "sample_uniform",
    "scene_uri",
    "uniform_indices",
    "write_export",
    "write_ply",
    "write_posed_images",
    "write_scene_info",
    "write_scene_metadata",
    "write_sens",
    "write_video_scene",
]
