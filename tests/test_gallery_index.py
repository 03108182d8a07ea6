"""The gallery index end to end: build-index / rebuild through the CLI with exported ONNX
encoders, on real images (TuxPaint photos, Quick, Draw! sketches) where the shared data is
present, else on the stand-in images; plus the FAISS index choice on synthetic vectors.

A tiny run is trained and exported in subprocesses (so this process never imports torch):
model A (150 steps) and model B (another seed, 5 steps) for the model-change tests.
"""

from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
import pytest
from PIL import Image
from standins import make_folder_layout

from gallery_store.base import FingerprintMismatchError, IndexBusyError, IndexIntegrityError
from gallery_store.faiss_index import (
    IndexSpec,
    build_index,
    choose_spec,
    deepen_refine,
    nlist_for,
    read_index,
    recall_at_k,
    set_nprobe,
    write_index,
)
from gallery_store.photos import sha256_file
from gallery_store.qdrant_store import QdrantStore
from gallery_store.settings import StoreSettings as QdrantStoreSettings
from gallery_store.versions import POINTER, VERSIONS, load_current, locked, version_names
from index_builder.cli import main
from index_builder.indexing.rebuild import BuildOptions, build_new_index, rebuild
from index_builder.indexing.scan import scan_photos
from model.encoder import OnnxEncoder
from model.preprocess import load_image

SHARED = Path(
    os.environ.get("SBIR_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")
)
STAMPS = Path("/usr/share/tuxpaint/stamps")
REAL = (SHARED / "tuxpaint_photos.tsv").is_file() and (SHARED / "quickdraw").is_dir()
REAL = REAL and STAMPS.is_dir()
CLASSES = ["bird", "fish", "flower", "hat"]  # real classes with the most TuxPaint photos
TEST_CLASS = "hat"  # held out of training (the split needs one)
OPTIONS = BuildOptions(batch_size=16, workers=2, keep=3, progress=False)
QUIET = ["--no-progress", "--workers", "2"]


@dataclass(frozen=True)
class Data:
    root: Path  # <root>/{sketch,photo}/<class>/*
    real: bool


@dataclass(frozen=True)
class Models:
    a: Path
    b: Path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Data:
    """Real sketches and photos of CLASSES where the shared data is present, else stand-ins."""
    root = tmp_path_factory.mktemp("gallery-data")
    if REAL:
        from index_builder.training.prepare import prepare_shared_data

        prepare_shared_data(SHARED, root, categories=CLASSES)
    else:
        make_folder_layout(root, CLASSES, 10, 6)
    return Data(root, REAL)


