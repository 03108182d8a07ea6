"""The FAISS gallery index: its type follows the gallery size, its nprobe a measured recall.

Vectors are L2-normalised, so inner product is cosine similarity. By gallery size ``n``:

* ``n < FLAT_MAX`` (50k): exact ``IndexFlatIP``; a query scans 50k x 64 floats (~6 MFLOP),
  about a millisecond on one core, and there is nothing to train or tune.
* ``n <= IVF_FLAT_MAX`` (1M): ``IVF<nlist>,Flat``; full vectors, so its recall is only limited
  by the lists it probes; 1M x 64 float32 is 256 MB.
* beyond: IVF-PQ ``IVF<nlist>,PQ<d>x4fs,Refine(SQ8)``: candidates from 4-bit PQ codes (one a
  dimension, 32 bytes a 64-d vector, scanned by faiss's SIMD fast-scan kernels), the best
  ``REFINE_K_FACTOR`` x k of them re-ranked with 8-bit scalar-quantised vectors (64 bytes):
  ~100 bytes a vector with ids, 2.5x smaller than Flat (10M vectors: ~1 GB, not 2.56 GB).
  Where no nprobe reaches the recall target, the re-ranking depth is doubled (up to
  ``MAX_REFINE_K_FACTOR``) until it does: at 10M clustered vectors depth 8 capped recall@100
  at 0.904; 32 reached 0.954.
  PQ codes alone cap recall: on 1M clustered vectors recall@100 stalled at 0.67 whatever
  nprobe; re-ranking 4x the candidates brought it to 0.95. 8-bit ``PQ32`` codes (same size)
  recalled no better, trained ~80x slower (32 k-means of 256 centroids) and scanned ~5x slower.

``nlist`` is about sqrt(n) (faiss's guideline is 1x-16x sqrt(n); the low end keeps k-means
training and adding cheap on a CPU, and nprobe makes up the recall), with at least 39 training
points a list. ``nprobe`` is the smallest power of two whose recall@100 against exact search,
on a sample of held-out gallery vectors used as queries, reaches ``target_recall`` (0.95); if
none does (PQ's quantisation caps recall), the smallest one within 0.005 of the best. The
measured recall is stored with the index.

Training, adding and the nprobe search run on all GPUs when faiss sees one
(``index_cpu_to_all_gpus``; kinds the GPU build lacks, like fast-scan PQ, stay on the CPU);
the index is brought back to the CPU for writing.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
from pydantic import BaseModel

FLAT_MAX = 50_000
IVF_FLAT_MAX = 1_000_000
PQ_BITS = 4  # bits per IVF-PQ code; one code per dimension (fast-scan layout)
REFINE_K_FACTOR = 8  # IVF-PQ re-ranks this many times k candidates with SQ8 vectors...
MAX_REFINE_K_FACTOR = 64  # ...doubled up to this while the recall target is missed
RECALL_K = 100
TARGET_RECALL = 0.95
N_QUERIES = 1_000
MIN_POINTS_PER_LIST = 39  # faiss warns below this
TRAIN_POINTS_PER_LIST = 64

IndexKind = Literal["flat", "ivf-flat", "ivf-pq", "qdrant"]  # qdrant: the Qdrant engine's


@dataclass(frozen=True)
class IndexSpec:
    """Which index to build: its kind, faiss factory string and number of lists."""

    kind: IndexKind
    factory: str
    nlist: int = 0


class IndexInfo(BaseModel):
    """What was built and how well it recalls, as stored in the manifest."""

    kind: IndexKind
    factory: str
    n: int
    dim: int
    nlist: int = 0
    nprobe: int = 0
    k_factor: int = 0  # re-ranking depth of IVF-PQ (candidates = k_factor x k)
    k_factor_recalls: dict[int, float] = {}  # IVF-PQ: recall at the chosen nprobe, per depth
    recall_at_k: float = 1.0
    recall_k: int = RECALL_K
    recall_queries: int = 0
    target_recall: float = TARGET_RECALL
    nprobe_recalls: dict[int, float] = {}
    train_points: int = 0
    device: Literal["cpu", "gpu"] = "cpu"
    build_seconds: float = 0.0


@dataclass
class BuiltIndex:
    """A CPU index ready to write or search, and its description."""

    index: faiss.Index
    info: IndexInfo


def nlist_for(n: int) -> int:
    """About sqrt(n) inverted lists, with at least MIN_POINTS_PER_LIST vectors each."""
    return max(1, min(round(math.sqrt(n)), n // MIN_POINTS_PER_LIST))


def choose_spec(
    n: int, dim: int = 64, flat_max: int = FLAT_MAX, ivf_flat_max: int = IVF_FLAT_MAX
) -> IndexSpec:
    """The index type for ``n`` vectors of ``dim`` (thresholds in the module docstring)."""
    if n < flat_max:
        return IndexSpec("flat", "Flat")
    nlist = nlist_for(n)
    if n <= ivf_flat_max:
        return IndexSpec("ivf-flat", f"IVF{nlist},Flat", nlist)
    return IndexSpec("ivf-pq", f"IVF{nlist},PQ{dim}x{PQ_BITS}fs,Refine(SQ8)", nlist)


def use_gpu() -> bool:
    """Whether this faiss build can see a GPU."""
    return hasattr(faiss, "index_cpu_to_all_gpus") and faiss.get_num_gpus() > 0


def build_index(
    vectors: np.ndarray,
    spec: IndexSpec | None = None,
    target_recall: float = TARGET_RECALL,
    k: int = RECALL_K,
    n_queries: int = N_QUERIES,
    seed: int = 0,
    gpu: bool | None = None,
) -> BuiltIndex:
    """Build the index for ``vectors`` (n, d) float32 unit rows; IVF kinds get a tuned nprobe."""
    start = time.perf_counter()
    x = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = x.shape
    spec = spec or choose_spec(n, dim)
    on_gpu = use_gpu() if gpu is None else gpu
    if spec.kind == "flat":
        index = faiss.IndexFlatIP(dim)
        index.add(x)
        info = IndexInfo(kind="flat", factory="Flat", n=n, dim=dim)
    else:
        index, info = _build_ivf(x, spec, target_recall, k, n_queries, seed, on_gpu)
    info.build_seconds = round(time.perf_counter() - start, 3)
    return BuiltIndex(index, info)


def _build_ivf(
    x: np.ndarray,
    spec: IndexSpec,
    target: float,
    k: int,
    n_queries: int,
    seed: int,
    on_gpu: bool,
) -> tuple[faiss.Index, IndexInfo]:
    n, dim = x.shape
    rng = np.random.default_rng(seed)
    order = rng.permutation(n)
    n_train = min(n, spec.nlist * TRAIN_POINTS_PER_LIST)
    train = x[np.sort(order[:n_train])]
    held_out = order[n_train:] if n > n_train else order
    queries = x[np.sort(held_out[:n_queries])]
    cpu_index = faiss.index_factory(dim, spec.factory, faiss.METRIC_INNER_PRODUCT)
    ivf = faiss.extract_index_ivf(cpu_index)
    ivf.cp.spherical = True  # unit vectors: keep the centroids on the sphere
    ivf.cp.seed = seed
    k_factor = REFINE_K_FACTOR if spec.kind == "ivf-pq" else 0
    if k_factor:
        _set_k_factor(cpu_index, k_factor)
    index, device = _to_device(cpu_index, on_gpu)
    index.train(train)
    index.add(x)
    k = min(k, n)
    _, truth = faiss.knn(queries, x, k, faiss.METRIC_INNER_PRODUCT)
    nprobe, recalls = choose_nprobe(index, queries, truth, spec.nlist, target)
    if device == "gpu":
        index = faiss.index_gpu_to_cpu(index)
    set_nprobe(index, nprobe)
    depth_recalls: dict[int, float] = {}
    if k_factor:
        start = {k_factor: recalls[nprobe]}
        k_factor, depth_recalls = deepen_refine(index, queries, truth, start, target)
    info = IndexInfo(
        kind=spec.kind,
        factory=spec.factory,
        n=n,
        dim=dim,
        nlist=spec.nlist,
        nprobe=nprobe,
        k_factor=k_factor,
        k_factor_recalls=depth_recalls,
        recall_at_k=depth_recalls.get(k_factor, recalls[nprobe]),
        recall_k=k,
        recall_queries=len(queries),
        target_recall=target,
        nprobe_recalls=recalls,
        train_points=n_train,
        device=device,
    )
    return index, info


def _to_device(index: faiss.Index, on_gpu: bool) -> tuple[faiss.Index, Literal["cpu", "gpu"]]:
    """The index on all GPUs when asked and possible, else unchanged on the CPU."""
    if not on_gpu or not use_gpu():
        return index, "cpu"
    try:
        return faiss.index_cpu_to_all_gpus(index), "gpu"
    except RuntimeError:  # an index type or size this GPU build does not support
        return index, "cpu"


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's true top-k found in its returned top-k."""
    hits = [len(np.intersect1d(f[f >= 0], t)) for f, t in zip(found, truth, strict=True)]
    return float(np.sum(hits) / truth.size)


