"""Request and response bodies of API v1 (pydantic models; they also make the OpenAPI schema at ``/docs``).

Geometry is in metres in the scene's first-camera frame (OpenCV axes: x right, y down, z forward), the frame the
model reconstructs in. Boxes are axis-aligned in that frame: ``center`` and full ``size`` (dx, dy, dz).
"""

from __future__ import annotations

import math

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, field_validator

Vec3 = tuple[StrictFloat | StrictInt, StrictFloat | StrictInt, StrictFloat | StrictInt]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SceneFromUriRequest(_Strict):
    uri: StrictStr = Field(description="Object-store URI of a video under one of the allowed prefixes.")


class SceneResponse(BaseModel):
    scene_id: str = Field(description="Content hash of the video bytes and the sampling settings.")
    frames_used: int = Field(description="Frames sampled uniformly from the video and encoded.")
    metric_scale: float = Field(description="Relative-to-metric scale the model applied to its reconstruction.")
    camera_trajectory: list[tuple[float, float, float]] = Field(
        description="Camera centre per used frame, metres, first-camera frame (length = frames_used)."
    )


class QuestionRequest(_Strict):
    question: StrictStr = Field(description="Question about the scene.")


class AnswerResponse(BaseModel):
    answer: str


class OneShotAnswerResponse(BaseModel):
    scene_id: str
    answer: str


class Box(_Strict):
    center: Vec3 = Field(description="Box centre (x, y, z), metres.")
    size: Vec3 = Field(description="Full box extents (dx, dy, dz), metres, each > 0.")

    @field_validator("center", "size")
    @classmethod
    def _finite(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(math.isfinite(v) for v in value):
            raise ValueError("all three values must be finite numbers (no NaN or infinity)")
        return value

    @field_validator("size")
    @classmethod
    def _positive(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        if not all(v > 0 for v in value):
            raise ValueError("every size component must be > 0")
        return value


class CaptionRequest(_Strict):
    box: Box


class CaptionResponse(BaseModel):
    caption: str


class GroundRequest(_Strict):
    description: StrictStr = Field(description="Referring expression of one object.")


class ScoredBox(BaseModel):
    center: tuple[float, float, float]
    size: tuple[float, float, float]
    score: float = Field(description="Probability in [0, 1] that the box is the referred object.")


class GroundResponse(BaseModel):
    boxes: list[ScoredBox] = Field(description="Highest score first.")


class ErrorResponse(BaseModel):
    error: str = Field(description="Machine-readable error code.")
    field: str | None = Field(description="Request field at fault, if any.")
    detail: str = Field(description="What is wrong.")
