"""Zero-shot sketch -> photo retrieval on the real ../shared/data set, IIAE against baselines.

    python -m bench.zero_shot [--shared ../shared/data] [--work runs/zero_shot] [--json OUT]

Prepares the data (real Quick, Draw! sketches, real TuxPaint photos), trains each candidate
recipe on the training classes, selects the recipe by mAP on *validation* classes (held out
from the training classes; the test classes are never looked at for a choice), and reports
every row on the unseen test classes of ``bench/splits/shared_test.txt``.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import torch

from index_builder.config import BuilderSettings, TrainConfig
from index_builder.datasets.splits import resolve_split
from index_builder.evaluate import evaluate_baselines, evaluate_run, format_table
from index_builder.prepare import prepare_shared_data
from index_builder.run import train_run
from index_builder.sources import data_classes

SPLIT = Path(__file__).parent / "splits" / "shared_test.txt"
BACKBONE = "efficientnet-lite0"

# Candidates: the paper's recipe, then what the data's thinness calls for.
# All use 12 validation classes for early stopping and for choosing between them.
CANDIDATES: dict[str, dict] = {
    "paper recipe": {},
    "augmented views": {"sketch_views": 4, "photo_views": 16},
    "augmented + class head": {"sketch_views": 4, "photo_views": 16, "w_cls": 1.0},
    "augmented + class head + dropout": {
        "sketch_views": 4, "photo_views": 16, "w_cls": 1.0, "input_dropout": 0.2,
    },
}  # fmt: skip
COMMON = {"backbone": BACKBONE, "val_classes": 12, "steps": 3000, "eval_every": 100}


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    cpu = models[0] if models else platform.processor()
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


def run(shared: Path, work: Path, candidates: list[str]) -> dict:
    data = work / "data"
    print(prepare_shared_data(shared, data).summary())
    settings = BuilderSettings(cache_dir=work / "cache")
    train, test = resolve_split(data_classes(data), None, SPLIT)
    rows = evaluate_baselines(data, train, test, BACKBONE, settings)
    selection = {}
    for name in candidates:
        cfg = TrainConfig(**COMMON, **CANDIDATES[name])
        run_dir = work / "runs" / name.replace(" ", "_").replace("+", "and")
        t0 = time.time()
        info = train_run(data, run_dir, cfg, None, SPLIT, settings)
        best_val = max(h["val_map_all"] for h in info["val_history"])
        selection[name] = {"val_map_all": best_val, "selected_step": info["selected_step"],
                           "train_seconds": round(time.time() - t0, 1)}  # fmt: skip
        rows[f"IIAE: {name}"] = evaluate_run(run_dir, data, SPLIT, settings=settings)
    chosen = max(selection, key=lambda n: selection[n]["val_map_all"])
    return {
        "machine": machine(), "split": str(SPLIT), "train_classes": train, "test_classes": test,
        "rows": rows, "validation": selection, "chosen": chosen,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--work", type=Path, default=Path("runs/zero_shot"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--candidates", nargs="+", default=list(CANDIDATES), choices=CANDIDATES)
    args = parser.parse_args()
    result = run(args.shared, args.work, args.candidates)
    print(f"\nmachine: {result['machine']}")
    print(f"data: {args.shared} (Quick, Draw! sketches, TuxPaint photos); "
          f"{len(result['train_classes'])} train / {len(result['test_classes'])} unseen test "
          f"classes ({result['split']})")  # fmt: skip
    print(format_table(result["rows"], ("map_all", "p_at_10")))
    print("\nvalidation (12 classes held out of the training classes; used for every choice):")
    for name, v in result["validation"].items():
        print(f"  {name:40s} val mAP@all {v['val_map_all']:.4f} at step {v['selected_step']}"
              f" ({v['train_seconds']} s)")  # fmt: skip
    print(f"chosen by validation: {result['chosen']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
