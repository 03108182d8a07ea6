"""bench.qdrant_rows on a small gallery: both embedded Qdrant engines really load the vectors
and find the exact neighbours (the timing itself is the benchmark's business, not a test's)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("qdrant_client")
pytest.importorskip("qdrant_edge")
faiss = pytest.importorskip("faiss")

from bench.faiss_search import bench_size, sample  # noqa: E402
from bench.qdrant_rows import RECALL_K, format_qdrant_table, payload, qdrant_rows  # noqa: E402

N = 3_000


@pytest.fixture(scope="module")
def gallery() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Vectors, queries and the exact top-100 of each query (FAISS inner product)."""
    x, queries = sample(N, seed=1), sample(12, seed=2)
    index = faiss.IndexFlatIP(x.shape[1])
    index.add(x)
    _, truth = index.search(queries, RECALL_K)
    return x, queries, truth


def test_engines_find_the_exact_neighbours(gallery: tuple) -> None:
    x, queries, truth = gallery
    options = {"engines": ["local", "edge"], "edge_hnsw_max": N, "threads": 1}
    rows = qdrant_rows(x, queries, truth, options)
    by_index = {(r["engine"], r["index"].split()[0]): r for r in rows}
    assert set(by_index) == {
        ("qdrant-client local mode", "numpy"),
        ("qdrant-edge-py", "HNSW"),
        ("qdrant-edge-py", "exact"),
    }
    # the brute-force engines are exact (cosine on unit vectors = inner product); HNSW is close
    assert by_index["qdrant-client local mode", "numpy"]["recall"] >= 0.999
    assert by_index["qdrant-edge-py", "exact"]["recall"] >= 0.999
    assert by_index["qdrant-edge-py", "HNSW"]["recall"] >= 0.9
    for row in rows:
        assert row["n"] == N and 0 < row["p50"] <= row["p99"] and row["load_s"] > 0


def test_edge_without_hnsw_above_the_limit(gallery: tuple) -> None:
    x, queries, truth = gallery
    options = {"engines": ["edge"], "edge_hnsw_max": N - 1, "threads": 1}
    (row,) = qdrant_rows(x, queries, truth, options)
    assert row["index"].startswith("exact") and row["recall"] >= 0.999


def test_table_beside_the_faiss_rows_of_the_same_run() -> None:
    options = {"engines": ["local"], "queries": 8, "edge_hnsw_max": 0, "threads": 1}
    faiss_rows, rows = bench_size(N, pq=False, qdrant=options)
    table = format_qdrant_table(rows, faiss_rows).splitlines()
    assert len(table) == 3 and table[2].startswith(f"| {N:,} | qdrant-client local mode")
    exact = next(r for r in faiss_rows if not r["chosen"])
    assert table[2].split("|")[-3].strip() == f"{exact['b1_p50'] / rows[0]['p50']:.3g}x"


def test_payload_has_the_store_fields() -> None:
    assert set(payload(7)) == {"path", "class", "size", "sha256"}
    assert len(payload(7)["sha256"]) == 64 and payload(7) != payload(8)