def choose_nprobe(
    index: faiss.Index, queries: np.ndarray, truth: np.ndarray, nlist: int, target: float
) -> tuple[int, dict[int, float]]:
    """Smallest power-of-two nprobe reaching ``target`` recall (else the best); all recalls."""
    recalls: dict[int, float] = {}
    for nprobe in _nprobe_candidates(nlist):
        set_nprobe(index, nprobe)
        _, found = index.search(queries, truth.shape[1])
        recalls[nprobe] = round(recall_at_k(found, truth), 4)
        if recalls[nprobe] >= target:
            return nprobe, recalls
    best = max(recalls.values())
    return min(p for p, r in recalls.items() if r >= best - 0.005), recalls


def deepen_refine(
    index: faiss.Index,
    queries: np.ndarray,
    truth: np.ndarray,
    recalls: dict[int, float],
    target: float,
) -> tuple[int, dict[int, float]]:
    """Double IVF-PQ's re-ranking depth until ``target`` recall or ``MAX_REFINE_K_FACTOR``.

    Where nprobe stops helping, the PQ codes' ranking is what loses neighbours; re-ranking
    more candidates with the SQ8 vectors wins them back. ``recalls`` holds the recall at the
    starting depth. Returns the first depth reaching the target, else the shallowest within
    0.005 of the best (depth costs time), set on the CPU ``index``; and every recall.
    """
    recalls = dict(recalls)
    k_factor = max(recalls)
    while recalls[k_factor] < target and k_factor < MAX_REFINE_K_FACTOR:
        k_factor *= 2
        _set_k_factor(index, k_factor)
        _, found = index.search(queries, truth.shape[1])
        recalls[k_factor] = round(recall_at_k(found, truth), 4)
    if recalls[k_factor] < target:
        best = max(recalls.values())
        k_factor = min(d for d, r in recalls.items() if r >= best - 0.005)
        _set_k_factor(index, k_factor)
    return k_factor, recalls


