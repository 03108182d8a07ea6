"""The generic layout: ``<root>/sketch/<class>/*`` and ``<root>/photo/<class>/*``.

Files are listed, not decoded: an unreadable image is caught later by the feature extractor.
"""

from __future__ import annotations

import os
from pathlib import Path

from index_builder.training.datasets.base import DatasetError, Sample, SketchPhotoSet
from model.preprocess import IMAGE_SUFFIXES

MAX_LISTED = 10  # problems named in one error message before "... and N more"


def is_folder_layout(root: Path) -> bool:
    """Whether ``root`` holds both a ``sketch/`` and a ``photo/`` folder."""
    root = Path(root)
    return (root / "sketch").is_dir() and (root / "photo").is_dir()


def load_folder(root: Path, name: str | None = None) -> SketchPhotoSet:
    """Load ``<root>/sketch/<class>/*`` and ``<root>/photo/<class>/*``."""
    root = Path(root)
    require_dir(root, "data set root")
    for side in ("sketch", "photo"):
        require_dir(root / side, f"{side} folder (expected {root}/{side}/<class>/<image>)")
    meta = {"layout": "folder", "root": str(root)}
    return load_class_trees(root / "sketch", root / "photo", name or root.name or "folder", meta)


def load_class_trees(
    sketch_dir: Path, photo_dir: Path, name: str, meta: dict[str, str]
) -> SketchPhotoSet:
    """Pair two ``<dir>/<class>/<image>`` trees; every class must have sketches and photos."""
    sketches = scan_class_tree(sketch_dir)
    photos = scan_class_tree(photo_dir)
    if not sketches and not photos:
        raise DatasetError(
            f"{name}: no classes: no class folder with images in {sketch_dir} or {photo_dir}"
        )
    check_sides(name, sketches, photos, sketch_dir, photo_dir)
    return SketchPhotoSet(to_samples(sketches), to_samples(photos), name, meta)


def check_sides(
    name: str,
    sketches: dict[str, list[Path]],
    photos: dict[str, list[Path]],
    sketch_dir: Path,
    photo_dir: Path,
) -> None:
    """Raise DatasetError naming every class that has images on one side only."""
    problems = [
        f"class {c!r} has sketches but no photos (no images in {photo_dir / c})"
        for c in sorted(sketches.keys() - photos.keys())
    ] + [
        f"class {c!r} has photos but no sketches (no images in {sketch_dir / c})"
        for c in sorted(photos.keys() - sketches.keys())
    ]
    if problems:
        raise DatasetError(f"{name}: {summarise(problems)}")


def summarise(problems: list[str]) -> str:
    """Join problems, naming at most MAX_LISTED of them."""
    text = "; ".join(problems[:MAX_LISTED])
    extra = len(problems) - MAX_LISTED
    return text + (f"; ... and {extra} more" if extra > 0 else "")


def scan_class_tree(folder: Path) -> dict[str, list[Path]]:
    """Images of each class folder directly under ``folder``; classes without images left out."""
    tree = {}
    with os.scandir(folder) as entries:
        class_dirs = sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))
    for cls in class_dirs:
        images = scan_images(folder / cls)
        if images:
            tree[cls] = images
    return tree


def scan_images(folder: Path) -> list[Path]:
    """Image files (by suffix) directly in ``folder``, sorted by name; hidden files skipped.

    Uses ``os.scandir`` so that no file is stat'ed or opened: fast on tens of thousands.
    """
    with os.scandir(folder) as entries:
        names = sorted(
            e.name
            for e in entries
            if not e.name.startswith(".")
            and os.path.splitext(e.name)[1].lower() in IMAGE_SUFFIXES
            and e.is_file()
        )
    return [folder / n for n in names]


def to_samples(tree: dict[str, list[Path]]) -> list[Sample]:
    """Samples in class order, then file order."""
    return [Sample(path, cls) for cls in sorted(tree) for path in tree[cls]]


def require_dir(path: Path, what: str) -> None:
    """Raise DatasetError naming ``path`` when it is not a folder."""
    if not path.exists():
        raise DatasetError(f"missing {what}: {path} does not exist")
    if not path.is_dir():
        raise DatasetError(f"{what}: {path} is not a folder")
