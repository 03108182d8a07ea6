"""The README's figure: hand-made drawings searched in the demo's index, as the service does.

    ./scripts/demo --no-serve      # exports models/demo to runs/demo/model, indexes the stamps
    python -m bench.readme_figure [--model runs/demo/model] [--index runs/demo/index]
                                  [--drawings FILE.json] [--out docs/demo-queries.png]

Each drawing (strokes, as the page sends them) is rendered and encoded exactly as
``POST /v1/search`` does (``render_strokes``, ``to_input_array``, the ONNX sketch encoder)
and searched in the index's served version; the figure shows the first ``--top`` photos.
A frame is green where the stamp's file name names the drawing (``snail2.png`` for snail),
a rough rule that misses stamps of the same thing under other names.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from bench.demo_gallery import names_class
from gallery_store.faiss_store import FaissStore
from index_builder.training.report_figure import save_retrieval_figure
from model.encoder import OnnxEncoder
from model.preprocess import render_strokes, to_input_array

DRAWINGS = Path(__file__).parent / "drawings" / "everyday.json"


TOP = 8


def search_drawings(
    model_dir: Path, index_dir: Path, drawings: dict[str, list]
) -> tuple[list[Path], np.ndarray, np.ndarray]:
    """(gallery paths, scores, ids) of each drawing's search, as the service runs it."""
    encoder = OnnxEncoder(model_dir, "sketch")
    prep = encoder.metadata.preprocessing
    queries = np.stack([to_input_array(render_strokes(s), prep) for s in drawings.values()])
    index = FaissStore(index_dir).load_current(encoder.fingerprint)
    scores, ids = index.search(encoder.embed_arrays(queries), TOP)
    root = Path(index.manifest.photos_root)
    return [root / item.path for item in index.manifest.items], scores, ids


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=Path("runs/demo/model"))
    ap.add_argument("--index", type=Path, default=Path("runs/demo/index"))
    ap.add_argument("--drawings", type=Path, default=DRAWINGS)
    ap.add_argument("--out", type=Path, default=Path("docs/demo-queries.png"))
    ap.add_argument("--cell", type=int, default=100, help="pixels per grid cell")
    args = ap.parse_args(argv)
    drawings = json.loads(args.drawings.read_text())
    paths, scores, ids = search_drawings(args.model, args.index, drawings)
    names = list(drawings)
    gallery_labels = [next((n for n in names if names_class(str(p), n)), p.stem) for p in paths]
    with tempfile.TemporaryDirectory() as tmp:
        queries = []
        for name, strokes in drawings.items():
            queries.append(Path(tmp) / f"{name}.png")
            render_strokes(strokes).save(queries[-1])
        save_retrieval_figure(
            args.out, queries, names, paths, gallery_labels, ids, scores, cell_px=args.cell
        )
    for name, row in zip(names, ids, strict=True):
        hits = [i + 1 for i, g in enumerate(row) if gallery_labels[g] == name]
        print(f"{name:10s} first match at {hits[0] if hits else '> ' + str(TOP)}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
