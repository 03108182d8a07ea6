"""The pseudo-sketch drawn at the encoder's input size instead of its 256-pixel canvas: speed
and what it does to the photo vectors (not adopted: it changes the features a model was
trained on; BENCHMARKS.md section 5).

    python -m bench.pseudo_sketch_size --model runs/demo-onnx [--photos DIR] [--limit 200]

For ``--limit`` photos spread over ``--photos`` (default: the Tux Paint stamps), on one
thread: the time to draw the pseudo-sketch and make its input array with the model's own
``photo_edges`` (canvas 256, resized to the input size) and with the canvas at the input size
(no resize), alternating per photo; then both inputs through the model's photo encoder, the
photo half the same, and the cosine distance between the two vectors of each photo.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from bench.builder_throughput import machine
from bench.gallery_embed import TUXPAINT, pick
from index_builder.indexing.scan import scan_photos
from model.encoder import OnnxEncoder
from model.preprocess import load_image, to_input_array
from model.pseudo_sketch import pseudo_sketch


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--photos", type=Path, default=TUXPAINT)
    parser.add_argument("--limit", type=int, default=200)
    args = parser.parse_args(argv)
    encoder = OnnxEncoder(args.model, "photo")
    if encoder.edges is None:
        parser.error(f"{args.model}: its photo encoder reads no pseudo-sketches")
    prep = encoder.metadata.preprocessing
    configs = {
        "canvas": encoder.edges,
        "input size": encoder.edges.model_copy(update={"size": prep.image_size}),
    }
    scan = scan_photos(args.photos)
    photos = pick(scan.files, args.limit)
    seconds = dict.fromkeys(configs, 0.0)
    inputs: dict[str, list[np.ndarray]] = {name: [] for name in configs}
    for photo in photos:
        img = load_image(scan.root / photo.path, draft_size=prep.image_size)
        own = to_input_array(img, prep)
        for name, cfg in configs.items():
            started = time.perf_counter()
            drawn = to_input_array(pseudo_sketch(img, cfg), prep)
            seconds[name] += time.perf_counter() - started
            inputs[name].append(np.concatenate([own, drawn]))
    vectors = {
        name: np.concatenate(
            [encoder.embed_arrays(np.stack(x[i : i + 32])) for i in range(0, len(x), 32)]
        )
        for name, x in inputs.items()
    }
    cos = 1.0 - (vectors["canvas"] * vectors["input size"]).sum(axis=1)
    print(f"machine: {machine(os.cpu_count() or 1)}")
    print(f"{len(photos)} photos under {scan.root}; model {args.model}\n")
    print("| pseudo-sketch | canvas px | ms per photo (draw + input array) |")
    print("|---|---|---|")
    for name, cfg in configs.items():
        print(f"| {name} | {cfg.size} | {1e3 * seconds[name] / len(photos):.2f} |")
    print(
        f"\nphoto vectors, input size vs canvas: cosine distance mean {cos.mean():.4f}, "
        f"median {np.median(cos):.4f}, max {cos.max():.4f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
