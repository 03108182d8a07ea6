"""Open the store the settings name."""

from __future__ import annotations

from pathlib import Path

from gallery_store.base import VectorStore
from gallery_store.settings import StoreSettings


def open_store(settings: StoreSettings, index_dir: str | Path | None) -> VectorStore:
    """The FAISS index directory ``index_dir``, or the Qdrant store of the settings (where
    ``index_dir`` plays no part)."""
    if settings.store == "qdrant":
        from gallery_store.qdrant_store import QdrantStore  # an optional extra

        return QdrantStore.from_settings(settings)
    from gallery_store.faiss_store import FaissStore

    if index_dir is None:
        raise ValueError("the FAISS store needs an index directory")
    return FaissStore(index_dir)
