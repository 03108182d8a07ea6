"""Turn the shared real data into the generic ``<out>/{sketch,photo}/<class>/*.png`` layout.

Sketches are Quick, Draw! drawings (both formats) rendered to PNG; photos are the Tux Paint
stamp cut-outs listed in ``tuxpaint_photos.tsv``, composited onto white. Only the classes of
that table (the ones with photos) are prepared.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from index_builder.datasets.base import DatasetError, list_images, select_entries
from index_builder.datasets.quickdraw import render_quickdraw, write_png_atomic
from model.preprocess import ImageError, load_image

STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
PHOTO_TABLE = "tuxpaint_photos.tsv"


@dataclass(frozen=True)
class PrepareReport:
    """What a prepare run produced: totals on disk and how many files this run wrote."""

    out_root: Path
    classes: list[str]
    sketches: int
    photos: int
    sketches_written: int
    photos_written: int

    def summary(self) -> str:
        """One line for people."""
        return (
            f"{self.out_root}: {len(self.classes)} classes, {self.sketches} sketches, "
            f"{self.photos} photos ({self.sketches_written} sketches and "
            f"{self.photos_written} photos written now)"
        )


def read_photo_table(tsv: Path) -> dict[str, list[str]]:
    """Class -> its stamp paths (relative to the stamps folder), from a ``class<TAB>stamp`` tsv."""
    if not tsv.is_file():
        raise DatasetError(f"{tsv}: photo table not found")
    table: dict[str, list[str]] = {}
    for number, line in enumerate(tsv.read_text(encoding="utf-8").splitlines(), start=1):
        fields = line.split("\t")
        if not line.strip() or (number == 1 and fields == ["class", "stamp"]):
            continue
        stamp = PurePosixPath(fields[-1])
        if len(fields) != 2 or not fields[0] or stamp.is_absolute() or ".." in stamp.parts:
            raise DatasetError(f"{tsv}:{number}: expected 'class<TAB>relative/stamp/path'")
        table.setdefault(fields[0], []).append(str(stamp))
    if not table:
        raise DatasetError(f"{tsv}: no rows")
    return table


def check_stamps(stamps_dir: Path, stamps: Iterable[str]) -> None:
    """DatasetError naming the stamps folder, or every listed stamp, that is missing."""
    if not stamps_dir.is_dir():
        raise DatasetError(
            f"{stamps_dir}: Tux Paint stamps folder not found; install it with "
            "`apt-get install tuxpaint-stamps-default` or pass the folder that holds the stamps"
        )
    missing = [str(stamps_dir / s) for s in stamps if not (stamps_dir / s).is_file()]
    if missing:
        raise DatasetError(f"stamp(s) listed in the photo table are missing: {', '.join(missing)}")


def photo_name(stamp: str) -> str:
    """Output file name of a stamp: its path with '/' -> '__', as PNG."""
    return str(PurePosixPath(stamp).with_suffix(".png")).replace("/", "__")


def write_photos(table: dict[str, list[str]], stamps_dir: Path, photo_root: Path) -> int:
    """Composite each stamp onto white as ``<photo_root>/<class>/<name>.png``; count writes."""
    jobs = [(c, s) for c, stamps in table.items() for s in stamps]
    written = 0
    for cls, stamp in tqdm(jobs, desc="write photos", unit="photo"):
        dest = photo_root / cls / photo_name(stamp)
        if dest.exists():
            continue
        try:
            img = load_image(stamps_dir / stamp)  # RGB, transparency composited onto white
        except ImageError as err:
            raise DatasetError(f"unreadable stamp: {err}") from err
        write_png_atomic(img, dest)
        written += 1
    return written


def count_images(root: Path, classes: Iterable[str]) -> int:
    """Image files in ``root/<class>/`` over ``classes``."""
    return sum(len(list_images(root / c)) for c in classes if (root / c).is_dir())


def prepare_shared_data(
    shared_data: str | Path,
    out_root: str | Path,
    stamps_dir: str | Path = STAMPS_DIR,
    size: int = 256,
    stroke_width: float = 3.0,
    margin: float = 0.1,
    categories: Iterable[str] | None = None,
) -> PrepareReport:
    """Build ``<out_root>/sketch/<class>/*.png`` and ``<out_root>/photo/<class>/*.png``.

    ``shared_data`` holds ``quickdraw/{simplified,raw}/`` and ``tuxpaint_photos.tsv``; the
    classes are those of the table, or the given ``categories`` among them. Sketches are
    rendered ``size`` pixels square; photos keep their size. Files already there are kept.
    """
    shared, out, stamps = Path(shared_data), Path(out_root), Path(stamps_dir)
    table = select_classes(read_photo_table(shared / PHOTO_TABLE), categories)
    check_stamps(stamps, [s for listed in table.values() for s in listed])
    quickdraw = shared / "quickdraw"
    folders = [f for f in (quickdraw / "simplified", quickdraw / "raw") if f.is_dir()]
    if not folders:
        raise DatasetError(f"{quickdraw}: no simplified/ or raw/ folder of .ndjson files")
    sketches_written = render_quickdraw(
        folders, out / "sketch", size, stroke_width, margin, categories=list(table)
    )
    photos_written = write_photos(table, stamps, out / "photo")
    classes = sorted(table)
    return PrepareReport(
        out,
        classes,
        count_images(out / "sketch", classes),
        count_images(out / "photo", classes),
        sketches_written,
        photos_written,
    )


def select_classes(
    table: dict[str, list[str]], categories: Iterable[str] | None
) -> dict[str, list[str]]:
    """The table's rows for ``categories`` (all when None); DatasetError names unknown ones."""
    return select_entries(table, categories, "no photos listed for class(es)")
