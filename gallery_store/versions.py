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
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import faiss
import numpy as np
from pydantic import BaseModel, ValidationError

from gallery_store.base import (
    KEEP,
    FingerprintMismatchError,
    IndexBusyError,
    IndexIntegrityError,
    Manifest,
    Report,
    StoredVersion,
    Where,
    folder_of,
    from_json,
    to_json,
    write_error,
)
from gallery_store.faiss_index import read_index, set_nprobe, use_gpu, write_index
from gallery_store.photos import display_path, sha256_file

POINTER = "CURRENT"
SERVED = "SERVED"
VERSIONS = "versions"
LOCK = ".lock"
STAGING_PREFIX = ".staging-"
INDEX_FILE, VECTORS_FILE = "index.faiss", "vectors.npy"
MANIFEST_FILE, REPORT_FILE, CHECKSUMS_FILE = "manifest.json", "report.json", "checksums.json"
DATA_FILES = (INDEX_FILE, VECTORS_FILE, MANIFEST_FILE, REPORT_FILE)


class Pointer(BaseModel):
    """The content of CURRENT."""

    version: str
    checksums_sha256: str


@dataclass
class LoadedIndex(StoredVersion):
    """A verified index version of a FAISS store, ready to search."""

    index_dir: Path
    version: str
    path: Path
    index: faiss.Index
    manifest: Manifest
    report: Report
    searcher: faiss.Index = field(init=False)  # the index, or its copy on the GPUs
    device: str = field(default="cpu", init=False)

    def __post_init__(self) -> None:
        self.searcher = self.index
        self._classes: list[str | None] | None = None
        self._paths: list[str] | None = None
        self._vectors: np.ndarray | None = None
        self._lease: BinaryIO | None = None

    def vectors(self) -> np.ndarray:
        """The (n, d) embeddings, memory-mapped (once: the mapping outlives the file)."""
        if self._vectors is None:
            self._vectors = np.load(self.path / VECTORS_FILE, mmap_mode="r")
        return self._vectors

    def hold(self) -> None:
        """Keep this version readable while it is served: a shared lock on its manifest,
        which ``prune`` never deletes a version under (released by ``release`` or when the
        process ends), and its vectors mapped. IndexIntegrityError when the version is being
        removed or is gone."""
        manifest = self.path / MANIFEST_FILE
        try:
            lease = open(manifest, "rb")  # noqa: SIM115 (held while served)
        except OSError as err:
            raise IndexIntegrityError(f"{self.path}: version {self.version} is gone") from err
        try:
            fcntl.flock(lease, fcntl.LOCK_SH | fcntl.LOCK_NB)
            if not os.path.samestat(os.fstat(lease.fileno()), os.stat(manifest)):
                raise FileNotFoundError(manifest)
            self.vectors()
        except (BlockingIOError, FileNotFoundError) as err:
            lease.close()
            raise IndexIntegrityError(
                f"{self.path}: version {self.version} is being removed"
            ) from err
        self._lease = lease

    def release(self) -> None:
        """Let ``prune`` remove this version (the mapped vectors stay usable here)."""
        if self._lease is not None:
            self._lease.close()
            self._lease = None

    def present(self) -> bool:
        return (self.path / MANIFEST_FILE).is_file()

    def vector(self, item_id: int) -> np.ndarray:
        return np.array(self.vectors()[item_id], dtype=np.float32)

    def serve_on_gpu(self) -> None:
        """Search on all GPUs when FAISS sees one (an index type the GPU build cannot hold
        stays on the CPU)."""
        if not use_gpu():
            return
        try:
            self.searcher = faiss.index_cpu_to_all_gpus(self.index)
        except RuntimeError:
            return
        set_nprobe(self.searcher, self.manifest.index.nprobe if self.manifest.index else 0)
        self.device = "gpu"

    def search(
        self, queries: np.ndarray, k: int, where: Where | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the top ``k`` photos per query row passing ``where``; ids -1 pad.

        Unfiltered: the index (IVF kinds approximate, as built). Excluding ids only: the
        index, asked for as many more. Filtered by class or folder: an exact inner-product
        scan of the stored vectors of the matching photos, so no match is ever lost to IVF
        lists not probed; its cost grows with the number of matches, not the gallery.
        """
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        where = where or Where()
        if where.classes is None and not folder_of(where.path_prefix or ""):
            return self._search_index(q, k, where.exclude_ids)
        rows = self._matching(where)
        if rows.size == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        subset = np.ascontiguousarray(self.vectors()[rows], dtype=np.float32)
        scores, found = faiss.knn(q, subset, min(k, rows.size), faiss.METRIC_INNER_PRODUCT)
        return scores, np.where(found >= 0, rows[np.maximum(found, 0)], -1)

    def _search_index(
        self, q: np.ndarray, k: int, exclude: frozenset[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        want = min(k + len(exclude), max(self.searcher.ntotal, 1))
        scores, ids = self.searcher.search(q, want)
        if not exclude:
            return scores, ids
        keep = [np.flatnonzero(~np.isin(row, list(exclude)))[:k] for row in ids]
        width = min(len(kept) for kept in keep)  # rows differ only when ids are padded
        return (
            np.stack([s[kept[:width]] for s, kept in zip(scores, keep, strict=True)]),
            np.stack([i[kept[:width]] for i, kept in zip(ids, keep, strict=True)]),
        )

    def _matching(self, where: Where) -> np.ndarray:
        """Ids of the photos of ``where``'s classes under its folder, ascending."""
        if self._classes is None or self._paths is None:
            items = self.manifest.items
            self._classes = [None if it.cls is None else display_path(it.cls) for it in items]
            self._paths = [display_path(it.path) for it in items]
        n = len(self._paths)
        mask = np.ones(n, bool)
        if where.classes is not None:
            mask &= np.fromiter((c in where.classes for c in self._classes), bool, n)
        folder = folder_of(where.path_prefix or "")
        if folder:
            mask &= np.fromiter((p.startswith(folder + "/") for p in self._paths), bool, n)
        excluded = [i for i in where.exclude_ids if 0 <= i < n]
        mask[excluded] = False
        return np.flatnonzero(mask)


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


def load_current(
    index_dir: str | Path, expected_fingerprint: str | None = None, verify: bool = True
) -> LoadedIndex:
    """The current version, checksums verified; refuse a model fingerprint mismatch."""
    index_dir = Path(index_dir)
    pointer = read_pointer(index_dir)
    if pointer is None:
        raise FileNotFoundError(
            f"{index_dir}: no gallery index here (no {POINTER}); "
            "build one with `python -m index_builder build-index`"
        )
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
        index = read_index(folder / INDEX_FILE, manifest.index.nprobe if manifest.index else 0)
    except (OSError, ValueError, RuntimeError) as err:
        raise IndexIntegrityError(f"{folder}: cannot be read ({_first_line(err)})") from err
    _check_consistent(folder, index, manifest)
    return LoadedIndex(Path(index_dir), version, folder, index, manifest, report)


def verify_version(folder: Path, checksums_sha256: str) -> None:
    """Raise IndexIntegrityError unless every file matches checksums.json and it matches."""
    listing = folder / CHECKSUMS_FILE
    if not listing.is_file() or sha256_file(listing) != checksums_sha256:
        raise IndexIntegrityError(
            f"{listing}: missing or modified (its sha256 differs from the one in {POINTER})"
        )
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
            raise IndexIntegrityError(
                f"{path}: {size} bytes, {want['bytes']} expected; the "
                "file is truncated or was modified"
            )
        if sha256_file(path) != want["sha256"]:
            raise IndexIntegrityError(
                f"{path}: sha256 differs from {CHECKSUMS_FILE}; the file "
                "is corrupted or was modified"
            )


def _check_consistent(folder: Path, index: faiss.Index, manifest: Manifest) -> None:
    if index.ntotal != manifest.count or len(manifest.items) != manifest.count:
        raise IndexIntegrityError(
            f"{folder}: the index holds {index.ntotal} vectors, the "
            f"manifest {len(manifest.items)} photos"
        )
    if index.d != manifest.model.embedding_dim:
        raise IndexIntegrityError(
            f"{folder}: {index.d}-d index for a {manifest.model.embedding_dim}-d model"
        )


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
            raise IndexBusyError(
                f"{index_dir}: another build is running (it holds {index_dir / LOCK})"
            ) from err
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
    """Delete what interrupted or failed builds left: staging folders, pointer temporaries,
    and complete versions never served (a build stopped before it moved ``CURRENT``), which
    would otherwise hold their disk space until a later build commits (call with the lock
    held)."""
    versions = index_dir / VERSIONS
    if versions.is_dir():
        for stale in versions.glob(STAGING_PREFIX + "*"):
            shutil.rmtree(stale, ignore_errors=True)
    for tmp in index_dir.glob(f".{POINTER}.*.tmp"):
        tmp.unlink(missing_ok=True)
    for tmp in index_dir.glob(f".{SERVED}.*.tmp"):
        tmp.unlink(missing_ok=True)
    try:
        pointer = read_pointer(index_dir)
    except IndexIntegrityError:
        return  # nothing is known to be safe to delete
    served = _served_or_legacy(index_dir)
    current = pointer.version if pointer else None
    for name in version_names(index_dir):
        if name not in served and name != current:
            _remove_version(index_dir, name)


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
    """Write ``payload`` as the next version, point CURRENT at it, prune; call with the lock.

    A failed write (a full disk, permissions) raises StoreWriteError saying what, where and
    how much space there is, and leaves nothing behind: the staging folder, a pointer
    temporary, and a version CURRENT never reached are removed."""
    versions = index_dir / VERSIONS
    version = next_version(index_dir)
    payload.manifest.version = version
    needed = 2 * payload.vectors.nbytes + 300 * len(payload.manifest.items)  # about
    staging: Path | None = None
    try:
        versions.mkdir(parents=True, exist_ok=True)
        # mkdir follows the umask; mkdtemp's 0700 would hide the version from a service user
        staging = versions / f"{STAGING_PREFIX}{secrets.token_hex(8)}"
        staging.mkdir()
        checksums = _write_files(staging, payload)
        _fsync_dir(staging)
        staging.rename(versions / version)
        _fsync_dir(versions)
    except BaseException as err:
        if staging is not None:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(err, OSError | RuntimeError):
            raise write_error(err, f"writing index version {version}", versions, needed) from err
        raise
    previous = _pointed_to(index_dir)
    try:
        # SERVED records what CURRENT points to, before it moves and after: a build killed in
        # between leaves CURRENT's version unrecorded until the next commit records it first.
        _mark_served(index_dir)
        _write_pointer(index_dir, Pointer(version=version, checksums_sha256=checksums))
    except OSError as err:
        moved = _pointed_to(index_dir) == version
        if not moved:
            _remove_version(index_dir, version)
        still = f"{version} is served" if moved else f"{_name(previous)} is still served"
        raise write_error(err, f"switching {POINTER} to {version}", index_dir, note=still) from err
    try:
        _mark_served(index_dir)
        prune(index_dir, keep)
    except OSError as err:
        note = f"{version} is served; the next build finishes this"
        what = f"recording {version} in {SERVED}, pruning"
        raise write_error(err, what, index_dir, note=note) from err
    return version


def _pointed_to(index_dir: Path) -> str | None:
    try:
        pointer = read_pointer(index_dir)
    except IndexIntegrityError:
        return None
    return pointer.version if pointer else None


def _name(version: str | None) -> str:
    return version or "no version"


def _write_files(folder: Path, payload: Payload) -> str:
    """The data files and checksums.json; returns checksums.json's sha256."""
    write_index(payload.index, folder / INDEX_FILE)
    np.save(folder / VECTORS_FILE, np.ascontiguousarray(payload.vectors, dtype=np.float32))
    (folder / MANIFEST_FILE).write_text(to_json(payload.manifest))
    (folder / REPORT_FILE).write_text(to_json(payload.report, indent=2))
    listing = {
        n: {"bytes": (folder / n).stat().st_size, "sha256": sha256_file(folder / n)}
        for n in DATA_FILES
    }
    (folder / CHECKSUMS_FILE).write_text(json.dumps(listing, indent=2))
    for name in (*DATA_FILES, CHECKSUMS_FILE):
        _fsync_file(folder / name)
    return sha256_file(folder / CHECKSUMS_FILE)


def _write_pointer(index_dir: Path, pointer: Pointer) -> None:
    _replace_file(index_dir, POINTER, pointer.model_dump_json())


def _replace_file(index_dir: Path, name: str, text: str) -> None:
    """Write ``index_dir/name`` atomically (temporary file, fsync, rename, fsync the folder);
    a failure leaves no temporary behind."""
    tmp = index_dir / f".{name}.{os.getpid()}.tmp"
    try:
        tmp.write_text(text)
        _fsync_file(tmp)
        os.replace(tmp, index_dir / name)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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
    removed = [name for name in doomed if _remove_version(index_dir, name)]
    if removed:
        remaining = {n: served[n] for n in version_names(index_dir) if n in served}
        _replace_file(index_dir, SERVED, json.dumps(remaining, indent=1))
    return removed


def _remove_version(index_dir: Path, name: str) -> bool:
    """Delete a version unless a reader holds it (``LoadedIndex.hold``: a service serving
    it, maybe an older one after a model change); whether it was deleted. Renamed first,
    so a half-deleted folder never looks like a version."""
    folder = index_dir / VERSIONS / name
    try:
        lease = open(folder / MANIFEST_FILE, "rb")  # noqa: SIM115
    except FileNotFoundError:
        lease = None  # an incomplete folder: nobody can read it
    try:
        if lease is not None:
            fcntl.flock(lease, fcntl.LOCK_EX | fcntl.LOCK_NB)
        trash = index_dir / VERSIONS / f"{STAGING_PREFIX}prune-{name}"
        folder.rename(trash)
    except BlockingIOError:
        return False  # served somewhere: a later build removes it
    finally:
        if lease is not None:
            lease.close()
    shutil.rmtree(trash, ignore_errors=True)
    return True


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
