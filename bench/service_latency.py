"""End-to-end latency and throughput of the HTTP service over a 100k-photo index.

    python -m bench.service_latency [--model MODEL_DIR] [--photos 100000] [--work DIR]

Serves ``python -m service`` on loopback twice over the same index, micro-batched (the
default settings) and not (``SBIR_MAX_BATCH=1``), and sends the same real sketches (Quick,
Draw! drawings rendered by ``prepare``, uploaded as PNG) at concurrency 1, 8 and 32, the two
servers taking turns at each level (A B B A) so that background load hits both alike. Reports
client-side p50 / p99 latency and throughput, the server's own split of the time (decode,
batch wait, encode, search, from each response's ``timing``), and the batched / unbatched
ratios. With ``--against OLD_MODEL_DIR`` the two servers are instead both micro-batched, one
serving ``--model`` and one ``OLD_MODEL_DIR`` (each over its own index of the same vectors),
and the ratios are new / old. The index holds ``--photos`` synthetic embeddings (clustered
unit vectors, as real ones are) written as an index version through the gallery store API;
its manifest points at real photo files. Without ``--model`` a small model is trained on a
few real classes and exported first (the backbone, not the training, sets the cost). Client
and server share the machine, which is stated with the results.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import faiss
import httpx
import numpy as np
import onnxruntime as ort
from PIL import Image

from gallery_store.base import Manifest, ManifestItem, ModelInfo, Report
from gallery_store.faiss_index import build_index
from gallery_store.versions import Payload, commit_version, locked, read_pointer
from model.encoder import EncoderMetadata

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "data"
CLASSES = ["apple", "fish", "flower"]
CONCURRENCY = (1, 8, 32)
MODES = {"batched": {}, "unbatched": {"SBIR_MAX_BATCH": "1"}}
SPREAD = 1.3


# --- model, index, sketches ------------------------------------------------------------------


def make_model(work: Path, steps: int) -> Path:
    """Prepare a few real classes, train ``steps`` steps, export: the model directory."""
    from index_builder.cli import main
    from index_builder.training.prepare import prepare_shared_data

    model = work / "model"
    if (model / "metadata.json").is_file():
        return model
    prepare_shared_data(SHARED, work / "data", categories=CLASSES)
    (work / "test.txt").write_text("apple\n")
    os.environ.setdefault("SBIR_CACHE_DIR", str(work / "cache"))
    args = [
        "train",
        "--data",
        str(work / "data"),
        "--test-classes",
        str(work / "test.txt"),
        "--out",
        str(work / "run"),
        "--steps",
        str(steps),
        "--log-every",
        str(steps),
        "--eval-every",
        "100000",
        "--checkpoint-every",
        "100000",
    ]
    if main(args) != 0 or main(["export-onnx", "--run", str(work / "run"), "--out", str(model)]):
        raise SystemExit("training or export failed")
    return model


def clustered_vectors(n: int, dim: int, clusters: int = 345, seed: int = 0) -> np.ndarray:
    """Unit vectors around ``clusters`` random centres (as class embeddings are). The spread
    (noise 1.3x the centres' scale) makes the IVF index need nprobe 64 of 316 lists for 0.95
    recall@100: neither trivially separable nor random."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    noise = SPREAD * rng.standard_normal((n, dim)).astype(np.float32)
    x = centres[rng.integers(0, clusters, n)] + noise
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def synthesise_index(model_dir: Path, photos: Path, index_dir: Path, n: int) -> str:
    """An index version of ``n`` synthetic vectors whose manifest cycles over real photos."""
    meta = EncoderMetadata.load(model_dir)
    pointer = read_pointer(index_dir)
    if pointer is not None:
        return pointer.version
    files = sorted(p for p in photos.rglob("*.png"))
    real = [
        (
            p.relative_to(photos).as_posix(),
            p.parent.name,
            image_size(p),
            hashlib.sha256(p.read_bytes()).hexdigest(),
        )
        for p in files
    ]
    items = []
    for i in range(n):
        path, cls, (w, h), sha = real[i % len(real)]
        items.append(ManifestItem(id=i, path=path, cls=cls, width=w, height=h, sha256=sha))
    vectors = clustered_vectors(n, meta.embedding_dim)
    built = build_index(vectors)
    manifest = Manifest(
        created=datetime.now(UTC).isoformat(timespec="seconds"),
        model=ModelInfo(
            fingerprint=meta.fingerprint,
            backbone=meta.backbone,
            embedding_dim=meta.embedding_dim,
            model_dir=str(model_dir.resolve()),
        ),
        photos_root=str(photos.resolve()),
        source=str(photos.resolve()),
        count=n,
        index=built.info,
        items=items,
    )
    report = Report(mode="full", reason=f"{n} synthetic vectors (bench)", added=n, embedded=n)
    with locked(index_dir):
        return commit_version(index_dir, Payload(built.index, vectors, manifest, report))


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as img:
        return img.size


def sketch_pngs(data: Path, count: int = 64) -> list[bytes]:
    files = sorted((data / "sketch").rglob("*.png"))
    return [p.read_bytes() for p in files[:: max(1, len(files) // count)][:count]]


# --- serving and measuring -------------------------------------------------------------------


@dataclass
class Sample:
    """One request: client latency and the server's timing fields."""

    latency_ms: float
    timing: dict[str, float]


@dataclass
class Server:
    """A ``python -m service`` subprocess serving the bench index."""

    process: subprocess.Popen
    url: str

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


def start_server(model: Path, index: Path, work: Path, mode: str, extra: dict[str, str]) -> Server:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = (
        os.environ
        | {
            "SBIR_MODEL_DIR": str(model),
            "SBIR_INDEX_DIR": str(index),
            "SBIR_THUMBNAIL_DIR": str(work / "thumbnails"),
            "SBIR_WATCH_INTERVAL_S": "0",
        }
        | extra
    )
    cmd = [
        sys.executable,
        "-m",
        "service",
        "--port",
        str(port),
        "--no-access-log",
        "--log-level",
        "warning",
    ]
    with open(work / f"server-{mode}.log", "ab") as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    server = Server(proc, f"http://127.0.0.1:{port}")
    for _ in range(600):
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the service did not become ready; see {work}/server-{mode}.log")


async def load(url: str, sketches: list[bytes], concurrency: int, total: int) -> tuple:
    """``total`` searches by ``concurrency`` clients: the samples and the wall time."""
    samples: list[Sample] = []
    counter = iter(range(total))

    async def client_loop(client: httpx.AsyncClient) -> None:
        for i in counter:
            files = {"image": ("sketch.png", sketches[i % len(sketches)], "image/png")}
            started = time.perf_counter()
            response = await client.post("/v1/search", files=files, data={"k": "10"})
            latency = (time.perf_counter() - started) * 1000
            response.raise_for_status()
            samples.append(Sample(latency, response.json()["timing"]))

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=300, limits=limits) as client:
        started = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        return samples, time.perf_counter() - started


def summarise(samples: list[Sample], wall: float) -> dict[str, float]:
    lat = [s.latency_ms for s in samples]
    mean = {
        k: statistics.fmean(s.timing[k] for s in samples)
        for k in ("decode_ms", "queue_ms", "encode_ms", "search_ms", "batch_size")
    }
    return {
        "n": len(samples),
        "p50": float(np.percentile(lat, 50)),
        "p99": float(np.percentile(lat, 99)),
        "rps": len(samples) / wall,
        **mean,
    }


Results = dict[str, dict[int, dict[str, float]]]


Setup = dict[str, tuple[Path, Path, dict[str, str]]]  # mode -> (model, index, env)


def measure(args: argparse.Namespace, setups: Setup, sketches: list[bytes]) -> Results:
    """Both modes' servers up at once; at each concurrency the modes take turns (A B B A), so
    that drifting background load on the machine hits both alike."""
    servers = {
        mode: start_server(model, index, args.work, mode, extra)
        for mode, (model, index, extra) in setups.items()
    }
    try:
        for server in servers.values():
            asyncio.run(load(server.url, sketches, 4, 16))  # warm up
        results: Results = {mode: {} for mode in servers}
        for c in args.concurrency:
            half = max(args.requests, 8 * c) // 2
            got: dict[str, tuple[list[Sample], float]] = {mode: ([], 0.0) for mode in servers}
            for order in (list(servers), list(reversed(servers))):
                for mode in order:
                    samples, wall = asyncio.run(load(servers[mode].url, sketches, c, half))
                    got[mode] = (got[mode][0] + samples, got[mode][1] + wall)
            for mode, (samples, wall) in got.items():
                results[mode][c] = summarise(samples, wall)
            print(
                f"  concurrency {c:>2}: "
                + ", ".join(f"{m} {results[m][c]['rps']:.1f} req/s" for m in servers),
                flush=True,
            )
        return results
    finally:
        for server in servers.values():
            server.stop()


# --- report ----------------------------------------------------------------------------------


def machine() -> str:
    lines = Path("/proc/cpuinfo").read_text().splitlines()
    cpus = [ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")]
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    gpus = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    load1, load5, _ = os.getloadavg()
    return (
        f"{cpus[0] if cpus else platform.processor()}, {os.cpu_count()} cores, "
        f"{mem:.0f} GiB; {platform.platform()}; Python {platform.python_version()}; "
        f"onnxruntime {ort.__version__} {ort.get_available_providers()}; "
        f"faiss {faiss.__version__}, {gpus} GPU(s); load average {load1:.1f} / {load5:.1f} "
        "(1 / 5 min) before the run; client and server on the same machine"
    )


def table(results: Results) -> str:
    head = (
        "| mode | concurrency | requests | p50 ms | p99 ms | req/s | decode ms | batch wait ms"
        " | encode ms (batch) | search ms (batch) | mean batch |"
    )
    lines = [head, "|" + "---|" * 11]
    for mode, rows in results.items():
        for c, r in rows.items():
            lines.append(
                f"| {mode} | {c} | {r['n']:.0f} | {r['p50']:.1f} | {r['p99']:.1f} | "
                f"{r['rps']:.1f} | {r['decode_ms']:.1f} | {r['queue_ms']:.1f} | "
                f"{r['encode_ms']:.1f} | {r['search_ms']:.2f} | "
                f"{r['batch_size']:.1f} |"
            )
    return "\n".join(lines)


def ratios(results: Results) -> str:
    new, old = list(results)
    lines = [
        f"| concurrency | throughput {new} / {old} | p50 {new} / {old} | p99 {new} / {old} |",
        "|---|---|---|---|",
    ]
    for c, b in results[new].items():
        u = results[old][c]
        lines.append(
            f"| {c} | {b['rps'] / u['rps']:.2f}x | {b['p50'] / u['p50']:.2f}x | "
            f"{b['p99'] / u['p99']:.2f}x |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.service_latency",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--model", type=Path, help="exported model dir (default: train one)")
    parser.add_argument("--photos", type=int, default=100_000, help="index size")
    parser.add_argument("--work", type=Path, default=REPO / "runs" / "bench-service")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--requests", type=int, default=96, help="requests per level (at least)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--against", type=Path, help="compare --model with this model dir")
    args = parser.parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    before = machine()
    model = args.model or make_model(args.work, args.train_steps)
    if not (args.work / "data" / "photo").is_dir():
        from index_builder.training.prepare import prepare_shared_data

        prepare_shared_data(SHARED, args.work / "data", categories=CLASSES)
    models = {"batched": model} if args.against is None else {"new": model, "old": args.against}
    indexes = {}
    for mode, m in models.items():
        fingerprint = EncoderMetadata.load(m).fingerprint[:12]
        indexes[mode] = index = args.work / f"index-{args.photos}-{fingerprint}"
        started = time.perf_counter()
        version = synthesise_index(m, args.work / "data" / "photo", index, args.photos)
        info = Manifest.model_validate_json(
            (index / "versions" / version / "manifest.json").read_bytes()
        ).index
        print(
            f"index {index.name} {version}: {info.n} vectors, {info.factory}, nprobe "
            f"{info.nprobe}, recall@{info.recall_k} {info.recall_at_k:.3f} "
            f"({time.perf_counter() - started:.0f}s)"
        )
    if args.against is None:
        setups = {mode: (model, indexes["batched"], env) for mode, env in MODES.items()}
    else:
        setups = {mode: (m, indexes[mode], {}) for mode, m in models.items()}
    sketches = sketch_pngs(args.work / "data")
    results = measure(args, setups, sketches)
    print(f"\nmachine: {before}\n")
    print(table(results))
    print()
    print(ratios(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
