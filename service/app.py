"""The HTTP API: FastAPI routes over the runtime (engine, batcher, thumbnails, metrics).

``create_app(settings)`` builds the app; ``python -m service`` serves it with uvicorn.
Every error is JSON ``{"error": code, "detail": message}``; bad input is a 4xx.
"""

from __future__ import annotations

import copy
import logging
import mimetypes
import secrets
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Path, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from gallery_store.base import VersionGoneError
from gallery_store.photos import display_path
from service.batching import BatcherClosed
from service.inputs import InputError, SearchJson, check_k, read_search_request, shown
from service.metrics import MetricsMiddleware
from service.runtime import Busy, PhotoUnavailable, Runtime
from service.schemas import (
    ErrorResponse,
    Health,
    IndexStats,
    Readiness,
    ReloadResponse,
    SearchResponse,
    SearchResult,
    SimilarResponse,
    Timing,
)
from service.search import Hits, NotReady, ReloadError, UnknownPhoto
from service.settings import ServiceSettings

log = logging.getLogger(__name__)
API_VERSION = "1"
MAX_DETAIL = 500  # characters of an error's detail
IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp", "image/gif", "image/bmp", "image/tiff")
# A canonical decimal (no sign, no leading zeros, no '1.0'): one id, one URL.
PHOTO_ID = Annotated[
    str,
    Path(
        pattern=r"^(0|[1-9][0-9]{0,17})$",
        max_length=18,
        description="a photo id from a search result (a non-negative integer)",
    ),
]
VERSION = Annotated[
    str | None,
    Query(
        max_length=64,
        description="the index version of the id (search results name it); "
        "default: the current one",
    ),
]
SIMILAR_K = Annotated[
    int | None, Query(ge=1, description="how many photos to return (default: as a search's)")
]
bearer = HTTPBearer(auto_error=False, description="the service's SBIR_ADMIN_TOKEN")


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": ErrorResponse} for code in codes}


def runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(runtime)]


# --- search ----------------------------------------------------------------------------------


async def search(request: Request, rt: RuntimeDep) -> SearchResponse:
    """Photos most like a sketch: upload it (multipart field ``image``), send it base64
    (``image_base64``) or as strokes (``strokes``); ``k`` photos come back, best first.
    ``classes``, ``path_prefix``: only photos of these classes, under this folder;
    ``offset``: the ``k`` after the first ``offset`` (pagination); ``min_score``: none
    scoring below it (so maybe fewer than ``k``)."""
    started = time.perf_counter()
    rt.engine.check_ready()  # 503 before reading the body
    rt.check_capacity()
    query = await read_search_request(request, rt.settings, rt.offload)
    hits, decode_s = await rt.search(query)
    return SearchResponse(
        results=results(request, hits, rt.settings.public_base_url),
        took_ms=round((time.perf_counter() - started) * 1000, 3),
        index_version=hits.snapshot.version,
        timing=Timing(
            decode_ms=ms(decode_s),
            queue_ms=ms(hits.queue_s),
            encode_ms=ms(hits.encode_s),
            search_ms=ms(hits.search_s),
            batch_size=hits.batch_size,
        ),
    )


def results(request: Request, hits: Hits, base_url: str) -> list[SearchResult]:
    """The hits with their URLs: relative, or under the configured public base URL, never
    built from the request's Host header (a client could name any host there)."""
    version, items = hits.snapshot.version, hits.snapshot.index.manifest.items
    base = base_url.rstrip("/") + request.scope.get("root_path", "")
    out = []
    for score, photo_id in zip(hits.scores.tolist(), hits.ids.tolist(), strict=True):
        if photo_id < 0:  # faiss pads short results with -1
            continue
        item = items[photo_id]
        url = base + request.app.url_path_for("photo", photo_id=str(photo_id)) + f"?v={version}"
        thumb = base + request.app.url_path_for("thumbnail", photo_id=str(photo_id))
        cls = None if item.cls is None else display_path(item.cls)  # names may not be UTF-8
        out.append(
            SearchResult(
                id=photo_id,
                score=score,
                path=display_path(item.path),
                cls=cls,
                url=url,
                thumbnail_url=f"{thumb}?v={version}",
            )
        )
    return out


