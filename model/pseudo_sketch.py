"""Pseudo-sketches of photos: dark lines on white where a photo's brightness changes sharply,
the drawing fitted into a square like a rendered sketch.

A photo's backbone features and a sketch's lie far apart (the domain gap); the features of
the photo's edge map lie in the sketch domain. A photo encoder trained with
``pseudo_sketch`` therefore reads each photo twice, as itself and as its pseudo-sketch: its
input is the two normalised images stacked, (6, S, S) (``encoder_input_array``). Numpy and
Pillow only, so feature extraction, the exported encoder's callers and the gallery builder
all draw the same lines; keeping the drawing's aspect ratio and margin as ``render_strokes``
does matters (the edges of the photo as it is, stretched to a square, lose half
of the gain; BENCHMARKS.md section 1).
"""

from __future__ import annotations

import hashlib
import json
from functools import cache

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from pydantic import BaseModel, Field

from model.preprocess import Preprocessing, to_input_array


class EdgeConfig(BaseModel):
    """How a pseudo-sketch is drawn from a photo."""

    threshold: float = Field(0.1, gt=0.0)  # brightness step (0..1) over two pixels that inks
    blur_sigma: float = Field(1.0, ge=0.0)  # Gaussian smoothing before the differences
    line_width: int = Field(3, ge=1)  # ink grown to this many pixels, as a sketch's strokes
    size: int = Field(256, ge=32)  # the canvas, as prepared sketches
    margin: float = Field(0.1, ge=0.0, lt=0.5)  # as ``render_strokes``
    background: int = Field(250, ge=1, le=255)  # greys at or above this frame no content


def pseudo_sketch(img: Image.Image, cfg: EdgeConfig | None = None) -> Image.Image:
    """The photo's edges as black lines on a white square RGB canvas."""
    cfg = cfg or EdgeConfig()
    grey = img.convert("L")
    canvas = Image.new("L", (cfg.size, cfg.size), 255)
    # the content's box: a cut-out on white is drawn alone; a full photo keeps its frame
    box = grey.point(lambda v: 255 if v < cfg.background else 0).getbbox()
    if box is None:
        return canvas.convert("RGB")
    x0, y0, x1, y1 = box
    scale = cfg.size * (1 - 2 * cfg.margin) / max(x1 - x0, y1 - y0)
    # The edges of the whole photo at the drawing's scale: a cut-out's outline closes on the
    # white around it, and a photo's own frame draws nothing (borders are replicated).
    whole = grey.resize(
        (max(1, round(grey.width * scale)), max(1, round(grey.height * scale))), Image.LANCZOS
    )
    pad = cfg.line_width
    left, top = max(0, round(x0 * scale) - pad), max(0, round(y0 * scale) - pad)
    right = min(whole.width, round(x1 * scale) + pad)
    bottom = min(whole.height, round(y1 * scale) + pad)
    ink = _edges(whole, cfg).crop((left, top, right, bottom))
    # the content box, not the padded crop, is centred
    dx = (cfg.size - round((x1 - x0) * scale)) // 2 - (round(x0 * scale) - left)
    dy = (cfg.size - round((y1 - y0) * scale)) // 2 - (round(y0 * scale) - top)
    canvas.paste(0, (dx, dy), ink)
    return canvas.convert("RGB")


def _edges(grey: Image.Image, cfg: EdgeConfig) -> Image.Image:
    """Mask (mode L, 255 = ink) of the strong brightness steps of ``grey``, grown to the line
    width. The borders are replicated, so a photo's frame draws no line."""
    if cfg.blur_sigma > 0:
        grey = grey.filter(ImageFilter.GaussianBlur(cfg.blur_sigma))
    a = np.pad(np.asarray(grey, np.float32) / 255.0, 1, mode="edge")
    gx = a[1:-1, 2:] - a[1:-1, :-2]
    gy = a[2:, 1:-1] - a[:-2, 1:-1]
    mask = Image.fromarray(np.where(gx * gx + gy * gy > cfg.threshold**2, 255, 0).astype(np.uint8))
    return mask.filter(ImageFilter.MaxFilter(cfg.line_width)) if cfg.line_width > 1 else mask


def encoder_input_array(
    img: Image.Image, prep: Preprocessing, edges: EdgeConfig | None = None
) -> np.ndarray:
    """An image as an encoder's input: ``to_input_array`` (3, S, S), or with ``edges`` the
    photo and its pseudo-sketch stacked (6, S, S)."""
    arr = to_input_array(img, prep)
    if edges is None:
        return arr
    return np.concatenate([arr, to_input_array(pseudo_sketch(img, edges), prep)])


@cache
def _probe() -> Image.Image:
    """A fixed photo-like image: coloured shapes and a soft gradient on white."""
    img = Image.new("RGB", (300, 200), "white")
    draw = ImageDraw.Draw(img)
    draw.ellipse((40, 30, 160, 170), fill=(200, 40, 40))
    draw.rectangle((150, 60, 260, 150), fill=(40, 90, 200), outline=(0, 0, 0), width=3)
    for x in range(60, 240):
        draw.line((x, 175, x, 190), fill=(x, x, 255 - x))
    return img


def edge_key(cfg: EdgeConfig) -> str:
    """What the pseudo-sketches depend on: the settings and the drawing of a fixed probe
    image, so a changed setting, edge code or Pillow resampler re-keys every cache."""
    h = hashlib.sha256(json.dumps(cfg.model_dump(), sort_keys=True).encode())
    h.update(pseudo_sketch(_probe(), cfg).tobytes())
    return h.hexdigest()[:16]
