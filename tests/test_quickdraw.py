"""Quick, Draw! reading and rendering, on handwritten files and on the real shared data."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from index_builder.training.datasets.base import DatasetError
from index_builder.training.datasets.quickdraw import (
    QuickDrawing,
    merge_drawings,
    read_ndjson,
    render_quickdraw,
)
from model.preprocess import render_strokes

CATEGORIES = ["apple", "cat", "bicycle"]  # present in both formats of the shared data


@pytest.fixture(scope="module")
def quickdraw() -> Path:
    """../shared/data/quickdraw beside the repo (or $SBIR_SHARED_DATA/quickdraw), else skip."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    root = Path(os.environ.get("SBIR_SHARED_DATA", default)) / "quickdraw"
    if not (root / "simplified").is_dir() or not (root / "raw").is_dir():
        pytest.skip(f"real Quick, Draw! data not found at {root} (set SBIR_SHARED_DATA)")
    return root


def record(key_id: str, drawing: list, word: str = "line") -> dict:
    """One Quick, Draw! line as a dict."""
    return {
        "word": word,
        "countrycode": "DE",
        "timestamp": "2017-03-01 10:00:00.0 UTC",
        "recognized": True,
        "key_id": key_id,
        "drawing": drawing,
    }


def write_ndjson(path: Path, lines: list[dict | str]) -> Path:
    """Write dicts as JSON lines (strings verbatim), like the real files: no final newline."""
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines)
    path.write_text(text, encoding="utf-8")
    return path


HORIZONTAL = [[[0, 100, 200], [50, 50, 50]]]
VERTICAL_RAW = [[[300, 300], [10, 400], [0, 120]]]


def ink(img: Image.Image) -> np.ndarray:
    """Boolean mask of dark pixels."""
    return np.asarray(img.convert("L")) < 128


def test_reads_both_formats(tmp_path: Path) -> None:
    simplified = write_ndjson(tmp_path / "s.ndjson", [record("1", HORIZONTAL), ""])
    raw = write_ndjson(tmp_path / "r.ndjson", [record("2", VERTICAL_RAW)])
    (s,) = read_ndjson(simplified)
    (r,) = read_ndjson(raw)
    assert s == QuickDrawing("line", "1", HORIZONTAL, True, "DE")
    assert (s.format, r.format) == ("simplified", "raw")
    assert r.strokes == VERTICAL_RAW


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"word": "line", "key_id": ', "Expecting value"),
        (record("3", [[[0, 1, 2], [0, 1]]]), "x and y must be lists of the same length"),
        (record("3", [[[0, 1], [0, 1], [5]]]), "t must be a list as long as x and y"),
        (record("3", [[[], []]]), "no points"),
        (record("../3", HORIZONTAL), "key_id"),
        ({"word": "line", "key_id": "3", "drawing": HORIZONTAL}, "missing field"),
        ("[1, 2]", "JSON object"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, bad_line: dict | str, message: str) -> None:
    path = write_ndjson(tmp_path / "bad.ndjson", [record("1", HORIZONTAL), bad_line])
    with pytest.raises(DatasetError, match=message) as caught:
        list(read_ndjson(path))
    assert f"{path}:2:" in str(caught.value)


def two_format_tree(root: Path) -> tuple[Path, Path]:
    """simplified/ and raw/ folders: key 1 in both (different shapes), 2 only simplified, 3 raw."""
    simplified = write_ndjson(
        root / "simplified" / "line.ndjson", [record("1", HORIZONTAL), record("2", HORIZONTAL)]
    )
    raw = write_ndjson(
        root / "raw" / "line.ndjson", [record("1", VERTICAL_RAW), record("3", VERTICAL_RAW)]
    )
    return simplified.parent, raw.parent


def is_vertical(path: Path) -> bool:
    """Whether the ink of an image is taller than wide."""
    ys, xs = np.nonzero(ink(Image.open(path)))
    return np.ptp(ys) > np.ptp(xs)


