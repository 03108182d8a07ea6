"""The ablation bench on the development folds: what each part of the recipe adds, closed and
open gallery, in the same run per fold.

    python -m bench.ablation (--shared ../shared/data | --data PREPARED) [--work runs/ablation]
        [--folds 0 1 2 3] [--variants recipe contrastive] [--jobs 2] [--json OUT]

The protocol is ``bench.protocol``'s; nothing here reads a sealed class. For each development
fold and each variant of the recipe a run is trained on the other 123 development classes
(20 of them validation classes inside the run; held-out sketches left out by the training
code itself, ``holdout_sketches``) and scored on the fold's 41 classes. Rows, per fold:

- training-free: backbone features rooted and whitened (power 0.5, shrinkage 30), photos with
  their pseudo-sketches, statistics on the fold's 123 training classes, held-out sketches out
  (the ``baselines --pseudo-sketch`` row);
- scaled features + category head (no IIAE): the run's fusion weight 1, its category share;
- IIAE alone: fusion 0, share 0;
- recipe without category head: the run's fusion weight, share 0;
- recipe: the run's own choices.

Metrics: closed mAP@all (the fold's sketches against the fold's pictures, IIAE convention)
and the open gallery's (``bench.open_gallery``: all 802 stamps; unseen and held-out hit@10
and mAP@all, their harmonic means, top-10 slots taken by trained-category stamps and glyphs).
Differences of rows (and of variants) per fold with a paired bootstrap over the fold's classes.
Resumable: a run with a ``run.json`` is not retrained, a fold with a result file not rescored.
"""

from __future__ import annotations

import argparse
import json
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np

from bench.open_gallery import Gallery, harmonic, open_per_query, queries_of, stamp_gallery
from bench.protocol import HELDOUT_SHARE, check_classes, dev_folds
from bench.zero_shot import machine
from index_builder.training.config import BuilderSettings, TrainConfig
from index_builder.training.embedding import embed
from index_builder.training.evaluate import TrainingFree
from index_builder.training.features import FeatureSet
from index_builder.training.heldout import split_heldout
from index_builder.training.metrics import per_query_metrics
from index_builder.training.prepare import PHOTO_MAP, prepare_shared_data
from index_builder.training.recipes import input_scaling, recipe
from index_builder.training.run import train_run
from index_builder.training.sources import data_classes, feature_sets
from model.checkpoint import load_model
from model.retrieval import RetrievalModel

# Variants of the recommended recipe trained per fold: overrides of its values ("recipe" is
# the recommended recipe as it is: the contrastive term was measured and not adopted).
VARIANTS: dict[str, dict] = {
    "recipe": {"w_contrastive": 0.0},
    "contrastive": {"w_contrastive": 1.0},
}
TRAINING_FREE = "training-free (whitened + pseudo-sketches)"
ROWS = (
    TRAINING_FREE,
    "scaled features + head (no IIAE)",
    "IIAE alone",
    "recipe without head",
    "recipe",
)
# (row, baseline row): the differences the bench reports with bootstrap intervals
DIFFERENCES = (
    ("recipe", TRAINING_FREE),
    ("recipe", "scaled features + head (no IIAE)"),
    ("recipe without head", TRAINING_FREE),
    ("scaled features + head (no IIAE)", TRAINING_FREE),
    ("IIAE alone", TRAINING_FREE),
)
BOOTSTRAP = 10_000


def variant_config(variant: str, backbone: str) -> TrainConfig:
    return recipe(backbone=backbone, seed=0, **VARIANTS[variant])


