"""A picture of retrieval results: each row a query sketch, then its top-k photos.

Drawn with matplotlib's Agg canvas (no display, no pyplot state). Every cell is one inch
square and the figure is saved at ``cell_px`` dots per inch, so the PNG is exactly
``(k + 1) * cell_px`` wide and ``Q * cell_px`` high and the text keeps its proportions at
any cell size. A photo of the query's class has a MATCH_COLOR frame, any other a
MISMATCH_COLOR one; under it are its class and score. An image that is missing or
unreadable is drawn as a grey placeholder.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from PIL import Image, ImageOps

from model.preprocess import ImageError, load_image

MATCH_COLOR = (0, 170, 0)
MISMATCH_COLOR = (220, 0, 0)
QUERY_COLOR = (40, 40, 40)
PLACEHOLDER_COLOR = (170, 170, 170)

IMAGE_SIDE = 0.7  # image side, as a fraction of the cell
IMAGE_BOTTOM = 0.26  # gap under the image for the caption, as a fraction of the cell
FONT_SIZE = 6.5  # points; a cell is one inch
MAX_LABEL_CHARS = 18
MAX_IMAGE_PIXELS = 50_000_000


def _load_or_none(path: Path) -> Image.Image | None:
    """The image at path, or None when it is missing or unreadable."""
    try:
        return load_image(path, max_pixels=MAX_IMAGE_PIXELS)
    except ImageError:
        return None


def _tile(img: Image.Image | None, side: int, frame: tuple[int, int, int]) -> np.ndarray:
    """A side x side RGB array: the image fitted on white (or grey placeholder) in a frame."""
    width = max(2, side // 16)
    inner = (side - 2 * width, side - 2 * width)
    if img is None:
        body = Image.new("RGB", inner, PLACEHOLDER_COLOR)
    else:
        body = ImageOps.pad(img, inner, method=Image.Resampling.LANCZOS, color="white")
    return np.asarray(ImageOps.expand(body, border=width, fill=frame))


def _short(label: object) -> str:
    """The label as text, cut to MAX_LABEL_CHARS."""
    text = str(label)
    return text if len(text) <= MAX_LABEL_CHARS else text[: MAX_LABEL_CHARS - 1] + "…"


def _draw_cell(
    fig: Figure,
    row: int,
    col: int,
    grid: tuple[int, int],
    tile: tuple[Image.Image | None, tuple[int, int, int], int],
    caption: str,
) -> None:
    """One image with its caption in cell (row, col) of a (rows, cols) grid."""
    img, frame, side_px = tile
    rows, cols = grid
    left, bottom = col / cols, (rows - 1 - row) / rows  # cell origin, figure fraction
    margin = (1 - IMAGE_SIDE) / 2
    x0, y0 = left + margin / cols, bottom + IMAGE_BOTTOM / rows
    ax = fig.add_axes((x0, y0, IMAGE_SIDE / cols, IMAGE_SIDE / rows))
    ax.imshow(_tile(img, side_px, frame), interpolation="nearest", extent=(0, 1, 0, 1))
    ax.set_axis_off()
    if img is None:
        ax.text(0.5, 0.5, "no image", ha="center", va="center", fontsize=FONT_SIZE)
    x, y = left + 0.5 / cols, bottom + (IMAGE_BOTTOM - 0.03) / rows
    fig.text(x, y, caption, ha="center", va="top", fontsize=FONT_SIZE, linespacing=1.1)


def _check_shapes(
    query_paths: Sequence[Path],
    query_labels: Sequence[object],
    gallery_paths: Sequence[Path],
    gallery_labels: Sequence[object],
    top: np.ndarray,
    scores: np.ndarray,
) -> None:
    """Raise ValueError unless the arguments describe the same queries and gallery."""
    if top.ndim != 2 or scores.shape != top.shape:
        raise ValueError(f"top_indices and scores must both be (Q, k): {top.shape}, {scores.shape}")
    if not len(query_paths) == len(query_labels) == len(top):
        counts = f"{len(query_paths)} query paths, {len(query_labels)} labels, {len(top)} rows"
        raise ValueError(f"queries disagree: {counts}")
    if len(gallery_paths) != len(gallery_labels):
        raise ValueError(f"{len(gallery_paths)} gallery paths but {len(gallery_labels)} labels")
    if top.size and (top.min() < 0 or top.max() >= len(gallery_paths)):
        raise ValueError(f"top_indices must lie in 0..{len(gallery_paths) - 1}")


def save_retrieval_figure(
    out_png: Path,
    query_paths: Sequence[Path],
    query_labels: Sequence[object],
    gallery_paths: Sequence[Path],
    gallery_labels: Sequence[object],
    top_indices: ArrayLike,
    scores: ArrayLike,
    cell_px: int = 160,
) -> None:
    """Write a PNG grid: row i is query i, then gallery items top_indices[i] with scores[i]."""
    top, sc = np.asarray(top_indices), np.asarray(scores, dtype=float)
    _check_shapes(query_paths, query_labels, gallery_paths, gallery_labels, top, sc)
    if len(top) == 0:
        raise ValueError("there are no queries to draw")
    grid = (len(top), top.shape[1] + 1)
    side = round(IMAGE_SIDE * cell_px)
    fig = Figure(figsize=(grid[1], grid[0]), dpi=cell_px, facecolor="white")
    FigureCanvasAgg(fig)
    for i, (q_path, q_label) in enumerate(zip(query_paths, query_labels, strict=True)):
        query_tile = (_load_or_none(Path(q_path)), QUERY_COLOR, side)
        _draw_cell(fig, i, 0, grid, query_tile, f"query\n{_short(q_label)}")
        for j, (g, score) in enumerate(zip(top[i].tolist(), sc[i].tolist(), strict=True)):
            frame = MATCH_COLOR if gallery_labels[g] == q_label else MISMATCH_COLOR
            tile = (_load_or_none(Path(gallery_paths[g])), frame, side)
            _draw_cell(fig, i, j + 1, grid, tile, f"{_short(gallery_labels[g])}\n{score:.3f}")
    Path(out_png).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=cell_px, facecolor="white")
