"""Sketchy Extended in its two public layouts.

- ``sketchy-authors`` (the IIAE code): ``<root>/sketch/tx_000000000000/<class>/*.png`` and
  ``<root>/extended_photo/<class>/*.jpg``; ``root`` may also be the parent holding ``Sketchy/``.
- ``sketchy-sake`` (SAKE, DSN, ZSE-SBIR): ``<root>/256x256/sketch/tx_000000000000_ready/<class>``
  and ``<root>/EXTEND_image_sketchy_ready/<class>``; ``root`` may also be the parent holding
  ``Sketchy/``.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from index_builder.datasets.base import DatasetError, SketchPhotoSet
from index_builder.datasets.folder import load_class_trees, require_dir

NAME = "sketchy-extended"

# layout name -> (sketch folder, photo folder), relative to the root
LAYOUTS: dict[str, tuple[str, str]] = {
    "sketchy-authors": ("sketch/tx_000000000000", "extended_photo"),
    "sketchy-sake": ("256x256/sketch/tx_000000000000_ready", "EXTEND_image_sketchy_ready"),
}


class SketchyLayout(NamedTuple):
    """Where one Sketchy Extended copy keeps its sketches and photos."""

    layout: str
    root: Path
    sketch_dir: Path
    photo_dir: Path


def find_sketchy_layout(root: Path) -> SketchyLayout | None:
    """The first layout found in ``root`` or ``root/Sketchy``; None when neither holds one."""
    root = Path(root)
    for base in (root, root / "Sketchy"):
        for layout, (sketch, photo) in LAYOUTS.items():
            if (base / sketch).is_dir() and (base / photo).is_dir():
                return SketchyLayout(layout, base, base / sketch, base / photo)
    return None


def is_sketchy(root: Path) -> bool:
    """Whether ``root`` holds Sketchy Extended in a layout this module reads."""
    return find_sketchy_layout(root) is not None


def describe_layouts() -> str:
    """The understood layouts, one per line, for error messages."""
    return "\n".join(
        f"  {name}: <root>/{sketch}/<class>/* and <root>/{photo}/<class>/*"
        for name, (sketch, photo) in LAYOUTS.items()
    )


def load_sketchy(root: Path) -> SketchPhotoSet:
    """Load Sketchy Extended; ``meta["layout"]`` names the layout found."""
    root = Path(root)
    require_dir(root, "Sketchy Extended root")
    found = find_sketchy_layout(root)
    if found is None:
        raise DatasetError(
            f"{root} holds no Sketchy Extended layout (also looked in {root / 'Sketchy'}); "
            f"expected one of:\n{describe_layouts()}"
        )
    meta = {"layout": found.layout, "root": str(found.root)}
    return load_class_trees(found.sketch_dir, found.photo_dir, NAME, meta)
