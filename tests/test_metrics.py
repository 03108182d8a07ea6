"""Retrieval metrics against plain, loop-by-loop reference implementations."""

from __future__ import annotations

import math

import numpy as np
import pytest

from index_builder.training.metrics import (
    cosine_scores,
    per_query_metrics,
    rank_order,
    ranked_relevance,
    retrieval_metrics,
    retrieval_metrics_from_scores,
    top_k,
)

# ---------------------------------------------------------------- plain references


def ref_ranking(row: list[float]) -> list[int]:
    """Gallery indices by score descending, ties by the smaller index."""
    return sorted(range(len(row)), key=lambda j: (-row[j], j))


def ref_relevance(row: list[float], label: object, gallery_labels: list[object]) -> list[bool]:
    """Relevance in ranked order."""
    return [gallery_labels[j] == label for j in ref_ranking(row)]


def ref_precisions_at_hits(rel: list[bool]) -> list[float]:
    """precision@i at each relevant rank i, in rank order."""
    out, hits = [], 0
    for i, r in enumerate(rel, start=1):
        if r:
            hits += 1
            out.append(hits / i)
    return out


def ref_ap(rel: list[bool]) -> float:
    """(1/R) * sum of precision@i over the relevant ranks."""
    return sum(ref_precisions_at_hits(rel)) / sum(rel)


def ref_ap_at_k(rel: list[bool], k: int) -> float:
    """(1/K) * sum of precision@i over the relevant ranks i <= K."""
    return sum(ref_precisions_at_hits(rel[:k])) / k


def ref_p_at_k(rel: list[bool], k: int) -> float:
    """Relevant in the top K, over K."""
    return sum(rel[:k]) / k


def ref_voc_ap(rel: list[bool]) -> float:
    """The VOC2010+ ``voc_ap`` (as in SAKE) over the whole ranking, in plain loops."""
    n_pos, tp, fp, rec, prec = sum(rel), 0, 0, [], []
    for r in rel:
        tp, fp = tp + r, fp + (not r)
        rec.append(tp / n_pos)
        prec.append(tp / (tp + fp))
    mrec, mpre = [0.0, *rec, 1.0], [0.0, *prec, 0.0]
    for i in range(len(mpre) - 1, 0, -1):
        mpre[i - 1] = max(mpre[i - 1], mpre[i])
    return sum(
        (mrec[i + 1] - mrec[i]) * mpre[i + 1]
        for i in range(len(mrec) - 1)
        if mrec[i + 1] != mrec[i]
    )


def ref_metrics(scores, q_labels, g_labels, p_ks, m_ks) -> dict[str, float]:
    """Every metric by the references, averaged over queries with a relevant item."""
    per_query: dict[str, list[float]] = {}
    skipped = 0
    for row, label in zip(np.asarray(scores).tolist(), list(q_labels), strict=True):
        rel = ref_relevance(row, label, list(g_labels))
        if not any(rel):
            skipped += 1
            continue
        values = {"map_all": ref_ap(rel), "map_all_voc": ref_voc_ap(rel)}
        values |= {f"p_at_{k}": ref_p_at_k(rel, k) for k in p_ks}
        values |= {f"map_at_{k}": ref_ap_at_k(rel, k) for k in m_ks}
        for key, value in values.items():
            per_query.setdefault(key, []).append(value)
    out = {key: sum(v) / len(v) for key, v in per_query.items()}
    return out | {"n_queries": len(q_labels), "n_queries_without_relevant": skipped}


def assert_matches(got: dict[str, float], want: dict[str, float]) -> None:
    """Same keys (got may have more) and values to 1e-12."""
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key


# ---------------------------------------------------------------- hand-computed cases


