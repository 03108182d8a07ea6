"""FAISS gallery search on synthetic clustered 64-d unit vectors: the index the builder picks
against exact search, in the same run.

    python -m bench.faiss_search [--sizes 10000 100000 1000000] [--with-10m] [--pq]
                                 [--threads N] [--json OUT]
                                 [--qdrant local edge] [--qdrant-queries N]
                                 [--local-max N] [--edge-hnsw-max N]

Data: a mixture of 1,000 clusters (centres uniform on the sphere, Dirichlet cluster sizes,
per-cluster spread 0.05-0.12 per dimension), L2-normalised, as class-structured embeddings
are; queries are fresh draws from the same mixture, not gallery vectors. For each size: the
index ``gallery_store.faiss_index`` chooses (its nprobe tuned at build time on
held-out gallery vectors) and exact ``IndexFlatIP``; with ``--pq`` also the IVF-PQ tier at
sizes where it would not be chosen yet. Reported: build time (for IVF: training, adding and
the nprobe search), index size, recall@100 of the query set against exact search, and the
p50/p99 latency of a ``search`` call at batch 1 and batch 64 (k = 100), with the speed-up
and size ratios against exact search. 10M vectors (2.56 GB float32, plus the index) need
``--with-10m``.

``--qdrant``: rows of Qdrant's embedded engines on the same vectors, in the same run (see
``bench.qdrant_rows``): qdrant-client's local mode (up to ``--local-max`` vectors) and
qdrant-edge-py (HNSW up to ``--edge-hnsw-max`` vectors, and exact), p50/p99 of one query per
call and recall@100 against the exact FAISS search, over the first ``--qdrant-queries``
queries.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np

from gallery_store.faiss_index import (
    FLAT_MAX,
    RECALL_K,
    BuiltIndex,
    IndexSpec,
    build_index,
    choose_spec,
    nlist_for,
    recall_at_k,
)

DIM = 64
N_CLUSTERS = 1_000
SIZES = [10_000, 100_000, 1_000_000]
BATCH_1_QUERIES = 200
BATCH_64_CALLS = 16
CHUNK = 1_000_000


def mixture(seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cluster centres (unit), weights and spreads of the synthetic embedding distribution."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(N_CLUSTERS, DIM)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    weights = rng.dirichlet(np.full(N_CLUSTERS, 2.0))
    spreads = rng.uniform(0.05, 0.12, N_CLUSTERS).astype(np.float32)
    return centres, weights, spreads


def sample(n: int, seed: int) -> np.ndarray:
    """``n`` unit vectors from the mixture, generated in chunks to bound temporary memory."""
    centres, weights, spreads = mixture()
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), np.float32)
    for start in range(0, n, CHUNK):
        m = min(CHUNK, n - start)
        labels = rng.choice(N_CLUSTERS, size=m, p=weights)
        noise = rng.standard_normal((m, DIM), dtype=np.float32) * spreads[labels, None]
        x = centres[labels] + noise
        out[start : start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def latencies_ms(index: faiss.Index, queries: np.ndarray, batch: int, calls: int) -> np.ndarray:
    """Wall time of ``calls`` search calls of ``batch`` queries each, in ms."""
    index.search(queries[:batch], RECALL_K)  # warm-up
    times = []
    for i in range(calls):
        q = queries[(i * batch) % len(queries) :][:batch]
        start = time.perf_counter()
        index.search(q, RECALL_K)
        times.append((time.perf_counter() - start) * 1e3)
    return np.asarray(times)


def index_bytes(index: faiss.Index) -> int:
    """Size of the serialised index (what it takes in memory, within a few percent)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "index.faiss"
        faiss.write_index(index, str(path))
        return path.stat().st_size


def measure(built: BuiltIndex, queries: np.ndarray, truth: np.ndarray) -> dict:
    """Latency, size and recall of one built index."""
    info, index = built.info, built.index
    b1 = latencies_ms(index, queries, 1, BATCH_1_QUERIES)
    b64 = latencies_ms(index, queries, 64, BATCH_64_CALLS)
    _, found = index.search(queries, RECALL_K)
    return {
        "index": info.factory + (f" (re-rank {info.k_factor}x)" if info.k_factor else ""),
        "kind": info.kind,
        "nprobe": info.nprobe,
        "build_s": info.build_seconds,
        "bytes": index_bytes(index),
        "recall": recall_at_k(found, truth),
        "build_recall": info.recall_at_k,
        "b1_p50": float(np.percentile(b1, 50)),
        "b1_p99": float(np.percentile(b1, 99)),
        "b64_p50": float(np.percentile(b64, 50)),
        "b64_p99": float(np.percentile(b64, 99)),
    }