def ms(seconds: float) -> float:
    return round(seconds * 1000, 3)


def search_openapi(settings: ServiceSettings) -> dict[str, Any]:
    """The request body of /v1/search in the OpenAPI document: multipart or JSON."""
    k = {
        "type": "integer",
        "minimum": 1,
        "maximum": settings.max_k,
        "default": settings.default_k,
        "description": "how many photos to return",
    }
    json_schema = copy.deepcopy(SearchJson.model_json_schema())
    props = json_schema["properties"]
    props["k"] = k
    props["offset"]["anyOf"][0]["maximum"] = settings.max_offset
    strokes = props["strokes"]["anyOf"][0]
    strokes["maxItems"] = settings.max_strokes
    plain = {
        name: {**props[name]["anyOf"][0], "description": props[name]["description"]}
        for name in ("classes", "path_prefix", "offset", "min_score")
    }
    multipart = {
        "type": "object",
        "required": ["image"],
        "properties": {
            "image": {
                "type": "string",
                "format": "binary",
                "description": "the sketch: a PNG, JPEG or WebP file",
            },
            "k": k,
            **plain,
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": multipart},
                "application/json": {"schema": json_schema},
            },
        }
    }


# --- photos ----------------------------------------------------------------------------------


async def photo(photo_id: PHOTO_ID, rt: RuntimeDep, v: VERSION = None) -> FileResponse:
    """The photo file of a search result."""
    path = rt.photo_file(int(photo_id), v)
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    return FileResponse(path, media_type=media, headers={"Cache-Control": "max-age=3600"})


async def similar(
    request: Request, photo_id: PHOTO_ID, rt: RuntimeDep, k: SIMILAR_K = None, v: VERSION = None
) -> SimilarResponse:
    """The ``k`` gallery photos nearest to photo ``photo_id`` by its stored vector ("more like
    this"), best first, the photo itself left out."""
    started = time.perf_counter()
    rt.engine.check_ready()
    hits = await rt.similar(int(photo_id), check_k(k, rt.settings), v)
    return SimilarResponse(
        results=results(request, hits, rt.settings.public_base_url),
        took_ms=round((time.perf_counter() - started) * 1000, 3),
        index_version=hits.snapshot.version,
    )


async def thumbnail(photo_id: PHOTO_ID, rt: RuntimeDep, v: VERSION = None) -> FileResponse:
    """A JPEG of the photo fitting the thumbnail size (made once, then cached)."""
    path = await rt.thumbnail(int(photo_id), v)
    return FileResponse(path, media_type="image/jpeg", headers={"Cache-Control": "max-age=86400"})


# --- operations ------------------------------------------------------------------------------


async def healthz() -> Health:
    """The process is alive (it may still be loading)."""
    return Health(status="ok")


async def readyz(rt: RuntimeDep) -> Readiness | JSONResponse:
    """200 when the model and the index are loaded and uploads are taken, else 503 and why."""
    engine = rt.engine
    if not engine.ready or engine.orphaned:
        body = Readiness(status="not ready", detail=engine.problem or engine.orphaned)
        return JSONResponse(body.model_dump(), status_code=503)
    if rt.saturated:
        detail = f"the decode threads are saturated ({rt.waiting} sketches wait); uploads get 503"
        body = Readiness(status="busy", detail=detail)
        return JSONResponse(body.model_dump(), status_code=503, headers={"Retry-After": "1"})
    snap = engine.snapshot
    return Readiness(
        status="ready", index_version=snap.version, model_fingerprint=snap.index.fingerprint
    )


async def metrics(rt: RuntimeDep) -> Response:
    """Prometheus metrics."""
    rt.metrics.ready.set(int(rt.engine.ready))
    if rt.engine.ready:
        snap = rt.engine.snapshot
        rt.metrics.set_index(snap.version, snap.count)
    return Response(rt.metrics.exposition(), media_type=rt.metrics.content_type)


