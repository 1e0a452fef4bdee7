"""HTTP API v1 of Vid-LLM on Ray Serve: a FastAPI ingress deployment in front of the model deployment.

The ingress authenticates, validates, decodes and samples videos (CPU work, run off the event loop), keeps each
registered scene's sampled frames in a byte-bounded LRU, and calls the model deployment through a handle tagged
with the scene id for routing affinity. Every failure becomes a JSON ``{error, field, detail}`` answer: client
mistakes are 4xx naming the field, overload is 503 with ``Retry-After``, a slow model is 504; nothing propagates
out of a handler, so no request can take a replica down.

Endpoints (OpenAPI at ``/docs``): ``POST /v1/scenes`` (multipart ``video``), ``POST /v1/scenes:from_uri``
(``{"uri"}``), ``POST /v1/scenes/{id}/answer|caption|ground``, ``GET /v1/scenes/{id}/pointcloud`` (binary PLY),
``POST /v1/answer`` (one-shot multipart ``video`` + ``question``), ``GET /healthz`` and ``GET /readyz``.
"""

# No ``from __future__ import annotations`` here: FastAPI resolves route annotations (``Request``) at run time, and
# Serve ships the ingress class to replicas by value, where string annotations can no longer be resolved.
import asyncio
import functools
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipelines.serve.cache import ByteLRU
from pipelines.serve.config import ServeConfig
from pipelines.serve.errors import ApiError, ModelInputError
from pipelines.serve.model_deployment import SceneMiss, VidLLMModel
from pipelines.serve.pointcloud import backproject, to_ply
from pipelines.serve.schemas import (
    AnswerResponse,
    CaptionRequest,
    CaptionResponse,
    ErrorResponse,
    GroundRequest,
    GroundResponse,
    OneShotAnswerResponse,
    QuestionRequest,
    SceneFromUriRequest,
    SceneResponse,
)
from pipelines.serve.security import BearerAuth, check_scene_uri
from pipelines.serve.video_input import SamplingSpec, read_uri_limited, sample_clip, scene_id_for
from pipelines.serve.viewer import mount_viewer

logger = logging.getLogger("ray.serve")

_SCENE_ID = re.compile(r"^[0-9a-f]{32}$")
_MAX_JSON_BYTES = 64 * 1024
# Multipart framing (boundaries, part headers, a question field) on top of the video bytes.
_MULTIPART_SLACK_BYTES = 64 * 1024
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 411, 413, 415, 422, 503, 504)}

api = FastAPI(
    title="Vid-LLM", version="1",
    description="3D scene understanding from video: register a scene, then ask, caption, ground, download points.",
)


def _error_response(exc: ApiError) -> JSONResponse:
    return JSONResponse(status_code=exc.status, content=exc.body(), headers=exc.headers)


@api.exception_handler(ApiError)
async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
    return _error_response(exc)


@api.exception_handler(RequestValidationError)
async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("body", "path", "query")) or None
    return _error_response(ApiError(422, "invalid_request", str(first.get("msg")), field))


@api.exception_handler(StarletteHTTPException)
async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error_response(ApiError(exc.status_code, code, str(exc.detail), None, dict(exc.headers or {})))


mount_viewer(api)  # the browser viewer: /viewer/ and its data calls (pipelines/serve/viewer)


def _mapped(handler):
    """Turn any exception of a route into a JSON error response (so none reaches Serve as a replica failure)."""

    @functools.wraps(handler)
    async def wrapper(*args, **kwargs):
        try:
            return await handler(*args, **kwargs)
        except ApiError as exc:
            return _error_response(exc)
        except Exception:  # noqa: BLE001 - last line of defence; the cause is logged with its traceback
            logger.exception("unhandled error in %s", handler.__name__)
            return _error_response(ApiError(500, "internal_error", "the server failed to process the request"))

    return wrapper


def _cause(exc: BaseException) -> BaseException:
    """The replica-side exception behind a Ray task error (Ray wraps errors raised in another process)."""
    return getattr(exc, "cause", None) or exc


def _validation_to_api(exc: ValidationError) -> ApiError:
    first = exc.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or None
    code = "missing_field" if first["type"] == "missing" else "invalid_field"
    return ApiError(422, code, f"{field}: {first['msg']}", field)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _json_body(request: Request, schema: type[BaseModel]) -> Any:
    media = _media_type(request)
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", f"expected application/json, got {media or 'no Content-Type'}",
                       "Content-Type")
    raw = await request.body()
    if not raw:
        raise ApiError(400, "empty_body", "the request body is empty; expected a JSON object")
    if len(raw) > _MAX_JSON_BYTES:
        raise ApiError(413, "body_too_large", f"JSON bodies are limited to {_MAX_JSON_BYTES} bytes")
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise ApiError(400, "invalid_json", f"body is not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise ApiError(422, "invalid_body", f"body must be a JSON object, got {type(data).__name__}")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise _validation_to_api(exc) from exc


def _json_doc(schema: type[BaseModel]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema.model_json_schema()}}}}


