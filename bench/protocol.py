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
  (``sha256("sketch-search heldout v1:" + key_id)``; the training code's rule,
  ``index_builder.training.heldout``, at the recommended recipe's share 0.2) is never used for
  training, early stopping or any head; it queries "held-out sketches of trained categories".
  ``prepare`` writes each sketch as ``sketch/<class>/<key_id>.png``, so the key_id is the
  file's stem.

The sealed classes are also committed as ``bench/splits/sealed.txt`` (``write_sealed_split``;
class names only), the demo model's test classes.
"""

from __future__ import annotations

import datetime
import hashlib
import subprocess
from pathlib import Path

import numpy as np

from index_builder.training import heldout

SEALED_SALT = "sketch-search sealed v1:"
N_CLASSES = 205
N_SEALED = 41
N_FOLDS = 4
HELDOUT_SHARE = 0.2
SEALED_SPLIT = Path(__file__).with_name("splits") / "sealed.txt"
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
    return heldout.is_heldout(key_id, HELDOUT_SHARE)


def write_sealed_split(classes: list[str], out: Path = SEALED_SPLIT) -> Path:
    """The sealed classes as a class list ``train --test-classes`` reads (class names only,
    no data): the demo's test set."""
    header = (
        "# The sealed test set of bench/protocol.py (written by write_sealed_split): 41 of the\n"
        "# 205 classes, never trained on or chosen by; the demo model's unseen test classes.\n"
    )
    out.write_text(header + "".join(f"{c}\n" for c in sealed_classes(classes)))
    return out


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
        f.write(f"| {today} | {current_commit()} | {what.strip()} |\n")
    return sealed


def current_commit() -> str:
    """The checkout's commit (``+`` where files differ from it): what code a look scored."""
    root = Path(__file__).parent
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=root, capture_output=True, text=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
        )
    except OSError:
        return "unknown"
    if head.returncode != 0:
        return "unknown"
    return head.stdout.strip() + ("+" if dirty.stdout.strip() else "")