def train_fold(
    data: Path,
    work: Path,
    variant: str,
    fold: int,
    test: list[str],
    dev: list[str],
    backbone: str,
    settings: BuilderSettings,
) -> Path:
    """The fold's run of ``variant`` (trained once; later calls reuse it, resume a cut one)."""
    run_dir = work / "runs" / variant / f"fold{fold}"
    cfg = variant_config(variant, backbone)
    if (run_dir / "run.json").exists():
        recorded = json.loads((run_dir / "run.json").read_text())["config"]
        if recorded != cfg.model_dump():
            raise ValueError(f"{run_dir}: trained with another configuration; use a new --work")
        return run_dir
    lists = work / "folds"
    lists.mkdir(parents=True, exist_ok=True)
    (lists / f"fold{fold}_test.txt").write_text("".join(f"{c}\n" for c in test))
    train = [c for c in dev if c not in set(test)]
    (lists / f"fold{fold}_train.txt").write_text("".join(f"{c}\n" for c in train))
    train_run(
        data,
        run_dir,
        cfg,
        lists / f"fold{fold}_train.txt",
        lists / f"fold{fold}_test.txt",
        settings,
        progress=False,
    )
    return run_dir


def _by_class(labels: list[str], values: np.ndarray) -> dict[str, list[float]]:
    """Class -> [query count, sum of the values]: what the class bootstrap resamples."""
    out: dict[str, list[float]] = {}
    for c, v in zip(labels, values, strict=True):
        n, total = out.get(c, [0, 0.0])
        out[c] = [n + 1, total + float(v)]
    return out


def score_row(
    sketch_fn,
    photo_fn,
    fold_sets: tuple[FeatureSet, FeatureSet],
    unseen: FeatureSet,
    held: FeatureSet,
    gallery: Gallery,
    taken: dict[str, np.ndarray],
) -> dict:
    """One row's per-class sums (closed AP, unseen hit / AP, held-out hit / AP) and means."""
    sk, ph = fold_sets
    closed = per_query_metrics(sketch_fn(sk.clean), sk.labels, photo_fn(ph.clean), ph.labels)
    zg = photo_fn(gallery.features)
    u = open_per_query(sketch_fn(unseen.clean) @ zg.T, gallery.relevant(unseen.labels), taken)
    h = open_per_query(sketch_fn(held.clean) @ zg.T, gallery.relevant(held.labels))
    per_class = {
        "closed_ap": _by_class(sk.labels, closed["ap"]),
        "unseen_hit": _by_class(unseen.labels, u["hit"]),
        "unseen_ap": _by_class(unseen.labels, u["ap"]),
        "held_hit": _by_class(held.labels, h["hit"]),
        "held_ap": _by_class(held.labels, h["ap"]),
    }
    means = {
        "closed_map_all": float(np.mean(closed["ap"])),
        "unseen_hit_at_10": float(u["hit"].mean()),
        "unseen_map_all": float(u["ap"].mean()),
        "held_hit_at_10": float(h["hit"].mean()),
        "held_map_all": float(h["ap"].mean()),
        "slots_trained": float(u["slots_trained"].mean()),
        "slots_glyph": float(u["slots_glyph"].mean()),
    }
    means["hm_hit_at_10"] = harmonic(means["unseen_hit_at_10"], means["held_hit_at_10"])
    means["hm_map_all"] = harmonic(means["unseen_map_all"], means["held_map_all"])
    return {"means": means, "per_class": per_class}


def row_functions(model: RetrievalModel, free: TrainingFree) -> dict[str, tuple]:
    """Row name -> (sketch embedding function, photo embedding function)."""
    a, c = model.head.cfg.fusion_weight, model.head.cfg.category_weight
    weights = {
        "scaled features + head (no IIAE)": (1.0, c),
        "IIAE alone": (0.0, 0.0),
        "recipe without head": (a, 0.0),
        "recipe": (a, c),
    }
    rows = {TRAINING_FREE: (free.sketch, free.photo)}
    for name, (fa, fc) in weights.items():
        m = model.with_head(model.head.with_weights(fusion_weight=fa, category_weight=fc))
        rows[name] = (
            lambda x, m=m: embed(m, x, "sketch"),
            lambda y, m=m: embed(m, y, "photo"),
        )
    return rows


