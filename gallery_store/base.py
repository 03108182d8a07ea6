"""The vector-store interface the builder and the service share, and what a version holds.

A store keeps numbered versions of the gallery: each holds one vector per photo (its id is its
row, photos in path order), the photo's payload (path, class, size, sha256), the model that
made the vectors and the build's report. Exactly one version is served; ``commit`` writes a
new one and switches to it atomically, so a reader sees the old version or the new one, never
a mixture, and a build killed before the switch leaves the served version as it was.

Engines: ``gallery_store.faiss_store.FaissStore`` (a versioned directory, the default) and
``gallery_store.qdrant_store.QdrantStore`` (a collection a version, an alias for the served
one); ``gallery_store.stores.open_store`` picks one from the settings.
"""

from __future__ import annotations

import json
import shutil
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from gallery_store.faiss_index import IndexInfo
from gallery_store.photos import display_path

FORMAT_VERSION = 1
KEEP = 3
M = TypeVar("M", bound=BaseModel)


class IndexIntegrityError(RuntimeError):
    """An index version is incomplete, truncated or tampered with."""


class FingerprintMismatchError(ValueError):
    """The index was built by another model than the one that would query it."""


class IndexBusyError(RuntimeError):
    """Another build holds the store's build lock."""


class VersionGoneError(IndexIntegrityError):
    """The version being read was removed from the store (pruned) while in use."""


class StoreWriteError(RuntimeError):
    """A store could not be written (a full disk, permissions...): the message says what,
    where, and for a full disk how much space there is."""


def write_error(
    err: BaseException, what: str, where: Path | str, needed: int = 0, note: str = ""
) -> StoreWriteError:
    """A StoreWriteError for ``err`` met while doing ``what`` in ``where`` (a local folder,
    whose free space it tells, or a remote store's name); ``needed``: about how many bytes
    it needed; ``note``: what stands now."""
    if isinstance(err, OSError):
        reason = err.strerror or type(err).__name__
    else:  # FAISS and Qdrant raise their own errors, sometimes many lines long
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0][:200]
    text = f"{what} failed: {reason} (in {display_path(where)})"
    space = _disk_space(where) if isinstance(where, Path) else None
    if space is not None:
        free, total = space
        more = f", about {_megabytes(needed)} needed" if needed else ""
        text += f"; {_megabytes(free)} free of {_megabytes(total)} there{more}"
    return StoreWriteError(f"{text}; {note}" if note else text)


def _disk_space(path: Path) -> tuple[int, int] | None:
    """(free, total) bytes of the filesystem holding ``path`` (its nearest existing folder)."""
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        usage = shutil.disk_usage(path)
    except OSError:
        return None
    return usage.free, usage.total


def _megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


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
    """What a version holds: the model, the photos root and every indexed photo by id.
    ``index`` describes the engine's index; the store fills it in when it commits."""

    model_config = ConfigDict(populate_by_name=True)

    format_version: int = FORMAT_VERSION
    version: str = ""
    created: str
    model: ModelInfo
    photos_root: str
    source: str  # the folder or list file the photos were scanned from
    count: int
    index: IndexInfo | None = None
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


def folder_of(prefix: str) -> str:
    """A ``path_prefix`` as the folder it names: no leading or trailing slashes."""
    return prefix.strip("/")


def ancestors(path: str) -> list[str]:
    """The folders a (display) path lies under: ``a/b/c.jpg`` -> ``["a", "a/b"]``."""
    parts = path.split("/")[:-1]
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


@dataclass(frozen=True)
class Where:
    """A search filter: photos of one of ``classes`` (display names), under the folder
    ``path_prefix`` (relative to the photos root), and not one of ``exclude_ids``."""

    classes: frozenset[str] | None = None
    path_prefix: str | None = None
    exclude_ids: frozenset[int] = field(default_factory=frozenset)

    @property
    def empty(self) -> bool:
        return self.classes is None and not self.path_prefix and not self.exclude_ids

    def matches(self, item: ManifestItem) -> bool:
        """Whether ``item`` passes the filter (the FAISS engine's test; Qdrant's is the same
        expressed as a payload filter)."""
        if item.id in self.exclude_ids:
            return False
        if self.classes is not None and (
            item.cls is None or display_path(item.cls) not in self.classes
        ):
            return False
        folder = folder_of(self.path_prefix or "")
        return not folder or folder in ancestors(display_path(item.path))


