"""Embed gallery photos on Ray Data: the ``--engine ray`` twin of ``embed.embed_photos``.

Same arguments, same ``Embedded`` back: rows of ``done`` in the order of ``photos``, unusable
photos in ``skipped`` with the very ``Failure`` that ``decode_photo`` gives the local engine.
Ray Data holds the photo list (path, hash) in blocks of ``batch_size``; ``map_batches`` runs
them through a pool of actors (``_EmbedActor``), each holding one ONNX Runtime session, that
decode (``decode_photo``, so decoding is identical) and embed a batch; the driver collects the
vectors and the builder writes them to the store exactly as the local engine's.

Actors: one a GPU (CUDA provider, ``num_gpus=1``) where the cluster has GPUs, else one a CPU
core with a one-thread session (a core per actor beats threads fighting over cores). On a
cluster, every node runs this package's install and sees the model directory and the photos at
the driver's paths (a shared file system); each actor checks the model's fingerprint.
Without ``address`` a local Ray sized to this machine's cores is started and stopped around the
build; a Ray the process already started (the tests share one) is used and left running.
"""

from __future__ import annotations

import logging
import os
import socket
import warnings
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import numpy as np
from tqdm import tqdm

from index_builder.indexing.embed import Decoded, Embedded, Failure, check_batching, decode_photo
from index_builder.indexing.scan import PhotoFile, Skipped
from model.encoder import OnnxEncoder

INSTALL_HINT = "install it with `pip install -e '.[ray]'` (scripts/install.sh --dev does)"
CONNECT_TIMEOUT_S = 5.0  # a cluster's head answers at once; Ray itself retries for minutes
CUDA = "CUDAExecutionProvider"


def import_ray() -> ModuleType:
    """The ``ray`` module with Ray Data, or a RuntimeError saying how to install it."""
    try:
        import ray
        import ray.data  # the extra's other half (pyarrow, pandas): absent in a bare ray
    except ImportError as err:
        raise RuntimeError(
            f"--engine ray needs Ray, which is not installed ({err}); {INSTALL_HINT}"
        ) from None
    return ray


