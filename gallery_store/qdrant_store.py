"""The Qdrant engine: each gallery version is a collection, the served one an alias.

Names: the alias is ``SBIR_QDRANT_COLLECTION`` (``sbir-gallery``); version ``v000003`` is the
collection ``sbir-gallery-v000003``. A point a photo: its id is the photo's id (its row, photos
in path order, as in the FAISS store), its vector the photo vector (dot product: the vectors
are unit length, so scores are cosine similarities, as FAISS gives), its payload ``path``,
``class``, ``size`` ([width, height]), ``sha256`` and ``dirs`` (the folders above the photo,
for ``path_prefix`` filters). Names that are not UTF-8 are stored shown as ``\\xNN`` and, to
find the file again, JSON-escaped in ``raw_path`` / ``raw_class``.

A commit creates the next version's collection, upserts every point, writes the version's
manifest header and report into the collection's metadata (``complete``: the collection is
whole), and only then moves the alias in one atomic alias operation (delete + create). A
build killed before that leaves the alias on the version it served; its incomplete or never
served collection is deleted by the next build. Versions that were served carry ``served``
in their metadata; the newest ``keep`` of them stay, the aliased one always.

Locations: ``SBIR_QDRANT_URL`` (a server or cluster; shards and replicas of new collections
from ``SBIR_QDRANT_SHARDS`` / ``SBIR_QDRANT_REPLICAS``) or ``SBIR_QDRANT_PATH``, the client's
embedded local mode (exact search in Python; one process at a time holds the folder, so a
builder and a service share it only inside one process). One client per location and process
(``client_for``), shared by whatever opens the store there.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import tempfile
import threading
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from hashlib import sha256
from pathlib import Path
from typing import Any

import numpy as np
from qdrant_client import QdrantClient
from qdrant_client import models as qm

from gallery_store.base import (
    FingerprintMismatchError,
    IndexBusyError,
    IndexIntegrityError,
    Manifest,
    ManifestItem,
    Report,
    StoredVersion,
    VectorStore,
    VersionGoneError,
    Where,
    ancestors,
    batches,
    check_payload,
    folder_of,
    from_json,
    to_json,
    write_error,
)
from gallery_store.faiss_index import IndexInfo
from gallery_store.photos import display_path
from gallery_store.settings import StoreSettings

UPSERT_BATCH = 512
SCROLL_PAGE = 2048
_clients: dict[str, QdrantClient] = {}
_clients_lock = threading.Lock()


def client_for(settings: StoreSettings) -> tuple[str, QdrantClient]:
    """This process's client of the settings' Qdrant location, and the location's key."""
    if settings.qdrant_url is not None:
        key = f"url:{settings.qdrant_url}"
    else:
        key = f"path:{Path(settings.qdrant_path or '.').resolve()}"
    with _clients_lock:
        if key not in _clients:
            if settings.qdrant_url is not None:
                api_key = settings.qdrant_api_key
                _clients[key] = QdrantClient(
                    url=settings.qdrant_url,
                    api_key=api_key.get_secret_value() if api_key else None,
                )
            else:
                _clients[key] = QdrantClient(path=str(settings.qdrant_path))
        return key, _clients[key]


def close_client(key: str) -> None:
    """Close this process's client of a location (local mode: frees the folder for another
    process)."""
    with _clients_lock:
        client = _clients.pop(key, None)
    if client is not None:
        client.close()


def _raw(value: str) -> str | None:
    """A JSON-escaped copy of a name that is not valid UTF-8 (surrogate escapes), else None."""
    return json.dumps(value) if display_path(value) != value else None


def _unraw(payload: dict[str, Any], name: str) -> str | None:
    raw = payload.get(f"raw_{name}")
    return json.loads(raw) if raw is not None else payload.get(name)


def point_payload(item: ManifestItem) -> dict[str, Any]:
    """A photo's payload (see the module docstring)."""
    shown = display_path(item.path)
    payload: dict[str, Any] = {
        "path": shown,
        "class": None if item.cls is None else display_path(item.cls),
        "size": [item.width, item.height],
        "sha256": item.sha256,
        "dirs": ancestors(shown),
    }
    for name, value in (("path", item.path), ("class", item.cls)):
        if value is not None and (raw := _raw(value)) is not None:
            payload[f"raw_{name}"] = raw
    return payload


