"""Viewer routes on the ingress's FastAPI app: the page, its static scripts, and two JSON data calls.

The data calls run inside the ingress replica and use its public hooks (:class:`ViewerHost`: the auth check, the
scene registry, the scene geometry API v1 computes), reached the way Serve's own class-based views reach the
ingress: the replica's servable object.
They answer errors as API v1 does (JSON ``{error, field, detail}``, 4xx naming the field).
"""

# No ``from __future__ import annotations``: FastAPI resolves the route annotations (``Request``) at run time.
import base64
import functools
import hashlib
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Protocol

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles

from pipelines.serve.errors import ApiError
from pipelines.serve.pointcloud import camera_centres
from pipelines.serve.schemas import ErrorResponse
from pipelines.serve.viewer.schemas import Camera, CamerasResponse, SceneEntry, SceneListResponse

logger = logging.getLogger("ray.serve")

_PAGE = Path(__file__).with_name("index.html")
_STATIC = Path(__file__).with_name("static")
_IMPORT_MAP = re.compile(r'<script type="importmap">(.*?)</script>', re.DOTALL)
_ERRORS = {code: {"model": ErrorResponse} for code in (401, 404, 422, 503, 504)}


class ViewerHost(Protocol):
    """The public hooks of the ingress the viewer uses (:class:`pipelines.serve.app.VidLLMIngress`)."""

    def authorize(self, request: Request) -> None: ...

    def registered_scenes(self) -> list[tuple[str, int]]: ...

    async def scene_geometry(self, scene_id: str) -> dict[str, np.ndarray]: ...


def _host() -> ViewerHost:
    """The ingress instance of this replica (what Serve injects as ``self`` into the ingress's own routes)."""
    from ray import serve

    return serve.get_replica_context().servable_object


Host = Annotated[ViewerHost, Depends(_host)]


def _json_errors(handler):
    """Answer every exception of a route as JSON, like the ingress's routes (none reaches Serve as a failure)."""

    @functools.wraps(handler)
    async def wrapper(*args, **kwargs):
        try:
            return await handler(*args, **kwargs)
        except ApiError as exc:
            return JSONResponse(status_code=exc.status, content=exc.body(), headers=exc.headers)
        except Exception:  # noqa: BLE001 - last line of defence; the cause is logged with its traceback
            logger.exception("unhandled error in %s", handler.__name__)
            error = ApiError(500, "internal_error", "the server failed to process the request")
            return JSONResponse(status_code=500, content=error.body())

    return wrapper


@functools.cache
def _page() -> tuple[bytes, str]:
    """The page's HTML and its Content-Security-Policy (the inline import map is allowed by its SHA-256 only)."""
    html = _PAGE.read_text(encoding="utf-8")
    match = _IMPORT_MAP.search(html)
    if match is None:
        raise RuntimeError(f"{_PAGE.name} has no import map")
    digest = hashlib.sha256(match.group(1).encode("utf-8")).digest()
    script_hash = base64.b64encode(digest).decode("ascii")
    csp = (
        f"default-src 'none'; script-src 'self' 'sha256-{script_hash}'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    return html.encode("utf-8"), csp


def cameras_response(scene_id: str, extrinsics: np.ndarray, intrinsics: np.ndarray,
                     image_size: tuple[int, int]) -> CamerasResponse:
    """Camera poses of one scene as the viewer's JSON.

    Args:
        scene_id: the scene.
        extrinsics: ``[S, 3, 4]`` camera-from-world, metres.
        intrinsics: ``[S, 3, 3]`` pixels at ``image_size``.
        image_size: ``(height, width)`` of the model's depth maps.
    """
    centres = camera_centres(extrinsics)
    cameras = [
        Camera(camera_from_world=np.asarray(e, np.float64).tolist(), intrinsics=np.asarray(k, np.float64).tolist(),
               centre=c.tolist())
        for e, k, c in zip(extrinsics, intrinsics, centres, strict=True)
    ]
    return CamerasResponse(scene_id=scene_id, image_size=(int(image_size[0]), int(image_size[1])), cameras=cameras)


router = APIRouter()


@router.get("/viewer", include_in_schema=False)
async def viewer_redirect() -> Response:
    # Relative, so it stays under whatever route prefix the app is served at.
    return RedirectResponse("viewer/", status_code=307)


@router.get("/viewer/", include_in_schema=False)
async def viewer_page() -> Response:
    html, csp = _page()
    return Response(content=html, media_type="text/html; charset=utf-8", headers={
        "Content-Security-Policy": csp, "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    })


@router.get("/v1/scenes", response_model=SceneListResponse, responses=_ERRORS, tags=["viewer"])
@_json_errors
async def list_scenes(request: Request, host: Host) -> Any:
    """The scenes this ingress replica holds (registered and not yet evicted), most recently used first."""
    host.authorize(request)
    scenes = [SceneEntry(scene_id=scene_id, frames_used=frames) for scene_id, frames in host.registered_scenes()]
    return SceneListResponse(scenes=scenes)


@router.get("/v1/scenes/{scene_id}/cameras", response_model=CamerasResponse, responses=_ERRORS, tags=["viewer"])
@_json_errors
async def scene_cameras(scene_id: str, request: Request, host: Host) -> Any:
    """Camera pose and intrinsics of every used frame (metres, first-camera frame, OpenCV axes)."""
    host.authorize(request)
    geo = await host.scene_geometry(scene_id)
    return cameras_response(scene_id, geo["extrinsics"], geo["intrinsics"], geo["depth"].shape[1:3])


def mount_viewer(api: FastAPI) -> None:
    """Add the viewer's routes and static files to the ingress app (before Serve wraps it)."""
    api.include_router(router)
    api.mount("/viewer/static", StaticFiles(directory=_STATIC), name="viewer-static")