async def index_stats(rt: RuntimeDep) -> IndexStats:
    """The index being served: version, size, FAISS parameters, model, classes."""
    return IndexStats(**rt.engine.stats())


async def reload(
    rt: RuntimeDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> ReloadResponse:
    """Switch to the index's current version; requests in flight finish on the old one."""
    check_admin(credentials, rt.settings)
    result = await rt.reload()
    return ReloadResponse(
        changed=result.changed, index_version=result.version, previous_version=result.previous
    )


def check_admin(
    credentials: HTTPAuthorizationCredentials | None, settings: ServiceSettings
) -> None:
    token = settings.admin_token
    if token is None:
        raise HTTPException(403, "admin endpoints are disabled: set SBIR_ADMIN_TOKEN")
    given = credentials.credentials if credentials else ""
    if not secrets.compare_digest(given.encode(), token.get_secret_value().encode()):
        raise HTTPException(
            401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )


async def home(request: Request) -> Response:
    """The drawing page, when installed; else the API docs."""
    page = request.app.state.runtime.settings.static_dir / "index.html"
    if page.is_file():
        return FileResponse(page, media_type="text/html")
    return RedirectResponse("/docs")


# --- errors ----------------------------------------------------------------------------------


def error(
    status: int, code: str, detail: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    """The JSON error response. The detail is cut to ``MAX_DETAIL`` characters and made
    encodable (a lone surrogate from a client would fail the response, and the request)."""
    if len(detail) > MAX_DETAIL:
        detail = detail[: MAX_DETAIL - 3] + "..."
    detail = detail.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


async def on_input_error(_: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, InputError)
    return error(err.status, err.code, err.detail)


async def on_http_error(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, HTTPException)
    code = {401: "unauthorized", 403: "forbidden", 404: "not_found", 405: "method_not_allowed"}.get(
        err.status_code, "http_error"
    )
    detail = str(err.detail)
    method = shown(request.method, 20, quote=False)
    path = shown(request.url.path, 100, quote=False)
    if detail == "Not Found":
        detail = f"no such endpoint: {method} {path}"
    elif detail == "Method Not Allowed":
        detail = f"{path} does not take {method}"
    return error(err.status_code, code, detail, err.headers)


async def on_validation_error(_: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, RequestValidationError)
    first = err.errors()[0]
    where = ".".join(str(p) for p in first.get("loc", ())) or "request"
    return error(422, "invalid_request", f"{where}: {first.get('msg', 'invalid')}")


async def on_not_ready(_: Request, err: Exception) -> JSONResponse:
    return error(503, "not_ready", f"the service is not ready: {err}", {"Retry-After": "5"})


async def on_busy(request: Request, err: Exception) -> JSONResponse:
    return error(503, "busy", f"the service is busy: {err}", {"Retry-After": "1"})


async def on_client_gone(request: Request, _: Exception) -> Response:
    """The client left mid-request: nobody reads this answer, and it is no server error
    (status 499, as nginx logs it; no traceback)."""
    request.app.state.runtime.metrics.disconnects.inc()
    log.info("client went away during %s %s", request.method, request.url.path)
    return Response(status_code=499)


async def on_shutdown(_: Request, err: Exception) -> JSONResponse:
    return error(503, "shutting_down", str(err), {"Retry-After": "1"})


async def on_version_gone(_: Request, err: Exception) -> JSONResponse:
    """The version searched was pruned from the store (Qdrant): the watcher switches to the
    current one within its interval."""
    detail = "the index version served was removed from the store; retry shortly"
    return error(503, "not_ready", detail, {"Retry-After": "2"})


async def on_unknown_photo(_: Request, err: Exception) -> JSONResponse:
    code = "photo_unavailable" if isinstance(err, PhotoUnavailable) else "unknown_photo"
    return error(404, code, str(err))


async def on_reload_error(_: Request, err: Exception) -> JSONResponse:
    return error(409, "reload_failed", f"the index was not switched: {err}")


async def on_unexpected(_: Request, err: Exception) -> JSONResponse:
    log.exception("unexpected error", exc_info=err)
    return error(500, "internal_error", "an unexpected error; see the server log")


HANDLERS = {
    InputError: on_input_error,
    HTTPException: on_http_error,
    RequestValidationError: on_validation_error,
    NotReady: on_not_ready,
    BatcherClosed: on_shutdown,
    Busy: on_busy,
    ClientDisconnect: on_client_gone,
    UnknownPhoto: on_unknown_photo,
    PhotoUnavailable: on_unknown_photo,
    ReloadError: on_reload_error,
    VersionGoneError: on_version_gone,
    Exception: on_unexpected,
}


# --- the app ---------------------------------------------------------------------------------


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    rt: Runtime = app.state.runtime
    await rt.start()
    try:
        yield
    finally:
        await rt.stop()


def create_app(settings: ServiceSettings | None = None) -> FastAPI:
    """The service's ASGI app (``settings`` default: from the environment)."""
    settings = settings or ServiceSettings()
    app = FastAPI(
        title="Sketch search",
        version=API_VERSION,
        description="Zero-shot sketch-based photo retrieval (IIAE encoders, FAISS index).",
        lifespan=lifespan,
    )
    app.state.runtime = rt = Runtime(settings)
    app.add_middleware(MetricsMiddleware, metrics=rt.metrics)
    for exc, handler in HANDLERS.items():
        app.add_exception_handler(exc, handler)
    add_routes(app, settings)
    app.mount("/static", StaticFiles(directory=settings.static_dir, check_dir=False), "static")
    return app


def add_routes(app: FastAPI, settings: ServiceSettings) -> None:
    images = {
        "content": {t: {"schema": {"type": "string", "format": "binary"}} for t in IMAGE_TYPES}
    }

    def route(path: str, endpoint: Any, methods: list[str], **options: Any) -> None:
        """A route; every GET route takes HEAD too (health checkers use it), outside the
        OpenAPI document (one operation a path and method there)."""
        app.add_api_route(path, endpoint, methods=methods, **options)
        if "GET" in methods:
            options["include_in_schema"] = False
            app.add_api_route(path, endpoint, methods=["HEAD"], **options)

    route(
        "/v1/search",
        search,
        methods=["POST"],
        response_model=SearchResponse,
        tags=["search"],
        responses=error_responses(400, 408, 413, 415, 422, 503),
        openapi_extra=search_openapi(settings),
    )
    route(
        "/v1/photos/{photo_id}",
        photo,
        methods=["GET"],
        name="photo",
        tags=["photos"],
        response_class=FileResponse,
        responses={200: images, **error_responses(404, 422, 503)},
    )
    route(
        "/v1/photos/{photo_id}/similar",
        similar,
        methods=["GET"],
        name="similar",
        tags=["photos"],
        response_model=SimilarResponse,
        responses=error_responses(404, 422, 503),
    )
    route(
        "/v1/photos/{photo_id}/thumbnail",
        thumbnail,
        methods=["GET"],
        name="thumbnail",
        tags=["photos"],
        response_class=FileResponse,
        responses={
            200: {"content": {"image/jpeg": images["content"]["image/jpeg"]}},
            **error_responses(404, 422, 503),
        },
    )
    route(
        "/v1/index",
        index_stats,
        methods=["GET"],
        response_model=IndexStats,
        tags=["index"],
        responses=error_responses(503),
    )
    route(
        "/v1/admin/reload",
        reload,
        methods=["POST"],
        response_model=ReloadResponse,
        tags=["admin"],
        responses=error_responses(401, 403, 409, 503),
    )
    route("/healthz", healthz, methods=["GET"], response_model=Health, tags=["operations"])
    route(
        "/readyz",
        readyz,
        methods=["GET"],
        response_model=Readiness,
        tags=["operations"],
        responses={503: {"model": Readiness}},
    )
    route(
        "/metrics",
        metrics,
        methods=["GET"],
        tags=["operations"],
        response_class=Response,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    route("/", home, methods=["GET"], include_in_schema=False)
