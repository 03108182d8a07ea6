"""Where ``build-index`` spends its time per photo, and its speed against one plain backbone pass.

    python -m bench.builder_throughput --model runs/demo-onnx [--model OTHER_EXPORT ...]
                                       [--photos DIR] [--limit 400] [--rounds 2] [--json OUT]

One run, stating the machine and its load:

1. The breakdown, per photo, of the first ``--model``: read + hash check + decode, the photo
   to its input array, the pseudo-sketch drawn, the pseudo-sketch to its input array (one
   thread, photo after photo), then at batch 32 with ``--threads`` intra-op threads: the plain
   backbone on the photos, on their pseudo-sketches, the heads (IIAE + retrieval head, exported
   from the model's source run; left out when that run is not here), the photo encoder as
   exported (both views and the heads in one run), and the index writes (the FAISS commit of
   the whole build below).
2. The whole build (``build_new_index``, what ``build-index`` runs after its imports, with its
   default options) of the ``--limit`` photos into a fresh index, for every ``--model``,
   beside plain EfficientNet-Lite0 fp32 in ONNX Runtime (exported as the encoders are, batch
   32, ``--threads`` intra-op threads, random inputs: no decoding; the issue's reference) and
   the same network run as the builder's lanes run the encoder (a 1-thread session run by one
   thread a core at once), in the order plains, models, models reversed, plains, ``--rounds``
   times; photos/s, the process's CPU seconds per photo
   (less sensitive than wall time to other jobs on a shared machine), and the ratio of the
   build's photos/s to plain inputs/s (the issue's goal: >= 0.8).

Photos: ``--limit`` files spread evenly over the sorted list of ``--photos`` (default: the
802 Tux Paint stamps), linked into a temporary folder so the build sees only them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.gallery_embed import TUXPAINT, pick
from gallery_store.faiss_store import FaissStore
from index_builder.indexing.embed import MAX_DECODE_PIXELS, MAX_JPEG_SCANS
from index_builder.indexing.rebuild import BuildOptions, build_new_index
from index_builder.indexing.scan import PhotoFile, scan_photos
from model.encoder import EncoderMetadata, OnnxEncoder, session_options
from model.preprocess import DecodeLimits, decode_image_bytes, to_input_array
from model.pseudo_sketch import pseudo_sketch

BATCH = 32
PLAIN_REPEATS = 6  # timed batches of the plain backbone per measurement (and lane)
PLAINS = {  # the reference, and the same network run as the builder's lanes run it
    "plain": "plain EfficientNet-Lite0 fp32 (random inputs, one session of all cores)",
    "plain-lanes": "plain EfficientNet-Lite0 fp32 (one 1-thread run a core at once)",
}


def machine(threads: int) -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    models = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    flags = next((line for line in lines if line.startswith("flags")), "")
    simd = [f for f in ("avx2", "avx512f", "avx512_vnni", "avx_vnni") if f" {f}" in flags]
    load = os.getloadavg()
    return (
        f"{models[0] if models else platform.processor()} ({', '.join(simd) or 'no AVX2'}), "
        f"{os.cpu_count()} cores; Python {platform.python_version()}, onnxruntime "
        f"{ort.__version__} CPUExecutionProvider, {threads} intra-op thread(s) for the "
        f"batch-32 passes; load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}"
    )


@dataclass
class Sessions:
    """The ONNX Runtime sessions the breakdown times (heads None when not exportable)."""

    backbone: ort.InferenceSession
    heads: ort.InferenceSession | None
    encoder: OnnxEncoder


def export_parts(meta: EncoderMetadata, folder: Path) -> tuple[Path, Path | None]:
    """The plain backbone and, where the model's source run is here, its photo heads (the
    photo encoder after the backbone), exported as the encoders are."""
    from torch import nn  # the PyTorch side only here: the rest times ONNX Runtime

    from model.backbones import load_backbone
    from model.export import EmbeddingEncoder, export_module, load_run_encoders

    backbone = load_backbone(meta.backbone, meta.backbone_weights)
    size = meta.input_size
    plain = folder / "backbone.onnx"
    export_module(backbone, plain, size, backbone.feature_dim, 17)
    if not (Path(meta.source_run) / "run.json").is_file():
        return plain, None
    encoders, _, _ = load_run_encoders(Path(meta.source_run))
    photo = encoders["photo"]
    heads = EmbeddingEncoder(nn.Identity(), photo.model, "photo").eval()
    path = folder / "heads.onnx"
    dim = photo.backbone.feature_dim
    export_module(heads, path, size, meta.embedding_dim, 17, item_shape=(dim,))
    return plain, path


def session(path: Path, threads: int) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), session_options(threads), ["CPUExecutionProvider"])


def _runner(sess: ort.InferenceSession) -> Callable[[np.ndarray], np.ndarray]:
    name = sess.get_inputs()[0].name

    def run(x: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: x})[0]

    return run


def run_batches(
    model: ort.InferenceSession | OnnxEncoder, arrays: np.ndarray
) -> tuple[float, np.ndarray]:
    """Seconds to run ``arrays`` through ``model`` in batches of 32 (after a warm-up batch)."""
    run = model.embed_arrays if isinstance(model, OnnxEncoder) else _runner(model)
    run(arrays[:BATCH])
    outs, started = [], time.perf_counter()
    for i in range(0, len(arrays), BATCH):
        outs.append(run(arrays[i : i + BATCH]))
    return time.perf_counter() - started, np.concatenate(outs)


def breakdown(sessions: Sessions, root: Path, photos: list[PhotoFile]) -> dict[str, float]:
    """Seconds per stage over ``photos``, as the builder computes them."""
    enc = sessions.encoder
    prep, edges = enc.metadata.preprocessing, enc.edges
    limits = DecodeLimits(None, MAX_JPEG_SCANS, prep.image_size, MAX_DECODE_PIXELS)
    secs = dict.fromkeys(("decode", "photo_array", "pseudo_sketch", "pseudo_array"), 0.0)
    views: list[list[np.ndarray]] = [[], []]
    for photo in photos:
        t0 = time.perf_counter()
        data = (root / photo.path).read_bytes()
        if hashlib.sha256(data).hexdigest() != photo.sha256:
            raise SystemExit(f"{photo.path}: changed since the scan")
        img, _ = decode_image_bytes(data, limits)
        t1 = time.perf_counter()
        views[0].append(to_input_array(img, prep))
        t2 = time.perf_counter()
        secs["decode"] += t1 - t0
        secs["photo_array"] += t2 - t1
        if edges is not None:
            drawing = pseudo_sketch(img, edges)
            t3 = time.perf_counter()
            views[1].append(to_input_array(drawing, prep))
            secs["pseudo_sketch"] += t3 - t2
            secs["pseudo_array"] += time.perf_counter() - t3
    photo_x = np.stack(views[0])
    secs["backbone_photo"], feats = run_batches(sessions.backbone, photo_x)
    if edges is not None:
        sketch_x = np.stack(views[1])
        secs["backbone_pseudo"], sketch_feats = run_batches(sessions.backbone, sketch_x)
        feats = np.concatenate([feats, sketch_feats], axis=1)
        both = np.concatenate([photo_x, sketch_x], axis=1)
    else:
        both = photo_x
    if sessions.heads is not None:
        secs["heads"], _ = run_batches(sessions.heads, feats)
    secs["encoder"], _ = run_batches(enc, both)
    return secs


def plain_rate(sess: ort.InferenceSession, size: int, lanes: int = 1) -> tuple[float, float]:
    """(inputs/s, CPU seconds per input) of the plain backbone on random batches of 32, run
    by ``lanes`` threads at once (``PLAIN_REPEATS`` batches each)."""
    x = np.random.default_rng(0).uniform(-1, 1, (BATCH, 3, size, size)).astype(np.float32)
    sess.run(None, {"image": x})

    def lane(_: int) -> None:
        for _ in range(PLAIN_REPEATS):
            sess.run(None, {"image": x})

    cpu, started = time.process_time(), time.perf_counter()
    with ThreadPoolExecutor(lanes) as pool:
        list(pool.map(lane, range(lanes)))
    n = BATCH * PLAIN_REPEATS * lanes
    return n / (time.perf_counter() - started), (time.process_time() - cpu) / n


def build_once(model: Path, photos: Path, work: Path) -> dict[str, float]:
    """One ``build_new_index`` into a fresh FAISS index: seconds, CPU seconds, photos, and the
    build report's own split (scan, embed; the rest is opening the model and the commit)."""
    index = Path(tempfile.mkdtemp(dir=work, prefix="index-"))
    cpu, started = time.process_time(), time.perf_counter()
    result = build_new_index(model, photos, FaissStore(index), BuildOptions())
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    split = result.report.seconds
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "photos": result.report.embedded,
        "commit_s": seconds - split.get("scan", 0.0) - split.get("embed", 0.0),
    }


