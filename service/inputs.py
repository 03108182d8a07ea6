"""The sketch of ``POST /v1/search``: read, validated, and made an encoder input.

Three forms: a multipart upload (field ``image``: PNG, JPEG or WebP), JSON with
``image_base64`` (a ``data:`` URL is fine), or JSON with Quick, Draw!-style ``strokes``.
Images go through ``model.preprocess.load_image`` and strokes through ``render_strokes``
with its defaults, the ones ``prepare`` renders the training sketches with; both then go
through ``to_input_array``, as in training. Every fault raises InputError with a 4xx status
and a message that names it.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import json
import math
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Annotated, Any

import numpy as np
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, StrictInt
from python_multipart.multipart import MultipartParseError, MultipartParser, parse_options_header
from starlette.requests import Request

from gallery_store.base import Where
from model.image_structure import HEAD_BYTES, sniff_format
from model.preprocess import (
    DecodeLimits,
    ImageError,
    ImageTooLargeError,
    Preprocessing,
    Strokes,
    decode_image_bytes,
    render_strokes,
    to_input_array,
)
from service.settings import ServiceSettings

MULTIPART, JSON = "multipart/form-data", "application/json"
UPLOAD_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_PARTS = 20  # multipart parts: the image and a few fields
INK_CONTRAST = 16  # a sketch whose every channel spans fewer grey levels is blank
FILTER_FIELDS = ("classes", "path_prefix", "offset", "min_score")
JSON_FIELDS = frozenset({"image_base64", "strokes", "k", *FILTER_FIELDS})
MAX_CLASSES, MAX_NAME = 1000, 1024  # classes in a filter; characters of a class or a folder
FORM_NUMBER = re.compile(r"-?[0-9]{1,9}(\.[0-9]{1,9})?")  # a plain decimal: no 'nan', '1e9'

NUMBER = (int, float)  # exact types: bool is an int subclass, and is not a coordinate
FORM_INT = re.compile(r"[0-9]{1,9}")  # ASCII digits only: not '1_0', ' 5', '+5' or '٥'
# A surrogate escape or a surrogate's (invalid) UTF-8 bytes, which json.loads lets through.
SURROGATE = re.compile(rb"\\u[dD][89a-fA-F]|\xed[\xa0-\xbf]")
SHOWN = 40  # characters of a client's string a message repeats
# Runs blocking work (parsing, decoding) off the event loop, or refuses it when busy.
Offload = Callable[..., Awaitable[Any]]


class InputError(Exception):
    """A bad request: HTTP status, a short machine-readable code and a message for people."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status, self.code, self.detail = status, code, detail


class SearchJson(BaseModel):
    """The JSON form of a search: exactly one of ``image_base64`` and ``strokes``.

    The OpenAPI document's schema of it; bodies are checked by ``parse_json``, which
    bounds sizes and counts before looking at any value and stops at the first fault.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    image_base64: str | None = Field(
        None, description="a PNG, JPEG or WebP image, base64 (a data: URL is fine)"
    )
    strokes: list[list[list[float]]] | None = Field(
        None,
        description="Quick, Draw!-style strokes, each [[x0, x1, ...], [y0, y1, ...]] "
        "(optionally with a third list of times); any coordinate range, y down",
    )
    k: StrictInt | None = Field(None, description="how many photos to return")
    classes: list[Annotated[str, Field(max_length=MAX_NAME)]] | None = Field(
        None,
        max_length=MAX_CLASSES,
        description="only photos of these classes (names as /v1/index lists them)",
    )
    path_prefix: str | None = Field(
        None,
        max_length=MAX_NAME,
        description="only photos under this folder of the gallery (relative, e.g. 'fish')",
    )
    offset: StrictInt | None = Field(
        None, ge=0, description="skip this many of the best photos (pagination; default 0)"
    )
    min_score: float | None = Field(
        None, description="drop photos scoring below this cosine similarity"
    )


@dataclass(frozen=True)
class SketchRequest:
    """A parsed search: the sketch as image bytes or as strokes, k, and which photos: the
    filter (``where``), the page (``offset``) and the score cutoff."""

    k: int
    image: bytes | None = None
    strokes: Strokes | None = None
    where: Where | None = None
    offset: int = 0
    min_score: float | None = None


async def read_search_request(
    request: Request, settings: ServiceSettings, offload: Offload
) -> SketchRequest:
    """Parse and validate a search request of any of the three forms (JSON off the loop)."""
    content_type = request.headers.get("content-type", "")
    media = content_type.split(";")[0].strip().lower()
    if media == MULTIPART:
        body = await read_body(request, settings)
        return await offload(parse_multipart, body, content_type, settings)
    if media == JSON or media.endswith("+json"):
        return await offload(parse_json, await read_body(request, settings), settings)
    raise InputError(
        415,
        "unsupported_media_type",
        f"Content-Type {shown(media) if media else 'none'} is not accepted: send {MULTIPART} "
        f"with an 'image' file, or {JSON}",
    )


async def read_body(request: Request, settings: ServiceSettings) -> bytes:
    """The request body, refused (413) as soon as it exceeds the upload limit and cut off
    (408) when it has not all arrived within ``body_timeout_s``."""
    limit = settings.max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise too_large(int(declared), limit)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(settings.body_timeout_s):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise too_large(size, limit, at_least=True)
                chunks.append(chunk)
    except TimeoutError:
        detail = f"the request body did not arrive within {settings.body_timeout_s:g} s"
        raise InputError(408, "request_timeout", f"{detail} ({size} bytes came)") from None
    return b"".join(chunks)


def too_large(size: int, limit: int, at_least: bool = False) -> InputError:
    more = "at least " if at_least else ""
    return InputError(
        413, "upload_too_large", f"the request body is {more}{size} bytes; the limit is {limit}"
    )


@dataclass
class Part:
    """One part of a multipart body: its headers' name and filename, and its bytes."""

    name: str | None = None
    filename: str | None = None
    data: bytearray = field(default_factory=bytearray)


