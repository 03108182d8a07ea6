"""The versioned FAISS index directory (``gallery_store.versions``) as a ``VectorStore``."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import numpy as np

from gallery_store.base import Manifest, Report, VectorStore, check_payload
from gallery_store.faiss_index import build_index
from gallery_store.versions import (
    LOCK,
    POINTER,
    REPORT_FILE,
    VERSIONS,
    LoadedIndex,
    Payload,
    check_index_dir,
    commit_version,
    load_current,
    load_version,
    locked,
    read_pointer,
    read_served,
    remove_stale,
    version_names,
)


class FaissStore(VectorStore):
    """The versioned FAISS directory as a ``VectorStore`` (layout: ``gallery_store.versions``)."""

    engine = "faiss"

    def __init__(self, index_dir: str | Path) -> None:
        self.index_dir = Path(index_dir)
        self.location = str(self.index_dir)

    def served(self) -> str | None:
        pointer = read_pointer(self.index_dir)
        return pointer.version if pointer else None

    def load_current(
        self, expected_fingerprint: str | None = None, verify: bool = True
    ) -> LoadedIndex:
        return load_current(self.index_dir, expected_fingerprint, verify)

    def load_version(self, version: str, verify: bool = True) -> LoadedIndex:
        served = read_served(self.index_dir).get(version) if verify else None
        return load_version(self.index_dir, version, served or None)

    def served_versions(self) -> list[str]:
        served = read_served(self.index_dir)
        return [name for name in version_names(self.index_dir) if name in served]

    def exists(self) -> bool:
        return (self.index_dir / POINTER).exists()

    def check_new(self) -> None:
        index_dir = self.index_dir
        if index_dir.exists() and not index_dir.is_dir():
            raise NotADirectoryError(f"{index_dir}: a file, not a folder; choose another --out")
        if (index_dir / POINTER).exists():
            raise ValueError(f"{index_dir}: already holds an index; use `rebuild` to update it")
        if index_dir.is_dir() and {p.name for p in index_dir.iterdir()} - {VERSIONS, LOCK}:
            raise ValueError(f"{index_dir}: not empty and not an index directory; choose another")

    def check_existing(self) -> None:
        check_index_dir(self.index_dir)

    def lock(self) -> AbstractContextManager[None]:
        return locked(self.index_dir)

    def remove_stale(self) -> None:
        remove_stale(self.index_dir)

    def commit(self, vectors: np.ndarray, manifest: Manifest, report: Report, keep: int) -> str:
        """Build the FAISS index for ``vectors`` (its kind follows the gallery size) and write
        it as the next version."""
        check_payload(vectors, manifest)
        built = build_index(vectors)
        manifest.index = built.info
        return commit_version(self.index_dir, Payload(built.index, vectors, manifest, report), keep)

    def report_path(self, version: str) -> str:
        return str(self.index_dir / VERSIONS / version / REPORT_FILE)