def _set_k_factor(index: faiss.Index, k_factor: int) -> None:
    faiss.ParameterSpace().set_index_parameter(index, "k_factor_rf", k_factor)


def _nprobe_candidates(nlist: int) -> list[int]:
    powers = [2**i for i in range(int(math.log2(nlist)) + 1)]
    return powers if powers[-1] == nlist else [*powers, nlist]


def set_nprobe(index: faiss.Index, nprobe: int) -> None:
    """Set nprobe on a CPU or GPU IVF index (no-op for flat ones)."""
    if nprobe <= 0 or isinstance(index, faiss.IndexFlat):
        return
    space = faiss.GpuParameterSpace() if _is_gpu(index) else faiss.ParameterSpace()
    space.set_index_parameter(index, "nprobe", nprobe)


def _is_gpu(index: faiss.Index) -> bool:
    return "Gpu" in type(index).__name__ or "IndexReplicas" in type(index).__name__


def write_index(index: faiss.Index, path: Path) -> None:
    """Serialise a CPU index to ``path``."""
    faiss.write_index(index, str(path))


def read_index(path: Path, nprobe: int = 0) -> faiss.Index:
    """Read an index written by ``write_index``; set ``nprobe`` on IVF ones."""
    index = faiss.read_index(str(path))
    set_nprobe(index, nprobe)
    return index
