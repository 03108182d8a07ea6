"""The vector-store interface on both engines, without a model: real FAISS in an index
directory and real Qdrant in the client's embedded local mode. Every engine serves the same
results for the same vectors; filters are exact (the FAISS IVF index included); an
interrupted commit leaves the served version as it was; and the service imports nothing
from the builder.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from qdrant_client import models as qm

from gallery_store.base import (
    FingerprintMismatchError,
    IndexIntegrityError,
    Manifest,
    ManifestItem,
    ModelInfo,
    Report,
    VectorStore,
    Where,
)
from gallery_store.faiss_index import IndexSpec, build_index
from gallery_store.faiss_store import FaissStore
from gallery_store.qdrant_store import QdrantStore
from gallery_store.settings import StoreSettings
from gallery_store.stores import open_store
from gallery_store.versions import VERSIONS, Payload, commit_version, load_current

REPO = Path(__file__).resolve().parents[1]
DIM = 16
CLASSES = ["cat", "dog", "fish"]
STORES = ["faiss", "qdrant"]


def gallery(n: int, seed: int = 0) -> tuple[np.ndarray, Manifest]:
    """``n`` unit vectors and a manifest: photos ``<class>/<sub>/<i>.jpg``, sorted by path."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    paths = sorted(f"{CLASSES[i % 3]}/{'ab'[i % 2]}/{i:04d}.jpg" for i in range(n))
    items = [
        ManifestItem(id=i, path=p, cls=p.split("/")[0], width=10 + i, height=20, sha256=f"{i:064x}")
        for i, p in enumerate(paths)
    ]
    model = ModelInfo(fingerprint="f" * 64, backbone="test", embedding_dim=DIM, model_dir="/m")
    manifest = Manifest(
        created="2026-01-01T00:00:00+00:00",
        model=model,
        photos_root="/photos",
        source="/photos",
        count=n,
        items=items,
    )
    return vectors, manifest


def report() -> Report:
    return Report(mode="full", reason="new index")


def exact(vectors: np.ndarray, query: np.ndarray, rows: list[int], k: int) -> list[int]:
    """The true top ``k`` of ``rows`` by inner product (ties: lower id first)."""
    scores = vectors[rows] @ query
    order = sorted(range(len(rows)), key=lambda j: (-scores[j], rows[j]))
    return [rows[j] for j in order[:k]]


@pytest.fixture(params=STORES)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStore]:
    """An empty store of each engine (Qdrant: embedded local mode in a temporary folder)."""
    if request.param == "faiss":
        yield open_store(StoreSettings(), tmp_path / "index")
        return
    opened = open_store(StoreSettings(store="qdrant", qdrant_path=tmp_path / "qdrant"), None)
    try:
        yield opened
    finally:
        opened.close()


def test_commit_serve_and_search_like_exact_search(store: VectorStore) -> None:
    vectors, manifest = gallery(60)
    assert store.served() is None and not store.exists()
    with store.lock():
        assert store.commit(vectors, manifest, report(), keep=3) == "v000001"
    assert store.served() == "v000001" and store.served_versions() == ["v000001"]
    loaded = store.load_current(expected_fingerprint="f" * 64)
    assert [it.model_dump() for it in loaded.manifest.items] == [
        it.model_dump() for it in manifest.items
    ]
    assert loaded.manifest.index is not None and loaded.manifest.index.n == 60
    np.testing.assert_allclose(loaded.vectors(), vectors, atol=1e-6)
    np.testing.assert_allclose(loaded.vector(7), vectors[7], atol=1e-6)
    scores, ids = loaded.search(vectors[:3], 5)
    for q in range(3):
        assert ids[q].tolist() == exact(vectors, vectors[q], list(range(60)), 5)
        np.testing.assert_allclose(scores[q], vectors[ids[q]] @ vectors[q], atol=1e-5)
    with pytest.raises(FingerprintMismatchError):
        store.load_current(expected_fingerprint="0" * 64)


def test_filters_are_exact(store: VectorStore) -> None:
    vectors, manifest = gallery(90)
    with store.lock():
        store.commit(vectors, manifest, report(), keep=3)
    loaded = store.load_current()
    query = vectors[4]
    items = manifest.items
    cases = {
        Where(classes=frozenset({"dog"})): [it.id for it in items if it.cls == "dog"],
        Where(classes=frozenset({"cat", "fish"}), path_prefix="cat/b/"): [
            it.id for it in items if it.path.startswith("cat/b/")
        ],
        Where(path_prefix="fish"): [it.id for it in items if it.path.startswith("fish/")],
        Where(path_prefix="fis"): [],  # a folder, not a string prefix
        Where(classes=frozenset({"bird"})): [],
        Where(exclude_ids=frozenset({4, 5})): [i for i in range(90) if i not in (4, 5)],
    }
    for where, rows in cases.items():
        _, ids = loaded.search(query[None, :], 7, where)
        found = [i for i in ids[0].tolist() if i >= 0]
        assert found == exact(vectors, query, rows, 7), where