def parse_multipart(body: bytes, content_type: str, settings: ServiceSettings) -> SketchRequest:
    """The ``image`` part and the fields of a multipart body already read (blocking: run
    it off the event loop). The parts are counted before parsing: a body repeating the
    boundary makes the parser step through every near-delimiter in Python."""
    parts = split_multipart(body, content_type)
    images = [p for p in parts if p.name == "image"]
    if not images:
        raise InputError(
            422, "missing_image", "the multipart field 'image' (the sketch file) is missing"
        )
    if len(images) > 1:
        raise invalid("image", "given more than once")
    fields: dict[str, list[str]] = {name: [] for name in ("k", *FILTER_FIELDS)}
    for part in parts:
        if part.name not in fields:
            continue
        if part.filename is not None:
            raise InputError(
                422,
                "invalid_k" if part.name == "k" else "invalid_request",
                f"{part.name} must be a plain form field, not a file",
            )
        fields[part.name].append(field_text(part))
    for name, values in fields.items():
        if name != "classes" and len(values) > 1:
            raise invalid(name, "given more than once")
    k = fields.pop("k")
    return SketchRequest(
        k=parse_k(k[0] if k else None, settings),
        image=bytes(images[0].data),
        **form_filters(fields, settings),
    )


def split_multipart(body: bytes, content_type: str) -> list[Part]:
    """The parts of a multipart/form-data body (python-multipart's parser), at most
    ``MAX_PARTS``; 400 ``malformed_multipart`` naming the fault."""
    _, options = parse_options_header(content_type)
    boundary = options.get(b"boundary", b"")
    if not boundary:
        raise malformed_multipart("no boundary in the Content-Type header")
    delimiters = body.count(b"\r\n--" + boundary) + body.startswith(b"--" + boundary)
    if delimiters > MAX_PARTS + 1:
        raise malformed_multipart(
            f"more than {MAX_PARTS} parts (the boundary occurs {delimiters} times)"
        )
    parts: list[Part] = []
    header: list[bytes] = [b"", b""]

    def begin() -> None:
        parts.append(Part())

    def header_field(data: bytes, start: int, end: int) -> None:
        header[0] += data[start:end]

    def header_value(data: bytes, start: int, end: int) -> None:
        header[1] += data[start:end]

    def header_end() -> None:
        if header[0].lower() == b"content-disposition":
            _, params = parse_options_header(header[1])
            part = parts[-1]
            part.name = params[b"name"].decode("utf-8", "replace") if b"name" in params else None
            if b"filename" in params:
                part.filename = params[b"filename"].decode("utf-8", "replace")
        header[:] = [b"", b""]

    def part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data += data[start:end]

    callbacks = {
        "on_part_begin": begin,
        "on_header_field": header_field,
        "on_header_value": header_value,
        "on_header_end": header_end,
        "on_part_data": part_data,
    }
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except (MultipartParseError, ValueError) as err:
        raise malformed_multipart(str(err)) from err
    if not parts:
        raise malformed_multipart("no part (is the boundary right?)")
    return parts