def link_subset(root: Path, photos: list[PhotoFile], folder: Path) -> Path:
    """A folder of links to ``photos``, their relative paths kept."""
    for p in photos:
        link = folder / p.path
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(root / p.path)
    return folder


def breakdown_table(secs: dict[str, float], n: int, commit_ms: float, threads: int) -> str:
    names = {
        "decode": "read + hash check + decode (1 thread)",
        "photo_array": "photo -> input array (1 thread)",
        "pseudo_sketch": "pseudo-sketch drawing (1 thread)",
        "pseudo_array": "pseudo-sketch -> input array (1 thread)",
        "backbone_photo": f"backbone on the photo (batch {BATCH}, {threads} threads)",
        "backbone_pseudo": f"backbone on the pseudo-sketch (batch {BATCH}, {threads} threads)",
        "heads": f"heads: IIAE + retrieval head (batch {BATCH}, {threads} threads)",
    }
    ms = {k: 1e3 * v / n for k, v in secs.items()}
    ms["commit"] = commit_ms
    parts = [k for k in (*names, "commit") if k in ms]
    total = sum(ms[k] for k in parts)
    lines = ["| stage | ms per photo | share |", "|---|---|---|"]
    for k in parts:
        label = names.get(k, "index writes (FAISS commit, from the builds below)")
        lines.append(f"| {label} | {ms[k]:.2f} | {ms[k] / total:.0%} |")
    lines.append(f"| sum of the stages | {total:.2f} | 100% |")
    lines.append(
        f"| (the photo encoder as exported: both views + heads in one run) "
        f"| {ms['encoder']:.2f} | |"
    )
    return "\n".join(lines)


