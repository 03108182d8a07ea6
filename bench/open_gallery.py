"""Open-gallery retrieval on the development folds: each fold's model against all 802 stamps.

    python -m bench.open_gallery [--shared ../shared/data] [--work runs/open_gallery]
        [--folds 0 1 2 3] [--jobs 1] [--json OUT]

The protocol is ``bench.protocol``'s: for each development fold a run of the recommended
recipe is trained on the other 123 development classes (their held-out sketches left out:
``write_dev_data``), 20 of them held out inside the run as validation classes. Nothing here
reads a sealed class. Then:

- gallery: every stamp of ``tuxpaint-stamps-default`` (802), composited on white, read with
  its pseudo-sketch as the photo encoder reads it; relevant: the categories the committed
  table ``bench/data/stamp_labels.tsv`` (checked by eye; ``STAMP_LABELS.md``) gives a stamp;
- queries, "unseen": every sketch of the fold's 41 classes that has a relevant stamp;
  "held-out": the held-out sketches (``protocol.is_heldout``) of the run's fitted classes
  (trained on, head fitted on; not its validation classes) that have a relevant stamp;
- rows: the run's embedding at its own choices ("recipe"), without the category head, the
  IIAE latent alone, the scaled backbone features alone (training-free: the run's
  ``Standardize`` statistics, photos averaged with their pseudo-sketches) and those with the
  category head ("no IIAE");
- metrics: hit@10 (a relevant stamp among the first 10), mAP@all (1/R, R the query's relevant
  stamps; multi-label stamps count for each of their categories), median rank of the first
  relevant stamp (0-based), the harmonic mean of unseen and held-out for hit@10 and mAP, and
  for unseen queries the mean number of the first 10 slots taken by stamps of a trained
  category the query is not, and by glyphs; beside them the closed-gallery mAP@all of the
  fold's sketches against the fold's own pictures (``bench.zero_shot``'s figure).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.demo_gallery import first_relevant_ranks
from bench.protocol import dev_folds, is_heldout, sketch_key_id, write_dev_data
from bench.stamp_labels import StampLabel, read_stamp_labels
from bench.zero_shot import machine, prepared
from index_builder.training.config import BuilderSettings, TrainConfig
from index_builder.training.datasets.base import Sample
from index_builder.training.embedding import embed
from index_builder.training.features import (
    FeatureSet,
    FeatureSpec,
    cached_backbone,
    extract_features,
)
from index_builder.training.metrics import rank_order, retrieval_metrics
from index_builder.training.prepare import STAMPS_DIR
from index_builder.training.run import train_run
from index_builder.training.sources import feature_sets
from model.checkpoint import load_model
from model.iiae import IIAE

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


def open_scores(
    scores: np.ndarray, relevant: np.ndarray, taken: dict[str, np.ndarray] | None = None
) -> dict[str, float]:
    """hit@10, mAP@all (1/R) and the median first relevant rank of (Q, N) scores; and for
    each mask of ``taken`` ((N,) bool) the mean number of top-10 slots such stamps take
    while not relevant to the query."""
    order = rank_order(scores)
    hits = np.take_along_axis(relevant, order, axis=1)
    first = first_relevant_ranks(scores, relevant)
    precision = np.cumsum(hits, axis=1) / np.arange(1, hits.shape[1] + 1)
    ap = (precision * hits).sum(axis=1) / np.maximum(hits.sum(axis=1), 1)
    row = {
        "hit_at_10": float((first < TOP).mean()),
        "map_all": float(ap.mean()),
        "median_first_rank": float(np.median(first)),
    }
    for name, mask in (taken or {}).items():
        top = order[:, :TOP]
        row[f"slots_{name}"] = float((mask[top] & ~hits[:, :TOP]).sum(axis=1).mean())
    return row


def harmonic(a: float, b: float) -> float:
    return 2 * a * b / (a + b) if a + b > 0 else 0.0


@contextmanager
def weights(model: IIAE, fusion: float, category: float) -> Iterator[IIAE]:
    """The model with these fusion and category weights, restored afterwards."""
    chosen = model.cfg.fusion_weight, model.cfg.category_weight
    model.cfg.fusion_weight, model.cfg.category_weight = fusion, category
    try:
        yield model
    finally:
        model.cfg.fusion_weight, model.cfg.category_weight = chosen


def row_settings(model: IIAE) -> dict[str, tuple[float, float]]:
    """Row name -> (fusion weight, category share): the run's own choices and the ablations."""
    a, c = model.cfg.fusion_weight, model.cfg.category_weight
    rows = {
        "recipe": (a, c),
        "recipe without category head": (a, 0.0),
        "IIAE alone": (0.0, 0.0),
        "scaled features (training-free)": (1.0, 0.0),
    }
    if model.category_head is not None:
        rows["scaled features + category head (no IIAE)"] = (1.0, c)
    return rows


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