def field_text(part: Part) -> str:
    """A form field's value, which must be UTF-8 text."""
    try:
        return part.data.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid(part.name or "field", "must be UTF-8 text") from None


def malformed_multipart(reason: str) -> InputError:
    return InputError(400, "malformed_multipart", f"malformed multipart body: {reason}")


def parse_json(body: bytes, settings: ServiceSettings) -> SketchRequest:
    """A JSON body with ``image_base64`` or ``strokes`` (and ``k``), checked strictly and
    cheaply: counts before values, and only the first fault is described (blocking)."""
    check_value_count(body, settings)
    data = load_json(body)
    if not isinstance(data, dict):
        raise invalid("body", f"the JSON body must be an object, not {json_type(data)}")
    unknown = next((key for key in data if key not in JSON_FIELDS), None)
    if unknown is not None:
        raise invalid(
            shown(unknown),
            "unknown field (the fields are image_base64, strokes, k, "
            "classes, path_prefix, offset and min_score)",
        )
    filters = json_filters(data, settings)
    k, image, strokes = data.get("k"), data.get("image_base64"), data.get("strokes")
    if k is not None and type(k) is not int:
        raise invalid("k", f"must be an integer, not {json_type(k)}")
    if image is not None and not isinstance(image, str):
        raise invalid("image_base64", f"must be a string, not {json_type(image)}")
    if (image is None) == (strokes is None):
        raise InputError(
            422, "invalid_request", "give the sketch as exactly one of 'image_base64' and 'strokes'"
        )
    k = check_k(k, settings)
    if image is not None:
        return SketchRequest(k=k, image=decode_base64(image), **filters)
    return SketchRequest(k=k, strokes=check_strokes(strokes, settings), **filters)


def json_filters(data: dict[str, Any], settings: ServiceSettings) -> dict[str, Any]:
    """``where``, ``offset`` and ``min_score`` of a JSON body, each checked for its type."""
    classes, prefix = data.get("classes"), data.get("path_prefix")
    offset, min_score = data.get("offset"), data.get("min_score")
    if classes is not None and not isinstance(classes, list):
        raise invalid("classes", f"must be an array of class names, not {json_type(classes)}")
    if classes is not None and any(not isinstance(c, str) for c in classes):
        bad = next(c for c in classes if not isinstance(c, str))
        raise invalid("classes", f"each class must be a string, not {json_type(bad)}")
    if prefix is not None and not isinstance(prefix, str):
        raise invalid("path_prefix", f"must be a string, not {json_type(prefix)}")
    if offset is not None and type(offset) is not int:
        raise invalid("offset", f"must be an integer, not {json_type(offset)}")
    if min_score is not None and type(min_score) not in (int, float):
        raise invalid("min_score", f"must be a number, not {json_type(min_score)}")
    if type(min_score) is int and abs(min_score) > 1e9:  # beyond any float's exact range
        raise invalid("min_score", "must be a finite number")
    return check_filters(classes, prefix, offset, min_score, settings)


def form_filters(fields: dict[str, list[str]], settings: ServiceSettings) -> dict[str, Any]:
    """The same from multipart fields: ``classes`` repeated, one field a class."""
    classes = fields["classes"] or None
    prefix = fields["path_prefix"][0] if fields["path_prefix"] else None
    offset = min_score = None
    if fields["offset"] and fields["offset"][0] != "":
        if not FORM_INT.fullmatch(fields["offset"][0]):
            raise invalid(
                "offset", f"must be a non-negative integer, not {shown(fields['offset'][0])}"
            )
        offset = int(fields["offset"][0])
    if fields["min_score"] and fields["min_score"][0] != "":
        if not FORM_NUMBER.fullmatch(fields["min_score"][0]):
            raise invalid("min_score", f"must be a number, not {shown(fields['min_score'][0])}")
        min_score = float(fields["min_score"][0])
    return check_filters(classes, prefix, offset, min_score, settings)


def check_filters(
    classes: list[str] | None,
    prefix: str | None,
    offset: int | None,
    min_score: float | None,
    settings: ServiceSettings,
) -> dict[str, Any]:
    """Bounds of the filter fields; SketchRequest's keyword arguments."""
    if classes is not None and len(classes) > MAX_CLASSES:
        raise invalid("classes", f"at most {MAX_CLASSES} classes, not {len(classes)}")
    if any(len(name) > MAX_NAME for name in [*(classes or []), prefix or ""]):
        raise invalid(
            "classes" if prefix is None or len(prefix) <= MAX_NAME else "path_prefix",
            f"names are at most {MAX_NAME} characters",
        )
    if offset is not None and not 0 <= offset <= settings.max_offset:
        raise InputError(
            422,
            "invalid_offset",
            f"offset must be between 0 and {settings.max_offset}, not {shown_int(offset)}",
        )
    if min_score is not None and not math.isfinite(min_score):
        raise invalid("min_score", "must be a finite number")
    where = Where(classes=None if classes is None else frozenset(classes), path_prefix=prefix)
    return {
        "where": None if where.empty else where,
        "offset": offset or 0,
        "min_score": None if min_score is None else float(min_score),
    }


