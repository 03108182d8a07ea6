"""prepare_shared_data: the real shared data into sketch/ and photo/ folders, and its errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from index_builder.training.datasets.base import DatasetError
from index_builder.training.datasets.quickdraw import read_ndjson
from index_builder.training.prepare import PrepareReport, prepare_shared_data, read_photo_table

STAMPS = Path("/usr/share/tuxpaint/stamps")
SUBSET = ["apple", "cat", "traffic light"]


@pytest.fixture(scope="module")
def shared() -> Path:
    """../shared/data beside the repo (or $SBIR_SHARED_DATA) with its stamps, else skip."""
    default = Path(__file__).resolve().parents[2] / "shared" / "data"
    root = Path(os.environ.get("SBIR_SHARED_DATA", default))
    if not (root / "tuxpaint_photos.tsv").is_file():
        pytest.skip(f"shared data not found at {root} (set SBIR_SHARED_DATA)")
    if not STAMPS.is_dir():
        pytest.skip(f"{STAMPS} absent: apt-get install tuxpaint-stamps-default")
    return root


@pytest.fixture(scope="module")
def prepared(shared: Path, tmp_path_factory: pytest.TempPathFactory) -> PrepareReport:
    """One prepare run over SUBSET."""
    return prepare_shared_data(shared, tmp_path_factory.mktemp("prepared"), categories=SUBSET)


def test_counts_match_the_sources(shared: Path, prepared: PrepareReport) -> None:
    table = read_photo_table(shared / "tuxpaint_photos.tsv")
    out = prepared.out_root
    assert prepared.classes == sorted(SUBSET)
    assert sorted(p.name for p in (out / "sketch").iterdir()) == sorted(SUBSET)
    assert sorted(p.name for p in (out / "photo").iterdir()) == sorted(SUBSET)
    for cls in SUBSET:
        photos = sorted(p.name for p in (out / "photo" / cls).iterdir())
        assert photos == sorted(ref.name() for ref in table[cls])
        keys = {
            d.key_id
            for fmt in ("simplified", "raw")
            for d in read_ndjson(shared / "quickdraw" / fmt / f"{cls}.ndjson")
        }
        assert {p.stem for p in (out / "sketch" / cls).iterdir()} == keys
    assert prepared.photos == prepared.photos_written == sum(len(table[c]) for c in SUBSET)
    assert prepared.sketches == prepared.sketches_written > 3 * 25
    with Image.open(next((out / "sketch" / "cat").iterdir())) as sketch:
        assert sketch.size == (256, 256)


def test_photo_backgrounds_are_white(shared: Path, prepared: PrepareReport) -> None:
    table = read_photo_table(shared / "tuxpaint_photos.tsv")
    transparent_stamps = 0
    for cls in SUBSET:
        for ref in table[cls]:
            with Image.open(STAMPS / ref.path) as src:
                alpha = np.asarray(src.convert("RGBA"))[..., 3]
            with Image.open(prepared.out_root / "photo" / cls / ref.name()) as out:
                assert out.mode == "RGB" and out.size == (alpha.shape[1], alpha.shape[0])
                pixels = np.asarray(out)
            clear = alpha == 0
            transparent_stamps += bool(clear.any())
            assert (pixels[clear] == 255).all()
            assert (pixels[alpha == 255] < 250).any()  # the subject itself is not washed out
    assert transparent_stamps >= 5


def test_second_run_writes_nothing(shared: Path, prepared: PrepareReport) -> None:
    before = {p: p.stat().st_mtime_ns for p in prepared.out_root.rglob("*")}
    again = prepare_shared_data(shared, prepared.out_root, categories=SUBSET)
    assert (again.sketches_written, again.photos_written) == (0, 0)
    assert (again.sketches, again.photos) == (prepared.sketches, prepared.photos)
    assert {p: p.stat().st_mtime_ns for p in prepared.out_root.rglob("*")} == before
    assert not list(prepared.out_root.rglob(".*"))  # no temporary files left


def tiny_shared(root: Path, tsv_rows: list[str]) -> Path:
    """A shared-data folder with one handwritten 'apple' drawing and the given tsv rows."""
    drawing = {
        "word": "apple",
        "countrycode": "FR",
        "recognized": True,
        "key_id": "7",
        "drawing": [[[0, 50, 100], [0, 80, 10]]],
    }
    (root / "quickdraw" / "simplified").mkdir(parents=True)
    (root / "quickdraw" / "simplified" / "apple.ndjson").write_text(json.dumps(drawing))
    (root / "tuxpaint_photos.tsv").write_text("\n".join(["class\tstamp", *tsv_rows]) + "\n")
    return root


def test_composites_transparent_stamp_onto_white(tmp_path: Path) -> None:
    shared = tiny_shared(tmp_path / "shared", ["apple\tfood/red.png"])
    stamp = Image.new("RGBA", (40, 30), (0, 0, 0, 0))
    stamp.paste((200, 0, 0, 255), (10, 10, 20, 20))
    (tmp_path / "stamps" / "food").mkdir(parents=True)
    stamp.save(tmp_path / "stamps" / "food" / "red.png")
    report = prepare_shared_data(shared, tmp_path / "out", tmp_path / "stamps", size=64)
    assert (report.classes, report.sketches, report.photos) == (["apple"], 1, 1)
    pixels = np.asarray(Image.open(tmp_path / "out" / "photo" / "apple" / "food__red.png"))
    assert pixels.shape == (30, 40, 3)
    assert (pixels[0, 0] == 255).all() and tuple(pixels[15, 15]) == (200, 0, 0)
    assert "1 classes, 1 sketches, 1 photos" in report.summary()


def test_missing_stamps_folder_says_how_to_install(tmp_path: Path) -> None:
    shared = tiny_shared(tmp_path / "shared", ["apple\tfood/red.png"])
    with pytest.raises(DatasetError, match="apt-get install tuxpaint-stamps-default") as caught:
        prepare_shared_data(shared, tmp_path / "out", tmp_path / "no-stamps")
    assert str(tmp_path / "no-stamps") in str(caught.value)


def test_missing_stamp_is_named(tmp_path: Path) -> None:
    shared = tiny_shared(tmp_path / "shared", ["apple\tfood/gone.png"])
    (tmp_path / "stamps").mkdir()
    with pytest.raises(DatasetError, match="missing") as caught:
        prepare_shared_data(shared, tmp_path / "out", tmp_path / "stamps")
    assert str(tmp_path / "stamps" / "food" / "gone.png") in str(caught.value)
    assert not (tmp_path / "out").exists()  # checked before any work


def test_unreadable_stamp_is_named(tmp_path: Path) -> None:
    shared = tiny_shared(tmp_path / "shared", ["apple\tbroken.png"])
    (tmp_path / "stamps").mkdir()
    (tmp_path / "stamps" / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DatasetError, match="unreadable picture") as caught:
        prepare_shared_data(shared, tmp_path / "out", tmp_path / "stamps")
    assert str(tmp_path / "stamps" / "broken.png") in str(caught.value)
    assert not list((tmp_path / "out" / "photo").rglob("*.png"))


@pytest.mark.parametrize("row", ["apple", "apple\t/etc/passwd", "apple\t../x.png"])
def test_bad_table_row_is_named(tmp_path: Path, row: str) -> None:
    shared = tiny_shared(tmp_path / "shared", ["apple\tfood/red.png", row])
    with pytest.raises(DatasetError, match="expected") as caught:
        prepare_shared_data(shared, tmp_path / "out", tmp_path)
    assert f"{shared / 'tuxpaint_photos.tsv'}:3:" in str(caught.value)


def test_unknown_category_is_named(tmp_path: Path) -> None:
    shared = tiny_shared(tmp_path / "shared", ["apple\tfood/red.png"])
    with pytest.raises(DatasetError, match="'zebra'"):
        prepare_shared_data(shared, tmp_path / "out", tmp_path, categories=["zebra"])
