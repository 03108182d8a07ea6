"""Retrieval metrics for sketch-based image retrieval, in the IIAE convention (iiae.md section 4).

Ranking. The whole gallery is ordered by cosine similarity, descending. Embeddings are
L2-normalised here (an all-zero row stays zero and scores 0 against everything). Scores are
accumulated in float64 and rounded to float32, so a pair gets the same score however the
queries are chunked and duplicate embeddings get equal scores. Equal scores are ties, broken
by gallery index (a stable sort of -score): the ranking is fully defined.

Relevant = same label. Per query, with R the relevant items in the whole gallery, rel_i the
relevance at rank i (counted from 1) and prec_i = (relevant in the top i) / i:

- ``p_at_K``: P@K = (relevant in the top K) / K. With K above the gallery size the missing
  ranks count as non-relevant.
- ``map_all``: AP = (1/R) * sum_i rel_i * prec_i over the whole ranking.
- ``map_at_K``: AP@K = (1/K) * sum_{i <= K} rel_i * prec_i (Yelamarthi convention: 1/K, not 1/R).
- ``map_all_voc`` (optional): the VOC2010+ all-point interpolated AP that SAKE and ZSE-SBIR
  compute (their ``voc_ap`` over the whole ranking): precision made monotone non-increasing,
  prec*_i = max_{j >= i} prec_j, and the area under that precision-recall curve taken at every
  recall change, i.e. (1/R) * sum_i rel_i * prec*_i. Not the VOC2007 11-point version.

Every mean is over the queries with R > 0; the others are counted in
``n_queries_without_relevant`` and left out (a zero-shot split has none). A mean over no query
is NaN.

Cost: one chunk of C queries against N gallery items peaks at about 18 * C * N bytes (26 with
``voc``): 1024 x 20,000 takes about 360 MB (530 MB); memory scales with ``chunk``. The stable
sort dominates the time: about 5 s per 1,000 queries against 20,000 items on one CPU core.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_PRECISION_KS = (10, 100, 200)
DEFAULT_MAP_KS = (200,)


def l2_normalize(x: ArrayLike) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float64; all-zero rows stay zero."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (items, dim), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError("embeddings contain NaN or infinite values")
    norms = np.linalg.norm(arr, axis=1, keepdims=True)
    return arr / np.where(norms > 0, norms, 1.0)


def _unit_pair(query_emb: ArrayLike, gallery_emb: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Both embedding sets normalised, checked for a common dimension and a non-empty gallery."""
    q, g = l2_normalize(query_emb), l2_normalize(gallery_emb)
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query dim {q.shape[1]} != gallery dim {g.shape[1]}")
    if len(g) == 0:
        raise ValueError("the gallery is empty")
    return q, g


def _scores(q_unit: np.ndarray, g_unit: np.ndarray) -> np.ndarray:
    """Cosine scores of unit rows: float64 products rounded to float32."""
    return (q_unit @ g_unit.T).astype(np.float32)


def cosine_scores(query_emb: ArrayLike, gallery_emb: ArrayLike) -> np.ndarray:
    """(Q, N) float32 cosine similarities, computed as the metrics compute them."""
    return _scores(*_unit_pair(query_emb, gallery_emb))


def rank_order(scores: ArrayLike) -> np.ndarray:
    """Gallery indices by score descending along the last axis, ties by index (NaN last)."""
    s = np.asarray(scores)
    if s.dtype.kind in "ub":  # negating unsigned integers or booleans would wrap
        s = s.astype(np.int64)
    return np.argsort(-s, axis=-1, kind="stable")


def ranked_relevance(
    scores_row: ArrayLike, query_label: object, gallery_labels: ArrayLike
) -> np.ndarray:
    """Relevance (bool, length N) of the gallery in ranked order for one query."""
    row, labels = np.asarray(scores_row), np.asarray(gallery_labels)
    if row.ndim != 1 or labels.shape != row.shape:
        raise ValueError(f"need 1-D scores and labels of one length: {row.shape}, {labels.shape}")
    return labels[rank_order(row)] == query_label