def check_reachable(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """Raise ValueError unless ``address`` (``host:port`` or ``ray://host:port``; ``auto``
    is left to Ray) accepts a TCP connection within ``timeout`` seconds: ``ray.init`` would
    otherwise retry an unreachable head for minutes."""
    if address == "auto":
        return
    parts = urlsplit(address if "://" in address else f"//{address}")
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number
        host = port = None
    if not host or port is None:
        raise ValueError(f"--ray-address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as err:
        raise ValueError(
            f"--ray-address {address}: no Ray cluster answers there "
            f"({err.strerror or err}); start one with `ray start --head` or "
            "check the address"
        ) from None


@contextmanager
def ray_session(address: str | None = None) -> Iterator[ModuleType]:
    """Ray, connected to ``address``'s cluster or to a local one sized to the cores (quiet,
    no dashboard), shut down on exit; a Ray this process already runs is used as it is."""
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    if address:
        check_reachable(address)
    quiet: dict[str, Any] = {"logging_level": logging.ERROR, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:
            ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, **quiet)
    except (ConnectionError, RuntimeError) as err:
        where = f"--ray-address {address}" if address else "a local Ray"
        raise RuntimeError(f"{where}: Ray did not start ({err})") from err
    _quiet_ray_data(ray)
    try:
        yield ray
    finally:
        ray.shutdown()


def _quiet_ray_data(ray: ModuleType) -> None:
    """No Ray Data progress bars or per-run logs: the builder shows one tqdm bar itself."""
    with warnings.catch_warnings():  # Ray Data's notes on its own deprecated fields
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    ctx.enable_auto_log_stats = False
    # CRITICAL: an actor's error is re-raised by ``_run`` with its cause; Ray Data would
    # first log it as a bug in its own code, with pages of stack trace
    logging.getLogger("ray.data").setLevel(logging.CRITICAL)


@dataclass(frozen=True)
class ActorPlan:
    """How many embedding actors, with what each reserves and runs."""

    actors: int
    resources: dict[str, float]
    providers: list[str]
    intra_op_threads: int
    decode_threads: int


def plan_actors(cluster: dict[str, float], workers: int) -> ActorPlan:
    """One actor a GPU (CUDA, ``workers`` decoding threads) where ``cluster`` has GPUs, else
    one a CPU core (CPU provider, one thread each for ONNX Runtime and decoding)."""
    gpus = int(cluster.get("GPU", 0))
    if gpus:
        return ActorPlan(gpus, {"num_gpus": 1}, [CUDA, "CPUExecutionProvider"], 1, workers)
    cpus = max(1, int(cluster.get("CPU", 1)))
    return ActorPlan(cpus, {"num_cpus": 1}, ["CPUExecutionProvider"], 1, 1)


class _EmbedActor:
    """Ray Data's class-based UDF: one ONNX Runtime session per actor, kept across batches."""

    def __init__(
        self,
        model_dir: str,
        root: str,
        fingerprint: str,
        providers: list[str],
        intra_op_threads: int,
        decode_threads: int,
    ) -> None:
        import onnxruntime as ort

        if CUDA in providers and CUDA not in ort.get_available_providers():
            host = socket.gethostname()
            raise RuntimeError(
                f"{host}: a GPU, but onnxruntime has no CUDA provider there; "
                "install the gpu extra on the GPU nodes"
            )
        self.encoder = OnnxEncoder(model_dir, "photo", providers, intra_op_threads)
        if self.encoder.fingerprint != fingerprint:
            raise RuntimeError(
                f"{socket.gethostname()}: {model_dir} holds another model "
                f"({self.encoder.fingerprint[:12]}, the driver's "
                f"{fingerprint[:12]}); nodes must see the same files"
            )
        self.root, self.prep = Path(root), self.encoder.metadata.preprocessing
        self.pool = ThreadPoolExecutor(decode_threads)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Rows (index, path, sha256) -> (index, vector, width, height, error, retry); a
        failed photo has a zero vector and its error."""
        paths, hashes = batch["path"].tolist(), batch["sha256"].tolist()
        edges = self.encoder.edges  # a photo encoder may read pseudo-sketches too

        def decode(path: str, sha256: str) -> Decoded | Failure:
            return decode_photo(self.root / path, sha256, self.prep, edges=edges)

        results = list(self.pool.map(decode, paths, hashes))
        good = [i for i, r in enumerate(results) if not isinstance(r, Failure)]
        vectors = np.zeros((len(results), self.encoder.embedding_dim), np.float32)
        if good:
            vectors[good] = self.encoder.embed_arrays(np.stack([results[i].array for i in good]))
        sizes = [(0, 0) if isinstance(r, Failure) else r.size for r in results]
        errors = [r.error if isinstance(r, Failure) else "" for r in results]
        return {
            "index": batch["index"],
            "vector": vectors,
            "width": np.array([s[0] for s in sizes], np.int64),
            "height": np.array([s[1] for s in sizes], np.int64),
            "error": np.array(errors, dtype=object),
            "retry": np.array([isinstance(r, Failure) and r.retry for r in results], bool),
        }


def embed_photos_ray(
    encoder: OnnxEncoder,
    root: Path,
    photos: Sequence[PhotoFile],
    batch_size: int = 32,
    workers: int = 4,
    progress: bool = False,
    address: str | None = None,
) -> Embedded:
    """``embed_photos`` on Ray Data (``address``: a cluster's, else a local Ray)."""
    check_batching(batch_size, workers)
    out = Embedded(np.zeros((0, encoder.embedding_dim), np.float32))
    if not photos:
        return out  # nothing to embed: no Ray started (an incremental build with no change)
    with ray_session(address) as ray:
        rows = _run(ray, encoder, root, photos, batch_size, workers, progress)
    parts = [out.vectors]
    for photo, row in zip(photos, rows, strict=True):
        if row.error:
            out.skipped.append(Skipped(photo.path, photo.sha256, row.error, row.retry))
            continue
        out.done.append(photo)
        out.sizes.append(row.size)
        parts.append(row.vector[None])
    out.vectors = np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)
    return out


@dataclass(frozen=True)
class _Row:
    """One photo's result from an actor: its vector and size, or its error."""

    vector: np.ndarray
    size: tuple[int, int]
    error: str
    retry: bool


def _run(
    ray: ModuleType,
    encoder: OnnxEncoder,
    root: Path,
    photos: Sequence[PhotoFile],
    batch_size: int,
    workers: int,
    progress: bool,
) -> list[_Row]:
    """Every photo's result row, in the order of ``photos``."""
    plan = plan_actors(ray.cluster_resources(), workers)
    items = [{"index": i, "path": p.path, "sha256": p.sha256} for i, p in enumerate(photos)]
    blocks = -(-len(items) // batch_size)  # a block a batch, so every actor gets work
    args = (
        str(encoder.metadata.model_dir),
        str(root),
        encoder.fingerprint,
        plan.providers,
        plan.intra_op_threads,
        plan.decode_threads,
    )
    pool = ray.data.ActorPoolStrategy(size=min(plan.actors, blocks))
    with warnings.catch_warnings():  # Ray Data's notes on block sizes, not the user's concern
        warnings.simplefilter("ignore")
        ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
            _EmbedActor,
            batch_size=batch_size,
            batch_format="numpy",
            fn_constructor_args=args,
            compute=pool,
            max_restarts=0,
            **plan.resources,
        )
        rows = _collect(ray, ds, len(photos), progress)
    missing = sum(r is None for r in rows)
    if missing:  # a photo Ray lost: never index a partial result as if complete
        raise RuntimeError(f"the Ray engine returned no result for {missing} photos")
    return rows  # type: ignore[return-value]


def _collect(ray: ModuleType, ds: Any, count: int, progress: bool) -> list[_Row | None]:
    """The actors' rows by photo index, as they arrive (a tqdm bar counts them); an actor's
    error becomes a RuntimeError with its cause's last line, not Ray's wrapper."""
    rows: list[_Row | None] = [None] * count
    bar = tqdm(total=count, desc="embed photos (ray)", unit="photo", disable=not progress)
    with bar:
        try:
            for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
                for j, i in enumerate(batch["index"].tolist()):
                    size = (int(batch["width"][j]), int(batch["height"][j]))
                    rows[i] = _Row(
                        batch["vector"][j], size, str(batch["error"][j]), bool(batch["retry"][j])
                    )
                bar.update(len(batch["index"]))
        except ray.exceptions.RayError as err:
            cause = getattr(err, "cause", None) or err
            last = (str(cause).strip().splitlines() or [type(cause).__name__])[-1]
            raise RuntimeError(f"the Ray engine failed: {last}") from err
    return rows
