"""Find the gallery's photos: a folder tree or a list file, each file with its sha256.

A folder is walked recursively (hidden files and folders skipped); paths are kept relative to
it, and a photo's class is its parent folder's name when it lies at ``<root>/<class>/<file>``.
A list file holds one image path a line, optionally ``path<TAB>class``; relative paths are
relative to the list file's folder, which is then the photos root; blank lines and ``#``
comments are ignored. A listed file that is missing or unreadable is reported, not fatal.
"""

from __future__ import annotations

import hashlib
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tqdm import tqdm

from index_builder.datasets.base import IMAGE_SUFFIXES


@dataclass(frozen=True)
class PhotoFile:
    """One gallery photo: path relative to the photos root (POSIX), class, content hash."""

    path: str
    cls: str | None
    sha256: str


@dataclass(frozen=True)
class Skipped:
    """A photo left out of the index, and why (``sha256`` None when it could not be read)."""

    path: str
    sha256: str | None
    error: str


@dataclass(frozen=True)
class Scan:
    """The photos found under ``root`` (sorted by path), those that could not be read, and
    where they were listed."""

    root: Path
    source: Path
    files: list[PhotoFile]
    unreadable: list[Skipped]

    def absolute(self, photo: PhotoFile) -> Path:
        """The file on disk."""
        return self.root / photo.path


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _try_hash(path: Path) -> str | OSError:
    try:
        return sha256_file(path)
    except OSError as err:
        return err


def scan_photos(source: str | Path, workers: int = 4, progress: bool = False) -> Scan:
    """List and hash the photos of a folder tree or list file (see the module docstring)."""
    source = Path(source).resolve()
    if source.is_dir():
        root, listed = source, walk_images(source)
    elif source.is_file():
        root, listed = source.parent, read_list_file(source)
    else:
        raise FileNotFoundError(f"{source}: photos folder or list file does not exist")
    paths = sorted(listed)
    with ThreadPoolExecutor(max(1, workers)) as pool:
        hashes = list(tqdm(pool.map(lambda p: _try_hash(root / p), paths), total=len(paths),
                           desc="hash photos", unit="file", disable=not progress))  # fmt: skip
    files, unreadable = [], []
    for path, digest in zip(paths, hashes, strict=True):
        if isinstance(digest, OSError):
            unreadable.append(Skipped(path, None, f"cannot read the file ({digest.strerror})"))
        else:
            files.append(PhotoFile(path, listed[path], digest))
    return Scan(root, source, files, unreadable)


def walk_images(root: Path) -> dict[str, str | None]:
    """Relative POSIX path -> class (parent folder at depth one, else None) of every image."""
    found: dict[str, str | None] = {}
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        rel_folder = PurePosixPath(Path(folder).relative_to(root).as_posix())
        for name in names:
            if name.startswith(".") or Path(name).suffix.lower() not in IMAGE_SUFFIXES:
                continue
            rel = rel_folder / name
            found[str(rel)] = class_of(rel)
    return found


def class_of(rel: PurePosixPath) -> str | None:
    """The class of ``<class>/<file>``; None for any other depth."""
    return rel.parts[0] if len(rel.parts) == 2 else None


def read_list_file(list_file: Path) -> dict[str, str | None]:
    """Path (relative to the list's folder where it lies inside it) -> class, from a list."""
    base = list_file.parent
    found: dict[str, str | None] = {}
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.rstrip("\n").split("\t")
        if len(fields) > 2 or not fields[0].strip():
            raise ValueError(f"{list_file}:{number}: expected 'path' or 'path<TAB>class'")
        rel = _relative(base, Path(fields[0].strip()))
        cls = fields[1].strip() if len(fields) == 2 and fields[1].strip() else None
        found[rel] = cls if cls is not None else class_of(PurePosixPath(rel))
    return found


def _relative(base: Path, path: Path) -> str:
    """``path`` relative to ``base`` when inside it, else absolute (both POSIX strings)."""
    full = (base / path).resolve()
    try:
        return full.relative_to(base).as_posix()
    except ValueError:
        return full.as_posix()
