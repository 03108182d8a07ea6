"""What each Tux Paint stamp depicts (``bench/data/stamp_labels.tsv``, checked by eye; how it
was made: ``bench/data/STAMP_LABELS.md``): the relevance judgements of the open-gallery bench."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

STAMP_LABELS = Path(__file__).parent / "data" / "stamp_labels.tsv"
HEADER = ["path", "glyph", "categories"]


@dataclass(frozen=True)
class StampLabel:
    """One stamp of the table: whether it is a glyph and the categories it depicts."""

    glyph: bool
    categories: frozenset[str]


def read_stamp_labels(tsv: Path = STAMP_LABELS) -> dict[str, StampLabel]:
    """Stamp path (relative to the stamps folder) -> its label; ValueError naming the line."""
    lines = tsv.read_text(encoding="utf-8").splitlines()
    if not lines or lines[0].split("\t") != HEADER:
        raise ValueError(f"{tsv}:1: expected the header {' / '.join(HEADER)}")
    table = {}
    for number, line in enumerate(lines[1:], start=2):
        fields = line.split("\t")
        if len(fields) != 3 or not fields[0] or fields[1] not in ("yes", "no"):
            raise ValueError(f"{tsv}:{number}: expected 'path<TAB>yes|no<TAB>cat;cat...'")
        if fields[0] in table:
            raise ValueError(f"{tsv}:{number}: {fields[0]} listed twice")
        categories = frozenset(c for c in fields[2].split(";") if c)
        table[fields[0]] = StampLabel(fields[1] == "yes", categories)
    return table