class StoredVersion(ABC):
    """One version of the gallery, read-only: its manifest (every photo by id), its report,
    and search over its vectors."""

    version: str
    manifest: Manifest
    report: Report
    device: str = "cpu"

    @property
    def fingerprint(self) -> str:
        return self.manifest.model.fingerprint

    @property
    def photos_root(self) -> Path:
        return Path(self.manifest.photos_root)

    def photo_path(self, item_id: int) -> Path:
        """The file of photo ``item_id`` on disk."""
        return self.photos_root / self.manifest.items[item_id].path

    @abstractmethod
    def vectors(self) -> np.ndarray:
        """The (n, d) photo vectors, row = id."""

    @abstractmethod
    def vector(self, item_id: int) -> np.ndarray:
        """The stored vector of photo ``item_id`` (d,)."""

    @abstractmethod
    def search(
        self, queries: np.ndarray, k: int, where: Where | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) of the top ``k`` photos per query row passing ``where``, best first;
        ids -1 pad short results."""

    def serve_on_gpu(self) -> None:  # noqa: B027  (engines without a GPU path keep the CPU)
        """Move the searcher to the GPU where the engine can (sets ``device``)."""

    def hold(self) -> None:  # noqa: B027  (engines that cannot keep a version do nothing)
        """Keep this version readable while it is served (pruning spares it where the
        engine can tell); IndexIntegrityError when it is being removed."""

    def release(self) -> None:  # noqa: B027
        """The version is no longer served here (``hold`` undone)."""

    @abstractmethod
    def present(self) -> bool:
        """Whether the version is still in the store (it may have been pruned)."""


class VectorStore(ABC):
    """Versions of the gallery with one served version, switched atomically."""

    engine: str  # "faiss" or "qdrant"
    location: str  # for messages: the folder, or the Qdrant URL / path and alias

    @abstractmethod
    def served(self) -> str | None:
        """The version served now (None when the store holds none yet); cheap, polled."""

    @abstractmethod
    def load_current(
        self, expected_fingerprint: str | None = None, verify: bool = True
    ) -> StoredVersion:
        """The served version; FingerprintMismatchError when another model made it."""

    @abstractmethod
    def load_version(self, version: str, verify: bool = True) -> StoredVersion:
        """A kept version, served or not (IndexIntegrityError when it is unusable)."""

    @abstractmethod
    def served_versions(self) -> list[str]:
        """Versions kept that were served at some point, oldest first."""

    @abstractmethod
    def exists(self) -> bool:
        """Whether the store holds an index (any version, served or not)."""

    @abstractmethod
    def check_new(self) -> None:
        """Raise ValueError unless a first index may be built here (build-index)."""

    @abstractmethod
    def check_existing(self) -> None:
        """Raise unless the store holds an index or may start one (rebuild)."""

    @abstractmethod
    def lock(self) -> AbstractContextManager[None]:
        """Hold the build lock (IndexBusyError when another build holds it)."""

    @abstractmethod
    def remove_stale(self) -> None:
        """Delete what interrupted builds left (call with the lock)."""

    @abstractmethod
    def commit(self, vectors: np.ndarray, manifest: Manifest, report: Report, keep: int) -> str:
        """Write a new version holding ``vectors`` (row = item id) with ``manifest``'s items as
        payload, switch the served version to it atomically, prune to ``keep`` served
        versions; its name. Call with the lock."""

    @abstractmethod
    def report_path(self, version: str) -> str:
        """Where a version's full report can be read, for messages."""

    def close(self) -> None:  # noqa: B027  (only some engines hold a connection)
        """Release what the store holds open (Qdrant's local mode: its folder)."""


def check_payload(vectors: np.ndarray, manifest: Manifest) -> None:
    """Raise ValueError unless there is one vector a photo and ids are rows (before a commit
    writes anything)."""
    if len(vectors) != manifest.count or len(manifest.items) != manifest.count:
        raise ValueError(
            f"{len(vectors)} vectors for {len(manifest.items)} photos (manifest "
            f"count {manifest.count}); they must match"
        )
    if any(item.id != row for row, item in enumerate(manifest.items)):
        raise ValueError("photo ids must be their rows, 0 to count - 1 in order")


def batches(n: int, size: int) -> Iterator[tuple[int, int]]:
    """(start, stop) of consecutive slices of ``n`` rows, ``size`` at most."""
    for start in range(0, n, size):
        yield start, min(n, start + size)