def test_hand_computed_relevance_101() -> None:
    scores = [[3.0, 2.0, 1.0]]
    m = retrieval_metrics_from_scores(
        scores, ["a"], ["a", "b", "a"], precision_ks=(1, 2, 3), map_ks=(2, 3), voc=True
    )
    assert m["map_all"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["map_all_voc"] == pytest.approx((1 + 2 / 3) / 2)
    assert m["p_at_1"] == 1.0
    assert m["p_at_2"] == 0.5
    assert m["p_at_3"] == pytest.approx(2 / 3)
    assert m["map_at_2"] == pytest.approx(1 / 2)
    assert m["map_at_3"] == pytest.approx((1 + 2 / 3) / 3)
    assert (m["n_queries"], m["n_gallery"], m["n_queries_without_relevant"]) == (1, 3, 0)


def test_voc_interpolation_raises_earlier_precision() -> None:
    # relevance [0, 1, 1]: precisions at hits 1/2 and 2/3; the envelope lifts 1/2 to 2/3
    m = retrieval_metrics_from_scores([[3, 2, 1]], [1], [0, 1, 1], voc=True)
    assert m["map_all"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert m["map_all_voc"] == pytest.approx(2 / 3)


def test_ties_break_by_gallery_index() -> None:
    assert rank_order([1.0, 5.0, 1.0, 5.0, 1.0]).tolist() == [1, 3, 0, 2, 4]
    assert ranked_relevance([1, 1, 1], "a", ["b", "a", "a"]).tolist() == [False, True, True]
    m = retrieval_metrics_from_scores([[1, 1, 1], [0, 0, 0]], ["a", "b"], ["b", "a", "a"])
    assert m["map_all"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1.0) / 2)


def test_negative_zero_ties_with_zero() -> None:
    assert rank_order(np.array([-0.0, 0.0, -0.0])).tolist() == [0, 1, 2]


def test_unsigned_scores_rank_descending() -> None:
    assert rank_order(np.array([0, 255, 7], dtype=np.uint8)).tolist() == [1, 2, 0]


def test_cutoff_beyond_gallery_counts_missing_ranks_as_misses() -> None:
    m = retrieval_metrics_from_scores([[2, 1]], [0], [0, 0], precision_ks=(4,), map_ks=(4,))
    assert m["p_at_4"] == 0.5
    assert m["map_at_4"] == 0.5


def test_queries_without_relevant_items_are_excluded_and_counted() -> None:
    m = retrieval_metrics_from_scores([[1, 0], [1, 0]], ["a", "z"], ["a", "b"], precision_ks=(1,))
    assert m["map_all"] == 1.0
    assert m["p_at_1"] == 1.0
    assert (m["n_queries"], m["n_queries_without_relevant"]) == (2, 1)
    per_query = per_query_metrics(np.eye(2), ["a", "z"], np.eye(2), ["a", "b"])
    assert per_query["n_relevant"].tolist() == [1, 0]
    assert math.isnan(per_query["ap"][1])


def test_no_query_with_relevant_items_gives_nan() -> None:
    m = retrieval_metrics_from_scores([[1.0]], ["a"], ["b"])
    assert math.isnan(m["map_all"])
    assert m["n_queries_without_relevant"] == 1


def test_perfect_ranking_scores_one() -> None:
    rng = np.random.default_rng(1)
    g_labels = rng.integers(0, 5, 300)
    q_labels = rng.integers(0, 5, 40)
    scores = (q_labels[:, None] == g_labels[None, :]).astype(float)
    m = retrieval_metrics_from_scores(
        scores, q_labels, g_labels, precision_ks=(1, 10), map_ks=(1, 10), voc=True, chunk=7
    )
    for key in ("map_all", "map_all_voc", "p_at_1", "p_at_10", "map_at_1", "map_at_10"):
        assert m[key] == pytest.approx(1.0), key  # every class has far more than 10 photos


def test_identical_embeddings_rank_by_index() -> None:
    g = np.array([[1.0, 0.0], [2.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    idx, scores = top_k(np.array([[3.0, 0.0]]), g, 3)
    assert scores[0].tolist() == [1.0, 1.0, 1.0]
    assert idx[0].tolist() == [0, 1, 2]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="labels"):
        retrieval_metrics(np.eye(2), ["a"], np.eye(2), ["a", "b"])
    with pytest.raises(ValueError, match="dim"):
        retrieval_metrics(np.eye(2), ["a", "b"], np.eye(3), ["a", "b", "c"])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics_from_scores([[np.nan]], ["a"], ["a"])
    with pytest.raises(ValueError, match="positive"):
        retrieval_metrics_from_scores([[1.0]], ["a"], ["a"], precision_ks=(0,))
    with pytest.raises(ValueError, match="chunk"):
        retrieval_metrics_from_scores([[1.0]], ["a"], ["a"], chunk=0)
    with pytest.raises(ValueError, match="k must"):
        top_k(np.eye(2), np.eye(2), 3)


# ---------------------------------------------------------------- random comparisons


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("chunk", [1, 7, 16, 1000])
def test_integer_scores_with_many_ties_match_reference(seed: int, chunk: int) -> None:
    rng = np.random.default_rng(seed)
    n_q, n_g = int(rng.integers(1, 30)), int(rng.integers(1, 45))
    scores = rng.integers(0, 4, (n_q, n_g))
    classes = [f"c{i}" for i in range(int(rng.integers(1, 6)))]
    q_labels = rng.choice([*classes, "unseen"], n_q)
    g_labels = rng.choice(classes, n_g)
    p_ks, m_ks = (1, 3, 10, n_g, n_g + 5), (1, 5, n_g, 2 * n_g)
    got = retrieval_metrics_from_scores(scores, q_labels, g_labels, p_ks, m_ks, True, chunk)
    assert_matches(got, ref_metrics(scores, q_labels, g_labels, p_ks, m_ks))
    assert got["n_gallery"] == n_g


@pytest.mark.parametrize("seed", range(4))
def test_duplicate_embeddings_match_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    prototypes = rng.standard_normal((6, 8)).astype(np.float32)
    gallery = prototypes[rng.integers(0, 6, 70)]  # many exact duplicates: exact ties
    queries = np.concatenate([prototypes[rng.integers(0, 6, 20)], rng.standard_normal((3, 8))])
    g_labels = rng.integers(0, 3, 70)
    q_labels = rng.integers(0, 4, 23)  # class 3 has no photo
    scores = cosine_scores(queries, gallery)
    for a, b in zip(*np.nonzero((gallery[:, None] == gallery[None]).all(-1)), strict=True):
        assert (scores[:, a] == scores[:, b]).all()
    got = retrieval_metrics(queries, q_labels, gallery, g_labels, (1, 5, 33), (4, 50), True, 5)
    assert_matches(got, ref_metrics(scores, q_labels, g_labels, (1, 5, 33), (4, 50)))


def test_chunking_does_not_change_per_query_values() -> None:
    rng = np.random.default_rng(7)
    q, g = rng.standard_normal((50, 16)), rng.standard_normal((90, 16))
    q_labels, g_labels = rng.integers(0, 5, 50), rng.integers(0, 5, 90)
    whole = per_query_metrics(q, q_labels, g, g_labels, voc=True, chunk=50)
    for chunk in (1, 3, 17):
        parts = per_query_metrics(q, q_labels, g, g_labels, voc=True, chunk=chunk)
        for key, values in whole.items():
            np.testing.assert_array_equal(parts[key], values)


@pytest.mark.parametrize("k", [1, 4, 13, 40])
def test_top_k_is_the_head_of_the_full_ranking(k: int) -> None:
    rng = np.random.default_rng(k)
    prototypes = rng.standard_normal((5, 4))
    gallery = prototypes[rng.integers(0, 5, 40)]
    queries = rng.standard_normal((11, 4))
    idx, scores = top_k(queries, gallery, k, chunk=3)
    full = cosine_scores(queries, gallery)
    want = np.array([ref_ranking(row)[:k] for row in full.tolist()])
    np.testing.assert_array_equal(idx, want)
    np.testing.assert_array_equal(scores, np.take_along_axis(full, want, axis=1))
    assert idx.dtype == np.int64
    assert scores.dtype == np.float32


def test_ranked_relevance_matches_reference() -> None:
    rng = np.random.default_rng(3)
    row, labels = rng.integers(0, 3, 25), rng.integers(0, 3, 25)
    got = ranked_relevance(row, 1, labels).tolist()
    assert got == ref_relevance(row.tolist(), 1, labels.tolist())
