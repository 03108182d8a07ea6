"""Sketchy Extended in each published arrangement; sketch and photo folders are found apart.

Sketches (``<class>/*.png``) and photos (``<class>/*.jpg``) are looked for under the root, its
``Sketchy/`` and its ``dataset/Sketchy/`` (IIAE's own root), and beside a ``256x256/`` root:

- ``sketchy-authors`` (SEM-PCYC's ``download_datasets.sh``, IIAE): ``sketch/tx_000000000000``
  and ``extended_photo``; that script renames ``hot-air_balloon`` and ``jack-o-lantern`` to
  ``hot_air_balloon`` and ``jack_o_lantern`` (class lists match either spelling).
- ``sketchy-sake`` (SAKE, DSN, ZSE-SBIR): ``256x256/sketch/tx_000000000000_ready`` and
  ``EXTEND_image_sketchy_ready``.
- ``sketchy-archives`` (the official archives unpacked as downloaded):
  ``256x256/sketch/tx_000000000000`` beside ``EXTEND_image_sketchy``.
- ``sketchy-doodle2search``: ``sketch/tx_000000000000`` beside ``EXTEND_image_sketchy``.

The training photos are the extended photos. SAKE and ZSE-SBIR also search Sketchy's own
photos (``256x256/photo/tx_000000000000[_ready]``); ``gallery="sake"`` adds them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, NamedTuple

from index_builder.training.datasets.base import DatasetError, Sample, SketchPhotoSet
from index_builder.training.datasets.folder import load_class_trees, require_dir, scan_class_tree

NAME = "sketchy-extended"
Gallery = Literal["extended", "sake"]
GALLERIES: tuple[Gallery, ...] = ("extended", "sake")

# layout name -> (sketch folder, extended photo folder), each relative to a base folder
LAYOUTS: dict[str, tuple[str, str]] = {
    "sketchy-authors": ("sketch/tx_000000000000", "extended_photo"),
    "sketchy-sake": ("256x256/sketch/tx_000000000000_ready", "EXTEND_image_sketchy_ready"),
    "sketchy-archives": ("256x256/sketch/tx_000000000000", "EXTEND_image_sketchy"),
    "sketchy-doodle2search": ("sketch/tx_000000000000", "EXTEND_image_sketchy"),
}
SKETCH_DIRS = tuple(dict.fromkeys(s for s, _ in LAYOUTS.values()))
PHOTO_DIRS = tuple(dict.fromkeys(p for _, p in LAYOUTS.values()))
# Sketchy's own 12,500 photos (SAKE / ZSE-SBIR galleries add them to the extended ones)
OWN_PHOTO_DIRS = (
    "256x256/photo/tx_000000000000_ready",
    "256x256/photo/tx_000000000000",
    "photo/tx_000000000000",
)


class SketchyLayout(NamedTuple):
    """Where one Sketchy Extended copy keeps its sketches and photos."""

    layout: str
    root: Path
    sketch_dir: Path
    photo_dir: Path
    own_photo_dir: Path | None = None


def bases(root: Path) -> list[Path]:
    """Folders a Sketchy arrangement may sit in, given the root a user passed."""
    root = Path(root)
    found = [root, root / "Sketchy", root / "dataset" / "Sketchy"]
    if root.name in ("256x256", "Sketchy"):  # the extended photos may sit beside it
        found.append(root.parent)
    return found


def _first(root: Path, relatives: tuple[str, ...]) -> tuple[Path, str] | None:
    """The first ``base / rel`` folder that exists, over the bases, and ``rel``."""
    for base in bases(root):
        for rel in relatives:
            for cand in (base / rel, _inner(base, rel)):
                if cand is not None and cand.is_dir():
                    return cand, rel
    return None


def _inner(base: Path, rel: str) -> Path | None:
    """``rel`` without its ``256x256/`` when ``base`` is that folder itself."""
    if base.name == "256x256" and rel.startswith("256x256/"):
        return base / rel.removeprefix("256x256/")
    return None


def find_sketchy_layout(root: Path) -> SketchyLayout | None:
    """The sketch and extended-photo folders under ``root``; None unless both are found."""
    sketches, photos = _first(root, SKETCH_DIRS), _first(root, PHOTO_DIRS)
    if sketches is None or photos is None:
        return None
    names = [n for n, pair in LAYOUTS.items() if pair == (sketches[1], photos[1])]
    own = _first(root, OWN_PHOTO_DIRS)
    base = sketches[0].parents[len(Path(sketches[1]).parts) - 1]
    return SketchyLayout(
        names[0] if names else "sketchy-mixed",
        base,
        sketches[0],
        photos[0],
        own[0] if own else None,
    )


def is_sketchy(root: Path) -> bool:
    """Whether ``root`` holds Sketchy Extended in an arrangement this module reads."""
    return find_sketchy_layout(root) is not None


def describe_layouts() -> str:
    """The understood arrangements, one per line, for error messages."""
    return (
        "\n".join(
            f"  {name}: <root>/{sketch}/<class>/* and <root>/{photo}/<class>/*"
            for name, (sketch, photo) in LAYOUTS.items()
        )
        + "\n  (<root> may also be the folder holding Sketchy/ or dataset/Sketchy/)"
    )


def load_sketchy(root: Path, gallery: Gallery = "extended") -> SketchPhotoSet:
    """Load Sketchy Extended; ``meta["layout"]`` names the arrangement found.

    ``gallery="sake"`` adds Sketchy's own photos of each class to the extended ones.
    """
    root = Path(root)
    require_dir(root, "Sketchy Extended root")
    found = find_sketchy_layout(root)
    if found is None:
        looked = ", ".join(str(b) for b in bases(root))
        raise DatasetError(
            f"{root} holds no Sketchy Extended arrangement (looked in {looked}) for a sketch "
            f"folder ({', '.join(SKETCH_DIRS)}) and a photo folder ({', '.join(PHOTO_DIRS)}); "
            f"expected one of:\n{describe_layouts()}"
        )
    meta = {"layout": found.layout, "root": str(found.root), "gallery": gallery}
    ds = load_class_trees(found.sketch_dir, found.photo_dir, NAME, meta)
    if gallery == "extended":
        return ds
    if found.own_photo_dir is None:
        raise DatasetError(
            f"{root}: gallery 'sake' needs Sketchy's own photos; found none of "
            f"{', '.join(OWN_PHOTO_DIRS)}"
        )
    own = scan_class_tree(found.own_photo_dir)
    extra = [Sample(p, c) for c in sorted(own) if c in set(ds.classes()) for p in own[c]]
    return SketchPhotoSet(ds.sketches, ds.photos + extra, ds.name, ds.meta)
