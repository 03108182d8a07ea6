"""Gallery embedding throughput on this CPU: the index builder's engines against a naive loop.

    python -m bench.gallery_embed [--model MODEL_DIR] [--photos DIR] [--limit 400]
                                  [--threads N] [--workers N] [--batch 32] [--no-ray]
                                  [--json OUT]

The modes embed the same photo list with the same model, in the same run:

- naive: one file at a time, on one thread: ``load_image`` -> ``to_input_array`` ->
  ``encoder.embed_arrays(x[None])``; decoded at the builder's draft size (large images are
  reduced while decoded), else the large stamps' vectors differ from the builder's;
- batched: ``index_builder.indexing.embed.embed_photos`` (what ``build-index`` runs):
  ``--workers`` lanes, each reading, hash-checking, decoding and then encoding a batch of
  ``--batch``, with an encoder of ``lane_threads(workers)`` intra-op threads;
- ray: ``index_builder.indexing.ray_embed.embed_photos_ray`` (``build-index --engine ray``):
  Ray Data actors, one a core with a one-thread ONNX Runtime session each, decode and embed
  blocks of ``--batch``, on a local Ray sized to the cores (started once, before the timing;
  each run pays its actors' start-up, as a build does). Left out with ``--no-ray`` or when
  the ray extra is not installed.

The modes run in the order naive, batched, ray, ray, batched, naive, so that drifting
background load hits all alike, after a warm-up of each; every run's vectors are compared with
the first naive run's (max abs difference) to show they compute the same embeddings. Photos:
``--limit`` files spread evenly over the sorted list of ``--photos`` (default: the ~800 real
PNG photos of Debian's ``tuxpaint-stamps-default``). Without ``--model`` a small model is
trained and exported as ``bench.service_latency`` does it (in its work folder, so a model it
already trained is reused); the backbone, not the training, sets the cost.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from bench.faiss_search import machine as base_machine
from bench.service_latency import make_model
from index_builder.indexing.embed import lane_threads
from index_builder.indexing.engines import embedder
from index_builder.indexing.scan import PhotoFile, scan_photos
from model.encoder import OnnxEncoder
from model.preprocess import ImageError, load_image

REPO = Path(__file__).resolve().parents[1]
TUXPAINT = Path("/usr/share/tuxpaint/stamps")
ORDER = ("naive", "batched", "ray", "ray", "batched", "naive")
WARMUP = 8
TOLERANCE = 1e-4  # same model and inputs; only batch-size-dependent kernels may differ


def naive(encoder: OnnxEncoder, root: Path, photos: list[PhotoFile]) -> dict:
    """One photo at a time: decode, preprocess, encode a batch of one."""
    vectors, done, decode_s, encode_s = [], [], 0.0, 0.0
    for photo in photos:
        t0 = time.perf_counter()
        try:
            img = load_image(root / photo.path, draft_size=encoder.metadata.input_size)
            x = encoder.input_array(img)
        except ImageError:
            continue
        t1 = time.perf_counter()
        vectors.append(encoder.embed_arrays(x[None])[0])
        decode_s += t1 - t0
        encode_s += time.perf_counter() - t1
        done.append(photo.path)
    vectors = np.stack(vectors) if vectors else np.zeros((0, encoder.embedding_dim), np.float32)
    return {"vectors": vectors, "done": done, "decode_s": decode_s, "encode_s": encode_s}


def batched(
    encoder: OnnxEncoder, root: Path, photos: list[PhotoFile], batch: int, workers: int
) -> dict:
    """The index builder's path (the local engine), with the builder's thread count."""
    lanes = OnnxEncoder(
        encoder.metadata.model_dir, "photo", encoder.providers, lane_threads(workers), verify=False
    )
    out = embedder("local")(lanes, root, photos, batch_size=batch, workers=workers)
    return {"vectors": out.vectors, "done": [p.path for p in out.done]}


def on_ray(
    encoder: OnnxEncoder, root: Path, photos: list[PhotoFile], batch: int, workers: int
) -> dict:
    """The index builder's Ray engine, on the Ray this process started."""
    out = embedder("ray")(encoder, root, photos, batch_size=batch, workers=workers)
    return {"vectors": out.vectors, "done": [p.path for p in out.done]}


def pick(files: list[PhotoFile], limit: int) -> list[PhotoFile]:
    """``limit`` files spread evenly over the sorted list (all classes, not the first few)."""
    if limit >= len(files):
        return list(files)
    return [files[i] for i in np.linspace(0, len(files) - 1, limit).round().astype(int)]


def machine(threads: int, workers: int, batch: int, ray_actors: int | None) -> str:
    load = os.getloadavg()
    ray = (
        ""
        if ray_actors is None
        else (
            f"; ray: {ray_actors} actor(s) on a local Ray, 1 intra-op thread and 1 decode "
            f"thread each, blocks of {batch}"
        )
    )
    return (
        f"{base_machine()}; Python {platform.python_version()}; onnxruntime "
        f"{ort.__version__} (CPUExecutionProvider, {threads} intra-op thread(s)); batched: "
        f"{workers} lane(s) of {lane_threads(workers)} intra-op thread(s), batch {batch}{ray}; "
        f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1 / 5 / 15 min)"
    )


def local_ray(wanted: bool) -> contextlib.AbstractContextManager:
    """The local Ray ``build-index --engine ray`` starts, or nothing (no ray, or not wanted)."""
    if not wanted:
        return contextlib.nullcontext()
    from index_builder.indexing.ray_embed import ray_session

    return ray_session()


