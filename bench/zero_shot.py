"""Zero-shot sketch -> photo retrieval on the real ../shared/data set, k-fold over classes.

    python -m bench.zero_shot [--shared ../shared/data] [--work runs/zero_shot] [--folds 5]
        [--seeds 2] [--backbone efficientnet-lite0] [--candidates NAME ...] [--jobs 1]
        [--json OUT]

Prepares the data (real Quick, Draw! sketches, real photos), splits its classes into k folds
and, for each fold, trains every candidate recipe on the other folds' classes and scores it on
the fold's classes, which no choice ever sees: early stopping and the choice between recipes
use validation classes carved out of the training folds (``val_classes`` of each run). The
training-free baselines (raw and per-domain standardised backbone features, standardised with
the training folds' statistics; and with the photos' pseudo-sketches, z-scored or rooted and
whitened as the recommended recipe's inputs) are scored on the same fold in the same run.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from index_builder.training.config import BuilderSettings
from index_builder.training.evaluate import evaluate_baselines, evaluate_run
from index_builder.training.prepare import PHOTO_MAP, prepare_shared_data
from index_builder.training.recipes import input_scaling, recipe
from index_builder.training.run import train_run
from index_builder.training.sources import data_classes, feature_sets
from model.scaling import scaling_name

# Candidates: a recipe (index_builder/training/recipes.py) and values over it, chosen between on
# validation classes. Each also reports its IIAE embedding alone (no fusion, no category
# head) as a row.
CANDIDATES: dict[str, dict] = {
    "recommended": {"name": "recommended"},
    "recommended, no class head": {"name": "recommended", "w_cls": 0.0},
    "recommended, photos alone": {"name": "recommended", "pseudo_sketch": False},
}
METRICS = ("map_all", "p_at_10", "p_at_100")
# row name -> the baseline's name in evaluate_baselines (after the backbone's)
WHITENED = scaling_name(*input_scaling())
BASELINES = {
    "raw": "raw features",
    "standardized": "standardized features",
    "standardized + photo pseudo-sketches": "standardized features + photo pseudo-sketches",
    "whitened + photo pseudo-sketches": f"{WHITENED} features + photo pseudo-sketches",
}


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = models[0] if models else platform.processor()
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def class_folds(classes: list[str], k: int, seed: int = 0) -> list[list[str]]:
    """The sorted classes dealt into ``k`` folds of near-equal size, in a seeded order."""
    if not 2 <= k <= len(classes):
        raise ValueError(f"{k} folds need between 2 and {len(classes)} classes")
    order = np.random.default_rng(seed).permutation(len(classes))
    return [sorted(classes[i] for i in order[f::k]) for f in range(k)]


def run_fold(
    fold: int,
    test: list[str],
    data: Path,
    work: Path,
    backbone: str,
    candidates: list[str],
    seeds: int,
    settings: BuilderSettings,
) -> dict:
    """Baselines and every candidate x seed on one fold: {row: {metric...}} and validation."""
    split = work / "folds" / f"fold{fold}.txt"
    split.parent.mkdir(parents=True, exist_ok=True)
    split.write_text("\n".join(test) + "\n")
    train = [c for c in data_classes(data) if c not in test]
    base = evaluate_baselines(
        data, train, test, backbone, settings, with_pseudo_sketch=True, whiten=input_scaling()
    )
    rows = {name: base[f"{backbone} {label}"] for name, label in BASELINES.items()}
    validation, chosen = {}, {}
    for name in candidates:
        tests, alone, vals, weights = [], [], [], []
        for seed in range(seeds):
            cfg = recipe(**{**CANDIDATES[name], "backbone": backbone, "seed": seed})
            run_dir = work / "runs" / backbone / f"fold{fold}" / f"{_slug(name)}-seed{seed}"
            info = train_run(data, run_dir, cfg, None, split, settings, progress=False)
            vals.append(info["validation"]["model_map_all"])
            head = json.loads((run_dir / "run.json").read_text())["retrieval"]
            weights.append({k: head[k] for k in ("fusion_weight", "category_weight")})
            tests.append(evaluate_run(run_dir, data, split, settings=settings))
            alone.append(evaluate_run(run_dir, data, split, settings=settings, iiae_alone=True))
        rows[name] = _mean_metrics(tests)
        rows[f"{name}: IIAE alone"] = _mean_metrics(alone)
        validation[name], chosen[name] = float(np.mean(vals)), weights
    return {"test_classes": test, "rows": rows, "validation": validation, "weights": chosen}


def _mean_metrics(results: list[dict]) -> dict[str, float]:
    return {k: float(np.mean([r[k] for r in results])) for k in METRICS}


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name)


def summarise(folds: list[dict]) -> dict:
    """Mean and sd over folds of each row's metrics, the recipe chosen on validation, and how
    it compares with the standardised baseline fold by fold."""
    summary = {}
    for name in folds[0]["rows"]:
        rows = [f["rows"][name] for f in folds]
        sd = {f"{k}_sd": float(np.std([r[k] for r in rows])) for k in METRICS}
        summary[name] = {**_mean_metrics(rows), **sd}
    validation = {
        n: float(np.mean([f["validation"][n] for f in folds])) for n in folds[0]["validation"]
    }
    chosen = max(validation, key=validation.__getitem__)
    ratios = [f["rows"][chosen]["map_all"] / f["rows"]["standardized"]["map_all"] for f in folds]
    return {
        "rows": summary,
        "chosen": chosen,
        "validation": validation,
        "ratio_to_standardized": ratios,
        "gain_of_means": summary[chosen]["map_all"] / summary["standardized"]["map_all"] - 1,
    }


def prepared(shared: Path, work: Path) -> tuple[Path, BuilderSettings, list[str]]:
    """The shared data prepared under ``work`` (idempotent), its feature cache settings and
    its classes."""
    data = work / "data"
    print(prepare_shared_data(shared, data, photo_table=PHOTO_MAP).summary())
    return data, BuilderSettings(cache_dir=work / "cache"), data_classes(data)


def data_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of the data, work folder, backbone and folds (shared by the k-fold benches)."""
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("runs/zero_shot"))
    parser.add_argument("--backbone", default="efficientnet-lite0")
    parser.add_argument("--folds", type=int, default=5)


