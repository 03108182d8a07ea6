"""The sketch of ``POST /v1/search``: read, validated, and made an encoder input.

Three forms: a multipart upload (field ``image``: PNG, JPEG or WebP), JSON with
``image_base64`` (a ``data:`` URL is fine), or JSON with Quick, Draw!-style ``strokes``.
Images go through ``model.preprocess.load_image`` and strokes through ``render_strokes``
with its defaults, the ones ``prepare`` renders the training sketches with; both then go
through ``to_input_array``, as in training. Every fault raises InputError with a 4xx status
and a message that names it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException
from starlette.requests import Request
from starlette.types import Message

from model.preprocess import (
    ImageError,
    ImageTooLargeError,
    Preprocessing,
    Strokes,
    load_image,
    render_strokes,
    to_input_array,
    validate_strokes,
)
from service.settings import ServiceSettings

MULTIPART, JSON = "multipart/form-data", "application/json"
MAGIC = {"PNG": (b"\x89PNG\r\n\x1a\n",), "JPEG": (b"\xff\xd8\xff",)}


class InputError(Exception):
    """A bad request: HTTP status, a short machine-readable code and a message for people."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class SearchJson(BaseModel):
    """The JSON form of a search: exactly one of ``image_base64`` and ``strokes``."""

    model_config = ConfigDict(extra="forbid")

    image_base64: str | None = Field(
        None, description="a PNG, JPEG or WebP image, base64 (a data: URL is fine)"
    )
    strokes: list[list[list[float]]] | None = Field(
        None,
        description="Quick, Draw!-style strokes, each [[x0, x1, ...], [y0, y1, ...]] "
        "(optionally with a third list of times); any coordinate range, y down",
    )
    k: int | None = Field(None, description="how many photos to return")


@dataclass(frozen=True)
class SketchRequest:
    """A parsed search: the sketch as image bytes or as strokes, and k."""

    k: int
    image: bytes | None = None
    strokes: Strokes | None = None


async def read_search_request(request: Request, settings: ServiceSettings) -> SketchRequest:
    """Parse and validate a search request of any of the three forms."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media == MULTIPART:
        return await parse_multipart(request, await read_body(request, settings), settings)
    if media == JSON or media.endswith("+json"):
        return parse_json(await read_body(request, settings), settings)
    shown = media or "none"
    raise InputError(415, "unsupported_media_type", f"Content-Type {shown!r} is not accepted: "
                     f"send {MULTIPART} with an 'image' file, or {JSON}")  # fmt: skip


async def read_body(request: Request, settings: ServiceSettings) -> bytes:
    """The request body, refused (413) as soon as it exceeds the upload limit."""
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(size, limit, at_least=True)
        chunks.append(chunk)
    return b"".join(chunks)


def too_large(size: int, limit: int, at_least: bool = False) -> InputError:
    more = "at least " if at_least else ""
    return InputError(413, "upload_too_large",
                      f"the request body is {more}{size} bytes; the limit is {limit}")  # fmt: skip


async def parse_multipart(
    request: Request, body: bytes, settings: ServiceSettings
) -> SketchRequest:
    """The ``image`` file and ``k`` field of a multipart body already read."""

    async def replay() -> Message:
        return {"type": "http.request", "body": body, "more_body": False}

    try:
        form = await Request(request.scope, replay).form(
            max_files=4, max_fields=16, max_part_size=settings.max_upload_bytes
        )
    except (MultiPartException, HTTPException, ValueError) as err:
        detail = getattr(err, "detail", None) or getattr(err, "message", None) or str(err)
        raise InputError(400, "malformed_multipart", f"malformed multipart body: {detail}") from err
    try:
        image, k = form.get("image"), form.get("k")
        if image is None:
            raise InputError(422, "missing_image", "the multipart field 'image' (the sketch "
                             "file) is missing")  # fmt: skip
        data = await image.read() if isinstance(image, UploadFile) else image.encode()
        if isinstance(k, UploadFile):
            raise InputError(422, "invalid_k", "k must be a plain form field, not a file")
        return SketchRequest(k=parse_k(k, settings), image=data)
    finally:
        await form.close()


def parse_json(body: bytes, settings: ServiceSettings) -> SketchRequest:
    """A JSON body with ``image_base64`` or ``strokes`` (and ``k``)."""
    try:
        data = SearchJson.model_validate_json(body)
    except ValidationError as err:
        first = err.errors()[0]
        if first["type"] == "json_invalid":
            raise InputError(400, "malformed_json",
                             f"the body is not valid JSON ({first['msg']})") from err  # fmt: skip
        raise InputError(422, "invalid_request", describe_validation(err)) from err
    if (data.image_base64 is None) == (data.strokes is None):
        raise InputError(422, "invalid_request", "give the sketch as exactly one of "
                         "'image_base64' and 'strokes'")  # fmt: skip
    k = check_k(data.k, settings)
    if data.image_base64 is not None:
        return SketchRequest(k=k, image=decode_base64(data.image_base64))
    return SketchRequest(k=k, strokes=check_strokes(data.strokes, settings))


def describe_validation(err: ValidationError) -> str:
    """The first error as 'where: what', e.g. 'strokes.0.1.3: Input should be a valid number'."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or "body"
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}: {first['msg']}{more}"