def bench_size(n: int, pq: bool, qdrant: dict | None = None) -> tuple[list[dict], list[dict]]:
    """Exact Flat, the chosen index and (with ``pq``) IVF-PQ, for ``n`` gallery vectors; the
    Qdrant rows of ``qdrant``'s engines (see ``bench.qdrant_rows``) on the same vectors."""
    x = sample(n, seed=1)
    queries = sample(64 * BATCH_64_CALLS, seed=2)
    specs = [IndexSpec("flat", "Flat"), choose_spec(n, DIM)]
    pq_spec = choose_spec(n, DIM, flat_max=0, ivf_flat_max=0)
    if pq and n >= FLAT_MAX and pq_spec not in specs:
        specs.append(pq_spec)
    rows = []
    for i, spec in enumerate(specs):
        if i == 1 and spec == specs[0]:
            rows.append({**rows[0], "chosen": True})
            continue
        built = build_index(x, spec)
        if i == 0:
            _, truth = built.index.search(queries, RECALL_K)
        rows.append({"n": n, "chosen": i == 1, **measure(built, queries, truth)})
        del built
    flat = rows[0]
    for row in rows:
        row["speedup_b1"] = flat["b1_p50"] / row["b1_p50"]
        row["speedup_b64"] = flat["b64_p50"] / row["b64_p50"]
        row["size_ratio"] = row["bytes"] / flat["bytes"]
    if not qdrant or not qdrant["engines"]:
        return rows, []
    from bench.qdrant_rows import qdrant_rows

    return rows, qdrant_rows(x, queries[: qdrant["queries"]], truth, qdrant)


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = models[0] if models else platform.processor()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return (
        f"{cpu}, {os.cpu_count()} cores (load {load:.1f}), faiss {faiss.__version__} with "
        f"{faiss.omp_get_max_threads()} OpenMP threads, {gpus} GPU(s)"
    )


def format_table(rows: list[dict]) -> str:
    head = (
        "| vectors | index | role | nprobe | build s | size MB | recall@100 | b1 p50 ms "
        "| b1 p99 ms | b64 p50 ms | b64 p99 ms | b1 speed-up | b64 speed-up | size ratio |"
    )
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        role = (
            "exact baseline"
            if r["kind"] == "flat" and not r["chosen"]
            else ("chosen" if r["chosen"] else "IVF-PQ tier")
        )
        lines.append(
            f"| {r['n']:,} | {r['index']} | {role} | {r['nprobe'] or '-'} | {r['build_s']:.2f} "
            f"| {r['bytes'] / 1e6:.1f} | {r['recall']:.3f} | {r['b1_p50']:.3f} "
            f"| {r['b1_p99']:.3f} | {r['b64_p50']:.2f} | {r['b64_p99']:.2f} "
            f"| {r['speedup_b1']:.1f}x | {r['speedup_b64']:.1f}x | {r['size_ratio']:.2f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=SIZES)
    parser.add_argument("--with-10m", action="store_true", help="also 10M vectors (~6 GB RAM)")
    parser.add_argument("--pq", action="store_true", help="also IVF-PQ where not chosen")
    parser.add_argument("--threads", type=int, help="faiss OpenMP threads (default: all)")
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--qdrant",
        nargs="+",
        default=[],
        choices=["local", "edge"],
        help="also Qdrant's embedded engines (bench.qdrant_rows)",
    )
    parser.add_argument("--qdrant-queries", type=int, default=BATCH_1_QUERIES)
    parser.add_argument(
        "--local-max",
        type=int,
        default=1_000_000,
        help="largest size for qdrant-client local mode (its upload slows down as it grows)",
    )
    parser.add_argument(
        "--edge-hnsw-max",
        type=int,
        default=1_000_000,
        help="largest size qdrant-edge-py builds HNSW for (else exact only)",
    )
    args = parser.parse_args()
    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    sizes = [*args.sizes, *([10_000_000] if args.with_10m else [])]
    qdrant = {
        "engines": args.qdrant,
        "queries": args.qdrant_queries,
        "threads": args.threads,
        "edge_hnsw_max": args.edge_hnsw_max,
        "local_max": args.local_max,
    }
    rows, qrows = [], []
    for n in sizes:
        faiss_rows, qdrant_rows = bench_size(n, args.pq, qdrant)
        rows, qrows = rows + faiss_rows, qrows + qdrant_rows
        print(f"done {n:,} vectors", flush=True)
    print(f"\nmachine: {machine()}")
    print(
        f"data: {DIM}-d unit vectors, {N_CLUSTERS} clusters; {64 * BATCH_64_CALLS} "
        f"queries from the same mixture; k = {RECALL_K}; nlist = sqrt(n) (e.g. "
        f"{nlist_for(1_000_000)} at 1M)\n"
    )
    print(format_table(rows))
    if qrows:
        from bench.qdrant_rows import format_qdrant_table, versions

        print(f"\nQdrant: {versions()}; {args.qdrant_queries} queries, one per call\n")
        print(format_qdrant_table(qrows, rows))
    if args.json:
        out = {"machine": machine(), "rows": rows, "qdrant_rows": qrows}
        args.json.write_text(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
