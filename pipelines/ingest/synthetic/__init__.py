"""Synthetic ScanNet-format scenes: procedural box rooms, exact ray-cast RGB-D, meshes and benchmark annotations.

Run ``python -m pipelines.ingest.synthetic --help``. The library entry points are :func:`generate` with a
:class:`SyntheticConfig`, and :func:`build_scene` to rebuild a scene's ground truth (poses, objects, boxes) without
rendering.
"""

from pipelines.ingest.synthetic.generate import generate, write_annotations
from pipelines.ingest.synthetic.scene import LAYOUTS, SceneSpec, SyntheticConfig, build_scene, scene_id_of

__all__ = [
    "LAYOUTS",
    "SceneSpec",
    "SyntheticConfig",
    "build_scene",
    "generate",
    "scene_id_of",
    "write_annotations",
]
