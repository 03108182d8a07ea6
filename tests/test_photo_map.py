"""The curated photo / clip-art table for Quick, Draw! classes (training/data/photo_map.tsv)."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from index_builder.training.prepare import PHOTO_MAP as TABLE

ROOTS = {
    "tuxpaint": Path("/usr/share/tuxpaint/stamps"),  # Debian tuxpaint-stamps-default
    "openclipart": Path("/usr/share/openclipart/png"),  # Debian openclipart-png
}
PACKAGES = {"tuxpaint": "tuxpaint-stamps-default", "openclipart": "openclipart-png"}
MAX_PER_CLASS = 40


def read_rows() -> list[tuple[str, str, str]]:
    """The table's rows (class, source, path), header checked and left out."""
    lines = TABLE.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "class\tsource\tpath"
    rows = []
    for n, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        assert len(fields) == 3, f"line {n}: {len(fields)} columns, want 3: {line!r}"
        assert all(f and f == f.strip() for f in fields), f"line {n}: empty or padded field"
        rows.append((fields[0], fields[1], fields[2]))
    return rows


def test_table_parses_sorted_without_duplicates() -> None:
    rows = read_rows()
    assert len(rows) > 500
    assert rows == sorted(rows), "rows not sorted by class, source, path"
    assert {s for _, s, _ in rows} <= set(ROOTS)
    paths = Counter((s, p) for _, s, p in rows)
    assert [k for k, n in paths.items() if n > 1] == [], "a file is mapped twice"
    for _, _, path in rows:
        assert path.endswith(".png") and not path.startswith("/") and ".." not in path.split("/")
    per_class = Counter(c for c, _, _ in rows)
    assert max(per_class.values()) <= MAX_PER_CLASS


def test_classes_are_quickdraw_categories() -> None:
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    folder = Path(os.environ.get("SBIR_SHARED_DATA", default)) / "quickdraw" / "simplified"
    if not folder.is_dir():
        pytest.skip(f"Quick, Draw! data not found at {folder} (set SBIR_SHARED_DATA)")
    categories = {p.stem for p in folder.glob("*.ndjson")}
    unknown = sorted({c for c, _, _ in read_rows()} - categories)
    assert unknown == [], f"not a Quick, Draw! category in {folder}: {unknown}"


@pytest.mark.parametrize("source", sorted(ROOTS))
def test_every_mapped_file_exists(source: str) -> None:
    root = ROOTS[source]
    if not root.is_dir():
        pytest.skip(f"{root} absent: apt-get install {PACKAGES[source]}")
    paths = [p for _, s, p in read_rows() if s == source]
    assert paths
    missing = [p for p in paths if not (root / p).is_file()]
    assert missing == [], f"{len(missing)} mapped files missing under {root}: {missing[:5]}"
    for p in paths[:: max(1, len(paths) // 10)]:  # a few headers: real PNG files
        assert (root / p).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", p
