"""Held-out sketches of trained categories: a fixed share of every training category's
sketches that no fit sees (IIAE training, early stopping, the fusion choice, the category
head, the input scaling), kept to measure how new sketches of trained categories fare.

A sketch is held out at share ``1/n`` when ``sha256("sketch-search heldout v1:" + key_id)``
is 0 modulo ``n``; the key_id is the sketch file's stem (``prepare`` writes Quick, Draw!
sketches as ``sketch/<class>/<key_id>.png``). A hash of the sketch's own id, not of its
position, so the set is the same in every run, every split and every copy of the data.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from index_builder.training.features import FeatureSet

HELDOUT_SALT = "sketch-search heldout v1:"


def heldout_modulus(share: float) -> int:
    """n of a share 1/n (0 for share 0); ValueError for any other share."""
    if share == 0:
        return 0
    n = round(1 / share) if share > 0 else 0
    if n < 2 or abs(1 / n - share) > 1e-9:
        raise ValueError(f"held-out share {share}: must be 0 or 1/n for an integer n >= 2")
    return n


def is_heldout(key_id: str, share: float) -> bool:
    """Whether the sketch ``key_id`` is held out of every fit at this share."""
    n = heldout_modulus(share)
    if n == 0:
        return False
    digest = hashlib.sha256(f"{HELDOUT_SALT}{key_id}".encode()).hexdigest()
    return int(digest, 16) % n == 0


def sketch_key_id(path: str | Path) -> str:
    """The key_id of a sketch ``prepare`` wrote (its file's stem)."""
    return Path(path).stem


def split_heldout(sketches: FeatureSet, share: float) -> tuple[FeatureSet, FeatureSet]:
    """(the sketches a fit may see, the held-out ones) at this share."""
    held = [is_heldout(sketch_key_id(p), share) for p in sketches.paths]
    kept = [i for i, h in enumerate(held) if not h]
    return sketches.rows(kept), sketches.rows([i for i, h in enumerate(held) if h])