def builds_table(rows: list[dict]) -> str:
    lines = [
        "| run | items | seconds | items/s | CPU ms per item | ratio to plain Lite0 |",
        "|---|---|---|---|---|---|",
    ]
    plain = rows[0]["rate"]  # the reference
    for r in rows:
        lines.append(
            f"| {r['run']} | {r['items']} | {r['seconds']:.2f} | {r['rate']:.1f} "
            f"| {1e3 * r['cpu_per_item']:.2f} | {r['rate'] / plain:.2f} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.builder_throughput",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, action="append", required=True)
    parser.add_argument("--photos", type=Path, default=TUXPAINT)
    parser.add_argument("--limit", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.photos.is_dir():
        parser.error(f"--photos {args.photos}: no such folder")
    before = machine(args.threads)
    scan = scan_photos(args.photos)
    photos = pick(scan.files, args.limit)
    first = OnnxEncoder(args.model[0], "photo", intra_op_threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="builder-throughput-") as tmp:
        work = Path(tmp)
        plain_path, heads_path = export_parts(first.metadata, work)
        plain = session(plain_path, args.threads)
        plain_lanes = session(plain_path, 1)
        heads = session(heads_path, args.threads) if heads_path else None
        secs = breakdown(Sessions(plain, heads, first), scan.root, photos)
        subset = link_subset(scan.root, photos, work / "photos")
        runs = {p: [0.0, 0, 0.0] for p in PLAINS} | {str(m): [0.0, 0, 0.0] for m in args.model}
        commits: list[float] = []
        models = [*map(str, args.model), *map(str, reversed(args.model))]
        order = [*PLAINS, *models, *reversed(PLAINS)]
        for _ in range(args.rounds):
            for name in order:
                if name in PLAINS:
                    lanes = 1 if name == "plain" else os.cpu_count() or 1
                    one = plain if name == "plain" else plain_lanes
                    rate, cpu = plain_rate(one, first.metadata.input_size, lanes)
                    n = BATCH * PLAIN_REPEATS * lanes
                    got = [n / rate, n, cpu * n]
                else:
                    b = build_once(Path(name), subset, work)
                    got = [b["seconds"], b["photos"], b["cpu_s"]]
                    if name == str(args.model[0]):
                        commits.append(1e3 * b["commit_s"] / b["photos"])
                runs[name] = [a + b for a, b in zip(runs[name], got, strict=True)]
                print(f"  {name}: {got[1]} in {got[0]:.2f} s", flush=True)
    after = os.getloadavg()
    rows = [
        {
            "run": PLAINS.get(name, f"build-index {name}"),
            "seconds": s,
            "items": n,
            "rate": n / s,
            "cpu_per_item": c / n,
        }
        for name, (s, n, c) in runs.items()
    ]
    commit_ms = float(np.median(commits))
    print(f"\nmachine: {before}; after: {after[0]:.2f} / {after[1]:.2f} / {after[2]:.2f}")
    print(
        f"photos: {len(photos)} of {len(scan.files)} under {scan.root}; breakdown model "
        f"{args.model[0]} ({first.metadata.backbone}, {first.metadata.input_size}px, "
        f"{first.embedding_dim}-d, pseudo-sketch {'yes' if first.edges else 'no'}, "
        f"fingerprint {first.fingerprint[:16]}); {args.rounds} round(s) of {' / '.join(order)}\n"
    )
    print(breakdown_table(secs, len(photos), commit_ms, args.threads) + "\n")
    print(builds_table(rows))
    if args.json:
        report = {"machine": before, "load_after": after, "breakdown_s": secs, "rows": rows}
        args.json.write_text(json.dumps(report | {"photos": len(photos)}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