def _multipart_doc(*text_fields: str) -> dict[str, Any]:
    props: dict[str, Any] = {"video": {"type": "string", "format": "binary"}}
    props.update({name: {"type": "string"} for name in text_fields})
    schema = {"type": "object", "properties": props, "required": list(props)}
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": schema}}}}


@dataclass
class SceneSource:
    """What the ingress keeps per registered scene: the sampled frames (to re-encode on a replica cache miss)."""

    frames: np.ndarray  # [S, H, W, 3] uint8


@serve.deployment(name="VidLLMIngress")
@serve.ingress(api)
class VidLLMIngress:
    """HTTP ingress. Options (replicas, CPUs, queue limits) are set by :func:`build_app`.

    Args:
        model: handle of the :class:`VidLLMModel` deployment.
        config: ``ServeConfig.to_dict()``.
    """

    def __init__(self, model: DeploymentHandle, config: dict[str, Any]):
        self._cfg = ServeConfig.from_dict(config)
        self._model = model
        self._auth = BearerAuth(self._cfg.auth_token_env)
        self._sources: ByteLRU[SceneSource] = ByteLRU(self._cfg.ingress.source_cache_bytes,
                                                      sizer=lambda s: s.frames.nbytes)
        self._spec: SamplingSpec | None = None

    # ---- plumbing ----------------------------------------------------------------------------------------------

    async def _call(self, method: str, scene_id: str | None, *args: Any, timeout_s: float | None = None) -> Any:
        handle = self._model.options(multiplexed_model_id=scene_id) if scene_id else self._model
        response = getattr(handle, method).remote(*args)
        timeout = timeout_s or self._cfg.ingress.call_timeout_s
        try:
            return await asyncio.wait_for(response, timeout=timeout)
        except TimeoutError as exc:
            response.cancel()
            raise ApiError(504, "timeout", f"the model did not answer within {timeout:g} s") from exc
        except Exception as exc:
            cause = _cause(exc)
            if isinstance(cause, BackPressureError):
                retry = max(1, round(self._cfg.model.retry_after_s))
                raise ApiError(503, "overloaded", "the model is at capacity; retry later", None,
                               {"Retry-After": str(retry)}) from exc
            if isinstance(cause, ModelInputError):
                raise ApiError(422, "invalid_input", str(cause)) from exc
            raise

    async def _sampling(self) -> SamplingSpec:
        if self._spec is None:
            spec = await self._call("input_spec", None)
            self._spec = SamplingSpec(**spec)
        return self._spec

    def _authorize(self, request: Request) -> None:
        self._auth.check(request.headers.get("authorization"))

    def _check_length(self, request: Request) -> None:
        length = request.headers.get("content-length")
        if length is None:
            raise ApiError(411, "length_required", "uploads need a Content-Length header", "Content-Length")
        limit = self._cfg.limits.max_upload_bytes + _MULTIPART_SLACK_BYTES
        if not length.isdigit() or int(length) > limit:
            raise ApiError(413, "video_too_large",
                           f"request of {length} bytes exceeds the {self._cfg.limits.max_upload_bytes}-byte video limit",
                           "video")

    async def _upload(self, request: Request, text_fields: tuple[str, ...] = ()) -> tuple[bytes, dict[str, str]]:
        """Read a multipart form with one ``video`` file and the given text fields."""
        media = _media_type(request)
        if media != "multipart/form-data":
            raise ApiError(415, "unsupported_media_type",
                           f"expected multipart/form-data with a 'video' file, got {media or 'no Content-Type'}",
                           "Content-Type")
        self._check_length(request)
        try:
            form = await request.form(max_files=1, max_fields=len(text_fields) + 1, max_part_size=64 * 1024)
        except StarletteHTTPException as exc:
            raise ApiError(400, "invalid_multipart", str(exc.detail)) from exc
        video = form.get("video")
        if not isinstance(video, UploadFile):
            raise ApiError(422, "missing_field", "multipart field 'video' (a file) is required", "video")
        data = await video.read(self._cfg.limits.max_upload_bytes + 1)
        if len(data) > self._cfg.limits.max_upload_bytes:
            raise ApiError(413, "video_too_large", f"the video exceeds {self._cfg.limits.max_upload_bytes} bytes",
                           "video")
        texts = {}
        for name in text_fields:
            value = form.get(name)
            if not isinstance(value, str):
                raise ApiError(422, "missing_field", f"multipart field '{name}' (text) is required", name)
            texts[name] = value
        return data, texts

    def _source(self, scene_id: str) -> SceneSource:
        if not _SCENE_ID.match(scene_id):
            raise ApiError(422, "invalid_scene_id", "scene ids are 32 lower-case hex characters", "scene_id")
        source = self._sources.get(scene_id)
        if source is None:
            raise ApiError(404, "unknown_scene",
                           f"scene {scene_id} is not registered here (or was evicted); register the video again",
                           "scene_id")
        return source

    async def _scene_call(self, scene_id: str, method: str, *args: Any) -> Any:
        """Call ``method`` on the replica holding ``scene_id``; repeat it with the frames if that replica lacks them."""
        source = self._source(scene_id)
        result = await self._call(method, scene_id, scene_id, *args)
        if isinstance(result, SceneMiss):
            result = await self._call(method, scene_id, scene_id, *args, source.frames)
        return result

    async def _register(self, data: bytes, field: str) -> SceneResponse:
        spec = await self._sampling()
        scene_id = scene_id_for(data, spec)
        source = self._sources.get(scene_id)
        if source is None:
            clip = await asyncio.to_thread(sample_clip, data, spec, self._cfg.limits, field)
            frames = clip.frames
        else:
            frames = source.frames
        summary = await self._call("register", scene_id, scene_id, frames)
        self._sources.put(scene_id, SceneSource(frames=frames))
        return SceneResponse(scene_id=scene_id, **summary)

    def _text(self, value: str, field: str, limit: int) -> str:
        text = value.strip()
        if not text:
            raise ApiError(422, "empty_field", f"{field} must not be empty", field)
        if len(text) > limit:
            raise ApiError(422, "field_too_long", f"{field} has {len(text)} characters, the limit is {limit}", field)
        return text

    # ---- routes ------------------------------------------------------------------------------------------------

    @api.get("/healthz")
    async def healthz(self) -> dict[str, str]:
        """Liveness: the ingress process answers."""
        return {"status": "ok"}

    @api.get("/readyz", responses=_ERRORS)
    @_mapped
    async def readyz(self) -> Any:
        """Readiness: the model deployment has loaded its checkpoint and answers."""
        try:
            spec = await self._call("input_spec", None, timeout_s=10.0)
        except ApiError as exc:
            return JSONResponse(status_code=503, content={"ready": False, "detail": exc.detail},
                                headers={"Retry-After": "5"})
        return {"ready": True, "input": spec}

    @api.post("/v1/scenes", response_model=SceneResponse, responses=_ERRORS, openapi_extra=_multipart_doc())
    @_mapped
    async def register_upload(self, request: Request) -> Any:
        """Register a scene from an uploaded video (multipart field ``video``); idempotent per content."""
        self._authorize(request)
        data, _ = await self._upload(request)
        return await self._register(data, "video")

    @api.post("/v1/scenes:from_uri", response_model=SceneResponse, responses=_ERRORS,
              openapi_extra=_json_doc(SceneFromUriRequest))
    @_mapped
    async def register_uri(self, request: Request) -> Any:
        """Register a scene from a video under one of the allowed storage prefixes."""
        self._authorize(request)
        body = await _json_body(request, SceneFromUriRequest)
        uri = check_scene_uri(body.uri, self._cfg.allowed_uri_prefixes, self._cfg.limits.max_uri_chars)
        data = await asyncio.to_thread(read_uri_limited, uri, self._cfg.limits.max_upload_bytes)
        return await self._register(data, "uri")

    @api.post("/v1/scenes/{scene_id}/answer", response_model=AnswerResponse, responses=_ERRORS,
              openapi_extra=_json_doc(QuestionRequest))
    @_mapped
    async def answer(self, scene_id: str, request: Request) -> Any:
        """Answer a question about a registered scene."""
        self._authorize(request)
        self._source(scene_id)
        body = await _json_body(request, QuestionRequest)
        question = self._text(body.question, "question", self._cfg.limits.max_question_chars)
        return AnswerResponse(answer=await self._scene_call(scene_id, "answer", question))

    @api.post("/v1/scenes/{scene_id}/caption", response_model=CaptionResponse, responses=_ERRORS,
              openapi_extra=_json_doc(CaptionRequest))
    @_mapped
    async def caption(self, scene_id: str, request: Request) -> Any:
        """Describe the object inside a box (centre + size, metres, first-camera frame)."""
        self._authorize(request)
        self._source(scene_id)
        body = await _json_body(request, CaptionRequest)
        limit = self._cfg.limits.max_box_extent_m
        for name, values in (("box.center", body.box.center), ("box.size", body.box.size)):
            if max(abs(float(v)) for v in values) > limit:
                raise ApiError(422, "invalid_field", f"{name} exceeds {limit:g} m", name)
        box = [float(v) for v in (*body.box.center, *body.box.size)]
        return CaptionResponse(caption=await self._scene_call(scene_id, "caption", box))

    @api.post("/v1/scenes/{scene_id}/ground", response_model=GroundResponse, responses=_ERRORS,
              openapi_extra=_json_doc(GroundRequest))
    @_mapped
    async def ground(self, scene_id: str, request: Request) -> Any:
        """Locate the object a description refers to; boxes sorted by score."""
        self._authorize(request)
        self._source(scene_id)
        body = await _json_body(request, GroundRequest)
        description = self._text(body.description, "description", self._cfg.limits.max_description_chars)
        return GroundResponse(boxes=await self._scene_call(scene_id, "ground", description))

    @api.get("/v1/scenes/{scene_id}/pointcloud", responses={200: {"content": {"application/octet-stream": {}}},
                                                            **_ERRORS})
    @_mapped
    async def pointcloud(self, scene_id: str, request: Request) -> Any:
        """The reconstructed, coloured points as binary little-endian PLY (xyz float32 metres + rgb uint8)."""
        self._authorize(request)
        source = self._source(scene_id)
        geo = await self._scene_call(scene_id, "geometry")
        xyz, rgb = await asyncio.to_thread(
            backproject, geo["depth"], geo["extrinsics"], geo["intrinsics"], source.frames,
            self._cfg.limits.pointcloud_max_points,
        )
        return Response(
            content=to_ply(xyz, rgb), media_type="application/octet-stream",
            headers={"Content-Disposition": f'attachment; filename="{scene_id}.ply"', "X-Point-Count": str(len(xyz))},
        )

    @api.post("/v1/answer", response_model=OneShotAnswerResponse, responses=_ERRORS,
              openapi_extra=_multipart_doc("question"))
    @_mapped
    async def answer_one_shot(self, request: Request) -> Any:
        """Register an uploaded video (multipart ``video``) and answer ``question`` about it in one call."""
        self._authorize(request)
        data, texts = await self._upload(request, ("question",))
        question = self._text(texts["question"], "question", self._cfg.limits.max_question_chars)
        scene = await self._register(data, "video")
        answer = await self._scene_call(scene.scene_id, "answer", question)
        return OneShotAnswerResponse(scene_id=scene.scene_id, answer=answer)


