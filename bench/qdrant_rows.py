"""Qdrant rows of ``bench.faiss_search``: the same gallery vectors and queries in Qdrant's two
embedded engines, recall@100 against the run's exact FAISS search.

- ``local``: ``qdrant-client``'s local mode (``QdrantClient(":memory:")``), the engine the
  service tests use with ``SBIR_QDRANT_PATH``. It is Python and numpy: every query scores the
  whole collection (no HNSW, no quantisation, no segments searched in parallel).
- ``edge``: ``qdrant-edge-py``, Qdrant's own Rust storage and search crates in process: one
  shard with an HNSW index (``m``, ``ef_construct`` as a server's defaults, ``hnsw_ef`` at
  search) and the same shard searched exactly (``exact=True``: Rust brute force).

Each point carries a photo-like payload (path, class, size, sha256), as the store writes, and
each query asks for it, as the service does. Latency is one query per call (batch 1).
"""

from __future__ import annotations

import hashlib
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from gallery_store.faiss_index import RECALL_K, recall_at_k

UPLOAD_BATCH = 10_000
HNSW_M = 16
HNSW_EF_CONSTRUCT = 100
HNSW_EF = 128
ENGINES = ("local", "edge")
N_CLASSES = 1_000


def payload(i: int) -> dict[str, Any]:
    """The payload the store keeps per photo, with made-up but realistic values."""
    label = i % N_CLASSES
    return {
        "path": f"class_{label:04d}/photo_{i:08d}.jpg",
        "class": f"class_{label:04d}",
        "size": 40_000 + (i * 7919) % 200_000,
        "sha256": hashlib.sha256(i.to_bytes(8, "little")).hexdigest(),
    }


def batches(n: int, desc: str) -> Iterator[range]:
    """Ranges of ``UPLOAD_BATCH`` ids with a progress bar."""
    starts = range(0, n, UPLOAD_BATCH)
    for start in tqdm(starts, desc=desc, unit="batch", mininterval=5):
        yield range(start, min(n, start + UPLOAD_BATCH))


def time_queries(search: Callable[[np.ndarray], list[int]], queries: np.ndarray) -> dict:
    """p50/p99 latency (ms) of one query per call, and recall@100 ids of each query."""
    search(queries[0])  # warm-up
    found = np.full((len(queries), RECALL_K), -1, np.int64)
    times = []
    for i, q in enumerate(queries):
        start = time.perf_counter()
        ids = search(q)
        times.append((time.perf_counter() - start) * 1e3)
        found[i, : len(ids)] = ids
    return {
        "found": found,
        "p50": float(np.percentile(times, 50)),
        "p99": float(np.percentile(times, 99)),
    }


def local_rows(x: np.ndarray, queries: np.ndarray) -> list[dict]:
    """qdrant-client local mode in memory: load time and one query per call."""
    from qdrant_client import QdrantClient, models

    client = QdrantClient(":memory:")
    params = models.VectorParams(size=x.shape[1], distance=models.Distance.COSINE)
    client.create_collection("gallery", vectors_config=params)
    start = time.perf_counter()
    for ids in batches(len(x), f"local mode upload {len(x):,}"):
        client.upload_collection(
            "gallery",
            vectors=x[ids.start : ids.stop],
            ids=list(ids),
            payload=[payload(i) for i in ids],
            batch_size=len(ids),
            wait=True,
        )
    load_s = time.perf_counter() - start

    def search(q: np.ndarray) -> list[int]:
        hits = client.query_points("gallery", query=q, limit=RECALL_K, with_payload=True)
        return [p.id for p in hits.points]

    row = {"engine": "qdrant-client local mode", "index": "numpy brute force", "load_s": load_s}
    result = time_queries(search, queries)
    client.close()
    return [{**row, **result}]


def edge_shard(path: Path, dim: int, threads: int | None) -> Any:
    """A new one-segment Edge shard that indexes with HNSW at the server's default settings."""
    import qdrant_edge as qe

    hnsw = qe.HnswIndexConfig(
        m=HNSW_M,
        ef_construct=HNSW_EF_CONSTRUCT,
        full_scan_threshold=10,
        max_indexing_threads=threads or 0,
    )
    config = qe.EdgeConfig(
        vectors=qe.EdgeVectorParams(size=dim, distance=qe.Distance.Cosine),
        hnsw_config=hnsw,
        # indexing_threshold is in KB: index even a small test gallery (768 KB at 3,000 x 64-d)
        optimizers=qe.EdgeOptimizersConfig(default_segment_number=1, indexing_threshold=10),
        max_search_threads=threads,
        wal_enabled=False,
    )
    return qe.EdgeShard.create(str(path), config)


