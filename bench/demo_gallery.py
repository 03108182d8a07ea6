"""Open-gallery zero-shot retrieval: the demo model against the whole Tux Paint gallery.

    python -m bench.demo_gallery [--run models/demo] [--shared ../shared/data]
                                 [--fusion-weights 0,0.5,1] [--json OUT]

``bench.zero_shot`` ranks each test sketch against the 31 photos of its 18 test classes. The
demo ranks a drawing against every stamp of ``tuxpaint-stamps-default`` (802, most of them of
other things), which is far harder. This bench measures that setting:

- queries: real Quick, Draw! sketches (the first ``--per-class`` of each category) of every
  category the run never trained on: its test classes, and the Quick, Draw! categories with no
  pictures in the curated photo map (``index_builder/training/data/photo_map.tsv``) whose stamps can
  be found by file name;
- gallery: every image under the stamps folder, composited on white, as the demo indexes it;
- relevant: the stamps listed for the category in the photo map, or whose file name names it
  (``snail2.png`` for "snail"); stamps of the same thing under other names count as misses
  (and a few name matches are wrong: ``sea_lion.png`` for "lion"), so the figures are rough.

For contrast, the same metrics for the categories the run was fitted on, queried with the
sketches it was fitted on: an upper bound, not a generalisation figure. (Its validation
categories, used for early stopping, are in neither block.)

Rows: the run's encoders (backbone + r^x for sketches, backbone + r^y for photos, each photo
with its pseudo-sketch and fused with the standardised features where the run says so), its
r^x / r^y alone (no fusion), the backbone features scaled per domain as the run scales its
inputs, with its training statistics (z-scored, or square-rooted and whitened: the
training-free baseline), the same with each photo's scaled
features averaged with its pseudo-sketch's (where the run reads pseudo-sketches), the raw
backbone features, the raw backbone features with each photo drawn as its outline (a
sketch-like rendering of the cut-out's silhouette), and chance. ``hit@10`` is the share of
queries with a relevant stamp among the first 10 (what a user of the page sees first).
The fusion weight's trade-off: hit@10 and mAP@all of both blocks at each of
``--fusion-weights`` (the run's encoders with that weight instead of the one its validation
classes chose; 0 is its r^x / r^y alone, where it has no category head), and at each of
``--category-weights`` (the share of the known-category head's posteriors, where the run
has one; 0 leaves them out). A display of the trade-offs, not a way to choose them.
Also: the rank of the first guitar stamp for six hand-made guitar drawings
(``bench/drawings/guitars.json``; guitar is absent from ../shared/data, so unseen by every
model here).
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable, Sequence
from itertools import islice
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFilter
from torch import Tensor

from bench.zero_shot import machine
from index_builder.indexing.scan import walk_images
from index_builder.training.datasets.quickdraw import read_ndjson
from index_builder.training.metrics import l2_normalize, rank_order, retrieval_metrics_from_scores
from index_builder.training.prepare import PHOTO_MAP, STAMPS_DIR, read_photo_table
from model.backbones import Backbone
from model.export import load_run_encoders
from model.preprocess import load_image, render_strokes
from model.pseudo_sketch import encoder_input_array
from model.retrieval import RetrievalModel

GUITARS = Path(__file__).parent / "drawings" / "guitars.json"
BLOCKS = {
    "unseen": "categories {run} never trained on",
    "trained": "the categories it was fitted on, its own training sketches (an upper bound)",
}
METRICS = ("map_all", "p_at_10", "hit_at_10", "median_first_rank")


def name_words(path: str) -> list[str]:
    """Lower-case words of a file name: ``guitar_electric_bass2.png`` -> guitar, electric, bass."""
    return [w for w in re.split(r"[^a-z]+", Path(path).stem.lower()) if w]


def names_class(path: str, cls: str) -> bool:
    """Whether a file name ends with a category's name: "little-penguin", "snail2" and
    "hot_air_balloons" do; "rainbow-lorikeet" does not name a rainbow. Crude: "sea_lion"
    names a lion."""
    words = cls.lower().replace("-", " ").split()
    tail = name_words(path)[-len(words) :]
    plural = tail[:-1] == words[:-1] and tail[-1:] == [words[-1] + "s"]
    return tail == words or plural or tail[-1:] == ["".join(words)]


def stamp_labels(stamps: list[str], table: dict[str, list[str]], classes: list[str]) -> list[set]:
    """The categories each stamp is relevant to (usually none): listed for it in the table,
    or named by its file name."""
    listed = {s: c for c, paths in table.items() for s in paths}
    return [{c for c in classes if listed.get(s) == c or names_class(s, c)} for s in stamps]


def held_out_classes(
    run_info: dict, table: dict[str, list[str]], shared: Path, stamps: list[str]
) -> list[str]:
    """The run's test classes, plus Quick, Draw! categories it never saw that have stamps."""
    seen = set(run_info["train_classes"]) | set(run_info.get("val_classes", []))
    drawn = sorted(p.stem for p in (shared / "quickdraw" / "simplified").glob("*.ndjson"))
    unpaired = [
        c
        for c in drawn
        if c not in table and c not in seen and any(names_class(s, c) for s in stamps)
    ]
    return sorted(set(run_info["test_classes"]) | set(unpaired))