def evaluate_fold(
    run_dir: Path,
    test: list[str],
    dev: list[str],
    data: Path,
    backbone: str,
    settings: BuilderSettings,
) -> dict:
    """Every row of one fold's run, in one process."""
    model, info = load_model(run_dir)
    fitted = info["train_classes"]
    sketches, photos = feature_sets(data, dev, backbone, settings=settings, pseudo_sketch=True)
    train = [c for c in dev if c not in set(test)]
    train_sketches, _ = split_heldout(sketches.subset(set(train)), HELDOUT_SHARE)
    free = TrainingFree((train_sketches, photos.subset(set(train))), input_scaling())
    gallery = stamp_gallery(backbone, settings)
    unseen, held = queries_of(sketches, test, fitted, gallery)
    taken = {
        "trained": gallery.of_classes(set(fitted)),
        "glyph": np.array([s.glyph for s in gallery.labels]),
    }
    fold_sets = (sketches.subset(set(test)), photos.subset(set(test)))
    rows = {
        name: score_row(fs, fp, fold_sets, unseen, held, gallery, taken)
        for name, (fs, fp) in row_functions(model, free).items()
    }
    return {
        "run": str(run_dir),
        "test_classes": test,
        "n_unseen": len(unseen.labels),
        "n_heldout": len(held.labels),
        "fusion_weight": model.head.cfg.fusion_weight,
        "category_weight": model.head.cfg.category_weight,
        "selected_step": info["selected_step"],
        "rows": rows,
    }


def fold_task(
    data: Path,
    work: Path,
    variant: str,
    fold: int,
    test: list[str],
    dev: list[str],
    backbone: str,
) -> dict:
    """Train (or reuse) and score one fold of one variant; the result file makes it resumable."""
    out = work / "results" / variant / f"fold{fold}.json"
    if out.exists():
        return json.loads(out.read_text())
    settings = BuilderSettings()
    settings.apply_torch_threads()  # in a worker process too
    t0 = time.process_time()
    run_dir = train_fold(data, work, variant, fold, test, dev, backbone, settings)
    result = evaluate_fold(run_dir, test, dev, data, backbone, settings)
    result["cpu_s"] = time.process_time() - t0
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result))
    tmp.replace(out)
    print(f"{variant} fold {fold}: done ({result['cpu_s']:.0f} CPU s)", flush=True)
    return result


