"""Turn the shared real data into the generic ``<out>/{sketch,photo}/<class>/*.png`` layout.

Sketches are Quick, Draw! drawings (both formats) rendered to PNG; photos are the pictures a
photo table lists, composited onto white: the Tux Paint stamp cut-outs of the shared folder's
``tuxpaint_photos.tsv``, or the repository's curated ``data/photo_map.tsv`` (Tux Paint stamps
and openclipart drawings of 205 Quick, Draw! categories, checked by eye; see ``PHOTO_MAP.md``).
Only the classes of the table (the ones with photos) are prepared.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from index_builder.training.datasets.base import DatasetError, list_images, select_entries
from index_builder.training.datasets.quickdraw import render_quickdraw, write_png_atomic
from model.preprocess import ImageError, load_image

STAMPS_DIR = Path("/usr/share/tuxpaint/stamps")
CLIPART_DIR = Path("/usr/share/openclipart/png")
PHOTO_TABLE = "tuxpaint_photos.tsv"  # in the shared data folder
PHOTO_MAP = Path(__file__).parent / "data" / "photo_map.tsv"  # the curated table
PACKAGES = {"tuxpaint": "tuxpaint-stamps-default", "openclipart": "openclipart-png"}


@dataclass(frozen=True)
class PhotoRef:
    """One picture of a photo table: its source package and its path inside that package."""

    source: str  # "tuxpaint" or "openclipart"
    path: str

    def file(self, roots: dict[str, Path]) -> Path:
        return roots[self.source] / self.path

    def name(self) -> str:
        """Output file name: the path with '/' -> '__', as PNG (Tux Paint's without prefix)."""
        flat = str(PurePosixPath(self.path).with_suffix(".png")).replace("/", "__")
        return flat if self.source == "tuxpaint" else f"{self.source}__{flat}"


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


def read_photo_table(tsv: Path) -> dict[str, list[PhotoRef]]:
    """Class -> its pictures, from a ``class<TAB>stamp`` table (Tux Paint stamps, as in the
    shared folder) or a ``class<TAB>source<TAB>path`` one (the curated map)."""
    if not tsv.is_file():
        raise DatasetError(f"{tsv}: photo table not found")
    table: dict[str, list[PhotoRef]] = {}
    lines = tsv.read_text(encoding="utf-8").splitlines()
    columns = 3 if lines and lines[0].split("\t") == ["class", "source", "path"] else 2
    for number, line in enumerate(lines, start=1):
        fields = line.split("\t")
        if not line.strip() or (number == 1 and fields[0] == "class"):
            continue
        ref = _photo_ref(fields, columns)
        if ref is None:
            expected = (
                "class<TAB>relative/stamp/path"
                if columns == 2
                else (f"class<TAB>{'|'.join(PACKAGES)}<TAB>relative/path")
            )
            raise DatasetError(f"{tsv}:{number}: expected '{expected}'")
        table.setdefault(fields[0], []).append(ref)
    if not table:
        raise DatasetError(f"{tsv}: no rows")
    return table


def _photo_ref(fields: list[str], columns: int) -> PhotoRef | None:
    if len(fields) != columns or not fields[0]:
        return None
    source = "tuxpaint" if columns == 2 else fields[1]
    path = PurePosixPath(fields[-1])
    if source not in PACKAGES or path.is_absolute() or ".." in path.parts or not path.parts:
        return None
    return PhotoRef(source, str(path))


def check_photos(roots: dict[str, Path], refs: Iterable[PhotoRef]) -> None:
    """DatasetError naming a package folder that is absent, or every listed picture missing."""
    refs = list(refs)
    for source in sorted({r.source for r in refs}):
        if not roots[source].is_dir():
            raise DatasetError(
                f"{roots[source]}: {source} pictures not found; install them with "
                f"`apt-get install {PACKAGES[source]}` or pass the folder that holds them"
            )
    missing = [str(r.file(roots)) for r in refs if not r.file(roots).is_file()]
    if missing:
        raise DatasetError(
            f"picture(s) listed in the photo table are missing: {', '.join(missing)}"
        )


def write_photos(table: dict[str, list[PhotoRef]], roots: dict[str, Path], photo_root: Path) -> int:
    """Composite each picture onto white as ``<photo_root>/<class>/<name>.png``; count writes."""
    jobs = [(c, r) for c, refs in table.items() for r in refs]
    written = 0
    for cls, ref in tqdm(jobs, desc="write photos", unit="photo"):
        dest = photo_root / cls / ref.name()
        if dest.exists():
            continue
        try:
            img = load_image(ref.file(roots))  # RGB, transparency composited onto white
        except ImageError as err:
            raise DatasetError(f"unreadable picture: {err}") from err
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
    photo_table: str | Path | None = None,
    clipart_dir: str | Path = CLIPART_DIR,
) -> PrepareReport:
    """Build ``<out_root>/sketch/<class>/*.png`` and ``<out_root>/photo/<class>/*.png``.

    ``shared_data`` holds ``quickdraw/{simplified,raw}/`` and ``tuxpaint_photos.tsv``; the
    photos are those of ``photo_table`` (default: that shared table; ``PHOTO_MAP`` is the
    curated one), the classes those of the table with drawings, or the given ``categories``
    among them. Sketches are rendered ``size`` pixels square; photos keep their size. Files
    already there are kept.
    """
    shared, out = Path(shared_data), Path(out_root)
    roots = {"tuxpaint": Path(stamps_dir), "openclipart": Path(clipart_dir)}
    quickdraw = shared / "quickdraw"
    table = read_photo_table(Path(photo_table) if photo_table else shared / PHOTO_TABLE)
    if categories is None:  # the curated map may list categories this copy has no drawings of
        drawn = {p.stem for p in quickdraw.glob("*/*.ndjson")}
        table = {c: refs for c, refs in table.items() if c in drawn}
    table = select_classes(table, categories)
    check_photos(roots, [r for refs in table.values() for r in refs])
    folders = [f for f in (quickdraw / "simplified", quickdraw / "raw") if f.is_dir()]
    if not folders:
        raise DatasetError(f"{quickdraw}: no simplified/ or raw/ folder of .ndjson files")
    sketches_written = render_quickdraw(
        folders, out / "sketch", size, stroke_width, margin, categories=list(table)
    )
    photos_written = write_photos(table, roots, out / "photo")
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
    table: dict[str, list[PhotoRef]], categories: Iterable[str] | None
) -> dict[str, list[PhotoRef]]:
    """The table's rows for ``categories`` (all when None); DatasetError names unknown ones."""
    return select_entries(table, categories, "no photos listed for class(es)")
