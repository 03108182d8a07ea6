"""Pick the image data set loader that fits a folder."""

from __future__ import annotations

from pathlib import Path

from index_builder.training.datasets.base import DatasetError, SketchPhotoSet
from index_builder.training.datasets.folder import is_folder_layout, load_folder, require_dir
from index_builder.training.datasets.sketchy import (
    Gallery,
    describe_layouts,
    find_sketchy_layout,
    load_sketchy,
)


def find_images(root: Path) -> Path | None:
    """The folder of the image data set found at ``root`` (any layout), or None."""
    found = find_sketchy_layout(root)
    if found is not None:
        return found.root
    return Path(root) if is_folder_layout(root) else None


def load_dataset(root: Path, gallery: Gallery = "extended") -> SketchPhotoSet:
    """Load ``root`` as Sketchy Extended (any arrangement) or as the generic folder layout.

    ``gallery`` matters for Sketchy only: ``sake`` adds Sketchy's own photos to the gallery.
    """
    root = Path(root)
    require_dir(root, "data set root")
    if find_sketchy_layout(root) is not None:
        return load_sketchy(root, gallery)
    if is_folder_layout(root):
        if gallery != "extended":
            raise DatasetError(f"{root}: gallery {gallery!r} is for Sketchy Extended only")
        return load_folder(root)
    raise DatasetError(
        f"{root} holds no data set layout this builder reads; expected one of:\n"
        f"{describe_layouts()}\n"
        "  folder: <root>/sketch/<class>/* and <root>/photo/<class>/*\n"
        "  the IIAE authors' feature files: <root>/[dataset/]SketchyVGG/split<N>/"
        "<part>_features.npy and <part>_paths.npy"
    )
