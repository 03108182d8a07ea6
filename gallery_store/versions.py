r"""Versioned, checksummed gallery index directories with an atomically swapped pointer.

Layout of an INDEX_DIR::

    CURRENT                 {"version": "v000003", "checksums_sha256": ...} (os.replace'd)
    SERVED                  every version CURRENT has pointed to, with its checksums' sha256
    .lock                   held (flock) by the one build running
    versions/v000003/       index.faiss, vectors.npy, manifest.json, report.json, checksums.json
    versions/.staging-*/    a build in progress (or an interrupted one, removed by the next)

A build writes its files into a staging folder, fsyncs them, renames the folder to the next
version and only then replaces ``CURRENT``; readers follow ``CURRENT``, so they only ever see a
complete version, and an interrupted build leaves ``CURRENT`` as it was. ``checksums.json``
holds every file's size and sha256 and ``CURRENT`` holds the sha256 of ``checksums.json``:
loading a truncated or tampered file fails with IndexIntegrityError. Old versions are pruned:
the newest ``keep`` versions that were served (made current) stay, the current one always;
versions never served (a build killed between writing its folder and moving ``CURRENT``) and
leftover pointer temporaries are removed. Photo paths may hold surrogate escapes (file names
that are not UTF-8); the JSON files store them as ``\udcNN`` escapes, losslessly.

An unreadable ``CURRENT`` (empty, garbage) never blocks a way forward: ``rebuild --photos P
--model M`` writes a new version and moves the pointer (vectors of kept versions are reused).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, TypeVar

import faiss
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from index_builder.gallery.faiss_index import IndexInfo, read_index, write_index
from index_builder.gallery.scan import sha256_file

FORMAT_VERSION = 1
POINTER = "CURRENT"
SERVED = "SERVED"
VERSIONS = "versions"
LOCK = ".lock"
STAGING_PREFIX = ".staging-"
INDEX_FILE, VECTORS_FILE = "index.faiss", "vectors.npy"
MANIFEST_FILE, REPORT_FILE, CHECKSUMS_FILE = "manifest.json", "report.json", "checksums.json"
DATA_FILES = (INDEX_FILE, VECTORS_FILE, MANIFEST_FILE, REPORT_FILE)
KEEP = 3
M = TypeVar("M", bound=BaseModel)


class IndexIntegrityError(RuntimeError):
    """An index version is incomplete, truncated or tampered with."""


class FingerprintMismatchError(ValueError):
    """The index was built by another model than the one that would query it."""


class IndexBusyError(RuntimeError):
    """Another build holds the index directory's lock."""


class ManifestItem(BaseModel):
    """One indexed photo; its id is its row in the index and in vectors.npy."""

    model_config = ConfigDict(populate_by_name=True)

    id: int
    path: str  # relative to the photos root (absolute if listed outside it)
    cls: str | None = Field(None, alias="class")
    width: int
    height: int
    sha256: str


class ModelInfo(BaseModel):
    """The photo encoder that made the vectors."""

    fingerprint: str
    backbone: str
    embedding_dim: int
    model_dir: str


class Manifest(BaseModel):
    """What a version holds: the model, the photos root and every indexed photo by id."""

    model_config = ConfigDict(populate_by_name=True)

    format_version: int = FORMAT_VERSION
    version: str = ""
    created: str
    model: ModelInfo
    photos_root: str
    source: str  # the folder or list file the photos were scanned from
    count: int
    index: IndexInfo
    items: list[ManifestItem]


class SkippedItem(BaseModel):
    """A photo left out, and why (sha256 None when the file could not be read at all);
    ``retry``: a failure that may not recur (read errors), so not remembered."""

    path: str
    sha256: str | None
    error: str
    retry: bool = False


class Report(BaseModel):
    """How a version was built: what changed, what was embedded, what was skipped."""

    mode: Literal["full", "incremental"]
    reason: str
    added: int = 0
    changed: int = 0
    removed: int = 0
    unchanged: int = 0
    embedded: int = 0
    reused: int = 0
    skipped: list[SkippedItem] = []
    seconds: dict[str, float] = {}


class Pointer(BaseModel):
    """The content of CURRENT."""

    version: str
    checksums_sha256: str


