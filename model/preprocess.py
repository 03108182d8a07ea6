"""Image and stroke preprocessing shared by training, the data converters, export and serving.

Numpy and Pillow only, so the serving side needs no PyTorch.
"""

from __future__ import annotations

import io
import re
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError
from pydantic import BaseModel

from model.image_structure import (
    DEFAULT_LIMITS,
    ImageStructureError,
    StructureLimits,
    check_structure,
)

Strokes = Sequence[Sequence[Sequence[float]]]  # [[x0, x1, ...], [y0, y1, ...], ([t...])]
# File suffixes read as images by the data sets and the gallery scan alike.
IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
)


class ImageError(ValueError):
    """An image could not be read or is unusable; the message names the source."""


class ImageTooLargeError(ImageError):
    """An image past a cost limit: ``code`` says which (``too_many_pixels``, also for a
    decompression bomb; ``too_many_scans``; ``image_too_complex``: its container structure,
    ``model.image_structure``)."""

    def __init__(self, message: str, code: str = "too_many_pixels") -> None:
        super().__init__(message)
        self.code = code


class Preprocessing(BaseModel):
    """How an image becomes a backbone input: square resize, then (x/255 - mean) / std."""

    image_size: int = 224
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.5, 0.5, 0.5)


def to_rgb_on_white(img: Image.Image) -> Image.Image:
    """8-bit RGB with the image's tones kept; transparency is composited onto white.

    Pillow's own ``convert`` clips 16- and 32-bit greyscale (``I;16*``, ``I``) and float
    (``F``) pixels to 0..255, which turns a 16-bit photo white; these are scaled instead
    (``_grey_to_8bit``). Alpha in any form (RGBA, LA, La, RGBa, PA, palette or greyscale with a
    transparent colour) goes onto white; CMYK, YCbCr, LAB, HSV and 1-bit convert as Pillow does.
    """
    if img.mode.startswith("I") or img.mode == "F":
        transparent = img.info.get("transparency")
        grey = _grey_to_8bit(img)
        if isinstance(transparent, int):  # a tRNS grey level in the source's own scale
            see_through = np.asarray(img) == transparent
            alpha = Image.fromarray(np.where(see_through, 0, 255).astype(np.uint8))
            grey = Image.merge("LA", (grey, alpha))
        img = grey
    if img.mode == "RGBa":  # premultiplied alpha: un-premultiply first
        img = img.convert("RGBA")
    elif img.mode == "La":  # Pillow's La -> LA keeps the premultiplied grey
        grey, alpha = (np.asarray(img)[..., i].astype(np.float64) for i in (0, 1))
        straight = np.where(alpha > 0, grey * 255.0 / np.maximum(alpha, 1), 0.0)
        grey8 = np.clip(np.rint(straight), 0, 255).astype(np.uint8)
        img = Image.fromarray(np.stack([grey8, alpha.astype(np.uint8)], -1), "LA")
    if _has_alpha(img):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA") or (
        img.mode in ("P", "L", "RGB") and "transparency" in img.info
    )


def _grey_to_8bit(img: Image.Image, rows: int = 256) -> Image.Image:
    """8-bit greyscale of a 16-bit, 32-bit integer or float image, keeping its tones.

    16-bit modes span 0..65535. ``I`` (32-bit) holds 16-bit PNG and TIFF data in older Pillow
    versions, so it is read as 0..65535 too unless every value fits 0..255 (then it is 8-bit
    data widened). ``F`` is read as 0..1 when every value does, else as 0..255. Converted
    ``rows`` at a time, so a large image costs little beyond its own pixels.
    """
    arr = np.asarray(img)
    out = np.empty(arr.shape, np.uint8)
    if arr.size == 0:
        return Image.fromarray(out, "L")
    lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
    if img.mode == "F":
        scale = 255.0 if lo >= 0 and hi <= 1.0 else 1.0
    else:
        scale = 1.0 if img.mode == "I" and lo >= 0 and hi <= 255 else 1.0 / 257.0
    for start in range(0, arr.shape[0], rows):
        block = arr[start : start + rows].astype(np.float32)
        if img.mode == "F":
            np.nan_to_num(block, copy=False, nan=0.0)
        block *= scale
        np.rint(block, out=block)
        np.clip(block, 0, 255, out=block)
        out[start : start + rows] = block
    return Image.fromarray(out, "L")


