"""The common shape of every data set: labelled sketch and photo image files."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from model.preprocess import IMAGE_SUFFIXES

V = TypeVar("V")


class DatasetError(ValueError):
    """Bad data: the message names the file or class at fault."""


@dataclass(frozen=True)
class Sample:
    """One image file and its class."""

    path: Path
    label: str


@dataclass
class SketchPhotoSet:
    """Sketches and photos of the same classes."""

    sketches: list[Sample]
    photos: list[Sample]
    name: str = "dataset"
    meta: dict[str, str] = field(default_factory=dict)

    def classes(self) -> list[str]:
        """Sorted classes that have both sketches and photos."""
        return sorted({s.label for s in self.sketches} & {p.label for p in self.photos})

    def restrict(self, classes: Iterable[str]) -> SketchPhotoSet:
        """The subset of the given classes; every one must have sketches and photos."""
        wanted = list(dict.fromkeys(classes))
        check_classes_present(self, wanted)
        keep = set(wanted)
        return SketchPhotoSet(
            [s for s in self.sketches if s.label in keep],
            [p for p in self.photos if p.label in keep],
            self.name,
            dict(self.meta),
        )


def check_classes_present(ds: SketchPhotoSet, classes: Iterable[str]) -> None:
    """Raise DatasetError naming each class that lacks sketches or photos."""
    sketch_classes = {s.label for s in ds.sketches}
    photo_classes = {p.label for p in ds.photos}
    problems = []
    for c in classes:
        missing = [
            k
            for k, have in (("sketches", sketch_classes), ("photos", photo_classes))
            if c not in have
        ]
        if missing:
            problems.append(f"class {c!r} has no {' and no '.join(missing)}")
    if problems:
        raise DatasetError(f"{ds.name}: " + "; ".join(problems))


def select_entries(
    mapping: dict[str, V], wanted: Iterable[str] | None, missing_message: str
) -> dict[str, V]:
    """The entries named in ``wanted`` (all when None), in its order; DatasetError names any
    missing one after ``missing_message``."""
    if wanted is None:
        return mapping
    names = list(dict.fromkeys(wanted))
    missing = [n for n in names if n not in mapping]
    if missing:
        raise DatasetError(f"{missing_message} {', '.join(map(repr, missing))}")
    return {n: mapping[n] for n in names}


def list_images(folder: Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