@dataclass
class LoadedIndex:
    """A verified index version, ready to search."""

    index_dir: Path
    version: str
    path: Path
    index: faiss.Index
    manifest: Manifest
    report: Report

    @property
    def fingerprint(self) -> str:
        return self.manifest.model.fingerprint

    @property
    def photos_root(self) -> Path:
        return Path(self.manifest.photos_root)

    def photo_path(self, item_id: int) -> Path:
        """The file of photo ``item_id`` on disk."""
        return self.photos_root / self.manifest.items[item_id].path

    def vectors(self) -> np.ndarray:
        """The (n, d) embeddings, memory-mapped."""
        return np.load(self.path / VECTORS_FILE, mmap_mode="r")

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the top ``k`` photos per query row; ids -1 pad short results."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        return self.index.search(q, min(k, max(self.index.ntotal, 1)))


@dataclass(frozen=True)
class Payload:
    """Everything a new version holds."""

    index: faiss.Index
    vectors: np.ndarray
    manifest: Manifest
    report: Report


# --- reading ---------------------------------------------------------------------------------


def read_pointer(index_dir: Path) -> Pointer | None:
    """CURRENT's content, None when the directory holds no index yet."""
    path = Path(index_dir) / POINTER
    if not path.exists():
        return None
    try:
        return Pointer.model_validate_json(path.read_bytes())
    except (OSError, ValidationError) as err:
        why = err.errors()[0]["msg"] if isinstance(err, ValidationError) else err.strerror
        raise IndexIntegrityError(
            f"{path}: unreadable pointer ({why}); to recover, run `python -m index_builder "
            f"rebuild --index {index_dir} --photos PHOTOS --model MODEL_DIR` (the photos and "
            f"model of each version are in {VERSIONS}/*/{MANIFEST_FILE})"
        ) from err


def read_served(index_dir: Path) -> dict[str, str]:
    """Version -> checksums sha256 of every version CURRENT has pointed to (may be partial:
    index directories from before SERVED existed, or a damaged file, give what is readable)."""
    try:
        served = json.loads((Path(index_dir) / SERVED).read_text())
    except (OSError, ValueError):
        return {}
    return {str(k): str(v) for k, v in served.items()} if isinstance(served, dict) else {}


def to_json(model: BaseModel, indent: int | None = None) -> str:
    """JSON of a model; strings with surrogate escapes (non-UTF-8 file names) are written as
    ``\\udcNN`` escapes, which pydantic's own serialiser refuses."""
    return json.dumps(model.model_dump(mode="json", by_alias=True), indent=indent)


def from_json(cls: type[M], data: bytes | str) -> M:
    """The model ``to_json`` wrote (pydantic's own parser refuses lone surrogates)."""
    try:
        return cls.model_validate(json.loads(data))
    except json.JSONDecodeError as err:
        raise ValueError(f"not valid JSON ({err})") from err


def load_current(
    index_dir: str | Path, expected_fingerprint: str | None = None, verify: bool = True
) -> LoadedIndex:
    """The current version, checksums verified; refuse a model fingerprint mismatch."""
    index_dir = Path(index_dir)
    pointer = read_pointer(index_dir)
    if pointer is None:
        raise FileNotFoundError(f"{index_dir}: no gallery index here (no {POINTER}); "
                                "build one with `python -m index_builder build-index`")  # fmt: skip
    loaded = load_version(index_dir, pointer.version, pointer.checksums_sha256 if verify else None)
    if expected_fingerprint is not None and loaded.fingerprint != expected_fingerprint:
        raise FingerprintMismatchError(
            f"{loaded.path}: the index was built with model {loaded.fingerprint[:16]}, but the "
            f"serving model is {expected_fingerprint[:16]}; rebuild it with `python -m "
            f"index_builder rebuild --index {index_dir} --model MODEL_DIR`"
        )
    return loaded


def load_version(index_dir: Path, version: str, checksums_sha256: str | None = None) -> LoadedIndex:
    """One version; with ``checksums_sha256`` every file is verified first."""
    folder = Path(index_dir) / VERSIONS / version
    if not folder.is_dir():
        raise IndexIntegrityError(f"{folder}: version {version} is missing")
    if checksums_sha256 is not None:
        verify_version(folder, checksums_sha256)
    try:
        manifest = from_json(Manifest, (folder / MANIFEST_FILE).read_bytes())
        report = from_json(Report, (folder / REPORT_FILE).read_bytes())
        index = read_index(folder / INDEX_FILE, manifest.index.nprobe)
    except (OSError, ValueError, RuntimeError) as err:
        raise IndexIntegrityError(f"{folder}: cannot be read ({_first_line(err)})") from err
    _check_consistent(folder, index, manifest)
    return LoadedIndex(Path(index_dir), version, folder, index, manifest, report)


