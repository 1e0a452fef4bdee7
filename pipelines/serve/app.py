"""HTTP API v1 of Vid-LLM on Ray Serve: a FastAPI ingress deployment in front of the model deployment.

The ingress authenticates, validates, decodes and samples videos (CPU work, run off the event loop), keeps each
registered scene's sampled frames in a byte-bounded LRU, and calls the model deployment through a handle tagged
with the scene id for routing affinity. Every failure becomes a JSON ``{error, field, detail}`` answer: client
mistakes are 4xx naming the field, overload is 503 with ``Retry-After``, a slow model is 504; nothing propagates
out of a handler, so no request can take a replica down.

Hostile requests: every body is capped before it is read (``Content-Length`` over the limit is a 413 at once)
and while it streams (a running count, so chunked bodies are capped too); JSON that nests too deeply or holds
numbers that are not finite floats is a 4xx naming the field; text that is not valid Unicode, holds control
characters or holds the tokenizer's special tokens is refused at validation; videos are decoded within the decode
budget, at most ``ingress.max_concurrent_decodes`` at a time (so memory does not grow with the number of
requests); a client that disconnects mid-upload is logged at INFO, without a traceback.

Endpoints (OpenAPI at ``/docs``): ``POST /v1/scenes`` (multipart ``video``), ``POST /v1/scenes:from_uri``
(``{"uri"}``), ``POST /v1/scenes/{id}/answer|caption|ground``, ``GET /v1/scenes/{id}/pointcloud`` (binary PLY),
``POST /v1/answer`` (one-shot multipart ``video`` + ``question``), ``GET /healthz`` and ``GET /readyz``. ``/docs``
and ``/openapi.json`` need the bearer token when ``docs_require_auth`` is set.
"""

# No ``from __future__ import annotations`` here: FastAPI resolves route annotations (``Request``) at run time, and
# Serve ships the ingress class to replicas by value, where string annotations can no longer be resolved.
import asyncio
import contextlib
import functools
import json
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ValidationError
from ray import serve
from ray.serve.exceptions import BackPressureError
from ray.serve.handle import DeploymentHandle
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

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
    check_text,
)
from pipelines.serve.security import BearerAuth, check_scene_uri, exposure_warning
from pipelines.serve.video_input import SamplingSpec, read_uri_limited, sample_clip, scene_id_for
from pipelines.serve.viewer import mount_viewer

logger = logging.getLogger("ray.serve")

_SCENE_ID = re.compile(r"^[0-9a-f]{32}$")
# Multipart framing (boundaries, part headers, a question field) on top of the video bytes.
_MULTIPART_SLACK_BYTES = 64 * 1024
# A Content-Length longer than this many digits is over any limit (and int() of thousands of digits is refused).
_MAX_LENGTH_DIGITS = 18
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 401, 403, 404, 413, 415, 422, 503, 504)}