def edge_rows(x: np.ndarray, queries: np.ndarray, threads: int | None, hnsw: bool) -> list[dict]:
    """qdrant-edge-py: upsert, HNSW build (``hnsw``), then HNSW and exact search."""
    import qdrant_edge as qe

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        shard = edge_shard(Path(tmp) / "shard", x.shape[1], threads)
        start = time.perf_counter()
        for ids in batches(len(x), f"edge upsert {len(x):,}"):
            points = [qe.Point(i, x[i].tolist(), payload(i)) for i in ids]
            shard.update(qe.UpdateOperation.upsert_points(points))
        load_s = time.perf_counter() - start
        if hnsw:
            start = time.perf_counter()
            shard.optimize()
            index_s = time.perf_counter() - start
            assert shard.info().indexed_vectors_count == len(x), "HNSW did not index them all"
            rows.append(
                {
                    "engine": "qdrant-edge-py",
                    "load_s": load_s + index_s,
                    "index": f"HNSW m={HNSW_M} ef_construct={HNSW_EF_CONSTRUCT} hnsw_ef={HNSW_EF}",
                    **time_queries(edge_search(shard, qe.SearchParams(hnsw_ef=HNSW_EF)), queries),
                }
            )
        exact = time_queries(edge_search(shard, qe.SearchParams(exact=True)), queries)
        rows.append(
            {
                "engine": "qdrant-edge-py",
                "index": "exact (Rust brute force)",
                "load_s": load_s,
                **exact,
            }
        )
        shard.close()
    return rows


def edge_search(shard: Any, params: Any) -> Callable[[np.ndarray], list[int]]:
    """One k-NN query on ``shard`` with ``params``, payload included; the ids found."""
    import qdrant_edge as qe

    def search(q: np.ndarray) -> list[int]:
        request = qe.QueryRequest(
            limit=RECALL_K, query=qe.Query.Nearest(q.tolist()), with_payload=True, params=params
        )
        return [int(p.id) for p in shard.query(request)]

    return search


def qdrant_rows(x: np.ndarray, queries: np.ndarray, truth: np.ndarray, options: dict) -> list[dict]:
    """Rows of every engine in ``options["engines"]``, with recall@100 against ``truth``."""
    rows = []
    if "local" in options["engines"] and len(x) <= options.get("local_max", len(x)):
        rows += local_rows(x, queries)
    if "edge" in options["engines"]:
        hnsw = len(x) <= options["edge_hnsw_max"]
        rows += edge_rows(x, queries, options["threads"], hnsw)
    for row in rows:
        row["n"] = len(x)
        row["recall"] = recall_at_k(row.pop("found"), truth[: len(queries)])
    return rows


def format_qdrant_table(rows: list[dict], faiss_rows: list[dict]) -> str:
    """The Qdrant rows beside the FAISS rows of the same size (speed-up = FAISS p50 / this)."""
    head = (
        "| vectors | engine | index | load s | recall@100 | b1 p50 ms | b1 p99 ms "
        "| vs FAISS exact | vs FAISS chosen |"
    )
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        same = [f for f in faiss_rows if f["n"] == r["n"]]
        exact = next(f for f in same if f["kind"] == "flat" and not f["chosen"])
        chosen = next(f for f in same if f["chosen"])
        lines.append(
            f"| {r['n']:,} | {r['engine']} | {r['index']} | {r['load_s']:.1f} "
            f"| {r['recall']:.3f} | {r['p50']:.3f} | {r['p99']:.3f} "
            f"| {exact['b1_p50'] / r['p50']:.3g}x | {chosen['b1_p50'] / r['p50']:.3g}x |"
        )
    return "\n".join(lines)


def versions() -> str:
    """The installed versions of the Qdrant packages."""
    from importlib.metadata import PackageNotFoundError, version

    found = []
    for name in ("qdrant-client", "qdrant-edge-py"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} not installed")
    return ", ".join(found)
