"""Google's Quick, Draw! drawings (``.ndjson``, simplified or raw format) rendered to PNG files.

One JSON object a line: ``word``, ``key_id``, ``countrycode``, ``recognized`` and ``drawing``,
a list of strokes ``[[x...], [y...]]`` (simplified: 0-255) or ``[[x...], [y...], [t...]]``
(raw: screen pixels and milliseconds). Rendering writes ``<out>/<category>/<key_id>.png``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from PIL import Image
from tqdm import tqdm

from index_builder.training.datasets.base import DatasetError, select_entries
from model.preprocess import Strokes, render_strokes, validate_strokes

Format = Literal["simplified", "raw"]
FORMATS: tuple[Format, ...] = ("simplified", "raw")
_KEY_ID = re.compile(r"[0-9A-Za-z_-]{1,64}")


@dataclass(frozen=True)
class QuickDrawing:
    """One drawing from a Quick, Draw! ``.ndjson`` file."""

    word: str
    key_id: str
    strokes: Strokes
    recognized: bool
    countrycode: str

    @property
    def format(self) -> Format:
        """``raw`` when the strokes carry times, else ``simplified``."""
        return "raw" if any(len(s) == 3 for s in self.strokes) else "simplified"


def read_ndjson(path: str | Path) -> Iterator[QuickDrawing]:
    """Drawings of one ``.ndjson`` file; DatasetError names the file and line of any bad one."""
    path = Path(path)
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                yield parse_drawing(line)
            except ValueError as err:  # JSONDecodeError is a ValueError too
                raise DatasetError(f"{path}:{number}: {err}") from err


def parse_drawing(line: str) -> QuickDrawing:
    """One ``.ndjson`` line as a QuickDrawing; ValueError names the fault."""
    record = json.loads(line)
    if not isinstance(record, dict):
        raise ValueError("a line must be a JSON object")
    missing = [
        k for k in ("word", "key_id", "drawing", "recognized", "countrycode") if k not in record
    ]
    if missing:
        raise ValueError(f"missing field(s) {', '.join(missing)}")
    key_id = str(record["key_id"])
    if not _KEY_ID.fullmatch(key_id):
        raise ValueError(f"key_id {key_id!r} must be 1-64 letters, digits, '_' or '-'")
    word, countrycode = record["word"], record["countrycode"]
    if not isinstance(word, str) or not word or not isinstance(countrycode, str):
        raise ValueError("word must be a non-empty string and countrycode a string")
    if not isinstance(record["recognized"], bool):
        raise ValueError("recognized must be true or false")
    strokes = check_strokes(record["drawing"])
    return QuickDrawing(word, key_id, strokes, record["recognized"], countrycode)


def check_strokes(drawing: object) -> Strokes:
    """validate_strokes plus: times as long as the points, and at least one point."""
    strokes = validate_strokes(drawing)
    for i, stroke in enumerate(strokes):
        if len(stroke) == 3 and (
            not isinstance(stroke[2], list) or len(stroke[2]) != len(stroke[0])
        ):
            raise ValueError(f"stroke {i}: t must be a list as long as x and y")
    if not any(len(stroke[0]) for stroke in strokes):
        raise ValueError("the drawing has no points")
    return strokes


def ndjson_files(paths: Iterable[Path]) -> dict[str, list[Path]]:
    """Category -> its ``.ndjson`` files over ``paths``: folders of them, or the files
    themselves (a file's name is its category: ``cat.ndjson``).

    A folder holding no ``.ndjson`` but ``simplified/`` and ``raw/`` subfolders (the
    shared-data layout) stands for those subfolders.
    """
    found: dict[str, list[Path]] = {}
    for path in paths:
        if path.is_file() and path.suffix == ".ndjson":
            files = [path]
        elif path.is_dir():
            files = sorted(path.glob("*.ndjson")) or sorted(
                f for fmt in FORMATS for f in (path / fmt).glob("*.ndjson")
            )
            if not files:
                raise DatasetError(f"{path}: no .ndjson files (nor simplified/ or raw/ with some)")
        else:
            raise DatasetError(f"{path}: neither a Quick, Draw! .ndjson file nor a folder")
        for file in files:
            found.setdefault(file.stem, []).append(file)
    return found


def merge_drawings(files: Iterable[Path], prefer: Format = "simplified") -> list[QuickDrawing]:
    """Drawings of one category over several files, one per key_id, ``prefer`` format first."""
    chosen: dict[str, QuickDrawing] = {}
    for file in files:
        for drawing in read_ndjson(file):
            held = chosen.get(drawing.key_id)
            if held is None or (held.format != prefer and drawing.format == prefer):
                chosen[drawing.key_id] = drawing
    return list(chosen.values())


def write_png_atomic(img: Image.Image, dest: Path) -> None:
    """Save ``img`` as PNG at ``dest`` through a temporary file and a rename."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def render_quickdraw(
    ndjson: str | Path | Sequence[str | Path],
    out_dir: str | Path,
    size: int = 256,
    stroke_width: float = 3.0,
    margin: float = 0.1,
    categories: Iterable[str] | None = None,
    prefer: Format = "simplified",
) -> int:
    """Render drawings to ``<out_dir>/<category>/<key_id>.png``; return how many were written.

    ``ndjson``: a simplified folder, a raw folder, both, a folder holding ``simplified/`` and
    ``raw/``, or ``.ndjson`` files (each named after its category), in any mix. A key_id
    found in both formats is rendered once, from ``prefer``; drawings in only one format are
    rendered too. Existing files are kept (so reruns write nothing new). ``categories``
    limits the work; naming one that no file holds is a DatasetError.
    """
    if prefer not in FORMATS:
        raise ValueError(f"prefer must be one of {FORMATS}, not {prefer!r}")
    sources = [ndjson] if isinstance(ndjson, str | Path) else ndjson
    files = select_categories(ndjson_files(Path(p) for p in sources), categories)
    out = Path(out_dir)
    written = 0
    for category, paths in tqdm(sorted(files.items()), desc="render sketches", unit="class"):
        for drawing in merge_drawings(paths, prefer):
            dest = out / category / f"{drawing.key_id}.png"
            if dest.exists():
                continue
            img = render_strokes(drawing.strokes, size, stroke_width, margin).convert("L")
            write_png_atomic(img, dest)
            written += 1
    return written


def select_categories(
    files: dict[str, list[Path]], categories: Iterable[str] | None
) -> dict[str, list[Path]]:
    """The entries of ``categories`` (all when None); DatasetError names any missing one."""
    return select_entries(files, categories, "no Quick, Draw! file for categor(ies)")
