"""The sealed-set evaluation of a finished recipe: the demo run (trained on the 164
development classes, held-out sketches out, the sealed classes its test classes) scored once.

    python -m bench.sealed --data PREPARED --what "WHAT IS SCORED" [--run models/demo]
        [--json OUT]

Logs the look in ``bench/sealed_looks.md`` first (``protocol.look_at_sealed``: every run of
this command is a look; commit the log with the figures). Rows as ``bench.ablation``'s, the
training-free one with statistics on the development classes (held-out sketches out):

- closed: the sealed classes' sketches against their pictures, mAP@all (IIAE convention),
  P@100, mAP@200, P@200, and the run's held-out sketches of its fitted categories against
  the pictures of all its classes (``evaluate``'s second row);
- open: all 802 stamps; unseen = the sealed classes' sketches that have a stamp, held-out =
  held-out sketches of the fitted classes that have one: hit@10, mAP@all, harmonic means.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from bench.ablation import COLUMNS, ROWS, TRAINING_FREE, row_functions, score_row
from bench.open_gallery import queries_of, stamp_gallery
from bench.protocol import HELDOUT_SHARE, check_classes, dev_classes, look_at_sealed
from bench.zero_shot import machine
from index_builder.training.config import BuilderSettings
from index_builder.training.evaluate import TrainingFree, evaluate_run, format_table, score
from index_builder.training.heldout import split_heldout
from index_builder.training.recipes import input_scaling
from index_builder.training.sources import data_classes, feature_sets
from model.checkpoint import load_model


def run(data: Path, run_dir: Path, what: str) -> dict:
    classes = check_classes(data_classes(data))
    model, info = load_model(run_dir)
    dev = dev_classes(classes)
    if sorted(info["train_classes"] + info["val_classes"]) != dev:
        raise ValueError(f"{run_dir}: not trained on the 164 development classes")
    sealed = look_at_sealed(classes, what)
    if sorted(info["test_classes"]) != sealed:
        raise ValueError(f"{run_dir}: its test classes are not the sealed set")
    settings = BuilderSettings()
    settings.apply_torch_threads()
    backbone = info["backbone"]
    sketches, photos = feature_sets(data, classes, backbone, settings=settings, pseudo_sketch=True)
    train_sketches, _ = split_heldout(sketches.subset(set(dev)), HELDOUT_SHARE)
    free = TrainingFree((train_sketches, photos.subset(set(dev))), input_scaling())
    sk, ph = sketches.subset(set(sealed)), photos.subset(set(sealed))
    recipe = evaluate_run(run_dir, data, settings=settings)
    closed = {
        TRAINING_FREE: score(free.sketch(sk.clean), sk, free.photo(ph.clean), ph),
        "recipe": recipe,
        "recipe, held-out sketches of trained categories": recipe["heldout"],
    }
    gallery = stamp_gallery(backbone, settings)
    fitted = info["train_classes"]
    unseen, held = queries_of(sketches, sealed, fitted, gallery)
    taken = {
        "trained": gallery.of_classes(set(fitted)),
        "glyph": np.array([s.glyph for s in gallery.labels]),
    }
    rows = {
        name: score_row(fs, fp, (sk, ph), unseen, held, gallery, taken)["means"]
        for name, (fs, fp) in row_functions(model, free).items()
    }
    return {
        "machine": machine(),
        "run": str(run_dir),
        "what": what,
        "n_unseen": len(unseen.labels),
        "unseen_classes": sorted(set(unseen.labels)),
        "n_heldout": len(held.labels),
        "closed": closed,
        "rows": rows,
    }


def report(result: dict) -> str:
    lines = [
        f"machine: {result['machine']}; run {result['run']}; sealed set, look: {result['what']}",
        "closed gallery (IIAE convention):",
        format_table(result["closed"]),
        f"open gallery (all 802 stamps): {result['n_unseen']} unseen sketches of "
        f"{len(result['unseen_classes'])} sealed classes with a stamp, {result['n_heldout']} "
        "held-out sketches of trained categories",
    ]
    width = max(len(n) for n in ROWS) + 2
    lines.append("row".ljust(width) + "".join(h.rjust(11) for h, _ in COLUMNS))
    for name in ROWS:
        values = [result["rows"][name][k] for _, k in COLUMNS]
        lines.append(name.ljust(width) + "".join(f"{v:11.3f}" for v in values))
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="the prepared data")
    parser.add_argument("--run", type=Path, default=Path("models/demo"))
    parser.add_argument("--what", required=True, help="one line for the look's log")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    result = run(args.data, args.run, args.what)
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
