"""Moved to ``gallery_store.faiss_index`` (the store the builder and the service share).

This alias stays only while ``bench/faiss_search.py`` (changed by the Qdrant benchmark work in
parallel) still imports the old path; delete it once that import is updated.
"""

from gallery_store.faiss_index import (  # noqa: F401
    FLAT_MAX,
    RECALL_K,
    BuiltIndex,
    IndexSpec,
    build_index,
    choose_spec,
    nlist_for,
    recall_at_k,
)
