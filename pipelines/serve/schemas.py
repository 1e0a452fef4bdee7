"""Request and response bodies of API v1 (pydantic models; they also make the OpenAPI schema at ``/docs``).

Geometry is in metres in the scene's first-camera frame (OpenCV axes: x right, y down, z forward), the frame the
model reconstructs in. Boxes are axis-aligned in that frame: ``center`` and full ``size`` (dx, dy, dz).

Validation refuses, as a 422 naming the field, what would otherwise fail later: text that is not valid Unicode
(a JSON ``"\\ud800"`` escape decodes to a lone surrogate, which no tokenizer can encode) or that holds NUL or
other C0 control characters besides tab and newline, and numbers that are not finite floats (``NaN``,
``Infinity``, or integers too large for a float such as a 400-digit literal).
"""

from __future__ import annotations

import math
from typing import Annotated

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, StrictStr, field_validator


def check_text(value: str) -> str:
    """``value`` if it is valid Unicode text a tokenizer can take, else ``ValueError`` saying why."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(f"must be valid Unicode text (character {exc.start} is a lone surrogate)") from exc
    bad = next((i for i, c in enumerate(value) if (ord(c) < 0x20 and c not in "\t\n\r") or ord(c) == 0x7F), None)
    if bad is not None:
        raise ValueError(f"must not contain control characters (character {bad} is U+{ord(value[bad]):04X})")
    return value


Text = Annotated[StrictStr, AfterValidator(check_text)]


def _number(value: object) -> float:
    """A JSON number as a float: no booleans or strings, no integers beyond the float range."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError("must be a number")
    try:
        return float(value)
    except OverflowError as exc:
        raise ValueError("must be a finite number (this integer is too large)") from exc


Number = Annotated[float, BeforeValidator(_number)]
Vec3 = tuple[Number, Number, Number]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SceneFromUriRequest(_Strict):
    uri: Text = Field(description="Object-store URI of a video under one of the allowed prefixes.")


class SceneResponse(BaseModel):
    scene_id: str = Field(description="Content hash of the video bytes and the sampling settings.")
    frames_used: int = Field(description="Frames sampled uniformly from the video and encoded.")
    metric_scale: float = Field(description="Relative-to-metric scale the model applied to its reconstruction.")
    camera_trajectory: list[tuple[float, float, float]] = Field(
        description="Camera centre per used frame, metres, first-camera frame (length = frames_used)."
    )


class QuestionRequest(_Strict):
    question: Text = Field(description="Question about the scene.")


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
    description: Text = Field(description="Referring expression of one object.")


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