@dataclass(frozen=True)
class DecodeLimits:
    """What decoding an image may cost, all checked before its pixels are decoded.

    ``max_pixels``: the header's width x height (ImageTooLargeError past it);
    ``max_whole_pixels``: a lower bound for formats decoded at full size (all but JPEG);
    ``max_jpeg_scans``: a JPEG's start-of-scan markers (a progressive JPEG repeating a scan
    thousands of times costs seconds to decode; real ones have a dozen or so);
    ``structure``: the container's chunks, markers and metadata (``model.image_structure``).
    ``draft_size`` makes a much larger image smaller while it is decoded (JPEG: libjpeg's DCT
    scaling) or right after (others: ``Image.reduce``), never below ``draft_size`` on either
    side. ``formats``: the formats accepted (default ``DECODED_FORMATS``).
    """

    max_pixels: int | None = None
    max_jpeg_scans: int | None = None
    draft_size: int | None = None
    max_whole_pixels: int | None = None
    structure: StructureLimits = DEFAULT_LIMITS
    formats: tuple[str, ...] | None = None


def load_image(
    source: str | Path | bytes,
    max_pixels: int | None = None,
    *,
    max_jpeg_scans: int | None = None,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode an image file or bytes to RGB on white, raising ImageError on any failure
    (the bounds: ``DecodeLimits``)."""
    name = "<upload>" if isinstance(source, bytes) else str(source)
    if isinstance(source, bytes):
        data = source
    else:
        try:
            data = Path(source).read_bytes()
        except OSError as err:
            raise ImageError(f"{name}: cannot read the file ({err.strerror or err})") from err
    limits = DecodeLimits(max_pixels, max_jpeg_scans, draft_size)
    return decode_image_bytes(data, limits, name)[0]


def decode_image_bytes(
    data: bytes, limits: DecodeLimits, name: str = "<upload>"
) -> tuple[Image.Image, tuple[int, int]]:
    """An image's bytes -> (RGB on white, its (width, height) as shown: EXIF orientation
    applied, before any draft reduction); ImageError naming ``name`` on any failure."""
    try:
        fmt = check_structure(data, limits.structure)
        with Image.open(io.BytesIO(data), formats=_formats(limits.formats)) as img:
            _check_cost(img, name, data, limits)
            orientation = _orientation(img)
            size = img.size
            if limits.draft_size is not None and img.format in JPEG_FORMATS:
                img.draft(None, (limits.draft_size, limits.draft_size))  # mode kept, size >= draft
            img.load()
            if getattr(img, "tag_v2", None) is not None:  # TIFF: Pillow may have turned it
                orientation = _orientation(img)
            out = _reduce(img, limits.draft_size) if limits.draft_size is not None else img
            turned = _transpose(out, orientation)
            if orientation in (5, 6, 7, 8):
                size = size[::-1]
            return to_rgb_on_white(turned), size
    except ImageError:
        raise
    except ImageStructureError as err:
        raise ImageTooLargeError(f"{name}: {err}", "image_too_complex") from err
    except Image.DecompressionBombError as err:
        # Pillow's own refusal, before the header reached max_pixels; its message
        # quotes Pillow's limit, so name the caller's instead.
        limit = limits.max_pixels if limits.max_pixels is not None else Image.MAX_IMAGE_PIXELS
        raise ImageTooLargeError(
            f"{name}: declares too many pixels (a decompression bomb); at most {limit} are accepted"
        ) from err
    except UnidentifiedImageError as err:
        what = f"a {fmt} image" if fmt else "unknown format"
        raise ImageError(f"{name}: not a readable image ({what})") from err
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, struct.error) as err:
        # what Pillow's readers raise on malformed files (one file must not end a build)
        raise ImageError(f"{name}: not a readable image ({_clean(err)})") from err


# What ``load_image`` decodes: raster formats Pillow reads itself (never EPS or PDF, which
# need Ghostscript, nor the rarer formats no photo comes in).
DECODED_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM", "AVIF", "HEIF")
JPEG_FORMATS = ("JPEG", "MPO")  # Pillow opens multi-picture JPEGs as MPO
JPEG_SOS = b"\xff\xda"  # start of scan; entropy-coded 0xFF bytes are stuffed (0xFF00)
ORIENTATION = 0x0112  # the EXIF tag
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_XMP_ORIENTATION = r'tiff:Orientation(="|>)([0-9])'
_REPR = re.compile(r"<[^<>]* at 0x[0-9a-fA-F]+>|<_io\.\w+ name=[^<>]*>")


def decodable_formats() -> frozenset[str]:
    """The formats of ``DECODED_FORMATS`` this Pillow has a decoder for."""
    return frozenset(_formats(None))


@cache
def _formats(wanted: tuple[str, ...] | None) -> tuple[str, ...]:
    Image.init()
    return tuple(f for f in wanted or DECODED_FORMATS if f in Image.OPEN)


def _check_cost(img: Image.Image, name: str, data: bytes, limits: DecodeLimits) -> None:
    """Refuse an opened (not yet decoded) image past the pixel or JPEG-scan limit."""
    limit = limits.max_pixels
    if limits.max_whole_pixels is not None and img.format not in JPEG_FORMATS:
        limit = min(limit or limits.max_whole_pixels, limits.max_whole_pixels)
    if limit is not None and img.width * img.height > limit:
        kind = ""
        if limits.max_whole_pixels is not None:  # the limit depends on the format: name it
            kind = " for a JPEG" if img.format in JPEG_FORMATS else f" for {img.format}"
        raise ImageTooLargeError(
            f"{name}: {img.width}x{img.height} pixels; at most {limit} are accepted{kind}"
        )
    scans_limit = limits.max_jpeg_scans
    if scans_limit is not None and img.format in JPEG_FORMATS:
        scans = data.count(JPEG_SOS)
        if scans > scans_limit:
            raise ImageTooLargeError(
                f"{name}: a JPEG of {scans} scans; at most {scans_limit} are accepted",
                "too_many_scans",
            )


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation (1 to 8; 1 when none) as Pillow's ``exif_transpose`` reads it:
    a TIFF's own directory, else the EXIF block (or PNG's hex 'Raw profile type exif'), else
    the XMP. Only the first directory's entry table is read, so a huge EXIF costs nothing
    (Pillow's ``exif_transpose`` re-encodes every tag)."""
    tags = getattr(img, "tag_v2", None)
    if tags is not None:
        value = tags.get(ORIENTATION)
        return value if isinstance(value, int) else 1
    exif = img.info.get("exif")
    raw = img.info.get("Raw profile type exif")
    if exif is None and isinstance(raw, str):
        try:
            exif = bytes.fromhex("".join(raw.split("\n")[3:]))
        except ValueError:
            exif = None
    value = exif_orientation(exif) if isinstance(exif, bytes | bytearray) else None
    if value is not None:
        return value
    xmp = img.info.get("XML:com.adobe.xmp")
    pattern: str | bytes = _XMP_ORIENTATION
    if not xmp and (xmp := img.info.get("xmp")):
        pattern = _XMP_ORIENTATION.encode()
    match = re.search(pattern, xmp) if isinstance(xmp, str | bytes) else None  # type: ignore[arg-type]
    return int(match[2]) if match else 1