def table(rows: list[dict]) -> str:
    lines = ["| mode | images | seconds | images/s | ratio vs naive |", "|---|---|---|---|---|"]
    base = rows[0]["rate"]
    for r in rows:
        lines.append(
            f"| {r['mode']} | {r['images']} | {r['seconds']:.2f} | {r['rate']:.1f} "
            f"| {r['rate'] / base:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gallery_embed",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, help="exported model dir (default: train one)")
    parser.add_argument("--photos", type=Path, default=TUXPAINT, help="folder of photos")
    parser.add_argument("--limit", type=int, default=400, help="photos to embed per run")
    cores = os.cpu_count() or 1
    parser.add_argument(
        "--threads", type=int, default=cores, help="ONNX Runtime intra-op threads, both modes"
    )
    parser.add_argument(
        "--workers", type=int, default=cores, help="decode threads of the batched mode"
    )
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument(
        "--work",
        type=Path,
        default=REPO / "runs" / "bench-service",
        help="where the default model is trained",
    )
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--no-ray", action="store_true", help="leave the ray mode out")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if not args.photos.is_dir():
        hint = " (apt-get install tuxpaint-stamps-default)" if args.photos == TUXPAINT else ""
        parser.error(f"--photos {args.photos}: no such folder{hint}")
    if args.limit < 1:
        parser.error("--limit must be at least 1")

    with_ray = not args.no_ray and importlib.util.find_spec("ray") is not None
    if not args.no_ray and not with_ray:
        print("ray mode left out: the ray extra is not installed", flush=True)
    with local_ray(with_ray) as ray:
        return run(args, parser, ray)


def run(args: argparse.Namespace, parser: argparse.ArgumentParser, ray: object) -> int:
    """The timed runs and their report (``ray``: the local Ray, or None: no ray mode)."""
    actors = None if ray is None else int(ray.cluster_resources().get("CPU", 1))  # type: ignore[attr-defined]
    before = machine(args.threads, args.workers, args.batch, actors)
    model = args.model or make_model(args.work, args.train_steps)
    encoder = OnnxEncoder(
        model, "photo", providers=["CPUExecutionProvider"], intra_op_threads=args.threads
    )
    scan = scan_photos(args.photos, workers=args.workers)
    photos = pick(scan.files, args.limit)
    if not photos:
        parser.error(f"--photos {args.photos}: no image files found")
    print(
        f"{len(photos)} of {len(scan.files)} photos under {scan.root}; model {model} "
        f"({encoder.metadata.backbone}, {encoder.metadata.input_size}px, "
        f"{encoder.embedding_dim}-d)",
        flush=True,
    )

    order = [m for m in ORDER if m != "ray" or ray is not None]
    naive(encoder, scan.root, photos[:WARMUP])
    batched(encoder, scan.root, photos[: 2 * args.batch], args.batch, args.workers)
    if ray is not None:
        on_ray(encoder, scan.root, photos[: 2 * args.batch], args.batch, args.workers)
    totals = {
        mode: {"seconds": 0.0, "images": 0, "decode_s": 0.0, "encode_s": 0.0}
        for mode in dict.fromkeys(order)
    }
    reference, max_diff = None, 0.0
    for mode in order:
        started = time.perf_counter()
        if mode == "naive":
            got = naive(encoder, scan.root, photos)
        elif mode == "ray":
            got = on_ray(encoder, scan.root, photos, args.batch, args.workers)
        else:
            got = batched(encoder, scan.root, photos, args.batch, args.workers)
        seconds = time.perf_counter() - started
        total = totals[mode]
        total["seconds"] += seconds
        total["images"] += len(got["done"])
        total["decode_s"] += got.get("decode_s", 0.0)
        total["encode_s"] += got.get("encode_s", 0.0)
        if reference is None:
            reference = got
        elif got["done"] != reference["done"]:
            raise SystemExit(f"{mode}: embedded a different set of photos than naive")
        else:
            max_diff = max(max_diff, float(np.abs(got["vectors"] - reference["vectors"]).max()))
        print(
            f"  {mode}: {len(got['done'])} images in {seconds:.2f} s "
            f"({len(got['done']) / seconds:.1f} images/s)",
            flush=True,
        )
    after = os.getloadavg()

    rows = [{"mode": mode, **t, "rate": t["images"] / t["seconds"]} for mode, t in totals.items()]
    skipped = len(photos) - len(reference["done"])
    print(
        f"\nmachine: {before}; load average after the run {after[0]:.2f} / {after[1]:.2f} "
        f"/ {after[2]:.2f}"
    )
    print(
        f"photos: {len(photos)} from {scan.root} ({skipped} undecodable, skipped by both), "
        f"each mode run twice (order {', '.join(order)}); max abs difference of the "
        f"embeddings between runs and modes {max_diff:.2e}"
    )
    n = rows[0]
    print(
        f"naive split: decode + preprocess {1e3 * n['decode_s'] / n['images']:.1f} ms, "
        f"encode (batch 1) {1e3 * n['encode_s'] / n['images']:.1f} ms per image\n"
    )
    print(table(rows))
    if args.json:
        report = {"machine": before, "load_after": after, "max_abs_diff": max_diff, "rows": rows}
        args.json.write_text(json.dumps(report, indent=2))
    if max_diff > TOLERANCE:
        print(f"\nthe modes disagree (max abs diff {max_diff:.2e} > {TOLERANCE})", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