def item_of(point_id: int, payload: dict[str, Any]) -> ManifestItem:
    """The manifest item a point's payload holds."""
    width, height = payload["size"]
    return ManifestItem(
        id=point_id,
        path=_unraw(payload, "path"),
        cls=_unraw(payload, "class"),
        width=width,
        height=height,
        sha256=payload["sha256"],
    )


def to_filter(where: Where | None) -> qm.Filter | None:
    """``where`` as a Qdrant payload filter (None: no filter)."""
    if where is None or where.empty:
        return None
    must: list[Any] = []
    if where.classes is not None:
        must.append(qm.FieldCondition(key="class", match=qm.MatchAny(any=sorted(where.classes))))
    folder = folder_of(where.path_prefix or "")
    if folder:
        must.append(qm.FieldCondition(key="dirs", match=qm.MatchValue(value=folder)))
    must_not: list[Any] = []
    if where.exclude_ids:
        must_not.append(qm.HasIdCondition(has_id=sorted(where.exclude_ids)))
    return qm.Filter(must=must or None, must_not=must_not or None)


class QdrantVersion(StoredVersion):
    """One version's collection; the manifest's items are read from the points' payloads."""

    def __init__(
        self,
        client: QdrantClient,
        collection: str,
        version: str,
        manifest: Manifest,
        report: Report,
    ) -> None:
        self.client, self.collection, self.version = client, collection, version
        self.manifest, self.report = manifest, report
        self.device = "qdrant"

    def vectors(self) -> np.ndarray:
        dim = self.manifest.model.embedding_dim
        out = np.zeros((self.manifest.count, dim), np.float32)
        with self._gone_as_error():
            for point in _scroll(self.client, self.collection, with_vectors=True):
                out[int(point.id)] = point.vector
        return out

    def vector(self, item_id: int) -> np.ndarray:
        with self._gone_as_error():
            points = self.client.retrieve(self.collection, [item_id], with_vectors=True)
        if not points:
            raise IndexIntegrityError(f"{self.collection}: no point {item_id}")
        return np.asarray(points[0].vector, dtype=np.float32)

    def present(self) -> bool:
        return self.client.collection_exists(self.collection)

    @contextmanager
    def _gone_as_error(self) -> Iterator[None]:
        """A failure on a collection that no longer exists (pruned by a build: Qdrant cannot
        tell a builder who reads it) becomes VersionGoneError."""
        try:
            yield
        except Exception as err:
            if self.present():
                raise
            raise VersionGoneError(
                f"{self.collection}: version {self.version} was removed"
            ) from err

    def search(
        self, queries: np.ndarray, k: int, where: Where | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Qdrant's search with the filter applied inside it (HNSW on a server: filtered
        search stays exact in count: Qdrant picks brute force for selective filters)."""
        q = np.atleast_2d(np.asarray(queries, dtype=np.float32))
        flt = to_filter(where)
        requests = [
            qm.QueryRequest(query=row.tolist(), filter=flt, limit=max(k, 1), with_payload=False)
            for row in q
        ]
        with self._gone_as_error():
            answers = self.client.query_batch_points(self.collection, requests=requests)
        width = max((len(a.points) for a in answers), default=0)
        scores = np.full((len(q), width), -np.inf, np.float32)
        ids = np.full((len(q), width), -1, np.int64)
        for i, answer in enumerate(answers):
            for j, point in enumerate(answer.points):
                scores[i, j], ids[i, j] = point.score, int(point.id)
        return scores, ids


def _scroll(client: QdrantClient, collection: str, with_vectors: bool) -> Iterator[Any]:
    offset = None
    while True:
        points, offset = client.scroll(
            collection,
            limit=SCROLL_PAGE,
            offset=offset,
            with_payload=not with_vectors,
            with_vectors=with_vectors,
        )
        yield from points
        if offset is None:
            return


class QdrantStore(VectorStore):
    """Gallery versions as Qdrant collections behind one alias (module docstring)."""

    engine = "qdrant"

    def __init__(self, settings: StoreSettings) -> None:
        self.settings = settings
        self.key, self.client = client_for(settings)
        self.alias = settings.qdrant_collection
        where = settings.qdrant_url or str(settings.qdrant_path)
        self.location = f"qdrant {where} alias {self.alias}"

    @classmethod
    def from_settings(cls, settings: StoreSettings) -> QdrantStore:
        return cls(settings)

    def close(self) -> None:
        """Release the client (local mode: the folder, for another process)."""
        close_client(self.key)

    # --- names ---

    def collection(self, version: str) -> str:
        return f"{self.alias}-{version}"

    def _versions(self) -> dict[str, dict[str, Any]]:
        """Version -> collection metadata of every version collection, oldest first."""
        prefix = self.alias + "-v"
        names = sorted(
            c.name
            for c in self.client.get_collections().collections
            if c.name.startswith(prefix) and c.name[len(prefix) :].isdigit()
        )
        return {n[len(self.alias) + 1 :]: self._metadata(n) for n in names}

    def _metadata(self, collection: str) -> dict[str, Any]:
        return dict(self.client.get_collection(collection).config.metadata or {})

    # --- reading ---

    def served(self) -> str | None:
        for alias in self.client.get_aliases().aliases:
            if alias.alias_name == self.alias:
                return alias.collection_name[len(self.alias) + 1 :]
        return None

    def load_current(
        self, expected_fingerprint: str | None = None, verify: bool = True
    ) -> QdrantVersion:
        version = self.served()
        if version is None:
            raise FileNotFoundError(
                f"{self.location}: no gallery index here (no alias); build one with "
                "`python -m index_builder build-index`"
            )
        loaded = self.load_version(version, verify)
        if expected_fingerprint is not None and loaded.fingerprint != expected_fingerprint:
            raise FingerprintMismatchError(
                f"{self.location}: the index was built with model {loaded.fingerprint[:16]}, "
                f"but the serving model is {expected_fingerprint[:16]}; rebuild it with "
                "`python -m index_builder rebuild --model MODEL_DIR`"
            )
        return loaded

    def load_version(self, version: str, verify: bool = True) -> QdrantVersion:
        """A complete version: its header and report from the collection's metadata, its
        items from the payloads (all ids 0..count-1 present, else IndexIntegrityError)."""
        name = self.collection(version)
        try:
            meta = self._metadata(name)
        except (ValueError, RuntimeError) as err:  # local mode: ValueError; server: 404
            raise IndexIntegrityError(f"{self.location}: version {version} is missing") from err
        if not meta.get("complete"):
            raise IndexIntegrityError(f"{name}: an incomplete version (a build was interrupted)")
        manifest = from_json(Manifest, meta["manifest"])
        report = from_json(Report, meta["report"])
        items: list[ManifestItem | None] = [None] * manifest.count
        for point in _scroll(self.client, name, with_vectors=False):
            point_id = int(point.id)
            if not 0 <= point_id < manifest.count:
                raise IndexIntegrityError(f"{name}: point {point_id} beyond {manifest.count}")
            items[point_id] = item_of(point_id, point.payload or {})
        if any(it is None for it in items):
            raise IndexIntegrityError(
                f"{name}: {items.count(None)} of {manifest.count} points are missing"
            )
        manifest.items = [it for it in items if it is not None]
        manifest.version = version
        return QdrantVersion(self.client, name, version, manifest, report)

    def served_versions(self) -> list[str]:
        return [v for v, meta in self._versions().items() if meta.get("served")]

    def exists(self) -> bool:
        return self.served() is not None

    def check_new(self) -> None:
        if self.exists():
            raise ValueError(f"{self.location}: already holds an index; use `rebuild` to update it")

    def check_existing(self) -> None:
        """Nothing to check: a Qdrant location is given whole by the settings, and an empty
        one starts an index."""

    # --- writing ---

    def lock(self) -> AbstractContextManager[None]:
        return self._locked()

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """A build lock on this machine (a file beside the local-mode folder, or in the temp
        folder for a server: Qdrant has no lock of its own, so two builders on different
        machines must not run at once)."""
        if self.settings.qdrant_path is not None:
            Path(self.settings.qdrant_path).mkdir(parents=True, exist_ok=True)
            path = Path(self.settings.qdrant_path) / ".sbir-build.lock"
        else:
            tag = sha256(f"{self.settings.qdrant_url} {self.alias}".encode()).hexdigest()[:16]
            path = Path(tempfile.gettempdir()) / f"sbir-qdrant-{tag}.lock"
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise IndexBusyError(f"{self.location}: another build is running") from err
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def remove_stale(self) -> None:
        """Delete version collections an interrupted build left: incomplete ones, and
        complete ones never served, newer than the served one."""
        served = self.served()
        for version, meta in self._versions().items():
            if version == served:
                continue
            newer = served is None or version > served
            if not meta.get("complete") or (newer and not meta.get("served")):
                self.client.delete_collection(self.collection(version))

    def commit(self, vectors: np.ndarray, manifest: Manifest, report: Report, keep: int) -> str:
        """Write the next version's collection, move the alias to it, prune. A failure (a
        full disk, a server away) raises StoreWriteError saying what and where; the new
        collection is deleted and the alias stays (``remove_stale`` finishes any leftover)."""
        check_payload(vectors, manifest)
        versions = self._versions()
        number = max((int(v[1:]) for v in versions), default=0) + 1
        version = f"v{number:06d}"
        x = np.ascontiguousarray(vectors, dtype=np.float32)
        try:
            self._write_version(version, x, manifest, report)
            self._switch(version)
        except Exception as err:
            served: str | None = version  # unknown: keep the collection
            now = "the served version is unknown"
            with contextlib.suppress(Exception):
                served = self.served()
                now = f"{served or 'no version'} is served"
            if served != version:  # never served: delete it (or the next build does)
                with contextlib.suppress(Exception):
                    self.client.delete_collection(self.collection(version))
            what = f"writing version {version} (collection {self.collection(version)})"
            raise write_error(err, what, self._where(), x.nbytes * 2, now) from err
        try:
            self.prune(keep)
        except Exception as err:
            what = f"pruning after {version}"
            raise write_error(err, what, self._where(), note=f"{version} is served") from err
        return version

    def _where(self) -> Path | str:
        """The local-mode folder (its free space is told), or the server."""
        path = self.settings.qdrant_path
        return Path(path) if path is not None else self.location

    def _write_version(
        self, version: str, x: np.ndarray, manifest: Manifest, report: Report
    ) -> None:
        """The collection of ``version``: its points, then its metadata, marked complete."""
        name = self.collection(version)
        dim = int(x.shape[1]) if x.ndim == 2 and x.shape[1] else manifest.model.embedding_dim
        self.client.create_collection(
            name,
            vectors_config=qm.VectorParams(size=dim, distance=qm.Distance.DOT),
            shard_number=self.settings.qdrant_shards,
            replication_factor=self.settings.qdrant_replicas,
        )
        if self.settings.qdrant_url is not None:  # local mode has no payload indexes
            for field in ("class", "dirs"):
                self.client.create_payload_index(name, field, qm.PayloadSchemaType.KEYWORD)
        items = manifest.items
        for start, stop in batches(len(items), UPSERT_BATCH):
            points = [
                qm.PointStruct(id=it.id, vector=x[it.id].tolist(), payload=point_payload(it))
                for it in items[start:stop]
            ]
            self.client.upsert(name, points=points, wait=True)
        manifest.version = version
        manifest.index = IndexInfo(
            kind="qdrant", factory="Qdrant collection (dot product)", n=len(items), dim=dim
        )
        header = manifest.model_copy(update={"items": []})
        self.client.update_collection(
            name,
            metadata={
                "complete": True,
                "manifest": to_json(header),
                "report": to_json(report),
            },
        )

    def _switch(self, version: str) -> None:
        """Mark the served version, move the alias in one atomic operation, mark the new one."""
        previous = self.served()
        if previous is not None:
            self.client.update_collection(self.collection(previous), metadata={"served": True})
        operations: list[Any] = []
        if previous is not None:
            operations.append(
                qm.DeleteAliasOperation(delete_alias=qm.DeleteAlias(alias_name=self.alias))
            )
        operations.append(
            qm.CreateAliasOperation(
                create_alias=qm.CreateAlias(
                    collection_name=self.collection(version), alias_name=self.alias
                )
            )
        )
        self.client.update_collection_aliases(change_aliases_operations=operations)
        self.client.update_collection(self.collection(version), metadata={"served": True})

    def prune(self, keep: int) -> list[str]:
        """Keep the newest ``keep`` served versions and the aliased one; delete the rest."""
        served = self.served()
        versions = self._versions()
        kept = [v for v, meta in versions.items() if meta.get("served")][-max(keep, 1) :]
        doomed = [v for v in versions if v not in kept and v != served]
        for version in doomed:
            self.client.delete_collection(self.collection(version))
        return doomed

    def report_path(self, version: str) -> str:
        return f"the metadata of Qdrant collection {self.collection(version)}"