def parse_k(text: Any, settings: ServiceSettings) -> int:
    """k from a form field (None: the default)."""
    if text is None or text == "":
        return settings.default_k
    try:
        value = int(str(text).strip())
    except ValueError:
        shown = str(text)[:20]
        raise InputError(422, "invalid_k", f"k must be an integer, not {shown!r}") from None
    return check_k(value, settings)


def check_k(k: int | None, settings: ServiceSettings) -> int:
    if k is None:
        return settings.default_k
    if not 1 <= k <= settings.max_k:
        raise InputError(422, "invalid_k", f"k must be between 1 and {settings.max_k}, not {k}")
    return k


def decode_base64(text: str) -> bytes:
    """Bytes of a base64 string or a ``data:...;base64,`` URL."""
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise InputError(422, "invalid_base64", "a data: URL must be base64-encoded, like "
                             "'data:image/png;base64,...'")  # fmt: skip
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        detail = f"image_base64 is not valid base64 ({err})"
        raise InputError(422, "invalid_base64", detail) from err


def check_strokes(strokes: Any, settings: ServiceSettings) -> Strokes:
    """The strokes' shape (``validate_strokes``) and the size limits."""
    try:
        strokes = validate_strokes(strokes)
    except ValueError as err:
        raise InputError(422, "invalid_strokes", str(err)) from err
    if len(strokes) > settings.max_strokes:
        raise InputError(422, "invalid_strokes", f"{len(strokes)} strokes; at most "
                         f"{settings.max_strokes} are accepted")  # fmt: skip
    points = sum(len(s[0]) for s in strokes)
    if points == 0:
        raise InputError(422, "invalid_strokes", "the drawing has no points")
    if points > settings.max_points:
        raise InputError(422, "invalid_strokes", f"{points} points; at most "
                         f"{settings.max_points} are accepted")  # fmt: skip
    xy = np.concatenate([np.asarray(s[:2], dtype=np.float64) for s in strokes if s[0]], axis=1)
    with np.errstate(over="ignore"):
        if not np.isfinite(xy.max(axis=1) - xy.min(axis=1)).all():
            raise InputError(422, "invalid_strokes", "the coordinates span too wide a range")
    return strokes


def to_query_array(req: SketchRequest, prep: Preprocessing, max_pixels: int) -> np.ndarray:
    """The encoder input (3, S, S) of a parsed sketch (blocking: run it in a thread)."""
    if req.strokes is not None:
        img = render_strokes(req.strokes)  # the defaults `prepare` renders training sketches with
    else:
        img = decode_image(req.image or b"", max_pixels)
    return to_input_array(img, prep)


def sniff_format(data: bytes) -> str | None:
    """'PNG', 'JPEG' or 'WEBP' by the file's first bytes; None for anything else."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WEBP"
    return next((fmt for fmt, magics in MAGIC.items() if data.startswith(magics)), None)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """An accepted image's bytes -> RGB on white; InputError names what is wrong."""
    if not data:
        raise InputError(400, "empty_image", "the image is empty (0 bytes)")
    fmt = sniff_format(data)
    if fmt is None:
        raise InputError(415, "unsupported_image_type",
                         "the image is not a PNG, JPEG or WebP file")  # fmt: skip
    try:
        return load_image(data, max_pixels)
    except ImageTooLargeError as err:
        reason = str(err).removeprefix("<upload>: ")
        raise InputError(413, "too_many_pixels", f"the {fmt} image: {reason}") from err
    except ImageError as err:
        reason = str(err).removeprefix("<upload>: ")
    except Exception as err:  # Pillow's decoders raise more than OSError
        reason = f"not a readable image ({type(err).__name__}: {err})"
    raise InputError(422, "unreadable_image", f"the {fmt} image cannot be decoded: {reason}")