# The docs routes are the ingress's own (below), so that they can require the bearer token.
api = FastAPI(
    title="Vid-LLM", version="1",
    description="3D scene understanding from video: register a scene, then ask, caption, ground, download points.",
    docs_url=None, redoc_url=None, openapi_url=None,
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
        except ClientDisconnect:
            # The client went away mid-request (an aborted upload): nothing failed here, and nobody reads the answer.
            logger.info("%s: the client disconnected before its request body was read", handler.__name__)
            return _error_response(ApiError(400, "client_disconnected", "the request body ended early"))
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
    return ApiError(422, code, f"{field or 'body'}: {first['msg']}", field)


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


def _capped(request: Request, limit: int, field: str | None, what: str) -> Request:
    """``request`` with its body capped at ``limit`` bytes: a ``Content-Length`` over it is refused before anything
    is read, and the bytes that arrive are counted, so a chunked (or lying) body stops at the limit too.

    Raises:
        ApiError: 400 for a malformed ``Content-Length``, 413 for a body over the limit (also from the returned
            request's reads).
    """
    length = request.headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise ApiError(400, "invalid_content_length", "Content-Length must be a number of bytes", "Content-Length")
        if len(length) > _MAX_LENGTH_DIGITS or int(length) > limit:
            raise ApiError(413, "body_too_large",
                           f"a request of {length} bytes exceeds the {limit}-byte limit of {what}", field)
    receive = request.receive
    received = 0

    async def counted() -> dict[str, Any]:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise ApiError(413, "body_too_large", f"the request body exceeds the {limit}-byte limit of {what}",
                               field)
        return message

    return Request(request.scope, counted)


async def _json_body(request: Request, schema: type[BaseModel], limit: int) -> Any:
    media = _media_type(request)
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type", f"expected application/json, got {media or 'no Content-Type'}",
                       "Content-Type")
    raw = await _capped(request, limit, None, "JSON bodies").body()
    if not raw:
        raise ApiError(400, "empty_body", "the request body is empty; expected a JSON object")
    try:
        data = json.loads(raw)
    except RecursionError as exc:
        raise ApiError(400, "invalid_json", "body is not acceptable JSON (nested too deeply)") from exc
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
        self._reserved: tuple[str, ...] = ()
        self._decode_slots = asyncio.Semaphore(self._cfg.ingress.max_concurrent_decodes)

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
                raise ApiError(422, "invalid_input", str(cause), cause.field) from exc
            raise

    async def _sampling(self) -> SamplingSpec:
        if self._spec is None:
            spec = dict(await self._call("input_spec", None))
            self._reserved = tuple(spec.pop("reserved_text"))
            self._spec = SamplingSpec(**spec)
        return self._spec

    def _authorize(self, request: Request) -> None:
        self._auth.check(request.headers.get("authorization"))

    def _json(self, request: Request, schema: type[BaseModel]) -> Awaitable[Any]:
        return _json_body(request, schema, self._cfg.limits.max_json_bytes)

    @contextlib.asynccontextmanager
    async def _form(self, request: Request, text_fields: tuple[str, ...] = ()) -> AsyncIterator[
            tuple[UploadFile, dict[str, str]]]:
        """Parse a multipart form with one ``video`` file and the given text fields, the body capped at the upload
        limit; yields ``(video, texts)`` and removes the spooled upload on exit."""
        media = _media_type(request)
        if media != "multipart/form-data":
            raise ApiError(415, "unsupported_media_type",
                           f"expected multipart/form-data with a 'video' file, got {media or 'no Content-Type'}",
                           "Content-Type")
        capped = _capped(request, self._cfg.limits.max_upload_bytes + _MULTIPART_SLACK_BYTES, "video",
                         f"uploads (a {self._cfg.limits.max_upload_bytes}-byte video)")
        try:
            form_context = capped.form(max_files=1, max_fields=len(text_fields) + 1, max_part_size=64 * 1024)
            async with form_context as form:
                video = form.get("video")
                if not isinstance(video, UploadFile):
                    raise ApiError(422, "missing_field", "multipart field 'video' (a file) is required", "video")
                texts = {}
                for name in text_fields:
                    value = form.get(name)
                    if not isinstance(value, str):
                        raise ApiError(422, "missing_field", f"multipart field '{name}' (text) is required", name)
                    texts[name] = value
                yield video, texts
        except StarletteHTTPException as exc:
            raise ApiError(400, "invalid_multipart", str(exc.detail)) from exc

    async def _read_upload(self, video: UploadFile) -> bytes:
        data = await video.read(self._cfg.limits.max_upload_bytes + 1)
        if len(data) > self._cfg.limits.max_upload_bytes:
            raise ApiError(413, "video_too_large", f"the video exceeds {self._cfg.limits.max_upload_bytes} bytes",
                           "video")
        return data

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

    # ---- hooks of the routes mounted on this app (the viewer, pipelines/serve/viewer) ---------------------------

    def authorize(self, request: Request) -> None:
        """Refuse (401) a request without the configured bearer token (a no-op when auth is off)."""
        self._authorize(request)

    def registered_scenes(self) -> list[tuple[str, int]]:
        """``(scene_id, frames_used)`` of every scene this replica holds (registered, not evicted), most recently
        used first."""
        return [(scene_id, int(source.frames.shape[0])) for scene_id, source in self._sources.items()]

    async def scene_geometry(self, scene_id: str) -> dict[str, np.ndarray]:
        """Metric depth ``[S, H, W]``, camera-from-world ``[S, 3, 4]`` and intrinsics ``[S, 3, 3]`` of a registered
        scene, as API v1 computes them (422 for a malformed id, 404 for an unknown or evicted scene)."""
        return await self._scene_call(scene_id, "geometry")

    async def _register(self, read: Callable[[], Awaitable[bytes]], field: str) -> SceneResponse:
        """Read the video (``read``), sample it and register the scene. Reading and decoding hold one of the
        ``max_concurrent_decodes`` slots, so video bytes and decoder memory are bounded by the slots."""
        spec = await self._sampling()
        async with self._decode_slots:
            data = await read()
            scene_id = scene_id_for(data, spec)
            source = self._sources.get(scene_id)
            if source is None:
                clip = await asyncio.to_thread(sample_clip, data, spec, self._cfg.limits, field)
                frames = clip.frames
            else:
                frames = source.frames
            del data
        summary = await self._call("register", scene_id, scene_id, frames)
        self._sources.put(scene_id, SceneSource(frames=frames))
        return SceneResponse(scene_id=scene_id, **summary)

    async def _text(self, value: str, field: str, limit: int) -> str:
        """A client text field, stripped, checked for Unicode validity, control characters, length and the
        tokenizer's special tokens (text holding ``<scene>`` would splice the scene twice)."""
        try:
            text = check_text(value).strip()
        except ValueError as exc:
            raise ApiError(422, "invalid_field", f"{field} {exc}", field) from exc
        if not text:
            raise ApiError(422, "empty_field", f"{field} must not be empty", field)
        if len(text) > limit:
            raise ApiError(422, "field_too_long", f"{field} has {len(text)} characters, the limit is {limit}", field)
        await self._sampling()
        folded = text.casefold()
        reserved = next((t for t in self._reserved if t.casefold() in folded), None)
        if reserved is not None:
            raise ApiError(422, "invalid_field", f"{field} must not contain the model's special token {reserved!r}",
                           field)
        return text

    def _authorize_docs(self, request: Request) -> None:
        if self._cfg.docs_require_auth:
            self._authorize(request)

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

    @api.get("/openapi.json", include_in_schema=False)
    @_mapped
    async def openapi_json(self, request: Request) -> Any:
        """The OpenAPI document (behind the bearer token when ``docs_require_auth``)."""
        self._authorize_docs(request)
        return JSONResponse(api.openapi())

    @api.get("/docs", include_in_schema=False)
    @_mapped
    async def docs(self, request: Request) -> Any:
        """Swagger UI. Behind auth the document is inlined (a browser's fetch of /openapi.json carries no token)."""
        self._authorize_docs(request)
        root = request.scope.get("root_path", "").rstrip("/")
        extra = {"spec": api.openapi()} if self._cfg.docs_require_auth else None
        return get_swagger_ui_html(openapi_url=f"{root}/openapi.json", title="Vid-LLM API",
                                   swagger_ui_parameters=extra)

    @api.post("/v1/scenes", response_model=SceneResponse, responses=_ERRORS, openapi_extra=_multipart_doc())
    @_mapped
    async def register_upload(self, request: Request) -> Any:
        """Register a scene from an uploaded video (multipart field ``video``); idempotent per content."""
        self._authorize(request)
        async with self._form(request) as (video, _):
            return await self._register(lambda: self._read_upload(video), "video")

    @api.post("/v1/scenes:from_uri", response_model=SceneResponse, responses=_ERRORS,
              openapi_extra=_json_doc(SceneFromUriRequest))
    @_mapped
    async def register_uri(self, request: Request) -> Any:
        """Register a scene from a video under one of the allowed storage prefixes."""
        self._authorize(request)
        body = await self._json(request, SceneFromUriRequest)
        uri = check_scene_uri(body.uri, self._cfg.allowed_uri_prefixes, self._cfg.limits.max_uri_chars)
        return await self._register(
            lambda: asyncio.to_thread(read_uri_limited, uri, self._cfg.limits.max_upload_bytes), "uri")

    @api.post("/v1/scenes/{scene_id}/answer", response_model=AnswerResponse, responses=_ERRORS,
              openapi_extra=_json_doc(QuestionRequest))
    @_mapped
    async def answer(self, scene_id: str, request: Request) -> Any:
        """Answer a question about a registered scene."""
        self._authorize(request)
        self._source(scene_id)
        body = await self._json(request, QuestionRequest)
        question = await self._text(body.question, "question", self._cfg.limits.max_question_chars)
        return AnswerResponse(answer=await self._scene_call(scene_id, "answer", question))

    @api.post("/v1/scenes/{scene_id}/caption", response_model=CaptionResponse, responses=_ERRORS,
              openapi_extra=_json_doc(CaptionRequest))
    @_mapped
    async def caption(self, scene_id: str, request: Request) -> Any:
        """Describe the object inside a box (centre + size, metres, first-camera frame)."""
        self._authorize(request)
        self._source(scene_id)
        body = await self._json(request, CaptionRequest)
        limit = self._cfg.limits.max_box_extent_m
        for name, values in (("box.center", body.box.center), ("box.size", body.box.size)):
            if max(abs(v) for v in values) > limit:
                raise ApiError(422, "invalid_field", f"{name} exceeds {limit:g} m", name)
        box = [*body.box.center, *body.box.size]
        return CaptionResponse(caption=await self._scene_call(scene_id, "caption", box))

    @api.post("/v1/scenes/{scene_id}/ground", response_model=GroundResponse, responses=_ERRORS,
              openapi_extra=_json_doc(GroundRequest))
    @_mapped
    async def ground(self, scene_id: str, request: Request) -> Any:
        """Locate the object a description refers to; boxes sorted by score."""
        self._authorize(request)
        self._source(scene_id)
        body = await self._json(request, GroundRequest)
        description = await self._text(body.description, "description", self._cfg.limits.max_description_chars)
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
        async with self._form(request, ("question",)) as (video, texts):
            question = await self._text(texts["question"], "question", self._cfg.limits.max_question_chars)
            scene = await self._register(lambda: self._read_upload(video), "video")
        answer = await self._scene_call(scene.scene_id, "answer", question)
        return OneShotAnswerResponse(scene_id=scene.scene_id, answer=answer)


def build_app(cfg: ServeConfig, ingress_env: dict[str, str] | None = None) -> serve.Application:
    """Bind the model and ingress deployments with the options in ``cfg``.

    Args:
        cfg: resolved configuration.
        ingress_env: environment variables for the ingress replicas (e.g. the auth secret in local runs; on
            Kubernetes the secret comes from the pod spec instead).
    """
    warning = exposure_warning(cfg.http.host, cfg.auth_token_env is not None)
    if warning:
        logger.warning(warning)
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