def evaluate_fold(
    run_dir: Path,
    fold: list[str],
    sketches: FeatureSet,
    photos: FeatureSet,
    gallery: Gallery,
) -> dict:
    """Every row of one fold's run: open-gallery metrics of both query sets and the
    closed-gallery mAP@all of the fold."""
    model, info = load_model(run_dir)
    fitted = info["train_classes"]
    unseen, held = queries_of(sketches, fold, fitted, gallery)
    fold_sketches, fold_photos = sketches.subset(set(fold)), photos.subset(set(fold))
    taken = {
        "trained": gallery.of_classes(set(fitted)),
        "glyph": np.array([s.glyph for s in gallery.labels]),
    }
    rel_unseen, rel_held = gallery.relevant(unseen.labels), gallery.relevant(held.labels)
    rows = {}
    for name, (a, c) in row_settings(model).items():
        with weights(model, a, c):
            zu, zh = embed(model, unseen.clean, "sketch"), embed(model, held.clean, "sketch")
            zg = embed(model, gallery.features, "photo")
            closed = retrieval_metrics(
                embed(model, fold_sketches.clean, "sketch"),
                fold_sketches.labels,
                embed(model, fold_photos.clean, "photo"),
                fold_photos.labels,
            )
        u = open_scores(zu @ zg.T, rel_unseen, taken)
        h = open_scores(zh @ zg.T, rel_held)
        rows[name] = {
            "unseen": u,
            "heldout": h,
            "hm_hit_at_10": harmonic(u["hit_at_10"], h["hit_at_10"]),
            "hm_map_all": harmonic(u["map_all"], h["map_all"]),
            "closed_map_all": closed["map_all"],
        }
    return {
        "test_classes": fold,
        "n_unseen": len(unseen.labels),
        "n_heldout": len(held.labels),
        "unseen_classes": sorted(set(unseen.labels)),
        "fusion_weight": model.cfg.fusion_weight,
        "category_weight": model.cfg.category_weight,
        "rows": rows,
    }


def train_fold(dev: Path, work: Path, fold: int, test: list[str], backbone: str) -> Path:
    """The fold's run of the recommended recipe (trained once; later calls reuse it)."""
    run_dir = work / "runs" / f"fold{fold}"
    if not (run_dir / "run.json").exists():
        split = work / "folds" / f"fold{fold}.txt"
        split.parent.mkdir(parents=True, exist_ok=True)
        split.write_text("\n".join(test) + "\n")
        settings = BuilderSettings(cache_dir=work / "cache")
        settings.apply_torch_threads()
        cfg = TrainConfig(recipe="recommended", backbone=backbone, seed=0)
        train_run(dev, run_dir, cfg, None, split, settings, progress=False)
    return run_dir


def run(shared: Path, work: Path, backbone: str, folds: list[int], jobs: int = 1) -> dict:
    data, settings, classes = prepared(shared, work)
    settings.apply_torch_threads()
    splits = dev_folds(classes)
    dev = write_dev_data(data, work / "dev")
    print(
        f"{dev.root}: {len(dev.classes)} development classes, {dev.sketches} sketches "
        f"({dev.heldout_left_out} held out), {dev.photos} pictures"
    )
    feature_sets(dev.root, dev.classes, backbone, settings=settings, pseudo_sketch=True)
    with ProcessPoolExecutor(jobs) if jobs > 1 else nullcontext() as pool:
        args = [(dev.root, work, f, splits[f], backbone) for f in folds]
        if pool is None:
            run_dirs = [train_fold(*a) for a in args]
        else:
            run_dirs = list(pool.map(train_fold, *zip(*args, strict=True)))
    sketches, photos = feature_sets(
        data, dev.classes, backbone, settings=settings, pseudo_sketch=True
    )
    gallery = stamp_gallery(backbone, settings)
    results = [
        evaluate_fold(d, splits[f], sketches, photos, gallery)
        for f, d in zip(folds, run_dirs, strict=True)
    ]
    return {"machine": machine(), "backbone": backbone, "folds": folds, "results": results}


def report(result: dict) -> str:
    names = list(result["results"][0]["rows"])
    lines = [f"machine: {result['machine']}; gallery: all stamps; backbone {result['backbone']}"]
    for f, r in zip(result["folds"], result["results"], strict=True):
        lines.append(
            f"fold {f}: {r['n_unseen']} unseen sketches ({len(r['unseen_classes'])} classes "
            f"with a stamp), {r['n_heldout']} held-out sketches of trained classes; the run "
            f"chose fusion weight {r['fusion_weight']:g}, category share {r['category_weight']:g}"
        )
    head = [
        "unseen hit@10",
        "unseen mAP",
        "held hit@10",
        "held mAP",
        "HM hit@10",
        "HM mAP",
        "trained slots",
        "glyph slots",
        "closed mAP",
    ]
    width = max(len(n) for n in names) + 2
    lines.append("mean over folds (per fold below)")
    lines.append("row".ljust(width) + "".join(h.rjust(14) for h in head))

    def cells(row: dict) -> list[float]:
        u, h = row["unseen"], row["heldout"]
        return [
            u["hit_at_10"],
            u["map_all"],
            h["hit_at_10"],
            h["map_all"],
            row["hm_hit_at_10"],
            row["hm_map_all"],
            u["slots_trained"],
            u["slots_glyph"],
            row["closed_map_all"],
        ]

    for name in names:
        mean = np.mean([cells(r["rows"][name]) for r in result["results"]], axis=0)
        lines.append(name.ljust(width) + "".join(f"{v:14.3f}" for v in mean))
    for f, r in zip(result["folds"], result["results"], strict=True):
        lines.append(f"fold {f}:")
        for name in names:
            lines.append(
                f"  {name}".ljust(width) + "".join(f"{v:14.3f}" for v in cells(r["rows"][name]))
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("runs/open_gallery"))
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--jobs", type=int, default=1, help="folds trained at once")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.shared, args.work, args.backbone, args.folds, args.jobs)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