def _block_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Indices (rows, k) of the k best columns per row, in rank order, ties by column index."""
    kth = -np.partition(-scores, k - 1, axis=1)[:, k - 1 : k]  # the k-th largest score
    above = scores > kth
    at = scores == kth
    room = k - above.sum(axis=1, keepdims=True)  # how many of the ties at the k-th score fit
    chosen = above | (at & (np.cumsum(at, axis=1, dtype=np.int32) <= room))
    cols = np.nonzero(chosen)[1].reshape(len(scores), k)  # ascending index within each row
    return np.take_along_axis(cols, rank_order(np.take_along_axis(scores, cols, axis=1)), axis=1)


def top_k(
    query_emb: ArrayLike, gallery_emb: ArrayLike, k: int, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """The k best gallery items per query: indices (Q, k) int64 and float32 scores, best first.

    Same scores and tie rule as the metrics: row i is the first k of query i's full ranking.
    """
    q, g = _unit_pair(query_emb, gallery_emb)
    if not 1 <= k <= len(g):
        raise ValueError(f"k must be in 1..{len(g)} (the gallery size), got {k}")
    indices, scores = [], []
    for block in _blocks(q, g, _check_chunk(chunk)):
        idx = _block_top_k(block, k)
        indices.append(idx)
        scores.append(np.take_along_axis(block, idx, axis=1))
    if not indices:
        return np.zeros((0, k), np.int64), np.zeros((0, k), np.float32)
    return np.concatenate(indices).astype(np.int64), np.concatenate(scores)


def _check_chunk(chunk: int) -> int:
    """The chunk size, if it is a positive integer."""
    if int(chunk) != chunk or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk}")
    return int(chunk)


def _check_ks(ks: Iterable[int], name: str) -> tuple[int, ...]:
    """Distinct positive integer cut-offs, in the given order."""
    given = list(ks)
    if any(int(k) != k or k < 1 for k in given):
        raise ValueError(f"{name} must be positive integers, got {given}")
    return tuple(dict.fromkeys(int(k) for k in given))


def _blocks(q_unit: np.ndarray, g_unit: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    """Score matrices of consecutive chunks of queries against the whole gallery."""
    for start in range(0, len(q_unit), chunk):
        yield _scores(q_unit[start : start + chunk], g_unit)


def _encode_labels(
    query_labels: ArrayLike, gallery_labels: ArrayLike, n_queries: int, n_gallery: int
) -> tuple[np.ndarray, np.ndarray]:
    """Integer class codes for query and gallery labels (any comparable label type)."""
    q, g = np.asarray(query_labels), np.asarray(gallery_labels)
    if q.shape != (n_queries,) or g.shape != (n_gallery,):
        raise ValueError(
            f"labels must be 1-D with one per item: {q.shape} for {n_queries} queries, "
            f"{g.shape} for {n_gallery} gallery items"
        )
    _, codes = np.unique(np.concatenate([q, g]), return_inverse=True)
    codes = codes.reshape(-1)
    return codes[:n_queries], codes[n_queries:]


def _block_metrics(
    scores: np.ndarray,
    q_codes: np.ndarray,
    g_codes: np.ndarray,
    n_relevant: np.ndarray,
    precision_ks: Sequence[int],
    map_ks: Sequence[int],
    voc: bool,
) -> dict[str, np.ndarray]:
    """Per-query metrics of one chunk of score rows (see the module docstring)."""
    n = scores.shape[1]
    rel = np.take_along_axis(g_codes[None, :] == q_codes[:, None], rank_order(scores), axis=1)
    hits = np.cumsum(rel, axis=1, dtype=np.int32)  # relevant in the top i
    prec = np.zeros(rel.shape)  # prec_i at relevant ranks, 0 elsewhere
    np.divide(hits, np.arange(1, n + 1), out=prec, where=rel)
    has_rel = n_relevant > 0
    out = {"n_relevant": n_relevant, "ap": _safe_divide(prec.sum(axis=1), n_relevant, has_rel)}
    if voc:
        envelope = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
        out["ap_voc"] = _safe_divide(envelope.sum(axis=1, where=rel), n_relevant, has_rel)
    for k in precision_ks:
        out[f"p_at_{k}"] = hits[:, min(k, n) - 1] / k
    for k in map_ks:
        out[f"ap_at_{k}"] = prec[:, :k].sum(axis=1) / k
    return out


def _safe_divide(num: np.ndarray, den: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """num / den where ok, NaN elsewhere."""
    out = np.full(num.shape, np.nan)
    return np.divide(num, den, out=out, where=ok)


def _per_query(
    blocks: Iterable[np.ndarray],
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    shape: tuple[int, int],
    precision_ks: Iterable[int],
    map_ks: Iterable[int],
    voc: bool,
) -> dict[str, np.ndarray]:
    """Per-query metrics over score blocks that cover the queries in order."""
    p_ks, m_ks = _check_ks(precision_ks, "precision_ks"), _check_ks(map_ks, "map_ks")
    q_codes, g_codes = _encode_labels(query_labels, gallery_labels, *shape)
    n_relevant = np.bincount(g_codes, minlength=len(q_codes) + len(g_codes))[q_codes]
    parts, start = [], 0
    for block in blocks:
        stop = start + len(block)
        args = (q_codes[start:stop], g_codes, n_relevant[start:stop], p_ks, m_ks, voc)
        parts.append(_block_metrics(block, *args))
        start = stop
    if not parts:
        raise ValueError("there are no queries")
    return {key: np.concatenate([p[key] for p in parts]) for key in parts[0]}


def per_query_metrics(
    query_emb: ArrayLike,
    query_labels: ArrayLike,
    gallery_emb: ArrayLike,
    gallery_labels: ArrayLike,
    precision_ks: Iterable[int] = DEFAULT_PRECISION_KS,
    map_ks: Iterable[int] = DEFAULT_MAP_KS,
    voc: bool = False,
    chunk: int = 1024,
) -> dict[str, np.ndarray]:
    """Per-query arrays: ``ap``, ``p_at_K``, ``ap_at_K``, ``n_relevant`` (and ``ap_voc``).

    APs of queries with no relevant gallery item are NaN.
    """
    q, g = _unit_pair(query_emb, gallery_emb)
    blocks = _blocks(q, g, _check_chunk(chunk))
    shape = (len(q), len(g))
    return _per_query(blocks, query_labels, gallery_labels, shape, precision_ks, map_ks, voc)


def per_query_metrics_from_scores(
    scores: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    precision_ks: Iterable[int] = DEFAULT_PRECISION_KS,
    map_ks: Iterable[int] = DEFAULT_MAP_KS,
    voc: bool = False,
    chunk: int = 1024,
) -> dict[str, np.ndarray]:
    """As :func:`per_query_metrics`, from a precomputed (Q, N) score matrix (higher = better)."""
    s = np.asarray(scores)
    if s.ndim != 2 or s.shape[1] == 0:
        raise ValueError(f"scores must be 2-D (queries, gallery) with a gallery, got {s.shape}")
    if s.dtype.kind == "f" and np.isnan(s).any():
        raise ValueError("scores contain NaN")
    size = _check_chunk(chunk)
    blocks = (s[start : start + size] for start in range(0, len(s), size))
    return _per_query(blocks, query_labels, gallery_labels, s.shape, precision_ks, map_ks, voc)


def _summary_name(key: str) -> str:
    """Mean's name: ap -> map_all, ap_voc -> map_all_voc, ap_at_K -> map_at_K."""
    if key in ("ap", "ap_voc"):
        return "map_all" + key[2:]
    return "m" + key if key.startswith("ap_at_") else key


