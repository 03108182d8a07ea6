"""The retrieval picture: its size, frame colours and tolerance of bad images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index_builder.training.report_figure import (
    MATCH_COLOR,
    MISMATCH_COLOR,
    PLACEHOLDER_COLOR,
    save_retrieval_figure,
)

CELL = 80


def _write_image(path: Path, size: tuple[int, int], rgb: tuple[int, int, int]) -> Path:
    """A small image of one colour with a white stripe."""
    arr = np.zeros((size[1], size[0], 3), np.uint8) + np.uint8(rgb)
    arr[: size[1] // 4] = 255
    Image.fromarray(arr).save(path)
    return path


def _count_near(cell: np.ndarray, rgb: tuple[int, int, int], tol: int = 12) -> int:
    """Pixels of the cell within tol of rgb on every channel."""
    return int((np.abs(cell[..., :3].astype(int) - rgb) <= tol).all(-1).sum())


def _cell(png: np.ndarray, row: int, col: int) -> np.ndarray:
    """The pixels of one grid cell."""
    return png[row * CELL : (row + 1) * CELL, col * CELL : (col + 1) * CELL]


@pytest.fixture
def figure(tmp_path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A 2-query, top-3 picture and which result cells should be framed as matches."""
    queries = [
        _write_image(tmp_path / "q0.png", (30, 30), (90, 90, 90)),
        tmp_path / "missing_query.png",
    ]
    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"not an image")
    gallery = [
        _write_image(tmp_path / "g0.jpg", (40, 20), (30, 60, 200)),
        _write_image(tmp_path / "g1.png", (16, 48), (120, 40, 160)),
        corrupt,
        tmp_path / "missing.jpg",
        _write_image(tmp_path / "g4.png", (64, 64), (20, 20, 20)),
    ]
    g_labels = ["cat", "dog", "cat", "dog", "cow"]
    top = np.array([[0, 1, 2], [3, 4, 0]])
    scores = np.array([[0.9, 0.8, 0.7], [0.95, 0.5, -0.1]])
    out = tmp_path / "sub" / "retrieval.png"
    save_retrieval_figure(out, queries, ["cat", "dog"], gallery, g_labels, top, scores, CELL)
    match = np.array([[True, False, True], [True, False, False]])
    return np.asarray(Image.open(out).convert("RGB")), match


def test_png_has_one_cell_per_image(figure: tuple[np.ndarray, np.ndarray]) -> None:
    png, _ = figure
    assert png.shape[:2] == (2 * CELL, 4 * CELL)


def test_frames_are_green_for_matches_and_red_otherwise(
    figure: tuple[np.ndarray, np.ndarray],
) -> None:
    png, match = figure
    for row in range(2):
        query = _cell(png, row, 0)
        assert _count_near(query, MATCH_COLOR) == 0
        assert _count_near(query, MISMATCH_COLOR) == 0
        for col in range(3):
            cell = _cell(png, row, col + 1)
            colors = (MATCH_COLOR, MISMATCH_COLOR)
            want, other = colors if match[row, col] else colors[::-1]
            assert _count_near(cell, want) > 100, (row, col)
            assert _count_near(cell, other) == 0, (row, col)


def test_frame_surrounds_the_image(figure: tuple[np.ndarray, np.ndarray]) -> None:
    png, _ = figure
    cell = _cell(png, 0, 1)
    green = (np.abs(cell.astype(int) - MATCH_COLOR) <= 12).all(-1)
    rows, cols = np.nonzero(green)
    middle_row, middle_col = (rows.min() + rows.max()) // 2, (cols.min() + cols.max()) // 2
    assert green[middle_row, cols.min()] and green[middle_row, cols.max()]
    assert green[rows.min(), middle_col] and green[rows.max(), middle_col]
    assert not green[middle_row, middle_col]


def test_unreadable_images_become_placeholders(figure: tuple[np.ndarray, np.ndarray]) -> None:
    png, _ = figure
    for row, col in ((0, 3), (1, 1), (1, 0)):  # corrupt file, missing photo, missing query
        assert _count_near(_cell(png, row, col), PLACEHOLDER_COLOR, tol=3) > 500, (row, col)
    assert _count_near(_cell(png, 0, 1), PLACEHOLDER_COLOR, tol=3) < 100  # text edges at most


def test_mismatched_shapes_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Q, k"):
        save_retrieval_figure(tmp_path / "x.png", [], [], [], [], np.zeros((1, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="must lie in"):
        save_retrieval_figure(
            tmp_path / "x.png", [tmp_path], ["a"], [tmp_path], ["a"], [[1]], [[0.5]]
        )
    assert not (tmp_path / "x.png").exists()
