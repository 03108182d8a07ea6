"""The search engine: the sketch encoder and the served gallery version, hot-swappable.

The version (of either store engine, ``gallery_store``) lives in an immutable ``Snapshot``; a
reload builds a new one beside it and swaps one reference, so a batch that already holds the
old snapshot finishes on it and nothing in flight is dropped. The previous snapshot stays
reachable for a while, so photo URLs handed out just before a swap (they name their version)
still resolve.

Filters, pagination and the score cutoff: a query asks the store for its ``offset + k`` best
photos passing its filter, drops the first ``offset`` and those scoring below ``min_score``.
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

import numpy as np

from gallery_store.base import (
    FingerprintMismatchError,
    ManifestItem,
    StoredVersion,
    VectorStore,
    Where,
)
from gallery_store.photos import display_path
from gallery_store.stores import open_store
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
    """One loaded index version, ready to search (FAISS maybe on a GPU)."""

    index: StoredVersion
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
    """One preprocessed sketch (3, S, S) and which photos it wants: the ``k`` best passing
    ``where`` after the first ``offset``, none scoring below ``min_score``."""

    array: np.ndarray
    k: int
    where: Where | None = None
    offset: int = 0
    min_score: float | None = None

    def page(self, scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """This query's results from the store's best ``offset + k`` (ids -1 dropped)."""
        keep = ids >= 0
        if self.min_score is not None:
            keep &= scores >= self.min_score
        scores, ids = scores[keep], ids[keep]
        window = slice(self.offset, self.offset + self.k)
        return scores[window], ids[window]


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
        self._store: VectorStore | None = None  # opened by the first load (errors: readyz)
        self.encoder: OnnxEncoder | None = None
        self.problem: str | None = "starting: the model and the index are not loaded yet"
        self.last_reload_error: dict[str, str | None] | None = None  # version, reason
        self._attempt: str | None = None  # the index version the current load tries
        self._snapshot: Snapshot | None = None
        self._previous: Snapshot | None = None
        self._lock = threading.Lock()
        # Why the version served here is gone from the store (None while it is there): FAISS
        # searches it from memory, but /readyz says not ready (a restart could not load it).
        self.orphaned: str | None = None

    @property
    def store(self) -> VectorStore:
        """The store the settings name, opened on first use."""
        if self._store is None:
            self._store = open_store(self.settings, self.settings.index_dir)
        return self._store

    def served(self) -> str | None:
        """The version the store serves now (what the watcher polls)."""
        return self.store.served()

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
            log.info(
                "sketch encoder %s on %s", self.encoder.fingerprint[:16], self.encoder.providers
            )
        current, self._attempt = self._snapshot, None
        self._attempt = served = self.store.served()
        if current is not None and served is not None and served == current.version:
            return ReloadResult(False, current.version, current.version)
        loaded = self.store.load_current(self.encoder.fingerprint)
        self._activate(loaded)
        return ReloadResult(True, loaded.version, current.version if current else None)

    def _activate(self, loaded: StoredVersion) -> None:
        loaded.hold()  # pruning spares it while it is served here
        if self.settings.faiss_gpu:
            loaded.serve_on_gpu()
        classes = Counter(
            display_path(item.cls) for item in loaded.manifest.items if item.cls is not None
        )
        dropped = self._previous
        self._previous = self._snapshot  # old photo URLs resolve for one more version
        self._snapshot = Snapshot(loaded, time.time(), dict(sorted(classes.items())))
        self.problem = self.last_reload_error = self.orphaned = None
        if dropped is not None and dropped.index is not loaded:
            dropped.index.release()
        index = loaded.manifest.index
        log.info(
            "serving index %s: %d photos (%s, %s)",
            loaded.version,
            loaded.manifest.count,
            index.factory if index else "?",
            loaded.device,
        )

    def serving_present(self) -> bool:
        """Whether the version served is still in the store (True while none is loaded)."""
        snap = self._snapshot
        return snap is None or snap.index.present()

    def search_batch(self, batch: Sequence[Pending[Query]]) -> list[Hits]:
        """Encode a batch of sketches in one call, search them in one call (the batcher's
        ``process``); every query gets its own k."""
        started = time.perf_counter()
        snap, encoder = self.snapshot, self.encoder
        assert encoder is not None  # snapshot raised otherwise
        embeddings = encoder.embed_arrays(np.stack([p.item.array for p in batch]))
        encoded = time.perf_counter()
        found = search_queries(snap.index, embeddings, [p.item for p in batch])
        searched = time.perf_counter()
        return [
            Hits(
                snap,
                scores,
                ids,
                started - p.queued,
                encoded - started,
                searched - encoded,
                len(batch),
            )
            for p, (scores, ids) in zip(batch, found, strict=True)
        ]

    def similar(self, photo_id: int, k: int, version: str | None = None) -> Hits:
        """The ``k`` photos nearest to photo ``photo_id`` by its stored vector, itself
        excluded (blocking: the store is read)."""
        started = time.perf_counter()
        snap = self._snapshot_of(version)
        self._check_id(snap.index, photo_id)
        vector = snap.index.vector(photo_id)
        query = Query(np.empty(0), k, Where(exclude_ids=frozenset({photo_id})))
        [(scores, ids)] = search_queries(snap.index, vector[None, :], [query])
        return Hits(snap, scores, ids, 0.0, 0.0, time.perf_counter() - started, 1)

    def lookup(
        self, photo_id: int, version: str | None = None
    ) -> tuple[StoredVersion, ManifestItem]:
        """The index version and manifest entry of a photo id (of ``version`` if given)."""
        index = self._snapshot_of(version).index
        self._check_id(index, photo_id)
        return index, index.manifest.items[photo_id]

    @staticmethod
    def _check_id(index: StoredVersion, photo_id: int) -> None:
        items = index.manifest.items
        if not 0 <= photo_id < len(items):
            raise UnknownPhoto(
                f"no photo with id {photo_id} in index version {index.version} "
                f"(ids 0 to {len(items) - 1})"
            )

    def _snapshot_of(self, version: str | None) -> Snapshot:
        current, previous = self.snapshot, self._previous
        if version is None or version == current.version:
            return current
        if previous is not None and version == previous.version:
            return previous
        raise UnknownPhoto(
            f"index version {version!r} is not served (the current one is "
            f"{current.version}); search again"
        )

    def stats(self) -> dict[str, Any]:
        """What /v1/index shows."""
        snap, encoder = self.snapshot, self.encoder
        manifest = snap.index.manifest
        return {
            "version": snap.version,
            "count": manifest.count,
            "created": manifest.created,
            "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(snap.loaded_at)),
            "index": manifest.index.model_dump(
                include={"kind", "factory", "dim", "nlist", "nprobe", "recall_at_k", "recall_k"}
            )
            if manifest.index
            else {},
            "store": self.store.engine,
            "device": snap.index.device,
            "model": {
                "fingerprint": manifest.model.fingerprint,
                "backbone": manifest.model.backbone,
                "providers": encoder.providers if encoder else [],
            },
            "classes": snap.classes,
            "last_reload_error": self.last_reload_error,
        }


def search_queries(
    index: StoredVersion, embeddings: np.ndarray, queries: Sequence[Query]
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each query's page of results: the queries without a filter in one store call, each
    filtered one in its own (filters differ)."""
    out: list[tuple[np.ndarray, np.ndarray] | None] = [None] * len(queries)
    plain = [i for i, q in enumerate(queries) if q.where is None or q.where.empty]
    if plain:
        depth = max(queries[i].offset + queries[i].k for i in plain)
        scores, ids = index.search(embeddings[plain], depth)
        for row, i in enumerate(plain):
            out[i] = queries[i].page(scores[row], ids[row])
    for i, query in enumerate(queries):
        if out[i] is None:
            scores, ids = index.search(embeddings[i : i + 1], query.offset + query.k, query.where)
            out[i] = query.page(scores[0], ids[0])
    return [found for found in out if found is not None]


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