def build_app(cfg: ServeConfig, ingress_env: dict[str, str] | None = None) -> serve.Application:
    """Bind the model and ingress deployments with the options in ``cfg``.

    Args:
        cfg: resolved configuration.
        ingress_env: environment variables for the ingress replicas (e.g. the auth secret in local runs; on
            Kubernetes the secret comes from the pod spec instead).
    """
    backpressure_model = {"status_code": 503, "retry_after_s": cfg.model.retry_after_s}
    model = VidLLMModel.options(
        ray_actor_options={"num_cpus": cfg.model.num_cpus, "num_gpus": cfg.model.num_gpus},
        max_ongoing_requests=cfg.model.max_ongoing_requests,
        max_queued_requests=cfg.model.max_queued_requests,
        autoscaling_config=cfg.model.autoscaling.to_serve(),
        backpressure_config=backpressure_model,
    ).bind(cfg.to_dict())
    ingress_actor: dict[str, Any] = {"num_cpus": cfg.ingress.num_cpus}
    if ingress_env:
        ingress_actor["runtime_env"] = {"env_vars": dict(ingress_env)}
    return VidLLMIngress.options(
        num_replicas=cfg.ingress.num_replicas,
        ray_actor_options=ingress_actor,
        max_ongoing_requests=cfg.ingress.max_ongoing_requests,
        max_queued_requests=cfg.ingress.max_queued_requests,
        backpressure_config={"status_code": 503, "retry_after_s": cfg.ingress.retry_after_s},
    ).bind(model, cfg.to_dict())


def app_builder(args: dict[str, Any]) -> serve.Application:
    """Entry point for Serve config files (``import_path: pipelines.serve.app:app_builder``; ``args`` = config)."""
    return build_app(ServeConfig.from_dict(dict(args)))