def query_sketches(shared: Path, classes: list[str], per_class: int) -> tuple[list, list[str]]:
    """The first ``per_class`` simplified drawings of each class, rendered as in ``prepare``."""
    images, labels = [], []
    for cls in classes:
        drawings = read_ndjson(shared / "quickdraw" / "simplified" / f"{cls}.ndjson")
        for drawing in islice(drawings, per_class):
            images.append(render_strokes(drawing.strokes))
            labels.append(cls)
    return images, labels


def outline(path: Path, size: int = 256, margin: float = 0.1, width: int = 3) -> Image.Image:
    """A cut-out's silhouette as black lines on white, fitted like a rendered sketch."""
    rgba = Image.open(path).convert("RGBA")
    box = rgba.getchannel("A").point(lambda a: 255 if a > 128 else 0).getbbox()
    canvas = Image.new("L", (size, size), 255)
    if box is None:  # fully transparent
        return canvas.convert("RGB")
    crop = rgba.crop(box)
    scale = size * (1 - 2 * margin) / max(crop.size)
    crop = crop.resize((max(1, round(crop.width * scale)), max(1, round(crop.height * scale))))
    mask = np.pad(np.asarray(crop.getchannel("A")) > 128, 4)  # padded: edges at the border too
    eroded = np.asarray(Image.fromarray(mask).filter(ImageFilter.MinFilter(3)))
    ink = Image.fromarray((mask & ~eroded).astype(np.uint8) * 255).filter(
        ImageFilter.MaxFilter(width)
    )
    canvas.paste(0, ((size - ink.width) // 2, (size - ink.height) // 2), ink)
    return canvas.convert("RGB")


def features(backbone: Backbone, images: Sequence[Image.Image], batch: int = 32) -> Tensor:
    """Backbone features of images, preprocessed as the backbone reads them."""
    prep, edges = backbone.preprocessing, backbone.edges
    parts = []
    with torch.inference_mode():
        for i in range(0, len(images), batch):
            x = np.stack([encoder_input_array(im, prep, edges) for im in images[i : i + batch]])
            parts.append(backbone(torch.from_numpy(x)).float())
    return torch.cat(parts)


def unit(t: Tensor) -> np.ndarray:
    return l2_normalize(t.numpy())


def first_relevant_ranks(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """0-based rank of the best-placed relevant item of each query (ties: gallery order);
    the gallery size where a query has none."""
    hits = np.take_along_axis(relevant, rank_order(scores), axis=1)
    return np.where(hits.any(axis=1), np.argmax(hits, axis=1), hits.shape[1])


def score_row(scores: np.ndarray, q_labels: list[str], g_labels: list[set]) -> dict:
    """mAP@all, P@10, hit@10 and the median first-relevant rank of a (Q, N) score matrix."""
    relevant = np.array([[q in g for g in g_labels] for q in q_labels])
    # a stamp relevant to two classes is rare; the metrics take one label a stamp, the first
    # in sorted order (not set order, which changes from run to run with the string hashes)
    single = [min(g) if g else "" for g in g_labels]
    m = retrieval_metrics_from_scores(scores, q_labels, single)
    first = first_relevant_ranks(scores, relevant)
    return {
        "map_all": m["map_all"],
        "p_at_10": m["p_at_10"],
        "hit_at_10": float((first < 10).mean()),
        "median_first_rank": float(np.median(first)),
    }


def chance_row(n_queries: int, q_labels, g_labels, seeds: int = 20) -> dict:
    """Every metric averaged over random rankings."""
    rng = np.random.default_rng(0)
    rows = [
        score_row(rng.random((n_queries, len(g_labels))), q_labels, g_labels) for _ in range(seeds)
    ]
    return {k: float(np.mean([r[k] for r in rows])) for k in METRICS}


def guitar_ranks(scores: np.ndarray, stamps: list[str]) -> list[int]:
    is_guitar = ["guitar" in name_words(s) for s in stamps]  # guitar_electric_bass.png too
    relevant = np.array([is_guitar] * len(scores))
    return first_relevant_ranks(scores, relevant).tolist()


def weight_tradeoff(
    model: RetrievalModel,
    field: str,
    f_sketch: Tensor,
    f_photo: Tensor,
    weights: Sequence[float],
    score: Callable[[np.ndarray, np.ndarray], dict],
) -> dict[str, dict]:
    """``score(sketch embeddings, gallery embeddings)`` of the run's encoders at each value of
    ``field`` (``fusion_weight`` or ``category_weight``), the other as the run chose it."""
    rows = {}
    for weight in weights:
        at = model.with_head(model.head.with_weights(**{field: weight}))
        with torch.inference_mode():
            zx, zy = unit(at.embed_sketch(f_sketch)), unit(at.embed_photo(f_photo))
        rows[f"{weight:g}"] = score(zx, zy)
    return rows


def run(
    run_dir: Path,
    shared: Path,
    stamps_dir: Path,
    per_class: int,
    per_trained_class: int,
    fusion_weights: Sequence[float] = (),
    category_weights: Sequence[float] = (),
) -> dict:
    encoders, info, backbone = load_run_encoders(run_dir)
    model = encoders["sketch"].model  # the exported encoders' heads, over the same features
    if fusion_weights and not model.scaling.cfg.comparable:
        raise ValueError(f"{run_dir}: its sketch and photo features differ in size: no fusion")
    if category_weights and model.head.category_head is None:
        raise ValueError(f"{run_dir}: the run has no category head")
    stamps = sorted(walk_images(stamps_dir))
    table = {
        c: [r.path for r in refs if r.source == "tuxpaint"]
        for c, refs in read_photo_table(PHOTO_MAP).items()
    }
    blocks = {
        "unseen": held_out_classes(info, table, shared, stamps),
        "trained": sorted(info["train_classes"]),  # fitted on; not the early-stopping ones
    }
    g_labels = stamp_labels(stamps, table, blocks["unseen"] + blocks["trained"])
    # a category with no stamp in the gallery (only openclipart pictures) cannot be found
    in_gallery = set().union(*g_labels)
    blocks = {b: [c for c in classes if c in in_gallery] for b, classes in blocks.items()}
    per = {"unseen": per_class, "trained": per_trained_class}
    queries = {b: query_sketches(shared, classes, per[b]) for b, classes in blocks.items()}
    sketches = queries["unseen"][0] + queries["trained"][0]
    sketches += [render_strokes(s) for s in json.loads(GUITARS.read_text()).values()]
    f_sketch = features(backbone, sketches)
    # the photo encoder's backbone: with each photo's pseudo-sketch where the run reads them
    f_photo = features(encoders["photo"].backbone, [load_image(stamps_dir / s) for s in stamps])
    f_outline = features(backbone, [outline(stamps_dir / s) for s in stamps])
    scaling, chosen = model.scaling, model.head.cfg
    fused = f", fused {chosen.fusion_weight:g}" if chosen.fusion_weight else ""
    category = chosen.category_weight
    head = f", category head {category:g}" if category else ""
    d = backbone.feature_dim  # the photo's own features come first
    scaled = scaling.cfg.name
    with torch.inference_mode():
        z_sketch, z_photo = scaling.sketch(f_sketch), scaling.photo(f_photo)
        candidates = {  # name: (sketch embeddings, gallery embeddings)
            f"IIAE {run_dir.name} (r^x vs r^y{fused}{head})": (
                unit(model.embed_sketch(f_sketch)),
                unit(model.embed_photo(f_photo)),
            ),
            f"IIAE {run_dir.name} (r^x vs r^y alone)": (
                unit(model.iiae.embed_sketch(z_sketch)),
                unit(model.iiae.embed_photo(z_photo)),
            ),
            f"{backbone.name} {scaled} features": (unit(z_sketch), unit(z_photo[:, :d])),
        }
        if category:
            without = weight_tradeoff(
                model, "category_weight", f_sketch, f_photo, [0.0], lambda zx, zy: (zx, zy)
            )
            candidates[f"IIAE {run_dir.name} (r^x vs r^y{fused}, no category head)"] = without["0"]
        if scaling.cfg.pseudo_sketch:
            candidates[f"{backbone.name} {scaled}, photos with pseudo-sketches"] = (
                unit(z_sketch),
                unit(scaling.sketch_like(z_photo)),
            )
        candidates[f"{backbone.name} raw features"] = (unit(f_sketch), unit(f_photo[:, :d]))
        candidates[f"{backbone.name} raw, photos as outlines"] = (unit(f_sketch), unit(f_outline))
    n_unseen, n_trained = len(queries["unseen"][1]), len(queries["trained"][1])

    def block_rows(zx: np.ndarray, zy: np.ndarray) -> dict[str, dict]:
        scores = zx @ zy.T
        return {
            "unseen": score_row(scores[:n_unseen], queries["unseen"][1], g_labels),
            "trained": score_row(
                scores[n_unseen : n_unseen + n_trained], queries["trained"][1], g_labels
            ),
            "guitar": guitar_ranks(scores[n_unseen + n_trained :], stamps),
        }

    rows: dict[str, dict] = {"unseen": {}, "trained": {}}
    guitar = {}
    for name, (zx, zy) in candidates.items():
        scored = block_rows(zx, zy)
        rows["unseen"][name], rows["trained"][name] = scored["unseen"], scored["trained"]
        guitar[name] = scored["guitar"]
    for block, (_, labels) in queries.items():
        rows[block]["chance"] = chance_row(len(labels), labels, g_labels)
    return {
        "machine": machine(),
        "run": str(run_dir),
        "classes": blocks,
        "n_queries": {b: len(q[1]) for b, q in queries.items()},
        "n_gallery": len(stamps),
        "rows": rows,
        "guitar_first_ranks": guitar,
        "fusion_tradeoff": weight_tradeoff(
            model, "fusion_weight", f_sketch, f_photo, fusion_weights, block_rows
        ),
        "category_tradeoff": weight_tradeoff(
            model, "category_weight", f_sketch, f_photo, category_weights, block_rows
        ),
    }


def report(result: dict) -> str:
    width = max(len(n) for n in result["rows"]["unseen"]) + 2
    lines = [f"machine: {result['machine']}; gallery: {result['n_gallery']} stamps"]
    for block, rows in result["rows"].items():
        what = BLOCKS[block].format(run=result["run"])
        lines.append(f"{result['n_queries'][block]} real sketches of {what}:")
        lines.append("model".ljust(width) + "".join(k.rjust(19) for k in METRICS))
        for name, row in rows.items():
            lines.append(name.ljust(width) + "".join(f"{row[k]:19.3f}" for k in METRICS))
    lines.append("rank of the first guitar stamp, six hand-made guitar drawings:")
    for name, ranks in result["guitar_first_ranks"].items():
        lines.append(f"  {name.ljust(width)}{ranks}")
    tradeoffs = {"fusion_tradeoff": "fusion weight", "category_tradeoff": "category head's share"}
    for key, what in tradeoffs.items():
        if not result.get(key):
            continue
        lines.append(f"the {what}'s trade-off (the run's encoders at each value):")
        head = ("unseen hit@10", "unseen mAP", "trained hit@10", "trained mAP", "guitar ranks")
        lines.append("weight".ljust(8) + "".join(h.rjust(16) for h in head))
        for weight, row in result[key].items():
            cells = [row[b][k] for b in ("unseen", "trained") for k in ("hit_at_10", "map_all")]
            ranks = ",".join(map(str, row["guitar"]))
            lines.append(weight.ljust(8) + "".join(f"{c:16.3f}" for c in cells) + ranks.rjust(16))
    return "\n".join(lines)


def weights_arg(text: str) -> list[float]:
    """``0,0.5,1`` -> [0.0, 0.5, 1.0]; each weight in [0, 1]."""
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None
    if not all(0 <= w <= 1 for w in weights):
        raise argparse.ArgumentTypeError(f"weights lie in [0, 1]: {text!r}")
    return weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path("models/demo"), help="training run")
    parser.add_argument("--shared", type=Path, default=Path("../shared/data"))
    parser.add_argument("--stamps", type=Path, default=STAMPS_DIR)
    parser.add_argument("--per-class", type=int, default=30, help="sketches per unseen category")
    parser.add_argument(
        "--per-trained-class",
        type=int,
        default=10,
        help="sketches per trained category (the upper-bound block)",
    )
    parser.add_argument(
        "--fusion-weights",
        type=weights_arg,
        default=[],
        help="comma-separated fusion weights whose trade-off to show (e.g. 0,0.25,0.5,0.75,1)",
    )
    parser.add_argument(
        "--category-weights",
        type=weights_arg,
        default=[],
        help="comma-separated shares of the category head whose trade-off to show",
    )
    parser.add_argument("--json", type=Path, help="write the result here")
    args = parser.parse_args(argv)
    try:
        result = run(
            args.run,
            args.shared,
            args.stamps,
            args.per_class,
            args.per_trained_class,
            args.fusion_weights,
            args.category_weights,
        )
    except ValueError as e:
        parser.error(str(e))
    print(report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