def verify_version(folder: Path, checksums_sha256: str) -> None:
    """Raise IndexIntegrityError unless every file matches checksums.json and it matches."""
    listing = folder / CHECKSUMS_FILE
    if not listing.is_file() or sha256_file(listing) != checksums_sha256:
        raise IndexIntegrityError(f"{listing}: missing or modified (its sha256 differs from "
                                  f"the one in {POINTER})")  # fmt: skip
    try:
        expected = json.loads(listing.read_text())
    except ValueError as err:
        raise IndexIntegrityError(f"{listing}: unreadable ({err})") from err
    for name in DATA_FILES:
        path, want = folder / name, expected.get(name)
        if want is None or not path.is_file():
            raise IndexIntegrityError(f"{path}: missing from the index version")
        size = path.stat().st_size
        if size != want["bytes"]:
            raise IndexIntegrityError(f"{path}: {size} bytes, {want['bytes']} expected; the "
                                      "file is truncated or was modified")  # fmt: skip
        if sha256_file(path) != want["sha256"]:
            raise IndexIntegrityError(f"{path}: sha256 differs from {CHECKSUMS_FILE}; the file "
                                      "is corrupted or was modified")  # fmt: skip


def _check_consistent(folder: Path, index: faiss.Index, manifest: Manifest) -> None:
    if index.ntotal != manifest.count or len(manifest.items) != manifest.count:
        raise IndexIntegrityError(f"{folder}: the index holds {index.ntotal} vectors, the "
                                  f"manifest {len(manifest.items)} photos")  # fmt: skip
    if index.d != manifest.model.embedding_dim:
        raise IndexIntegrityError(f"{folder}: {index.d}-d index for a "
                                  f"{manifest.model.embedding_dim}-d model")  # fmt: skip


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


# --- writing ---------------------------------------------------------------------------------


@contextmanager
def locked(index_dir: Path) -> Iterator[None]:
    """Hold INDEX_DIR's build lock (released on exit, or by the OS if the process dies)."""
    index_dir.mkdir(parents=True, exist_ok=True)
    with open(index_dir / LOCK, "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            raise IndexBusyError(f"{index_dir}: another build is running (it holds "
                                 f"{index_dir / LOCK})") from err  # fmt: skip
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def check_index_dir(index_dir: Path) -> None:
    """Raise unless INDEX_DIR holds an index or is an existing empty folder (a fresh volume),
    so that a mistyped ``--index`` is never created."""
    if index_dir.exists() and not index_dir.is_dir():
        raise NotADirectoryError(f"{index_dir}: a file, not an index directory")
    if is_index_dir(index_dir):
        return
    if index_dir.is_dir() and not [p for p in index_dir.iterdir() if p.name != LOCK]:
        return
    raise FileNotFoundError(
        f"{index_dir}: no gallery index here (no {POINTER} or {VERSIONS}/); check the path, or "
        "create one with `python -m index_builder build-index` (or `rebuild` into an existing "
        "empty folder)"
    )


def is_index_dir(index_dir: Path) -> bool:
    """Whether ``index_dir`` holds an index (a pointer, or at least a versions folder)."""
    return (index_dir / POINTER).exists() or (index_dir / VERSIONS).is_dir()


def remove_stale(index_dir: Path) -> None:
    """Delete staging folders and pointer temporaries that interrupted builds left (call with
    the lock held)."""
    versions = index_dir / VERSIONS
    if versions.is_dir():
        for stale in versions.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
    for tmp in index_dir.glob(f".{POINTER}.*.tmp"):
        tmp.unlink(missing_ok=True)
    for tmp in index_dir.glob(f".{SERVED}.*.tmp"):
        tmp.unlink(missing_ok=True)


def version_names(index_dir: Path) -> list[str]:
    """Complete version folders, oldest first."""
    versions = Path(index_dir) / VERSIONS
    if not versions.is_dir():
        return []
    return sorted(p.name for p in versions.iterdir() if p.is_dir() and p.name.startswith("v"))


def next_version(index_dir: Path) -> str:
    """``v`` and a counter one above the highest version there."""
    numbers = [int(n[1:]) for n in version_names(index_dir) if n[1:].isdigit()]
    return f"v{max(numbers, default=0) + 1:06d}"


def commit_version(index_dir: Path, payload: Payload, keep: int = KEEP) -> str:
    """Write ``payload`` as the next version, point CURRENT at it, prune; call with the lock."""
    versions = index_dir / VERSIONS
    versions.mkdir(parents=True, exist_ok=True)
    version = next_version(index_dir)
    payload.manifest.version = version
    staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=versions))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the version from a service user
        checksums = _write_files(staging, payload)
        _fsync_dir(staging)
        staging.rename(versions / version)
        _fsync_dir(versions)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # SERVED records what CURRENT points to, before it moves and after: a build killed in
    # between leaves CURRENT's version unrecorded until the next commit records it first.
    _mark_served(index_dir)
    _write_pointer(index_dir, Pointer(version=version, checksums_sha256=checksums))
    _mark_served(index_dir)
    prune(index_dir, keep)
    return version