@pytest.mark.parametrize("prefer", ["simplified", "raw"])
def test_render_merges_formats_on_key_id(tmp_path: Path, prefer: str) -> None:
    folders = two_format_tree(tmp_path / "qd")
    out = tmp_path / "out"
    assert render_quickdraw(list(folders), out, size=64, prefer=prefer) == 3
    assert sorted(p.name for p in (out / "line").iterdir()) == ["1.png", "2.png", "3.png"]
    assert is_vertical(out / "line" / "1.png") == (prefer == "raw")
    assert not is_vertical(out / "line" / "2.png") and is_vertical(out / "line" / "3.png")


def test_render_is_idempotent_and_leaves_no_temp_files(tmp_path: Path) -> None:
    two_format_tree(tmp_path / "qd")
    out = tmp_path / "out"
    assert render_quickdraw(tmp_path / "qd", out, size=64) == 3  # the parent of both folders
    stamp = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    assert render_quickdraw(tmp_path / "qd", out, size=64) == 0
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == stamp
    assert not [p for p in out.rglob(".*")]
    with Image.open(out / "line" / "1.png") as img:
        assert img.size == (64, 64)


def test_render_rejects_unknown_category_and_format(tmp_path: Path) -> None:
    folders = list(two_format_tree(tmp_path / "qd"))
    with pytest.raises(DatasetError, match="'zebra'"):
        render_quickdraw(folders, tmp_path / "out", categories=["line", "zebra"])
    with pytest.raises(ValueError, match="prefer"):
        render_quickdraw(folders, tmp_path / "out", prefer="svg")  # type: ignore[arg-type]
    with pytest.raises(DatasetError, match=r"no \.ndjson"):
        render_quickdraw(tmp_path, tmp_path / "out")