def exif_orientation(exif: bytes) -> int | None:
    """The Orientation entry of an EXIF block's first directory (0 when it is not a single
    number), None when there is none; the block's other entries are never decoded."""
    data = exif[6:] if exif.startswith(b"Exif\x00\x00") else exif
    order = {b"II*\x00": "little", b"MM\x00*": "big"}.get(bytes(data[:4]))
    if order is None:
        return None
    start = int.from_bytes(data[4:8], order)
    count = int.from_bytes(data[start : start + 2], order)
    table = bytes(data[start + 2 : start + 2 + 12 * count])
    tag = ORIENTATION.to_bytes(2, order)  # type: ignore[arg-type]
    at = table.find(tag)
    while at >= 0 and at % 12:
        at = table.find(tag, at + 1)
    if at < 0 or len(table) < at + 12:
        return None
    kind = int.from_bytes(table[at + 2 : at + 4], order)  # type: ignore[arg-type]
    values = int.from_bytes(table[at + 4 : at + 8], order)  # type: ignore[arg-type]
    width = {1: 1, 3: 2, 4: 4, 6: 1, 8: 2, 9: 4}.get(kind)
    if values != 1 or width is None:
        return 0
    return int.from_bytes(table[at + 8 : at + 8 + width], order, signed=kind in (6, 8, 9))  # type: ignore[arg-type]


def _transpose(img: Image.Image, orientation: int) -> Image.Image:
    method = _TRANSPOSE.get(orientation)
    return img if method is None else img.transpose(method)


