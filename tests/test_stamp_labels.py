"""The open-gallery bench's stamp labels (bench/data/stamp_labels.tsv), checked against the
installed tuxpaint-stamps-default, the Quick, Draw! categories and the curated photo map."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.stamp_labels import STAMP_LABELS, read_stamp_labels
from index_builder.indexing.scan import walk_images
from index_builder.training.prepare import PHOTO_MAP, STAMPS_DIR, read_photo_table

SHARED = Path(
    os.environ.get("SBIR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared/data")
)


def test_table_is_sorted_and_consistent() -> None:
    lines = STAMP_LABELS.read_text(encoding="utf-8").splitlines()[1:]
    paths = [line.split("\t")[0] for line in lines]
    assert paths == sorted(paths), "rows not sorted by path"
    table = read_stamp_labels()
    assert len(table) == 802
    for line in lines:
        cats = line.split("\t")[2]
        assert cats.split(";") == sorted(set(cats.split(";"))), f"unsorted or repeated: {line}"
    glyphs = [p for p, s in table.items() if s.glyph]
    assert len(glyphs) == 178
    assert all(not table[p].categories for p in glyphs), "a glyph depicts no category"


def test_read_rejects_bad_rows(tmp_path: Path) -> None:
    bad = tmp_path / "labels.tsv"
    bad.write_text("path\tglyph\tcategories\na.png\tmaybe\tcat\n")
    with pytest.raises(ValueError, match=":2:"):
        read_stamp_labels(bad)
    bad.write_text("path\tglyph\tcategories\na.png\tno\tcat\na.png\tno\t\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_stamp_labels(bad)


def test_every_installed_stamp_is_labelled() -> None:
    if not STAMPS_DIR.is_dir():
        pytest.skip(f"{STAMPS_DIR} absent: apt-get install tuxpaint-stamps-default")
    assert set(read_stamp_labels()) == set(walk_images(STAMPS_DIR))


def test_categories_are_quickdraw_categories() -> None:
    folder = SHARED / "quickdraw"
    if not folder.is_dir():
        pytest.skip(f"Quick, Draw! data not found at {folder} (set SBIR_SHARED_DATA)")
    categories = {p.stem for p in folder.glob("*/*.ndjson")}
    used = set().union(*(s.categories for s in read_stamp_labels().values()))
    assert sorted(used - categories) == []


def test_agrees_with_the_photo_map() -> None:
    """A stamp the curated photo map trains on as class c is relevant to c."""
    table = read_stamp_labels()
    for cls, refs in read_photo_table(PHOTO_MAP).items():
        for ref in refs:
            if ref.source == "tuxpaint":
                assert cls in table[ref.path].categories, (ref.path, cls)


@pytest.mark.parametrize(
    ("path", "categories"),
    [
        ("animals/mammals/aquatic/sea_lion.png", set()),  # not a lion
        ("animals/birds/cartoon/penguin_with_spider.png", {"penguin", "spider"}),
        ("sports/trophy_cup.png", set()),  # not a cup to drink from
        ("town/houses/cartoon/tower_square.png", {"castle"}),  # not a square
        ("animals/insects/cartoon/snail2.png", {"snail"}),
        ("symbols/alphabets/asl/asl_b.png", {"hand"}),  # a drawn hand, not a glyph
        ("town/roadsigns/hospital.png", set()),  # a sign, not a hospital
        ("vehicles/auto/truck.png", {"pickup truck", "truck"}),  # the photo map's truck
    ],
)
def test_decisions_by_eye(path: str, categories: set[str]) -> None:
    assert read_stamp_labels()[path].categories == categories


def test_letters_are_glyphs() -> None:
    table = read_stamp_labels()
    letters = [p for p in table if p.startswith("symbols/alphabets/english/")]
    assert len(letters) == 104 and all(table[p].glyph for p in letters)