def summarise(per_query: dict[str, np.ndarray], n_gallery: int) -> dict[str, float]:
    """Means over the queries with a relevant gallery item, with the counts."""
    has_rel = per_query["n_relevant"] > 0
    out: dict[str, float] = {}
    for key, values in per_query.items():
        if key != "n_relevant":
            out[_summary_name(key)] = float(values[has_rel].mean()) if has_rel.any() else np.nan
    out["n_queries"] = len(has_rel)
    out["n_gallery"] = n_gallery
    out["n_queries_without_relevant"] = int((~has_rel).sum())
    return out


def retrieval_metrics(
    query_emb: ArrayLike,
    query_labels: ArrayLike,
    gallery_emb: ArrayLike,
    gallery_labels: ArrayLike,
    precision_ks: Iterable[int] = DEFAULT_PRECISION_KS,
    map_ks: Iterable[int] = DEFAULT_MAP_KS,
    voc: bool = False,
    chunk: int = 1024,
) -> dict[str, float]:
    """``map_all``, ``p_at_K``, ``map_at_K`` (and ``map_all_voc``) with the query/gallery counts.

    Embeddings are (Q, d) and (N, d); labels one per row. Conventions: the module docstring.
    """
    per_query = per_query_metrics(
        query_emb, query_labels, gallery_emb, gallery_labels, precision_ks, map_ks, voc, chunk
    )
    return summarise(per_query, len(np.asarray(gallery_labels)))


def retrieval_metrics_from_scores(
    scores: ArrayLike,
    query_labels: ArrayLike,
    gallery_labels: ArrayLike,
    precision_ks: Iterable[int] = DEFAULT_PRECISION_KS,
    map_ks: Iterable[int] = DEFAULT_MAP_KS,
    voc: bool = False,
    chunk: int = 1024,
) -> dict[str, float]:
    """As :func:`retrieval_metrics`, from a precomputed (Q, N) score matrix (higher = better)."""
    per_query = per_query_metrics_from_scores(
        scores, query_labels, gallery_labels, precision_ks, map_ks, voc, chunk
    )
    return summarise(per_query, np.asarray(scores).shape[1])