def _write_files(folder: Path, payload: Payload) -> str:
    """The data files and checksums.json; returns checksums.json's sha256."""
    write_index(payload.index, folder / INDEX_FILE)
    np.save(folder / VECTORS_FILE, np.ascontiguousarray(payload.vectors, dtype=np.float32))
    (folder / MANIFEST_FILE).write_text(to_json(payload.manifest))
    (folder / REPORT_FILE).write_text(to_json(payload.report, indent=2))
    listing = {n: {"bytes": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)}
               for n in DATA_FILES}  # fmt: skip
    (folder / CHECKSUMS_FILE).write_text(json.dumps(listing, indent=2))
    for name in (*DATA_FILES, CHECKSUMS_FILE):
        _fsync_file(folder / name)
    return sha256_file(folder / CHECKSUMS_FILE)


def _write_pointer(index_dir: Path, pointer: Pointer) -> None:
    _replace_file(index_dir, POINTER, pointer.model_dump_json())


def _replace_file(index_dir: Path, name: str, text: str) -> None:
    """Write ``index_dir/name`` atomically (temporary file, fsync, rename, fsync the folder)."""
    tmp = index_dir / f".{name}.{os.getpid()}.tmp"
    tmp.write_text(text)
    _fsync_file(tmp)
    os.replace(tmp, index_dir / name)
    _fsync_dir(index_dir)


def _mark_served(index_dir: Path) -> None:
    """Add CURRENT's version to SERVED."""
    try:
        pointer = read_pointer(index_dir)
    except IndexIntegrityError:
        return
    if pointer is None or read_served(index_dir).get(pointer.version) == pointer.checksums_sha256:
        return
    served = _served_or_legacy(index_dir)
    served[pointer.version] = pointer.checksums_sha256
    _replace_file(index_dir, SERVED, json.dumps(dict(sorted(served.items())), indent=1))


def _served_or_legacy(index_dir: Path) -> dict[str, str]:
    """SERVED; in an index directory from before it existed, the current version and every
    older one count as served (their checksums unknown: "")."""
    served = read_served(index_dir)
    if served or not (index_dir / POINTER).exists():
        return served
    try:
        pointer = read_pointer(index_dir)
    except IndexIntegrityError:
        return {}
    if pointer is None:
        return {}
    older = {n: "" for n in version_names(index_dir) if n <= pointer.version}
    return older | {pointer.version: pointer.checksums_sha256}


def prune(index_dir: Path, keep: int = KEEP) -> list[str]:
    """Keep the newest ``keep`` served versions and the current one; delete the rest (and every
    version never served); their names. Call with the lock held."""
    try:
        pointer = read_pointer(index_dir)
    except IndexIntegrityError:
        return []  # nothing is known to be safe to delete
    served = _served_or_legacy(index_dir)
    names = version_names(index_dir)
    kept = [n for n in names if n in served][-max(keep, 1) :]
    doomed = [n for n in names if n not in kept and (pointer is None or n != pointer.version)]
    for name in doomed:  # renamed first, so a half-deleted folder never looks like a version
        trash = index_dir / VERSIONS / f"{STAGING_PREFIX}prune-{name}"
        (index_dir / VERSIONS / name).rename(trash)
        shutil.rmtree(trash, ignore_errors=True)
    if doomed:
        remaining = {n: served[n] for n in version_names(index_dir) if n in served}
        _replace_file(index_dir, SERVED, json.dumps(remaining, indent=1))
    return doomed


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