def bootstrap(a: dict, b: dict, seed: int = 0) -> tuple[float, float, float]:
    """Difference of means a - b (queries pooled) and its 95 % interval, resampling classes."""
    classes = sorted(a)
    n = np.array([a[c][0] for c in classes])
    diff = np.array([a[c][1] - b[c][1] for c in classes])
    idx = np.random.default_rng(seed).integers(0, len(classes), (BOOTSTRAP, len(classes)))
    draws = diff[idx].sum(axis=1) / n[idx].sum(axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    return float(diff.sum() / n.sum()), float(low), float(high)


def run(
    data: Path, work: Path, backbone: str, folds: list[int], variants: list[str], jobs: int
) -> dict:
    classes = check_classes(data_classes(data))
    splits = dev_folds(classes)
    dev = sorted(c for s in splits for c in s)
    tasks = [(data, work, v, f, splits[f], dev, backbone) for v in variants for f in folds]
    with ProcessPoolExecutor(jobs) if jobs > 1 else nullcontext() as pool:
        if pool is None:
            results = [fold_task(*t) for t in tasks]
        else:
            results = list(pool.map(fold_task, *zip(*tasks, strict=True)))
    by = {(t[2], t[3]): r for t, r in zip(tasks, results, strict=True)}
    return {
        "machine": machine(),
        "backbone": backbone,
        "folds": folds,
        "variants": {v: [by[(v, f)] for f in folds] for v in variants},
    }


COLUMNS = (
    ("closed mAP", "closed_map_all"),
    ("u hit@10", "unseen_hit_at_10"),
    ("u mAP", "unseen_map_all"),
    ("h hit@10", "held_hit_at_10"),
    ("h mAP", "held_map_all"),
    ("HM hit", "hm_hit_at_10"),
    ("HM mAP", "hm_map_all"),
    ("tr slots", "slots_trained"),
    ("gl slots", "slots_glyph"),
)
BOOTSTRAPPED = (("closed mAP", "closed_ap"), ("u hit@10", "unseen_hit"), ("h hit@10", "held_hit"))


def _table(lines: list[str], named: dict[str, list[dict]]) -> None:
    width = max(len(n) for n in named) + 2
    lines.append("row".ljust(width) + "".join(h.rjust(11) for h, _ in COLUMNS))
    for name, per_fold in named.items():
        mean = np.mean([[r["means"][k] for _, k in COLUMNS] for r in per_fold], axis=0)
        lines.append(name.ljust(width) + "".join(f"{v:11.3f}" for v in mean))


def _differences(lines: list[str], pairs: list[tuple[str, dict, dict]]) -> None:
    for label, a, b in pairs:
        cells = []
        for head, key in BOOTSTRAPPED:
            d, low, high = bootstrap(a["per_class"][key], b["per_class"][key])
            cells.append(f"{head} {d:+.3f} [{low:+.3f},{high:+.3f}]")
        lines.append(f"    {label}: " + "  ".join(cells))


def report(result: dict) -> str:
    lines = [
        f"machine: {result['machine']}; backbone {result['backbone']}; development folds "
        f"{result['folds']}; closed: the fold's sketches vs its pictures (mAP@all, IIAE "
        "convention); open: all 802 stamps (u: unseen classes, h: held-out sketches of fitted "
        "classes, HM harmonic mean; slots: of an unseen query's first 10)"
    ]
    folds = result["folds"]
    for variant, per_fold in result["variants"].items():
        lines.append(f"== variant {variant} ({VARIANTS[variant]}), mean over folds:")
        _table(lines, {row: [r["rows"][row] for r in per_fold] for row in ROWS})
        for f, r in zip(folds, per_fold, strict=True):
            lines.append(
                f"  fold {f}: {r['n_unseen']} unseen, {r['n_heldout']} held-out queries; "
                f"chose fusion {r['fusion_weight']:g}, share {r['category_weight']:g}, step "
                f"{r['selected_step']}; closed mAP "
                + ", ".join(
                    f"{row} {r['rows'][row]['means']['closed_map_all']:.4f}" for row in ROWS
                )
            )
            _differences(
                lines, [(f"{a} - {b}", r["rows"][a], r["rows"][b]) for a, b in DIFFERENCES]
            )
    names = list(result["variants"])
    for other in names[1:]:
        lines.append(f"== variant {other} - {names[0]} (row recipe), per fold:")
        pairs = [
            (f"fold {f}", o["rows"]["recipe"], base["rows"]["recipe"])
            for f, o, base in zip(
                folds, result["variants"][other], result["variants"][names[0]], strict=True
            )
        ]
        _differences(lines, pairs)
        diffs = [o["means"]["closed_map_all"] - b["means"]["closed_map_all"] for _, o, b in pairs]
        lines.append(f"    mean closed mAP difference over folds: {np.mean(diffs):+.4f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--shared", type=Path, default=Path("../shared/data"))
    source.add_argument("--data", type=Path, help="an already prepared data folder")
    parser.add_argument("--work", type=Path, default=Path("runs/ablation"))
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--folds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--jobs", type=int, default=1, help="fold runs at once")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data = args.data
    if data is None:
        data = args.work / "data"
        print(prepare_shared_data(args.shared, data, photo_table=PHOTO_MAP).summary())
    result = run(data, args.work, args.backbone, args.folds, args.variants, args.jobs)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result))


if __name__ == "__main__":
    main()