def test_cli_renders_files_and_folders(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from index_builder.cli import main

    simplified, raw = two_format_tree(tmp_path / "qd")
    cat = write_ndjson(tmp_path / "loose" / "cat.ndjson", [record("7", HORIZONTAL, "cat")])
    out = tmp_path / "out"
    # files of one category from both formats, merged as their folders are; a lone file
    files = [simplified / "line.ndjson", raw / "line.ndjson", cat]
    render = ["render-quickdraw", "--size", "64", "--out", str(out), "--ndjson"]
    assert main([*render, *map(str, files)]) == 0
    assert "rendered 4 drawings" in capsys.readouterr().out
    rendered = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert rendered == ["cat/7.png", "line/1.png", "line/2.png", "line/3.png"]
    assert not is_vertical(out / "line" / "1.png")  # key 1 from the simplified file
    assert main([*render, str(raw), str(cat)]) == 0  # a folder and a file together
    assert "rendered 0 drawings" in capsys.readouterr().out
    for bad in (cat.rename(tmp_path / "cat.json"), tmp_path / "missing.ndjson"):
        assert main([*render, str(simplified), str(bad)]) == 2
        assert f"{bad}: neither a Quick, Draw! .ndjson file nor a folder" in capsys.readouterr().err


def test_single_point_stroke_is_a_dot_of_stroke_width() -> None:
    strokes = [[[0, 200], [0, 200]], [[100], [100]]]  # a line and a tap
    thin, thick = (ink(render_strokes(strokes, 64, w, 0.1))[30:34, 30:34].sum() for w in (1, 3))
    assert thin >= 1 and thick > thin


def real_drawings(quickdraw: Path, category: str) -> tuple[list, dict]:
    """Simplified drawings of a category, and its raw drawings by key_id."""
    simplified = list(read_ndjson(quickdraw / "simplified" / f"{category}.ndjson"))
    raw = {d.key_id: d for d in read_ndjson(quickdraw / "raw" / f"{category}.ndjson")}
    return simplified, raw


def test_real_files_parse(quickdraw: Path) -> None:
    for category in CATEGORIES:
        for fmt in ("simplified", "raw"):
            path = quickdraw / fmt / f"{category}.ndjson"
            drawings = list(read_ndjson(path))
            lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
            assert len(drawings) == len(lines) > 0
            assert {d.word for d in drawings} == {category}
            assert {d.format for d in drawings} == {fmt}


@pytest.mark.slow
def test_every_real_file_parses(quickdraw: Path) -> None:
    files = sorted(quickdraw.glob("*/*.ndjson"))
    assert len(files) > 600
    assert sum(1 for f in files for _ in read_ndjson(f)) > 17_000


@pytest.mark.parametrize(("fmt", "margin", "width"), [("simplified", 0.1, 3), ("raw", 0.2, 5)])
def test_real_render_respects_size_and_margin(
    quickdraw: Path, fmt: str, margin: float, width: int
) -> None:
    size = 128
    band = int(margin * size)
    for drawing in read_ndjson(quickdraw / fmt / "cat.ndjson"):
        img = render_strokes(drawing.strokes, size, width, margin)
        assert img.size == (size, size)
        ys, xs = np.nonzero(ink(img))
        assert len(ys) > 0
        assert min(ys.min(), xs.min()) >= band and max(ys.max(), xs.max()) < size - band
        assert max(np.ptp(ys), np.ptp(xs)) >= (size - 1) * (1 - 2 * margin) - 2  # fills it


def test_stroke_width_changes_ink(quickdraw: Path) -> None:
    simplified, _ = real_drawings(quickdraw, "apple")
    for drawing in simplified[:10]:
        amounts = [ink(render_strokes(drawing.strokes, 256, w, 0.1)).sum() for w in (1, 3, 6)]
        assert amounts[0] < amounts[1] < amounts[2]
        assert amounts[2] > 3 * amounts[0]


def dilated_ink(strokes: list) -> np.ndarray:
    """Ink mask of a 256-pixel rendering, grown by 2 pixels."""
    return ink(render_strokes(strokes, 256, 3.0, 0.1).convert("L").filter(ImageFilter.MinFilter(5)))


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two masks."""
    return float((a & b).sum() / (a | b).sum())


def test_raw_and_simplified_render_alike(quickdraw: Path) -> None:
    # Measured over 7,390 shared key_ids: median IoU 0.88, 5th percentile 0.84; a few
    # drawings whose simplification moved strokes go as low as 0.26.
    same, other = [], []
    for category in CATEGORIES:
        simplified, raw = real_drawings(quickdraw, category)
        pairs = [
            (dilated_ink(d.strokes), dilated_ink(raw[d.key_id].strokes))
            for d in simplified
            if d.key_id in raw
        ]
        assert len(pairs) >= 10
        same += [iou(a, b) for a, b in pairs]
        other += [iou(a, b) for (a, _), (_, b) in zip(pairs, pairs[1:] + pairs[:1], strict=True)]
    assert np.median(same) > 0.8 and np.mean(np.array(same) > 0.7) > 0.95
    assert np.median(other) < 0.3


def test_merge_covers_both_formats(quickdraw: Path) -> None:
    files = [quickdraw / fmt / "apple.ndjson" for fmt in ("simplified", "raw")]
    simplified, raw = real_drawings(quickdraw, "apple")
    merged = merge_drawings(files, prefer="simplified")
    assert {d.key_id for d in merged} == {d.key_id for d in simplified} | set(raw)
    assert len(merged) == len({d.key_id for d in merged})
    by_key = {d.key_id: d.format for d in merged}
    assert all(by_key[d.key_id] == "simplified" for d in simplified)
    assert any(f == "raw" for f in by_key.values())  # raw-only drawings are kept


def test_real_render_to_folder(quickdraw: Path, tmp_path: Path) -> None:
    folders = [quickdraw / "simplified", quickdraw / "raw"]
    written = render_quickdraw(folders, tmp_path, size=96, categories=CATEGORIES[:2])
    expected = 0
    for category in CATEGORIES[:2]:
        simplified, raw = real_drawings(quickdraw, category)
        keys = {d.key_id for d in simplified} | set(raw)
        assert {p.stem for p in (tmp_path / category).glob("*.png")} == keys
        expected += len(keys)
    assert written == expected
    assert render_quickdraw(folders, tmp_path, size=96, categories=CATEGORIES[:2]) == 0