def check_value_count(body: bytes, settings: ServiceSettings) -> None:
    """Refuse, before parsing, a body with more commas than any valid search has: values
    are comma-separated, at most three per point (x, y, t) and a few per stroke, and a
    valid body's only string with commas is a data: URL's one. Parsing millions of values
    holds the interpreter (and so the event loop) for seconds; counting them does not."""
    most = 3 * settings.max_points + 4 * settings.max_strokes + 16
    commas = body.count(b",")
    if commas > most:
        raise InputError(
            422,
            "too_many_values",
            f"the body holds {commas} values or more; "
            f"a drawing has at most {settings.max_points} points in "
            f"{settings.max_strokes} strokes",
        )


def load_json(body: bytes) -> Any:
    """``json.loads``; 400 naming the fault of a body that is not JSON, or not Unicode: a
    lone UTF-16 surrogate (an unpaired ``\\ud800`` escape, or its bytes) cannot be encoded
    again, so no message or result may hold it."""
    try:
        data = json.loads(body)
        if SURROGATE.search(body):  # rare: confirm on what was parsed
            json.dumps(data, ensure_ascii=False).encode("utf-8")
        return data
    except UnicodeEncodeError:
        reason = "a string in it holds a lone UTF-16 surrogate, which is not Unicode text"
    except json.JSONDecodeError as err:
        reason = f"{err.msg} at character {err.pos}"
    except UnicodeDecodeError:
        reason = "it is not UTF-8 text"
    except RecursionError:
        reason = "it is nested too deeply"
    except ValueError:  # e.g. an integer of more digits than Python converts
        reason = "a number in it is too long"
    raise InputError(400, "malformed_json", f"the body is not valid JSON ({reason})")


def invalid(where: str, what: str) -> InputError:
    return InputError(422, "invalid_request", f"{where}: {what}")


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for messages."""
    names = {
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


def parse_k(text: Any, settings: ServiceSettings) -> int:
    """k from a form field (None or empty: the default); plain ASCII digits only."""
    if text is None or text == "":
        return settings.default_k
    if not FORM_INT.fullmatch(str(text)):
        raise InputError(422, "invalid_k", f"k must be an integer, not {shown(str(text))}")
    return check_k(int(text), settings)


def check_k(k: int | None, settings: ServiceSettings) -> int:
    if k is None:
        return settings.default_k
    if not 1 <= k <= settings.max_k:
        raise InputError(
            422, "invalid_k", f"k must be between 1 and {settings.max_k}, not {shown_int(k)}"
        )
    return k


def shown(text: str, limit: int = SHOWN, quote: bool = True) -> str:
    """A client's string for a message: at most ``limit`` characters, quoted, everything
    outside printable ASCII escaped (so it is short, and always encodes)."""
    cut = text[:limit]
    escaped = json.dumps(cut)[1:-1] + ("..." if len(cut) < len(text) else "")
    return f"'{escaped}'" if quote else escaped


def shown_int(value: int) -> str:
    """A client's integer for a message: its first digits when it is long."""
    digits = str(value)  # at most 4300 digits: json.loads refuses longer ones
    return digits if len(digits) <= 20 else f"{digits[:20]}... ({len(digits)} digits)"


def decode_base64(text: str) -> bytes:
    """Bytes of a base64 string or a ``data:...;base64,`` URL."""
    if text.startswith("data:"):
        header, comma, text = text.partition(",")
        if not comma or not header.endswith(";base64"):
            raise InputError(
                422,
                "invalid_base64",
                "a data: URL must be base64-encoded, like 'data:image/png;base64,...'",
            )
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as err:
        detail = f"image_base64 is not valid base64 ({err})"
        raise InputError(422, "invalid_base64", detail) from err