def _timed_fold(fold: int, test: list[str], *args) -> dict:
    t0 = time.time()
    BuilderSettings().apply_torch_threads()  # in a worker process too
    result = run_fold(fold, test, *args)
    print(f"fold {fold}: {len(test)} test classes, {time.time() - t0:.0f} s", flush=True)
    return result


def run(
    shared: Path,
    work: Path,
    backbone: str,
    k: int,
    seeds: int,
    candidates: list[str],
    jobs: int = 1,
) -> dict:
    """Every fold (``jobs`` of them at once, in worker processes), then the summary."""
    data, settings, classes = prepared(shared, work)
    for pseudo_sketch in (False, True):  # extracted once, before the folds read them
        feature_sets(data, classes, backbone, settings=settings, pseudo_sketch=pseudo_sketch)
    splits = class_folds(classes, k)
    args = (data, work, backbone, candidates, seeds, settings)
    with ProcessPoolExecutor(jobs) if jobs > 1 else nullcontext() as pool:
        if pool is None:
            folds = [_timed_fold(i, test, *args) for i, test in enumerate(splits)]
        else:
            futures = [pool.submit(_timed_fold, i, test, *args) for i, test in enumerate(splits)]
            folds = [f.result() for f in futures]
    return {
        "machine": machine(),
        "backbone": backbone,
        "seeds": seeds,
        "folds": folds,
        **summarise(folds),
    }


def print_result(result: dict) -> None:
    names = list(result["rows"])
    print(f"\nmachine: {result['machine']}; backbone {result['backbone']}")
    print(f"IIAE rows: mean over seeds 0..{result['seeds'] - 1} in each fold")
    print("\nper fold, mAP@all on the fold's unseen classes:")
    print("fold  classes " + "".join(n[:22].rjust(24) for n in names))
    for i, fold in enumerate(result["folds"]):
        cells = "".join(f"{fold['rows'][n]['map_all']:24.4f}" for n in names)
        print(f"{i:4d} {len(fold['test_classes']):8d} {cells}")
    print("\nmean +- sd over folds:")
    print("model".ljust(26) + "".join(f"{k:>20s}" for k in METRICS))
    for n in names:
        row = result["rows"][n]
        print(
            n[:25].ljust(26) + "".join(f"{row[k]:12.4f} +- {row[k + '_sd']:.3f}" for k in METRICS)
        )
    print("\nvalidation mAP@all (mean over folds and seeds; the only basis of the choice):")
    for n, v in result["validation"].items():
        chosen = [w for fold in result["folds"] for w in fold["weights"][n]]
        fusion = [w["fusion_weight"] for w in chosen]
        category = [w["category_weight"] for w in chosen]
        print(f"  {n:34s} {v:.4f}  (chosen fusion weights {fusion}, category shares {category})")
    ratios = ", ".join(f"{r:.2f}" for r in result["ratio_to_standardized"])
    print(
        f"chosen: {result['chosen']}; its mAP@all / standardised baseline per fold: {ratios}; "
        f"mean gain {100 * result['gain_of_means']:+.1f} %"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_arguments(parser)
    parser.add_argument("--seeds", type=int, default=2, help="runs per recipe and fold")
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    parser.add_argument("--jobs", type=int, default=1, help="folds run at once (processes)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(
        args.shared, args.work, args.backbone, args.folds, args.seeds, args.candidates, args.jobs
    )
    print_result(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
