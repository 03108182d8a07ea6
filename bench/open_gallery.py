"""The open gallery: every Tux Paint stamp (802) as the gallery, labelled by eye
(``bench/data/stamp_labels.tsv``, ``STAMP_LABELS.md``), and its metrics; ``bench.ablation``
scores each development fold's rows with it, ``bench.sealed`` the demo model.

- gallery: every stamp of ``tuxpaint-stamps-default``, composited on white, read with its
  pseudo-sketch as the photo encoder reads it; relevant: the categories the table gives it;
- queries, "unseen": every sketch of the test classes that has a relevant stamp;
  "held-out": the held-out sketches (``index_builder.training.heldout``) of the run's fitted
  classes that have a relevant stamp;
- metrics: hit@10 (a relevant stamp among the first 10), mAP@all (1/R, R the query's relevant
  stamps; multi-label stamps count for each of their categories), median rank of the first
  relevant stamp (0-based), the harmonic mean of unseen and held-out, and for unseen queries
  the mean number of the first 10 slots taken by stamps of a trained category the query is
  not, and by glyphs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.demo_gallery import first_relevant_ranks
from bench.protocol import is_heldout
from bench.stamp_labels import StampLabel, read_stamp_labels
from index_builder.training.config import BuilderSettings
from index_builder.training.datasets.base import Sample
from index_builder.training.features import (
    FeatureSet,
    FeatureSpec,
    cached_backbone,
    extract_features,
)
from index_builder.training.heldout import sketch_key_id
from index_builder.training.metrics import rank_order
from index_builder.training.prepare import STAMPS_DIR

TOP = 10


@dataclass
class Gallery:
    """The stamps' photo-encoder features and labels, in table order."""

    features: np.ndarray  # (N, 2 D): each stamp and its pseudo-sketch
    paths: list[str]
    labels: list[StampLabel]

    def relevant(self, queries: list[str]) -> np.ndarray:
        """(Q, N) bool: stamp n depicts query q's category."""
        return np.array([[q in s.categories for s in self.labels] for q in queries])

    def of_classes(self, classes: set[str]) -> np.ndarray:
        """(N,) bool: the stamp depicts one of ``classes``."""
        return np.array([bool(s.categories & classes) for s in self.labels])


def stamp_gallery(backbone: str, settings: BuilderSettings, stamps: Path = STAMPS_DIR) -> Gallery:
    """Every labelled stamp through the backbone with pseudo-sketches (cached)."""
    table = read_stamp_labels()
    paths = sorted(table)
    samples = [Sample(stamps / p, ";".join(sorted(table[p].categories))) for p in paths]
    spec = FeatureSpec(backbone=backbone, domain="photo")
    net = cached_backbone(backbone, None, True)
    feats = extract_features(
        samples, spec, settings.cache_dir / "features", backbone=net, progress=False
    )
    return Gallery(feats.clean, paths, [table[p] for p in paths])


def open_per_query(
    scores: np.ndarray, relevant: np.ndarray, taken: dict[str, np.ndarray] | None = None
) -> dict[str, np.ndarray]:
    """Per query of (Q, N) scores: ``hit`` (a relevant stamp in the first 10), ``ap`` (1/R),
    ``first`` (rank of the first relevant stamp) and, for each mask of ``taken`` ((N,) bool),
    ``slots_<name>``: how many of the first 10 such stamps take while not relevant."""
    order = rank_order(scores)
    hits = np.take_along_axis(relevant, order, axis=1)
    first = first_relevant_ranks(scores, relevant)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    out = {
        "hit": (first < TOP).astype(float),
        "ap": (precision * hits).sum(axis=1) / np.maximum(hits.sum(axis=1), 1),
        "first": first.astype(float),
    }
    for name, mask in (taken or {}).items():
        out[f"slots_{name}"] = (mask[order[:, :TOP]] & ~hits[:, :TOP]).sum(axis=1).astype(float)
    return out


def open_scores(
    scores: np.ndarray, relevant: np.ndarray, taken: dict[str, np.ndarray] | None = None
) -> dict[str, float]:
    """hit@10, mAP@all (1/R) and the median first relevant rank of (Q, N) scores; and for
    each mask of ``taken`` the mean number of top-10 slots such stamps take (not relevant)."""
    per = open_per_query(scores, relevant, taken)
    row = {
        "hit_at_10": float(per["hit"].mean()),
        "map_all": float(per["ap"].mean()),
        "median_first_rank": float(np.median(per["first"])),
    }
    row.update({k: float(v.mean()) for k, v in per.items() if k.startswith("slots_")})
    return row


def harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


def queries_of(sketches: FeatureSet, fold: list[str], fitted: list[str], gallery: Gallery):
    """(unseen, held-out) query rows: the fold's sketches and the held-out sketches of the
    fitted classes, each only of classes with a relevant stamp."""
    findable = set().union(*(s.categories for s in gallery.labels))
    unseen = [i for i, c in enumerate(sketches.labels) if c in set(fold) & findable]
    held = [
        i
        for i, (c, p) in enumerate(zip(sketches.labels, sketches.paths, strict=True))
        if c in set(fitted) & findable and is_heldout(sketch_key_id(p))
    ]
    return sketches.rows(unseen), sketches.rows(held)
