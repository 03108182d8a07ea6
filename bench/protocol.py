"""The evaluation protocol every bench shares: a sealed test set, development folds and
held-out sketches of trained categories.

- Classes: the 205 classes ``python -m index_builder prepare --shared ../shared/data`` writes
  (Quick, Draw! categories with pictures in the curated photo map).
- Sealed test set: the 41 classes with the smallest
  ``sha256("sketch-search sealed v1:" + class)``. No recipe decision sees them; they are
  evaluated only when a recipe change is final, and every look is logged in
  ``bench/sealed_looks.md`` (``look_at_sealed``).
- Development folds: the other 164 classes, sorted, permuted by ``numpy.random.default_rng(0)``
  and dealt into 4 folds of 41 (fold i = permuted[i::4], sorted). Per fold a run trains on the
  other 123 (holding validation classes out inside the run) and is tested on the fold.
- Held-out sketches: a sketch whose Quick, Draw! ``key_id`` hashes to 0 modulo 5
  (``sha256("sketch-search heldout v1:" + key_id)``) is never used for training, early
  stopping or any head; it queries "held-out sketches of trained categories". ``prepare``
  writes each sketch as ``sketch/<class>/<key_id>.png``, so the key_id is the file's stem.

``write_dev_data`` turns a prepared data set into the development data set a run may train
on: the 164 development classes, their pictures, and their sketches less the held-out ones
(links, not copies).
"""

from __future__ import annotations

import datetime
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SEALED_SALT = "sketch-search sealed v1:"
HELDOUT_SALT = "sketch-search heldout v1:"
N_CLASSES = 205
N_SEALED = 41
N_FOLDS = 4
HELDOUT_MODULUS = 5
# sha256 of the 205 class names, sorted, one a line: the sealed set is a function of the
# class list, so a changed photo map (or a copy of the data lacking categories) must fail
# loudly instead of quietly drawing another sealed set.
CLASSES_SHA256 = "1cc2818d18e8b42dd051b307235ec6f4ddb2478b1c6442c00b0fbd91592e2a35"
SEALED_LOOKS = Path(__file__).with_name("sealed_looks.md")


class ProtocolError(ValueError):
    """The data do not match the protocol (another class list, a sketch without a key_id)."""


def classes_digest(classes: list[str]) -> str:
    return hashlib.sha256("".join(f"{c}\n" for c in sorted(classes)).encode()).hexdigest()


def check_classes(classes: list[str]) -> list[str]:
    """The protocol's 205 classes, sorted; ProtocolError where ``classes`` are others."""
    classes = sorted(classes)
    if len(classes) != N_CLASSES or classes_digest(classes) != CLASSES_SHA256:
        raise ProtocolError(
            f"{len(classes)} classes whose list differs from the protocol's {N_CLASSES} "
            "(the classes `python -m index_builder prepare --shared ../shared/data` writes "
            "from the curated photo map); the sealed set and the folds are defined on those"
        )
    return classes


def _sealed_rank(cls: str) -> str:
    return hashlib.sha256(f"{SEALED_SALT}{cls}".encode()).hexdigest()


def sealed_classes(classes: list[str]) -> list[str]:
    """The 41 sealed test classes, sorted: to exclude, never to evaluate (``look_at_sealed``)."""
    return sorted(sorted(check_classes(classes), key=_sealed_rank)[:N_SEALED])


def dev_classes(classes: list[str]) -> list[str]:
    """The 164 development classes, sorted."""
    sealed = set(sealed_classes(classes))
    return [c for c in check_classes(classes) if c not in sealed]


def dev_folds(classes: list[str]) -> list[list[str]]:
    """The 4 development folds of 41 classes each, each sorted."""
    dev = dev_classes(classes)
    permuted = [dev[i] for i in np.random.default_rng(0).permutation(len(dev))]
    return [sorted(permuted[i::N_FOLDS]) for i in range(N_FOLDS)]


def is_heldout(key_id: str) -> bool:
    """Whether a Quick, Draw! sketch is held out of every fit (a query of trained categories)."""
    digest = hashlib.sha256(f"{HELDOUT_SALT}{key_id}".encode()).hexdigest()
    return int(digest, 16) % HELDOUT_MODULUS == 0


def sketch_key_id(path: str | Path) -> str:
    """The key_id of a sketch ``prepare`` wrote (its file's stem)."""
    return Path(path).stem


@dataclass(frozen=True)
class DevData:
    """What ``write_dev_data`` linked: the folder, its classes and sketch counts."""

    root: Path
    classes: list[str]
    sketches: int
    heldout_left_out: int
    photos: int


def write_dev_data(prepared: Path, out: Path) -> DevData:
    """Link ``prepared``'s development classes into ``out`` (``sketch/<class>/``,
    ``photo/<class>/``), leaving out the sealed classes and every held-out sketch; rebuilt
    from scratch each call (links only), so it always matches this module."""
    prepared, out = Path(prepared).resolve(), Path(out)
    classes = sorted(p.name for p in (prepared / "sketch").iterdir() if p.is_dir())
    dev = dev_classes(classes)
    if out.exists():
        _remove_links(out)
    sketches = left_out = photos = 0
    for cls in dev:
        for domain in ("sketch", "photo"):
            folder = out / domain / cls
            folder.mkdir(parents=True, exist_ok=True)
            for src in sorted((prepared / domain / cls).iterdir()):
                if domain == "sketch" and is_heldout(sketch_key_id(src)):
                    left_out += 1
                    continue
                os.symlink(src, folder / src.name)
                sketches += domain == "sketch"
                photos += domain == "photo"
    return DevData(out, dev, sketches, left_out, photos)


def _remove_links(out: Path) -> None:
    """Empty a folder ``write_dev_data`` wrote; refuse one holding anything but links."""
    files = [p for p in out.rglob("*") if not p.is_dir()]
    if any(not p.is_symlink() for p in files):
        raise ProtocolError(f"{out}: holds files other than links; not a dev data folder")
    for p in files:
        p.unlink()
    for d in sorted((p for p in out.rglob("*") if p.is_dir()), reverse=True):
        d.rmdir()


def heldout_sketches(prepared: Path, classes: list[str]) -> dict[str, list[Path]]:
    """Class -> its held-out sketches in ``prepared`` (sorted paths)."""
    return {
        c: sorted(p for p in (Path(prepared) / "sketch" / c).iterdir() if is_heldout(p.stem))
        for c in classes
    }


def sealed_look_count(log: Path = SEALED_LOOKS) -> int:
    """How many times the sealed set has been evaluated (rows of the log's table)."""
    return sum(1 for line in log.read_text().splitlines() if line.startswith("| 2"))


def look_at_sealed(classes: list[str], what: str, log: Path = SEALED_LOOKS) -> list[str]:
    """The sealed classes, for the final evaluation of a finished recipe change: appends a row
    (date, ``what``) to the log, which is committed with the figures it produced."""
    sealed = sealed_classes(classes)
    if not what.strip() or "|" in what or "\n" in what:
        raise ValueError("say in one line, without '|', what is evaluated on the sealed set")
    today = datetime.date.today().isoformat()
    with log.open("a") as f:
        f.write(f"| {today} | {what.strip()} |\n")
    return sealed
