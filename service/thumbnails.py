"""Photo thumbnails, made once and cached on disk by the photo's content hash.

A thumbnail is the photo (transparency composited onto white, as everywhere) shrunk to fit
``size`` x ``size``, as a JPEG. It is keyed by the photo's sha256 from the manifest and the
size, so it survives index reloads and is shared by every version holding that photo. A
request for a thumbnail being made waits for it rather than making it twice; files are
written under a temporary name and renamed, so a reader never sees half a file.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

from PIL import Image

from model.preprocess import ImageError, load_image

QUALITY = 85
MEDIA_TYPE = "image/jpeg"


class ThumbnailError(RuntimeError):
    """The photo file is missing or unreadable."""


class ThumbnailCache:
    """Makes and finds thumbnails under ``folder``; thread-safe, blocking (use a thread)."""

    def __init__(self, folder: Path, size: int, max_pixels: int) -> None:
        self.folder, self.size, self.max_pixels = Path(folder), size, max_pixels
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def path_for(self, sha256: str) -> Path:
        """Where the thumbnail of the photo with this content hash lives."""
        return self.folder / sha256[:2] / f"{sha256}-{self.size}.jpg"

    def get(self, photo: Path, sha256: str) -> Path:
        """The thumbnail of ``photo`` (content hash ``sha256``), made now if not cached."""
        target = self.path_for(sha256)
        if target.is_file():
            return target
        with self._guard:
            lock = self._locks.setdefault(target.name, threading.Lock())
        try:
            with lock:  # one maker per thumbnail; the others wait and find it made
                if not target.is_file():
                    self._make(photo, target)
        finally:
            with self._guard:
                self._locks.pop(target.name, None)
        return target

    def _make(self, photo: Path, target: Path) -> None:
        try:
            img = load_image(photo, self.max_pixels)
        except ImageError as err:
            raise ThumbnailError(f"photo file unreadable: {err}") from err
        img.thumbnail((self.size, self.size), Image.LANCZOS)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".jpg", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as out:
                img.save(out, "JPEG", quality=QUALITY, optimize=True)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