def _reduce(img: Image.Image, size: int) -> Image.Image:
    """``img`` shrunk by a whole factor (box filter) while both sides stay >= ``size``."""
    factor = min(img.width // size, img.height // size)
    if factor < 2 or img.mode not in REDUCIBLE_MODES:
        return img
    reduced = img.reduce(factor)
    reduced.info = img.info  # keep the EXIF orientation and transparency
    return reduced


# Modes whose pixels may be averaged; palette (indices) and bilevel images keep their size.
REDUCIBLE_MODES = frozenset({"L", "LA", "RGB", "RGBA", "I", "F", "CMYK", "YCbCr"})


def _clean(err: BaseException) -> str:
    """An exception's message without object reprs such as ``<_io.BytesIO object at 0x..>``."""
    return clean_message(str(err)) or type(err).__name__


def clean_message(text: str) -> str:
    """``text`` without object reprs (``<_io.BytesIO object at 0x..>``, ``<_io.BufferedReader
    name='/photos/x.jpg'>``): they name the data or a file, not the fault."""
    return _REPR.sub("the data", text).strip()


def to_input_array(img: Image.Image, prep: Preprocessing) -> np.ndarray:
    """RGB image -> normalised float32 CHW array of the backbone's input size."""
    resized = img.convert("RGB").resize((prep.image_size, prep.image_size), Image.BILINEAR)
    arr = np.asarray(resized, dtype=np.float32) / 255.0
    arr = (arr - np.asarray(prep.mean, np.float32)) / np.asarray(prep.std, np.float32)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def render_strokes(
    strokes: Strokes, size: int = 256, stroke_width: float = 3.0, margin: float = 0.1
) -> Image.Image:
    """Draw Quick, Draw!-style strokes black on white, fitted into a square canvas.

    Works for both the simplified (0-255) and raw (screen pixel) formats: the drawing's
    bounding box is scaled, keeping its aspect ratio, into the canvas less ``margin``
    (a fraction of the side) on every edge; the ink, not just the stroke centres, stays inside.
    ``stroke_width`` is in output pixels; strokes get round ends, and a stroke that is a
    single point (a tap) becomes a dot of that width.
    """
    paths = [np.stack([np.asarray(s[0], float), np.asarray(s[1], float)], 1) for s in strokes]
    paths = [p for p in paths if len(p) > 0]
    if not paths:
        raise ValueError("a drawing needs at least one stroke with a point")
    points = np.concatenate(paths)
    lo, hi = points.min(0), points.max(0)
    extent = max(float((hi - lo).max()), 1e-6)
    width = max(1, round(stroke_width))
    # Pillow's ink reaches width // 2 pixels beyond a stroke's centre line.
    inner = max((size - 1) * (1.0 - 2.0 * margin) - 2 * (width // 2), 0.0)
    scale = inner / extent
    offset = (size - 1 - (hi - lo) * scale) / 2.0  # centre the drawing
    canvas = Image.new("RGB", (size, size), "white")
    draw = ImageDraw.Draw(canvas)
    for path in paths:
        xy = [(float(x), float(y)) for x, y in (path - lo) * scale + offset]
        if len(xy) > 1:
            draw.line(xy, fill="black", width=width, joint="curve")
        for x, y in {xy[0], xy[-1]}:  # round ends; a dot for a single-point stroke
            _dot(draw, x, y, width)
    return canvas


def _dot(draw: ImageDraw.ImageDraw, x: float, y: float, width: int) -> None:
    """A filled dot ``width`` pixels across, centred on (x, y)."""
    if width == 1:
        draw.point((x, y), fill="black")
        return
    r = (width - 1) / 2
    draw.ellipse([x - r, y - r, x + r, y + r], fill="black")


def validate_strokes(strokes: object) -> Strokes:
    """Check the [[x...], [y...](, [t...])] shape; raise ValueError naming the fault."""
    if not isinstance(strokes, list) or not strokes:
        raise ValueError("strokes must be a non-empty list of strokes")
    for i, stroke in enumerate(strokes):
        if not isinstance(stroke, list) or len(stroke) not in (2, 3):
            raise ValueError(f"stroke {i} must be [[x...], [y...]] or [[x...], [y...], [t...]]")
        xs, ys = stroke[0], stroke[1]
        if not isinstance(xs, list) or not isinstance(ys, list) or len(xs) != len(ys):
            raise ValueError(f"stroke {i}: x and y must be lists of the same length")
        if not all(isinstance(v, int | float) and np.isfinite(v) for v in (*xs, *ys)):
            raise ValueError(f"stroke {i}: coordinates must be finite numbers")
    return strokes