def check_strokes(strokes: Any, settings: ServiceSettings) -> Strokes:
    """Strokes of a parsed JSON body: shape and counts first (cheap, bounded by the
    number of strokes), then every value, which must be a finite JSON number."""
    if not isinstance(strokes, list) or not strokes:
        raise invalid_strokes("strokes must be a non-empty list of strokes")
    if len(strokes) > settings.max_strokes:
        raise invalid_strokes(
            f"{len(strokes)} strokes; at most {settings.max_strokes} are accepted"
        )
    points = 0
    for i, stroke in enumerate(strokes):
        if not isinstance(stroke, list) or len(stroke) not in (2, 3):
            raise invalid_strokes(
                f"stroke {i} must be [[x...], [y...]] or [[x...], [y...], [t...]]"
            )
        if not all(isinstance(axis, list) for axis in stroke) or len(stroke[0]) != len(stroke[1]):
            raise invalid_strokes(f"stroke {i}: x and y must be lists of the same length")
        if len(stroke) == 3 and len(stroke[2]) != len(stroke[0]):
            raise invalid_strokes(f"stroke {i}: the times must be as many as the points")
        points += len(stroke[0])
        if points > settings.max_points:
            raise invalid_strokes(
                f"more than {settings.max_points} points; at most "
                f"{settings.max_points} are accepted"
            )
    if points == 0:
        raise invalid_strokes("the drawing has no points")
    for i, stroke in enumerate(strokes):
        for j, values in enumerate(stroke):
            check_numbers(values, f"strokes.{i}.{j}")
    return check_extent(strokes)


def check_numbers(values: list[Any], where: str) -> None:
    """Every value an int or a float (not a bool, not a string); the first other one named."""
    if set(map(type, values)) <= set(NUMBER):
        return
    n = next(n for n, v in enumerate(values) if type(v) not in NUMBER)
    raise invalid(f"{where}.{n}", f"must be a number, not {json_type(values[n])}")


def check_extent(strokes: list[list[list[float]]]) -> Strokes:
    """Finite coordinates whose span is finite too (the renderer scales by it)."""
    try:
        xy = np.concatenate([np.asarray(s[:2], dtype=np.float64) for s in strokes if s[0]], 1)
    except OverflowError:  # an integer beyond float range
        raise invalid_strokes("coordinates must be finite numbers") from None
    if not np.isfinite(xy).all():
        raise invalid_strokes("coordinates must be finite numbers")
    with np.errstate(over="ignore"):
        if not np.isfinite(xy.max(axis=1) - xy.min(axis=1)).all():
            raise invalid_strokes("the coordinates span too wide a range")
    return strokes


def invalid_strokes(detail: str) -> InputError:
    return InputError(422, "invalid_strokes", detail)


def to_query_array(req: SketchRequest, prep: Preprocessing, limits: DecodeLimits) -> np.ndarray:
    """The encoder input (3, S, S) of a parsed sketch (blocking: run it in a thread)."""
    if req.strokes is not None:
        img = render_strokes(req.strokes)  # the defaults `prepare` renders training sketches with
    else:
        img = decode_image(req.image or b"", limits)
        check_ink(img)
    return to_input_array(img, prep)


def check_ink(img: Image.Image) -> None:
    """422 ``empty_drawing`` for a sketch with nothing drawn: every colour channel spans
    fewer than ``INK_CONTRAST`` levels (all white, one pixel, fully transparent)."""
    if all(hi - lo < INK_CONTRAST for lo, hi in img.getextrema()):  # type: ignore[union-attr]
        raise InputError(
            422, "empty_drawing", "the sketch is blank: nothing is drawn on it (one colour)"
        )


def decode_image(data: bytes, limits: DecodeLimits | int) -> Image.Image:
    """An accepted image's bytes -> RGB on white; InputError names what is wrong
    (``limits``: a DecodeLimits, or just the pixel limit)."""
    if isinstance(limits, int):
        limits = DecodeLimits(limits)
    if not data:
        raise InputError(400, "empty_image", "the image is empty (0 bytes)")
    fmt = sniff_format(data[:HEAD_BYTES])
    if fmt not in UPLOAD_FORMATS:
        raise InputError(415, "unsupported_image_type", "the image is not a PNG, JPEG or WebP file")
    try:
        return decode_image_bytes(data, replace(limits, formats=(fmt,)))[0]
    except ImageTooLargeError as err:
        reason = str(err).removeprefix("<upload>: ")
        raise InputError(413, err.code, f"the {fmt} image: {reason}") from err
    except ImageError as err:
        reason = str(err).removeprefix("<upload>: ")
    except Exception:  # Pillow's decoders raise more than OSError; their words stay here
        reason = "not a readable image (corrupt or truncated data)"
    raise InputError(422, "unreadable_image", f"the {fmt} image cannot be decoded: {reason}")
