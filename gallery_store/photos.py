"""What the builder and the service both know about gallery photo files: how a name is shown,
how a file is hashed, and the largest photo the gallery indexes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# Larger JPEGs are refused by the builder; the service's thumbnails use the same limit, since
# every indexed photo was decoded under it.
MAX_PIXELS = 100_000_000


def display_path(path: str | Path) -> str:
    """``path`` printable anywhere: bytes that are not UTF-8 shown as ``\\xNN``."""
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()
