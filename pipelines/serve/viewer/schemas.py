"""Response bodies of the viewer's data calls (pydantic; they appear in the OpenAPI schema at ``/docs``).

Geometry follows API v1 (:mod:`pipelines.serve.schemas`): metres, in the scene's first-camera frame with OpenCV
axes (x right, y down, z forward).
"""

from __future__ import annotations

from pydantic import BaseModel, Field

Row3 = tuple[float, float, float]
Row4 = tuple[float, float, float, float]


class SceneEntry(BaseModel):
    scene_id: str
    frames_used: int = Field(description="Frames sampled from the video and encoded.")


class SceneListResponse(BaseModel):
    scenes: list[SceneEntry] = Field(description="Scenes this ingress holds, most recently used first.")


class Camera(BaseModel):
    camera_from_world: tuple[Row4, Row4, Row4] = Field(
        description="[R | t] (3x4): x_cam = R x_world + t, metres."
    )
    intrinsics: tuple[Row3, Row3, Row3] = Field(description="K (3x3), pixels of an image of size image_size.")
    centre: Row3 = Field(description="Camera centre -R^T t, metres.")


class CamerasResponse(BaseModel):
    scene_id: str
    image_size: tuple[int, int] = Field(description="(height, width) in pixels that the intrinsics refer to.")
    cameras: list[Camera] = Field(description="One per used frame, in video order (the trajectory).")
