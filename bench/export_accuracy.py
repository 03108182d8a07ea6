"""Zero-shot accuracy of exported encoders, as ONNX Runtime computes it: fp32 against a variant.

    python -m bench.export_accuracy --model runs/demo-onnx --model runs/demo-int8
                                    [--data runs/data] [--classes bench/splits/curated_test.txt]
                                    [--json OUT]

Every ``--model`` (a model directory of ``export-onnx``) embeds the same images: the sketches
of ``--classes`` through its sketch encoder, the photos of those classes through its photo
encoder (``OnnxEncoder.embed_images``: the preprocessing and pseudo-sketches of the builder and
the service), from a folder-layout data root (``python -m index_builder prepare --shared
../shared/data --out runs/data``). Scores: ``retrieval_metrics`` (the IIAE convention of
``index_builder.training.evaluate``: cosine ranking of the whole gallery, mAP@all, P@100); and
per model after the first, the agreement of its vectors with the first's (mean and largest
cosine distance, share of sketch queries whose top-10 photos are the same set) and its mAP@all
less the first's. ``--classes`` defaults to the first model's ``test_classes``; a variant is
kept only if its mAP@all drops by less than 0.005 (``MAX_MAP_DROP``).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from bench.zero_shot import machine
from index_builder.training.datasets.base import list_images
from index_builder.training.datasets.splits import read_class_list
from index_builder.training.metrics import retrieval_metrics
from model.encoder import EncoderMetadata, OnnxEncoder
from model.preprocess import load_image

MAX_MAP_DROP = 0.005
TOP = 10


def class_images(data: Path, domain: str, classes: list[str]) -> tuple[list[Path], list[str]]:
    """The files of ``data/<domain>/<class>/`` for each class (sorted), with their labels."""
    paths, labels = [], []
    for cls in classes:
        folder = data / domain / cls
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such class folder (prepare the data first)")
        found = list_images(folder)
        paths += found
        labels += [cls] * len(found)
    return paths, labels


def embed(model: Path, domain: str, images: list[Image.Image]) -> np.ndarray:
    return OnnxEncoder(model, domain, providers=["CPUExecutionProvider"]).embed_images(images)


def score_models(models: list[Path], data: Path, classes: list[str]) -> list[dict]:
    """One row a model: its metrics on ``classes``, and its agreement with the first model."""
    loaded = {}
    for domain in ("sketch", "photo"):
        paths, labels = class_images(data, domain, classes)
        loaded[domain] = ([load_image(p) for p in paths], labels)
    rows, first = [], None
    for model in models:
        z = {d: embed(model, d, images) for d, (images, _) in loaded.items()}
        metrics = retrieval_metrics(
            z["sketch"], loaded["sketch"][1], z["photo"], loaded["photo"][1]
        )
        meta = EncoderMetadata.load(model)
        row = {
            "model": str(model),
            "fingerprint": meta.fingerprint,
            "quantization": meta.quantization,
            "sketches": len(z["sketch"]),
            "photos": len(z["photo"]),
            **metrics,
        }
        if first is None:
            first = {"z": z, "row": row}
        else:
            row |= agreement(first["z"], z) | {
                "map_change": row["map_all"] - first["row"]["map_all"]
            }
        rows.append(row)
    return rows


def agreement(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> dict[str, float]:
    """How close ``b``'s vectors are to ``a``'s, and whether the sketches find the same photos."""
    out = {}
    for domain in ("sketch", "photo"):
        cos = 1.0 - (a[domain] * b[domain]).sum(axis=1)
        out[f"{domain}_mean_cos_dist"] = float(cos.mean())
        out[f"{domain}_max_cos_dist"] = float(cos.max())
    tops = [np.argsort(-(z["sketch"] @ z["photo"].T), axis=1)[:, :TOP] for z in (a, b)]
    same = [set(x) == set(y) for x, y in zip(*tops, strict=True)]
    out[f"same_top{TOP}"] = float(np.mean(same))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.export_accuracy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--data", type=Path, default=Path("runs/data"))
    parser.add_argument("--classes", help="class list file or built-in split (default: the run's)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    classes = (
        read_class_list(args.classes)
        if args.classes
        else EncoderMetadata.load(args.model[0]).test_classes
    )
    if not classes:
        parser.error(f"{args.model[0]}: records no test classes; give --classes")
    rows = score_models(args.model, args.data, classes)
    print(f"machine: {machine()}")
    source = args.classes or "the first model's test classes"
    print(
        f"data: {args.data}, {len(classes)} classes ({source}), {rows[0]['sketches']} "
        f"sketches against {rows[0]['photos']} photos\n"
    )
    print(
        "| model | quantization | fingerprint | mAP@all | P@100 | mAP change | sketch cos dist "
        f"mean / max | photo cos dist mean / max | same top-{TOP} |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        extra = (
            f"{r['map_change']:+.4f} | {r['sketch_mean_cos_dist']:.2e} / "
            f"{r['sketch_max_cos_dist']:.2e} | {r['photo_mean_cos_dist']:.2e} / "
            f"{r['photo_max_cos_dist']:.2e} | {r[f'same_top{TOP}']:.0%}"
            if "map_change" in r
            else "(reference) | | |"
        )
        print(
            f"| {r['model']} | {r['quantization'] or 'fp32'} | {r['fingerprint'][:12]} "
            f"| {r['map_all']:.4f} | {r['p_at_100']:.4f} | {extra} |"
        )
    if args.json:
        args.json.write_text(json.dumps({"classes": classes, "rows": rows}, indent=2))
    worst = min((r["map_change"] for r in rows[1:]), default=0.0)
    return 0 if worst > -MAX_MAP_DROP else 1


if __name__ == "__main__":
    sys.exit(main())
