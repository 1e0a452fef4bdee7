"""The EmbodiedScan / Video-3D-LLM ``posed_images`` layout: one flat folder per scene.

Layout (``scripts/3d/preprocessing/generate_image_scannet.py`` of Video-3D-LLM, used by VG-LLM, 3DRS, Ross3D)::

    posed_images/<scene_id>/00000.jpg        RGB JPEG at the colour size; 5-digit zero-padded ORIGINAL frame number
    posed_images/<scene_id>/00000.png        16-bit PNG, uint16 millimetres
    posed_images/<scene_id>/00000.txt        4x4 camera-to-world (``-inf`` = lost pose)
    posed_images/<scene_id>/intrinsic.txt        4x4 colour intrinsics (K top-left)
    posed_images/<scene_id>/depth_intrinsic.txt  4x4 depth intrinsics

``--fast`` keeps every 10th frame (30 Hz -> 3 fps); the file number stays the frame number in the ``.sens`` stream,
so ``Frame.index`` is that number and ``timestamp_s = number / 30``. Image sizes come from the first image's header.
"""

from __future__ import annotations

from collections.abc import Iterable

from pipelines.scenes.export_layout import FileLayout, PerFrameFilesReader, write_frame_files
from pipelines.scenes.types import Frame, Intrinsics

POSED_IMAGES = FileLayout(
    color=("", "jpg"),
    depth=("", "png"),
    pose=("", "txt"),
    color_intrinsic="intrinsic.txt",
    depth_intrinsic="depth_intrinsic.txt",
    digits=5,
)
FAST_STRIDE = 10  # EmbodiedScan's ``--fast``


class PosedImagesReader(PerFrameFilesReader):
    """Reader of one ``posed_images/<scene_id>/`` folder (see the module docstring)."""

    def __init__(self, uri: str, scene_id: str | None = None):
        super().__init__(uri, POSED_IMAGES, scene_id)


def write_posed_images(
    dir_uri: str,
    color_intrinsics: Intrinsics,
    depth_intrinsics: Intrinsics,
    frames: Iterable[Frame],
    stride: int = 1,
    jpeg_quality: int = 95,
) -> int:
    """Write ``frames`` as a ``posed_images`` scene folder, keeping frames whose ``index % stride == 0``.

    Args:
        dir_uri: the scene folder (``.../posed_images/<scene_id>``).
        color_intrinsics: colour camera; ``frame.rgb`` must match its size.
        depth_intrinsics: depth camera; ``frame.depth_m`` (metres) must match its size.
        frames: frames in stream order; ``frame.index`` becomes the (zero-padded) file number.
        stride: keep every ``stride``-th original frame (``10`` = EmbodiedScan ``--fast``).
        jpeg_quality: JPEG quality of the colour images.

    Returns:
        The number of frames written.
    """
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    return write_frame_files(
        dir_uri,
        POSED_IMAGES,
        color_intrinsics,
        depth_intrinsics,
        frames,
        jpeg_quality,
        keep=lambda frame: frame.index % stride == 0,
    )