def _cli(args: list[str], env: dict[str, str]) -> None:
    """Run ``python -m index_builder ARGS`` in a subprocess; fail with its stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "index_builder", *args],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def models(data: Data, tmp_path_factory: pytest.TempPathFactory) -> Models:
    """Two exported models: A (seed 0, 150 steps) and B (seed 1, 5 steps)."""
    base = tmp_path_factory.mktemp("gallery-models")
    (base / "test.txt").write_text(TEST_CLASS + "\n")
    env = {**os.environ, "SBIR_CACHE_DIR": str(base / "cache"), "OMP_NUM_THREADS": "1"}
    for name, seed, steps in (("a", 0, 150), ("b", 1, 5)):
        _cli(
            [
                "train",
                "--data",
                str(data.root),
                "--test-classes",
                str(base / "test.txt"),
                "--out",
                str(base / f"run-{name}"),
                "--steps",
                str(steps),
                "--seed",
                str(seed),
                "--log-every",
                "5",
                "--eval-every",
                "5",
            ],
            env,
        )
        _cli(
            [
                "export-onnx",
                "--run",
                str(base / f"run-{name}"),
                "--out",
                str(base / f"model-{name}"),
            ],
            env,
        )
    return Models(base / "model-a", base / "model-b")


@pytest.fixture
def photos(data: Data, tmp_path: Path) -> Path:
    """A private copy of the photo tree, free to change."""
    return Path(shutil.copytree(data.root / "photo", tmp_path / "photos"))


@pytest.fixture
def index_dir(photos: Path, models: Models, tmp_path: Path) -> Path:
    """An index of ``photos`` built with model A through the CLI."""
    out = tmp_path / "index"
    assert (
        main(
            [
                "build-index",
                "--model",
                str(models.a),
                "--photos",
                str(photos),
                "--out",
                str(out),
                *QUIET,
            ]
        )
        == 0
    )
    return out


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix in (".png", ".jpg"))


def _vectors_by_hash(index_dir: Path) -> dict[str, np.ndarray]:
    loaded = load_current(index_dir)
    vectors = np.asarray(loaded.vectors())
    return {it.sha256: vectors[it.id] for it in loaded.manifest.items}


# --- retrieval ------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_sketch_finds_photos_of_its_class(
    data: Data, models: Models, index_dir: Path, photos: Path
) -> None:
    if not data.real:
        pytest.skip(
            f"real data absent ({SHARED} with quickdraw/, and {STAMPS}): the stand-in "
            "images say nothing about retrieval"
        )
    sketch = OnnxEncoder(models.a, "sketch")
    loaded = load_current(index_dir, expected_fingerprint=sketch.fingerprint)
    labels = np.array([it.cls for it in loaded.manifest.items])
    precisions, chances = [], []
    for cls in CLASSES:
        if cls == TEST_CLASS:
            continue
        sketches = _images(data.root / "sketch" / cls)[:10]
        queries = sketch.embed_images([load_image(p) for p in sketches])
        k = int((labels == cls).sum())
        _, ids = loaded.search(queries, k)
        precisions.append(float((labels[ids] == cls).mean()))
        chances.append(k / len(labels))
    assert np.mean(precisions) >= np.mean(chances) + 0.15, (precisions, chances)


@pytest.mark.slow
def test_the_manifest_maps_ids_to_the_photos(
    capsys: pytest.CaptureFixture[str], index_dir: Path, photos: Path, models: Models
) -> None:
    assert "wrote v000001 (full: new index)" in capsys.readouterr().out
    loaded = load_current(index_dir)
    files = _images(photos)
    assert loaded.version == "v000001"
    assert loaded.photos_root == photos.resolve()
    assert loaded.manifest.count == loaded.index.ntotal == len(files)
    assert loaded.fingerprint == OnnxEncoder(models.a, "photo").fingerprint
    assert loaded.manifest.index.kind == "flat" and loaded.manifest.index.recall_at_k == 1.0
    for item in loaded.manifest.items:
        path = loaded.photo_path(item.id)
        assert item.cls == path.parent.name and path.parent.parent == photos.resolve()
        assert item.sha256 == sha256_file(path)
        with Image.open(path) as img:
            assert (item.width, item.height) == img.size
    assert [it.id for it in loaded.manifest.items] == list(range(len(files)))
    # the photo vectors are the encoder's, so a photo's nearest photo is itself
    _, ids = loaded.search(np.asarray(loaded.vectors()), 1)
    assert (ids[:, 0] == np.arange(len(files))).mean() > 0.9  # exact duplicates may tie


# --- rebuild --------------------------------------------------------------------------------


def _change(photos: Path, sketches: Path) -> dict[str, Path]:
    """Add, change, delete and move one photo each."""
    files = _images(photos)
    added = photos / files[0].parent.name / "added.png"
    shutil.copy(_images(sketches)[0], added)
    changed = files[1]
    with Image.open(changed) as img:
        edited = img.convert("RGB")
    edited.putpixel((0, 0), (1, 2, 3))
    edited.save(changed, format=Image.registered_extensions()[changed.suffix])
    files[2].unlink()
    moved = files[3].with_name("moved" + files[3].suffix)
    files[3].rename(moved)
    return {"added": added, "changed": changed, "deleted": files[2], "moved": moved}


@pytest.mark.slow
def test_rebuild_embeds_only_new_and_changed_photos(
    index_dir: Path, photos: Path, data: Data, models: Models, tmp_path: Path
) -> None:
    before = _vectors_by_hash(index_dir)
    n = len(before)
    _change(photos, data.root / "sketch")
    result = rebuild(index_dir, options=OPTIONS)
    r = result.report
    assert result.version == "v000002" and r.mode == "incremental"
    assert (r.added, r.changed, r.removed, r.unchanged) == (2, 1, 2, n - 3)
    assert (r.embedded, r.reused, r.skipped) == (2, n - 2, [])
    after = _vectors_by_hash(index_dir)
    assert len(after) == n
    for sha, vector in after.items():  # reused vectors are the stored ones, bit for bit
        if sha in before:
            assert np.array_equal(vector, before[sha])
    assert len(set(after) - set(before)) == 2
    # the same as a full build of the same photos
    full = build_new_index(models.a, photos, tmp_path / "full", OPTIONS)
    fresh = load_current(tmp_path / "full")
    assert [it.model_dump() for it in fresh.manifest.items] == [
        it.model_dump() for it in load_current(index_dir).manifest.items
    ]
    np.testing.assert_allclose(fresh.vectors(), load_current(index_dir).vectors(), atol=1e-5)
    assert full.report.embedded == n


@pytest.mark.slow
def test_rebuild_without_changes_writes_nothing_and_old_versions_are_pruned(
    index_dir: Path, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    pointer = (index_dir / POINTER).read_bytes()
    assert main(["rebuild", "--index", str(index_dir), *QUIET]) == 0
    assert "up to date at v000001" in capsys.readouterr().out
    assert (index_dir / POINTER).read_bytes() == pointer
    for step in range(3):
        shutil.copy(_images(photos)[0], photos / f"copy{step}.png")
        assert main(["rebuild", "--index", str(index_dir), "--keep", "2", *QUIET]) == 0
    assert version_names(index_dir) == ["v000003", "v000004"]
    loaded = load_current(index_dir)
    assert loaded.version == "v000004" and loaded.report.embedded == 0  # copies reuse vectors
    assert not [p for p in (index_dir / VERSIONS).iterdir() if p.name.startswith(".")]


@pytest.mark.slow
def test_corrupt_images_are_skipped_and_reported(
    index_dir: Path, photos: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = _images(photos)[0]
    (photos / "bird" / "text.jpg").write_text("not an image")
    (photos / "bird" / "truncated.png").write_bytes(good.read_bytes()[:200])
    (photos / "fish" / "empty.png").write_bytes(b"")
    capsys.readouterr()
    assert main(["rebuild", "--index", str(index_dir), *QUIET]) == 0
    out = capsys.readouterr().out
    report = load_current(index_dir).report
    skipped = {s.path: s.error for s in report.skipped}
    assert set(skipped) == {"bird/text.jpg", "bird/truncated.png", "fish/empty.png"}
    assert all("not a readable image" in e and "BytesIO" not in e for e in skipped.values())
    assert "skipped bird/truncated.png" in out and "3 skipped" in out
    assert report.embedded == 0
    paths = {it.path for it in load_current(index_dir).manifest.items}
    assert not paths & set(skipped)
    # unchanged bad files stay skipped without a new version; a repaired one is embedded
    assert rebuild(index_dir, options=OPTIONS).version is None
    with Image.open(good) as img:
        repaired = img.convert("RGB")
    repaired.putpixel((0, 0), (7, 8, 9))
    repaired.save(photos / "bird" / "truncated.png", format="PNG")
    result = rebuild(index_dir, options=OPTIONS)
    assert result.report.embedded == 1 and result.report.changed == 1
    assert {s.path for s in result.report.skipped} == {"bird/text.jpg", "fish/empty.png"}


def _kill_when_printed(proc: subprocess.Popen, marker: bytes, timeout: float = 120) -> bytes:
    """SIGKILL ``proc`` as soon as ``marker`` shows on its stderr; what it printed."""
    assert proc.stderr is not None
    seen, deadline = b"", time.monotonic() + timeout
    while marker not in seen:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"rebuild ended or hung before {marker!r}: {seen[-2000:]!r}")
        ready, _, _ = select.select([proc.stderr], [], [], 0.1)
        if ready:
            seen += os.read(proc.stderr.fileno(), 65536)
    proc.kill()
    proc.wait()
    return seen


@pytest.mark.slow
def test_an_interrupted_rebuild_leaves_current_and_rerunning_is_idempotent(
    index_dir: Path, photos: Path, data: Data
) -> None:
    extra = photos / "extra"
    extra.mkdir()
    for i, sketch in enumerate(_images(data.root / "sketch")[:40]):
        shutil.copy(sketch, extra / f"s{i:03d}.png")
    pointer, versions = (index_dir / POINTER).read_bytes(), version_names(index_dir)
    manifest = load_current(index_dir).manifest
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "index_builder",
        "rebuild",
        "--index",
        str(index_dir),
        "--batch-size",
        "1",
        "--workers",
        "1",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _kill_when_printed(proc, b"embed photos")
    assert proc.returncode == -9
    assert (index_dir / POINTER).read_bytes() == pointer
    assert version_names(index_dir) == versions
    assert load_current(index_dir).manifest == manifest
    first = rebuild(index_dir, options=OPTIONS)  # the lock died with the process
    assert first.version == "v000002" and first.report.embedded == 40
    assert rebuild(index_dir, options=OPTIONS).version is None
    assert load_current(index_dir).version == "v000002"
    assert not [p for p in (index_dir / VERSIONS).iterdir() if p.name.startswith(".")]


# --- the Qdrant store (embedded local mode) ------------------------------------------------


@pytest.fixture
def qdrant_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> QdrantStoreSettings:
    """SBIR_STORE=qdrant with a local-mode folder, for the CLI in this process (set after
    the fixtures before it in a test's arguments, so ``index_dir`` is still FAISS)."""
    monkeypatch.setenv("SBIR_STORE", "qdrant")
    monkeypatch.setenv("SBIR_QDRANT_PATH", str(tmp_path / "qdrant"))
    return QdrantStoreSettings()


def _qdrant(settings: QdrantStoreSettings) -> QdrantStore:
    return QdrantStore(settings)


@pytest.mark.slow
def test_qdrant_builds_and_rebuilds_like_faiss(
    index_dir: Path,
    qdrant_env: QdrantStoreSettings,
    photos: Path,
    data: Data,
    models: Models,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """build-index and rebuild through the CLI into Qdrant: the same photos, vectors and
    report as the FAISS index of the same photos; a rebuild upserts only what changed (new
    and changed photos embedded, removed ones gone, the rest reused by content hash) into a
    new collection, and the alias moves to it; bad images are skipped and reported as
    FAISS reports them."""
    assert main(["build-index", "--model", str(models.a), "--photos", str(photos), *QUIET]) == 0
    faiss_version = load_current(index_dir)
    store = _qdrant(qdrant_env)
    try:
        first = store.load_current()
        assert store.served() == "v000001" and first.collection == "sbir-gallery-v000001"
        assert [it.model_dump() for it in first.manifest.items] == [
            it.model_dump() for it in faiss_version.manifest.items
        ]
        np.testing.assert_allclose(first.vectors(), faiss_version.vectors(), atol=1e-6)
        before = {it.sha256: first.vectors()[it.id] for it in first.manifest.items}
    finally:
        store.close()
    _change(photos, data.root / "sketch")
    (photos / "bird" / "text.jpg").write_text("not an image")
    capsys.readouterr()
    assert main(["rebuild", *QUIET]) == 0
    assert "skipped bird/text.jpg" in capsys.readouterr().out
    assert rebuild(index_dir, options=OPTIONS).version == "v000002"  # FAISS, same photos
    faiss_version = load_current(index_dir)
    store = _qdrant(qdrant_env)
    try:
        second = store.load_current()
        r = second.report
        n = len(before)
        assert store.served() == "v000002" and r.mode == "incremental"
        assert (r.added, r.changed, r.removed, r.embedded, r.reused) == (3, 1, 2, 2, n - 2)
        assert r.skipped == faiss_version.report.skipped
        assert [s.path for s in r.skipped] == ["bird/text.jpg"]
        assert [it.model_dump() for it in second.manifest.items] == [
            it.model_dump() for it in faiss_version.manifest.items
        ]
        vectors = second.vectors()
        for it in second.manifest.items:  # reused vectors are the stored ones, bit for bit
            if it.sha256 in before:
                assert np.array_equal(vectors[it.id], before[it.sha256])
        assert store.served_versions() == ["v000001", "v000002"]
    finally:
        store.close()
    assert main(["rebuild", *QUIET]) == 0  # nothing changed: no new collection
    assert "up to date at v000002" in capsys.readouterr().out


@pytest.mark.slow
def test_qdrant_model_change_and_a_killed_rebuild(
    qdrant_env: QdrantStoreSettings,
    photos: Path,
    data: Data,
    models: Models,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A model change writes a new collection, fully embedded; a rebuild killed while it
    embeds leaves the alias where it was, and the next one completes."""
    assert main(["build-index", "--model", str(models.a), "--photos", str(photos), *QUIET]) == 0
    capsys.readouterr()
    assert main(["rebuild", "--model", str(models.b), *QUIET]) == 0
    assert "full: model changed (fingerprint" in capsys.readouterr().out
    store = _qdrant(qdrant_env)
    try:
        loaded = store.load_current()
        assert loaded.version == "v000002" and loaded.report.mode == "full"
        assert loaded.fingerprint == OnnxEncoder(models.b, "photo").fingerprint
        n = loaded.manifest.count
    finally:
        store.close()
    extra = photos / "extra"
    extra.mkdir()
    for i, sketch in enumerate(_images(data.root / "sketch")[:40]):
        shutil.copy(sketch, extra / f"s{i:03d}.png")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "index_builder", "rebuild", "--batch-size", "1", "--workers", "1"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _kill_when_printed(proc, b"embed photos")
    assert proc.returncode == -9
    store = _qdrant(qdrant_env)
    try:
        assert store.served() == "v000002" and store.load_current().manifest.count == n
    finally:
        store.close()
    assert main(["rebuild", *QUIET]) == 0
    store = _qdrant(qdrant_env)
    try:
        loaded = store.load_current()
        assert loaded.version == "v000003" and loaded.report.embedded == 40
        assert loaded.manifest.count == n + 40
    finally:
        store.close()


# --- models and integrity -------------------------------------------------------------------


@pytest.mark.slow
def test_a_model_change_forces_a_full_rebuild(
    index_dir: Path, models: Models, capsys: pytest.CaptureFixture[str]
) -> None:
    n = load_current(index_dir).manifest.count
    capsys.readouterr()
    assert main(["rebuild", "--index", str(index_dir), "--model", str(models.b), *QUIET]) == 0
    assert "full: model changed (fingerprint" in capsys.readouterr().out
    loaded = load_current(index_dir)
    r = loaded.report
    assert (r.mode, r.embedded, r.reused, r.unchanged) == ("full", n, 0, n)
    assert loaded.fingerprint == OnnxEncoder(models.b, "photo").fingerprint
    assert loaded.manifest.model.model_dir == str(models.b.resolve())
    # the next rebuild keeps to model B by default
    assert rebuild(index_dir, options=OPTIONS).version is None


@pytest.mark.slow
def test_a_fingerprint_mismatch_is_refused(index_dir: Path, models: Models) -> None:
    serving_a = OnnxEncoder(models.a, "sketch").fingerprint
    serving_b = OnnxEncoder(models.b, "sketch").fingerprint
    assert serving_a != serving_b
    assert load_current(index_dir, expected_fingerprint=serving_a).fingerprint == serving_a
    with pytest.raises(FingerprintMismatchError, match=f"serving model is {serving_b[:16]}"):
        load_current(index_dir, expected_fingerprint=serving_b)


def _tamper(index_dir: Path, tmp_path: Path, name: str, how: str) -> Path:
    copy = Path(shutil.copytree(index_dir, tmp_path / f"tampered-{name}-{how}"))
    version = json.loads((copy / POINTER).read_text())["version"]
    path = copy / VERSIONS / version / name
    data = bytearray(path.read_bytes())
    if how == "truncate":
        path.write_bytes(data[: len(data) // 2])
    else:
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    return copy


@pytest.mark.slow
def test_a_truncated_or_tampered_index_fails_clearly(
    index_dir: Path,
    photos: Path,
    models: Models,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cases = [
        ("index.faiss", "truncate", "truncated or was modified"),
        ("vectors.npy", "flip", "sha256 differs"),
        ("manifest.json", "flip", "sha256 differs"),
        ("checksums.json", "flip", "missing or modified"),
    ]
    for name, how, message in cases:
        broken = _tamper(index_dir, tmp_path, name, how)
        with pytest.raises(IndexIntegrityError, match=message) as err:
            load_current(broken)
        assert str(broken) in str(err.value)
    broken = tmp_path / "tampered-index.faiss-truncate"
    # a rebuild cannot trust the broken version: it embeds everything again
    capsys.readouterr()
    assert (
        main(
            [
                "rebuild",
                "--index",
                str(broken),
                "--photos",
                str(photos),
                "--model",
                str(models.a),
                *QUIET,
            ]
        )
        == 0
    )
    assert "full: the current version is unusable" in capsys.readouterr().out
    assert load_current(broken).version == "v000002"
    assert main(["build-index", "--model", "x", "--photos", "y", "--out", str(broken)]) == 2
    assert "already holds an index; use `rebuild`" in capsys.readouterr().err


def test_a_second_build_is_refused_while_one_runs(tmp_path: Path) -> None:
    """A second build on the same INDEX_DIR is refused while one holds the lock."""
    with locked(tmp_path), pytest.raises(IndexBusyError, match="another build is running"):
        rebuild(tmp_path, tmp_path, tmp_path, options=OPTIONS)
    with pytest.raises(FileNotFoundError, match="no gallery index here"):
        load_current(tmp_path)


# --- scanning -------------------------------------------------------------------------------


def test_a_folder_tree_is_scanned_with_classes_and_hashes(tmp_path: Path) -> None:
    root = tmp_path / "photos"
    for rel in (
        "cat/a.png",
        "cat/b.JPG",
        "dog/deep/c.png",
        "top.png",
        ".hidden/d.png",
        "cat/.e.png",
        "cat/notes.txt",
    ):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(rel.encode())
    scan = scan_photos(root, workers=2)
    assert scan.root == root.resolve() and scan.unreadable == []
    assert [(f.path, f.cls) for f in scan.files] == [
        ("cat/a.png", "cat"),
        ("cat/b.JPG", "cat"),
        ("dog/deep/c.png", None),
        ("top.png", None),
    ]
    assert scan.files[0].sha256 == sha256_file(root / "cat" / "a.png")


def test_a_list_file_is_scanned_and_missing_files_are_reported(tmp_path: Path) -> None:
    (tmp_path / "g" / "cat").mkdir(parents=True)
    (tmp_path / "g" / "cat" / "a.png").write_bytes(b"a")
    (tmp_path / "elsewhere.png").write_bytes(b"b")
    listing = tmp_path / "g" / "list.txt"
    listing.write_text(f"# gallery\ncat/a.png\n\n{tmp_path / 'elsewhere.png'}\tdog\ncat/gone.png\n")
    scan = scan_photos(listing)
    assert scan.root == (tmp_path / "g").resolve() and scan.source == listing.resolve()
    assert [(f.path, f.cls) for f in scan.files] == [
        (str((tmp_path / "elsewhere.png").resolve()), "dog"),
        ("cat/a.png", "cat"),
    ]
    assert [(s.path, s.sha256) for s in scan.unreadable] == [("cat/gone.png", None)]
    assert "cannot read the file" in scan.unreadable[0].error
    listing.write_text("a\tb\tc\n")
    with pytest.raises(ValueError, match=r"list\.txt:1"):
        scan_photos(listing)


# --- the FAISS index ------------------------------------------------------------------------


def clustered(n: int, seed: int, clusters: int = 1000, dim: int = 64) -> np.ndarray:
    """Unit vectors around ``clusters`` centres (spread 0.05-0.12 per dimension)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(clusters, dim)).astype(np.float32)
    spreads = rng.uniform(0.05, 0.12, clusters).astype(np.float32)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, clusters, n)
    x = centres[labels] / np.linalg.norm(centres[labels], axis=1, keepdims=True)
    x = x + rng.standard_normal((n, dim), dtype=np.float32) * spreads[labels, None]
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def test_the_index_type_follows_the_gallery_size() -> None:
    assert choose_spec(49_999) == IndexSpec("flat", "Flat")
    assert choose_spec(50_000) == IndexSpec("ivf-flat", "IVF224,Flat", 224)
    assert choose_spec(1_000_000) == IndexSpec("ivf-flat", "IVF1000,Flat", 1000)
    assert choose_spec(10_000_000) == IndexSpec("ivf-pq", "IVF3162,PQ64x4fs,Refine(SQ8)", 3162)
    assert nlist_for(100) == 2 and nlist_for(10) == 1


def _check_nprobe_rule(recalls: dict[int, float], nprobe: int, target: float) -> None:
    """nprobe is the first reaching the target, else the first within 0.005 of the best."""
    if recalls[nprobe] >= target:
        assert all(r < target for p, r in recalls.items() if p < nprobe)
    else:
        best = max(recalls.values())
        assert best < target and recalls[nprobe] >= best - 0.005
        assert all(r < best - 0.005 for p, r in recalls.items() if p < nprobe)


@pytest.mark.slow
def test_ivf_on_60k_vectors_reaches_the_recall_target(tmp_path: Path) -> None:
    x = clustered(60_000, seed=1)
    built = build_index(x)
    info = built.info
    assert (info.kind, info.nlist, info.n, info.recall_k) == ("ivf-flat", 245, 60_000, 100)
    assert info.recall_at_k >= 0.95 and info.recall_queries == 1000
    _check_nprobe_rule(info.nprobe_recalls, info.nprobe, 0.95)
    assert info.nprobe > 1  # the data is not trivially separable
    # fresh queries from the same distribution: recall near the measured one
    queries = clustered(300, seed=2)
    _, truth = faiss.knn(queries, x, 100, faiss.METRIC_INNER_PRODUCT)
    _, found = built.index.search(queries, 100)
    assert recall_at_k(found, truth) >= 0.9
    write_index(built.index, tmp_path / "index.faiss")
    again = read_index(tmp_path / "index.faiss", info.nprobe)
    assert faiss.extract_index_ivf(again).nprobe == info.nprobe
    assert np.array_equal(again.search(queries, 100)[1], found)


@pytest.mark.slow
def test_ivf_pq_for_the_largest_galleries(tmp_path: Path) -> None:
    x = clustered(20_000, seed=1)
    spec = choose_spec(len(x), flat_max=1_000, ivf_flat_max=10_000)
    built = build_index(x, spec)
    info = built.info
    assert (info.kind, info.factory, info.k_factor) == ("ivf-pq", "IVF141,PQ64x4fs,Refine(SQ8)", 8)
    assert info.recall_at_k >= 0.9  # re-ranking lifts PQ's cap
    _check_nprobe_rule(info.nprobe_recalls, info.nprobe, 0.95)
    write_index(built.index, tmp_path / "index.faiss")
    again = read_index(tmp_path / "index.faiss", info.nprobe)
    assert faiss.downcast_index(again).k_factor == 8


@pytest.mark.slow
def test_ivf_pq_reranks_deeper_until_the_target(tmp_path: Path) -> None:
    x = clustered(20_000, seed=1)
    spec = choose_spec(len(x), flat_max=1_000, ivf_flat_max=10_000)
    index = build_index(x, spec).index
    set_nprobe(index, spec.nlist)  # every list: only the PQ ranking can lose neighbours
    faiss.ParameterSpace().set_index_parameter(index, "k_factor_rf", 1)  # no re-ranking
    queries = x[:300]
    _, truth = faiss.knn(queries, x, 100, faiss.METRIC_INNER_PRODUCT)
    shallow = recall_at_k(index.search(queries, 100)[1], truth)
    assert shallow < 0.95  # PQ codes alone miss the target

    depth, recalls = deepen_refine(index, queries, truth, {1: round(shallow, 4)}, 0.95)
    assert list(recalls) == [2**i for i in range(len(recalls))] and depth == max(recalls)
    assert recalls[depth] >= 0.95 and all(r < 0.95 for d, r in recalls.items() if d < depth)
    assert faiss.downcast_index(index).k_factor == depth
    write_index(index, tmp_path / "index.faiss")  # the depth is stored with the index
    assert faiss.downcast_index(read_index(tmp_path / "index.faiss")).k_factor == depth

    # an unreachable target: the shallowest depth within 0.005 of the best, not the deepest
    depth, recalls = deepen_refine(index, queries, truth, {1: round(shallow, 4)}, 1.01)
    assert list(recalls) == [1, 2, 4, 8, 16, 32, 64]
    best = max(recalls.values())
    assert recalls[depth] >= best - 0.005 and all(
        r < best - 0.005 for d, r in recalls.items() if d < depth
    )
    assert depth < 64 and faiss.downcast_index(index).k_factor == depth


def test_gallery_code_runs_without_torch() -> None:
    code = (
        "import sys, index_builder.indexing.rebuild, bench.faiss_search; "
        "assert 'torch' not in sys.modules, 'torch imported'"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=False,
        cwd=Path(__file__).resolve().parents[1],
    )
    assert done.returncode == 0, done.stderr