def test_a_filtered_search_on_an_ivf_index_loses_no_match(tmp_path: Path) -> None:
    """nprobe 1 of 16 lists misses most neighbours, but a filtered search scans the matching
    photos' stored vectors exactly."""
    vectors, manifest = gallery(3000, seed=1)
    built = build_index(vectors, IndexSpec("ivf-flat", "IVF16,Flat", 16), target_recall=0.0)
    built.info.nprobe = 1
    manifest.index = built.info
    with FaissStore(tmp_path).lock():
        commit_version(tmp_path, Payload(built.index, vectors, manifest, report()))
    loaded = load_current(tmp_path)
    where = Where(classes=frozenset({"cat"}))
    rows = [it.id for it in manifest.items if it.cls == "cat"]
    for q in range(5):
        _, ids = loaded.search(vectors[q][None, :], 50, where)
        assert ids[0].tolist() == exact(vectors, vectors[q], rows, 50)


def test_a_new_version_switches_atomically_and_old_ones_are_pruned(store: VectorStore) -> None:
    versions = []
    for seed in range(4):
        vectors, manifest = gallery(20 + seed, seed)
        with store.lock():
            versions.append(store.commit(vectors, manifest, report(), keep=2))
        assert store.served() == versions[-1]
        assert store.load_current().manifest.count == 20 + seed
    assert versions == ["v000001", "v000002", "v000003", "v000004"]
    assert store.served_versions() == ["v000003", "v000004"]
    assert store.load_version("v000003").manifest.count == 22
    with pytest.raises(IndexIntegrityError):
        store.load_version("v000001")


def leave_a_killed_commit(store: VectorStore) -> None:
    """What a build killed in the middle of writing version 2 leaves behind."""
    if isinstance(store, FaissStore):
        staging = store.index_dir / VERSIONS / ".staging-killed"
        staging.mkdir()
        (staging / "index.faiss").write_bytes(b"half an index")
        return
    assert isinstance(store, QdrantStore)
    name = store.collection("v000002")
    store.client.create_collection(
        name, vectors_config=qm.VectorParams(size=DIM, distance=qm.Distance.DOT)
    )
    store.client.upsert(name, points=[qm.PointStruct(id=0, vector=[1.0] * DIM, payload={})])


def test_a_killed_commit_leaves_the_served_version(store: VectorStore) -> None:
    vectors, manifest = gallery(30)
    with store.lock():
        store.commit(vectors, manifest, report(), keep=3)
    leave_a_killed_commit(store)
    assert store.served() == "v000001" and store.served_versions() == ["v000001"]
    assert store.load_current().manifest.count == 30
    more, more_manifest = gallery(40, seed=2)
    with store.lock(), pytest.raises(ValueError, match="35 vectors for 40 photos"):
        store.commit(more[:35], more_manifest, report(), keep=3)  # refused before writing
    assert store.served() == "v000001"
    with store.lock():
        store.remove_stale()
        assert store.commit(more, more_manifest, report(), keep=3) == "v000002"
    assert store.load_current().manifest.count == 40
    assert store.served_versions() == ["v000001", "v000002"]


def test_qdrant_payload_keeps_names_that_are_not_utf8(tmp_path: Path) -> None:
    vectors, manifest = gallery(3)
    odd = "caf\udce9/\udcff.jpg"  # bytes 0xe9, 0xff as os.fsdecode hands them over
    manifest.items[0].path, manifest.items[0].cls = odd, "caf\udce9"
    store = QdrantStore(StoreSettings(store="qdrant", qdrant_path=tmp_path / "q"))
    try:
        with store.lock():
            store.commit(vectors, manifest, report(), keep=3)
        item = store.load_current().manifest.items[0]
        assert (item.path, item.cls) == (odd, "caf\udce9")
        point = store.client.retrieve(store.collection("v000001"), [0], with_payload=True)[0]
        assert point.payload["path"] == "caf\\xe9/\\xff.jpg"
        assert point.payload["size"] == [10, 20] and point.payload["dirs"] == ["caf\\xe9"]
    finally:
        store.close()


def test_qdrant_settings_need_exactly_one_location(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one of SBIR_QDRANT_URL"):
        StoreSettings(store="qdrant")
    with pytest.raises(ValueError, match="exactly one of SBIR_QDRANT_URL"):
        StoreSettings(store="qdrant", qdrant_url="http://q:6333", qdrant_path=tmp_path)


def test_the_service_imports_nothing_from_the_builder() -> None:
    """``service/`` builds on ``model/`` and ``gallery_store/`` only."""
    offenders = []
    for path in sorted((REPO / "service").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "index_builder"]
    assert offenders == []
