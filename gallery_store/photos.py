"""What the builder and the service both know about gallery photo files: how a name is shown,
how a file is hashed, and the largest photo the gallery indexes."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO

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


def hash_stream(handle: BinaryIO, block: int = 1 << 20) -> tuple[str, int]:
    """Hex sha256 and length of what is left to read of ``handle``: the bytes hashed, which
    may differ from the file's size when it changes meanwhile."""
    digest, size, buffer = hashlib.sha256(), 0, bytearray(block)
    view = memoryview(buffer)
    while n := handle.readinto(view):  # type: ignore[attr-defined]
        digest.update(view[:n])
        size += n
    return digest.hexdigest(), size


def printable(text: str | Path) -> str:
    """A name for a terminal or a log line: ``display_path``, and every character that is
    not printable (newlines, escapes, bidirectional controls) escaped as ``\\n``, ``\\xNN``
    or ``\\uNNNN``, so a file name cannot split or forge a line."""
    shown = display_path(text)
    if shown.isprintable():
        return shown
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in shown)
