"""Pick the image data set loader that fits a folder."""

from __future__ import annotations

from pathlib import Path

from index_builder.datasets.base import DatasetError, SketchPhotoSet
from index_builder.datasets.folder import is_folder_layout, load_folder, require_dir
from index_builder.datasets.sketchy import describe_layouts, is_sketchy, load_sketchy


def load_dataset(root: Path) -> SketchPhotoSet:
    """Load ``root`` as Sketchy Extended (either layout) or as the generic folder layout."""
    root = Path(root)
    require_dir(root, "data set root")
    if is_sketchy(root):
        return load_sketchy(root)
    if is_folder_layout(root):
        return load_folder(root)
    raise DatasetError(
        f"{root} holds no data set layout this builder reads; expected one of:\n"
        f"{describe_layouts()}\n"
        "  (either Sketchy layout may also sit in <root>/Sketchy/)\n"
        "  folder: <root>/sketch/<class>/* and <root>/photo/<class>/*"
    )
