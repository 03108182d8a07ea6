"""Do two exported models compute the same vectors? Real images through both, compared.

    python -m bench.encoder_agreement --before MODEL_DIR --after MODEL_DIR
                                      [--shared ../shared/data] [--stamps DIR] [--tol 1e-5]

A refactor that must not change what the product computes is checked with it: export a run
with the old code and with the new (``python -m index_builder export-onnx``), then compare.
Images: the first ``--per-class`` Quick, Draw! drawings of a fixed spread of categories
(rendered as ``prepare`` renders them), the six hand-made guitars of ``bench/drawings``, and
the first ``--stamps-count`` Tux Paint stamps in sorted order; each through both encoders of
both exports. Prints, per encoder, the largest absolute difference of any coordinate and the
largest cosine distance between a vector and its twin; exits 1 above ``--tol``.
"""

from __future__ import annotations

import argparse
import json
import sys
from itertools import islice
from pathlib import Path

import numpy as np
from PIL import Image

from bench.zero_shot import machine
from index_builder.indexing.scan import walk_images
from index_builder.training.datasets.quickdraw import read_ndjson
from index_builder.training.prepare import STAMPS_DIR
from model.encoder import DOMAINS, OnnxEncoder
from model.preprocess import load_image, render_strokes

GUITARS = Path(__file__).parent / "drawings" / "guitars.json"
# categories of the demo's training, validation and test splits and two it never saw
CATEGORIES = ("cat", "apple", "car", "fish", "house", "star", "train", "guitar", "sun", "bus")


def real_images(shared: Path, stamps: Path, per_class: int, n_stamps: int) -> list[Image.Image]:
    """The fixed image set: rendered drawings, the guitars, then the stamps."""
    images = []
    for name in CATEGORIES:
        path = shared / "quickdraw" / "simplified" / f"{name}.ndjson"
        if path.is_file():
            images += [render_strokes(d.strokes) for d in islice(read_ndjson(path), per_class)]
    images += [render_strokes(s) for s in json.loads(GUITARS.read_text()).values()]
    images += [load_image(stamps / p) for p in sorted(walk_images(stamps))[:n_stamps]]
    return images


def compare(before: Path, after: Path, images: list[Image.Image]) -> dict[str, dict[str, float]]:
    """Per encoder: the largest coordinate difference and cosine distance over ``images``."""
    rows = {}
    for domain in DOMAINS:
        a = OnnxEncoder(before, domain, intra_op_threads=1).embed_images(images)
        b = OnnxEncoder(after, domain, intra_op_threads=1).embed_images(images)
        if a.shape != b.shape:
            raise ValueError(f"{domain} encoder: {a.shape} vectors before, {b.shape} after")
        rows[domain] = {
            "max_abs_diff": float(np.abs(a - b).max()),
            "max_cosine_distance": float((1 - (a * b).sum(axis=1)).max()),
            "vectors": len(a),
            "dim": a.shape[1],
        }
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="model directory")
    parser.add_argument("--after", type=Path, required=True, help="model directory")
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--stamps", type=Path, default=STAMPS_DIR)
    parser.add_argument("--per-class", type=int, default=8, help="drawings per category")
    parser.add_argument("--stamps-count", type=int, default=64)
    parser.add_argument("--tol", type=float, default=1e-5)
    args = parser.parse_args(argv)
    images = real_images(args.shared, args.stamps, args.per_class, args.stamps_count)
    if not images:
        parser.error("no images: neither drawings under --shared nor stamps under --stamps")
    rows = compare(args.before, args.after, images)
    print(f"machine: {machine()}; {len(images)} images through each encoder")
    print(f"{'encoder':10}{'vectors':>9}{'dim':>7}{'max |diff|':>14}{'max cos dist':>15}")
    for domain, r in rows.items():
        print(
            f"{domain:10}{r['vectors']:9d}{r['dim']:7d}"
            f"{r['max_abs_diff']:14.3g}{r['max_cosine_distance']:15.3g}"
        )
    worst = max(r["max_abs_diff"] for r in rows.values())
    print(f"{'same' if worst <= args.tol else 'DIFFERENT'} to {args.tol:g}")
    return 0 if worst <= args.tol else 1


if __name__ == "__main__":
    sys.exit(main())
