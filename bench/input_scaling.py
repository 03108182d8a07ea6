"""How to scale backbone features before comparing sketches with photos: a training-free
k-fold sweep over ``Standardize``'s settings (signed power, z-score or shrunk whitening).

    python -m bench.input_scaling [--work runs/zs205] [--backbone efficientnet-lite0]
        [--json OUT]

Same data, folds and validation classes as ``bench.zero_shot`` (whose ``--work`` feature
cache it reuses): in each fold, the statistics are fitted on the training classes less the
20 validation classes, and each setting is scored on those validation classes (the only
basis of a choice) and, fitted on all training classes, on the fold's unseen test classes.
Photos are read with their pseudo-sketches (their scaled halves averaged).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.zero_shot import class_folds, data_arguments, machine, prepared
from index_builder.training.evaluate import baseline_embeddings, score
from index_builder.training.run import pick_validation
from index_builder.training.sources import feature_sets
from model.scaling import scaling_name

# (power, shrinkage); None: the per-dimension z-score of the standardised baseline
SETTINGS: list[tuple[float, float] | None] = [
    None,
    (0.25, 0.0),
    (0.35, 0.0),
    (0.5, 0.0),
    (0.7, 0.0),
    (1.0, 1.0),
    (1.0, 3.0),
    (1.0, 10.0),
    (0.5, 3.0),
    (0.5, 10.0),
    (0.5, 30.0),
    (0.5, 100.0),
    (0.5, 1000.0),
]


def label(setting: tuple[float, float] | None) -> str:
    return "z-score (standardised baseline)" if setting is None else scaling_name(*setting)


def fold_scores(sets, classes: list[str], test: list[str]) -> dict[str, tuple[float, float]]:
    """{setting: (validation mAP@all, test mAP@all)} of one fold."""
    train = [c for c in classes if c not in test]
    fit, val = pick_validation(train, 20, 0)

    # (fitted on, scored on) of each column, taken out of the features once for every setting
    columns = [
        tuple(tuple(s.subset(set(c)) for s in sets) for c in pair)
        for pair in ((fit, val), (train, test))
    ]

    def map_all(setting, ref, part) -> float:
        zx, zy = baseline_embeddings(ref, part, setting)
        return score(zx, part[0], zy, part[1])["map_all"]

    return {label(s): tuple(map_all(s, *c) for c in columns) for s in SETTINGS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    data_arguments(parser)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    data, settings, classes = prepared(args.shared, args.work)
    sets = feature_sets(data, classes, args.backbone, settings=settings, pseudo_sketch=True)
    folds = [fold_scores(sets, classes, test) for test in class_folds(classes, args.folds)]
    print(f"\nmachine: {machine()}; backbone {args.backbone}, photos with pseudo-sketches")
    print(f"mAP@all, mean over {args.folds} folds (test: +- sd):")
    print("setting".ljust(40) + "validation".rjust(12) + "test".rjust(18))
    for name in folds[0]:
        val, test = (np.array([f[name][i] for f in folds]) for i in (0, 1))
        print(f"{name:40s}{val.mean():12.4f}{test.mean():10.4f} +- {test.std():.3f}")
    best = max(folds[0], key=lambda n: np.mean([f[n][0] for f in folds]))
    print(f"best on validation: {best}")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "folds": folds}, indent=2))


if __name__ == "__main__":
    main()
