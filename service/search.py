"""The search engine: the sketch encoder and the current gallery index, hot-swappable.

The index lives in an immutable ``Snapshot``; a reload builds a new one beside it and swaps
one reference, so a batch that already holds the old snapshot finishes on it and nothing
in flight is dropped. The previous snapshot stays reachable for a while, so photo URLs
handed out just before a swap (they name their version) still resolve.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from index_builder.gallery.faiss_index import set_nprobe, use_gpu
from index_builder.gallery.scan import display_path
from index_builder.gallery.store import (
    FingerprintMismatchError,
    LoadedIndex,
    ManifestItem,
    load_current,
    read_pointer,
)
from model.encoder import OnnxEncoder
from model.preprocess import Preprocessing
from service.batching import Pending
from service.settings import ServiceSettings

log = logging.getLogger(__name__)
# IndexIntegrityError and EncoderIntegrityError are among these; ONNX Runtime raises RuntimeErrors
LOAD_ERRORS = (FileNotFoundError, ValueError, OSError, RuntimeError)


class NotReady(RuntimeError):
    """The model or the index is not loaded; the message says why."""


class ReloadError(RuntimeError):
    """A reload failed; the version being served (if any) stays."""


class UnknownPhoto(LookupError):
    """No such photo id (or version) in the index being served."""


@dataclass(frozen=True)
class Snapshot:
    """One loaded index version and the FAISS index that searches it (maybe on a GPU)."""

    index: LoadedIndex
    searcher: faiss.Index
    device: str
    loaded_at: float
    classes: dict[str, int]  # photos per class, counted once at load

    @property
    def version(self) -> str:
        return self.index.version

    @property
    def count(self) -> int:
        return self.index.manifest.count


@dataclass(frozen=True)
class Query:
    """One preprocessed sketch (3, S, S) and how many photos it wants."""

    array: np.ndarray
    k: int


@dataclass(frozen=True)
class Hits:
    """One query's top photos, the snapshot they come from and the batch's timings."""

    snapshot: Snapshot
    scores: np.ndarray
    ids: np.ndarray
    queue_s: float
    encode_s: float
    search_s: float
    batch_size: int


@dataclass(frozen=True)
class ReloadResult:
    """What a (re)load did: the version served now and the one before."""

    changed: bool
    version: str
    previous: str | None


class SearchEngine:
    """Holds the sketch encoder and the current index snapshot; thread-safe."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.encoder: OnnxEncoder | None = None
        self.problem: str | None = "starting: the model and the index are not loaded yet"
        self.last_reload_error: dict[str, str | None] | None = None  # version, reason
        self._attempt: str | None = None  # the index version the current load tries
        self._snapshot: Snapshot | None = None
        self._previous: Snapshot | None = None
        self._lock = threading.Lock()

    @property
    def ready(self) -> bool:
        return self._snapshot is not None and self.encoder is not None

    @property
    def snapshot(self) -> Snapshot:
        """The snapshot being served; NotReady when there is none."""
        snap = self._snapshot
        if snap is None or self.encoder is None:
            raise NotReady(self.problem or "not loaded")
        return snap

    def check_ready(self) -> None:
        """Raise NotReady unless the model and an index are loaded."""
        if not self.ready:
            raise NotReady(self.problem or "not loaded")

    @property
    def preprocessing(self) -> Preprocessing:
        if self.encoder is None:
            raise NotReady(self.problem or "the model is not loaded")
        return self.encoder.metadata.preprocessing

    def load(self) -> ReloadResult:
        """Load the model (once) and switch to the index's current version if it moved."""
        with self._lock:
            try:
                return self._load()
            except LOAD_ERRORS as err:
                log.error("not loaded: %s", describe_load_error(err, full=True))
                message = describe_load_error(err)  # for clients: no server paths
                self.last_reload_error = {"version": self._attempt, "reason": message}
                if self._snapshot is None:
                    self.problem = message
                raise ReloadError(message) from err

    def _load(self) -> ReloadResult:
        if self.encoder is None:
            s = self.settings
            self.encoder = OnnxEncoder(s.model_dir, "sketch", intra_op_threads=s.ort_threads)
            log.info("sketch encoder %s on %s", self.encoder.fingerprint[:16],
                     self.encoder.providers)  # fmt: skip
        current, self._attempt = self._snapshot, None
        pointer = read_pointer(self.settings.index_dir)
        self._attempt = pointer.version if pointer else None
        if current is not None and pointer is not None and pointer.version == current.version:
            return ReloadResult(False, current.version, current.version)
        loaded = load_current(self.settings.index_dir, self.encoder.fingerprint)
        self._activate(loaded)
        return ReloadResult(True, loaded.version, current.version if current else None)

    def _activate(self, loaded: LoadedIndex) -> None:
        searcher, device = self._searcher(loaded)
        classes = Counter(
            display_path(item.cls) for item in loaded.manifest.items if item.cls is not None
        )
        self._previous = self._snapshot  # old photo URLs resolve for one more version
        self._snapshot = Snapshot(
            loaded, searcher, device, time.time(), dict(sorted(classes.items()))
        )
        self.problem = self.last_reload_error = None
        log.info("serving index %s: %d photos (%s, %s)", loaded.version, loaded.manifest.count,
                 loaded.manifest.index.factory, device)  # fmt: skip

    def _searcher(self, loaded: LoadedIndex) -> tuple[faiss.Index, str]:
        """The index on all GPUs when FAISS sees one (and it is allowed), else as loaded."""
        if self.settings.faiss_gpu and use_gpu():
            try:
                gpu = faiss.index_cpu_to_all_gpus(loaded.index)
                set_nprobe(gpu, loaded.manifest.index.nprobe)
                return gpu, "gpu"
            except RuntimeError as err:  # an index type this GPU build cannot hold
                log.warning("FAISS stays on the CPU: %s", err)
        return loaded.index, "cpu"

    def search_batch(self, batch: Sequence[Pending[Query]]) -> list[Hits]:
        """Encode a batch of sketches in one call, search them in one call (the batcher's
        ``process``); every query gets its own k."""
        started = time.perf_counter()
        snap, encoder = self.snapshot, self.encoder
        assert encoder is not None  # snapshot raised otherwise
        embeddings = encoder.embed_arrays(np.stack([p.item.array for p in batch]))
        encoded = time.perf_counter()
        k = min(max(p.item.k for p in batch), max(snap.searcher.ntotal, 1))
        scores, ids = snap.searcher.search(embeddings, k)
        searched = time.perf_counter()
        return [
            Hits(snap, scores[i, : p.item.k], ids[i, : p.item.k], started - p.queued,
                 encoded - started, searched - encoded, len(batch))
            for i, p in enumerate(batch)
        ]  # fmt: skip

    def lookup(self, photo_id: int, version: str | None = None) -> tuple[LoadedIndex, ManifestItem]:
        """The index version and manifest entry of a photo id (of ``version`` if given)."""
        index = self._version(version)
        items = index.manifest.items
        if not 0 <= photo_id < len(items):
            raise UnknownPhoto(f"no photo with id {photo_id} in index version {index.version} "
                               f"(ids 0 to {len(items) - 1})")  # fmt: skip
        return index, items[photo_id]

    def _version(self, version: str | None) -> LoadedIndex:
        current, previous = self.snapshot, self._previous
        if version is None or version == current.version:
            return current.index
        if previous is not None and version == previous.version:
            return previous.index
        raise UnknownPhoto(f"index version {version!r} is not served (the current one is "
                           f"{current.version}); search again")  # fmt: skip

    def stats(self) -> dict[str, Any]:
        """What /v1/index shows."""
        snap, encoder = self.snapshot, self.encoder
        manifest = snap.index.manifest
        return {
            "version": snap.version,
            "count": manifest.count,
            "created": manifest.created,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snap.loaded_at)),
            "index": manifest.index.model_dump(include={"kind", "factory", "dim", "nlist",
                                                         "nprobe", "recall_at_k", "recall_k"}),
            "device": snap.device,
            "model": {"fingerprint": manifest.model.fingerprint,
                      "backbone": manifest.model.backbone,
                      "providers": encoder.providers if encoder else []},
            "classes": snap.classes,
            "last_reload_error": self.last_reload_error,
        }  # fmt: skip


# An absolute path (as load errors quote them): clients see only its last part.
ABSOLUTE_PATH = re.compile(r"(?<![\w.~])/(?:[^\s/:'\"(),;]+/)*([^\s/:'\"(),;]*)")


def describe_load_error(err: BaseException, full: bool = False) -> str:
    """A short one-line reason for /readyz and /v1/index, without server paths
    (``full``: with them, for the log)."""
    text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    if not full:
        text = ABSOLUTE_PATH.sub(lambda m: m.group(1) or "/", text)
        text = text if len(text) <= 300 else text[:297] + "..."
    if isinstance(err, FingerprintMismatchError):
        return f"the index and the model do not match: {text}"
    return text
