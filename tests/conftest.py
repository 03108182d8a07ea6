"""Shared fixtures: one CPU thread for tests, a private feature cache, and for the service
tests a real model, a real index and a real server.

``service_assets`` (once per session) prepares a few real classes from ../shared/data
(Quick, Draw! sketches, TuxPaint photos; generated stand-ins where it is absent), trains IIAE
a few hundred steps, exports the ONNX encoders and builds the gallery index with the builder.
``run_service`` starts ``python -m service`` in a subprocess on a free loopback port.
``qdrant_path`` holds the same gallery in a Qdrant store (the client's embedded local mode),
built by the builder with the same model; ``any_service`` is the server over either store.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SBIR_SHARED_DATA", REPO.parent / "shared" / "data"))
STAMPS = Path("/usr/share/tuxpaint/stamps")
CATEGORIES = ["apple", "fish", "flower"]  # real classes: 21 photos, about 100 sketches
STANDIN_CLASSES = ["circle", "square", "triangle"]
TEST_CLASSES = ["apple", "triangle"]  # the unseen class of either data set
TRAIN_STEPS = 200
ADMIN_TOKEN = "test-admin-token"
STORES = ["faiss", "qdrant"]
HOUSE = [
    [[20, 20, 230, 230, 20], [250, 110, 110, 250, 250]],
    [[20, 125, 230], [110, 10, 110]],
]  # a drawing
# One thread each: the tests share a small, busy CPU.
LEAN_ENV = {
    "SBIR_ORT_THREADS": "1",
    "SBIR_FAISS_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "SBIR_DECODE_WORKERS": "2",
}


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models and indexes gain nothing from threads; on a busy CPU spinning costs a lot."""
    import faiss
    import torch

    before = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(before[0])
    faiss.omp_set_num_threads(before[1])


@pytest.fixture(scope="module")
def feature_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A feature cache (SBIR_CACHE_DIR) of the module's own, so each image is extracted once."""
    cache = tmp_path_factory.mktemp("sbir-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SBIR_CACHE_DIR", str(cache))
        yield cache


@dataclass(frozen=True)
class ServiceAssets:
    """A data root (sketch/, photo/), the exported model and the index built over photo/."""

    data: Path
    model_dir: Path
    index_dir: Path
    real: bool  # real shared data, not stand-ins

    @property
    def photos(self) -> Path:
        return self.data / "photo"

    def sketches(self) -> list[Path]:
        return sorted((self.data / "sketch").rglob("*.png"))


def has_shared_data() -> bool:
    return (SHARED / "tuxpaint_photos.tsv").is_file() and STAMPS.is_dir()


def make_data(root: Path) -> bool:
    """Real classes from the shared data when present, else stand-ins; True when real."""
    if has_shared_data():
        from index_builder.training.prepare import prepare_shared_data

        prepare_shared_data(SHARED, root, categories=CATEGORIES)
        return True
    from standins import make_folder_layout

    make_folder_layout(root, STANDIN_CLASSES, 12, 4)
    return False


def train_and_export(data: Path, base: Path) -> Path:
    """Train a few hundred steps, then export the encoders, both through the builder CLI."""
    import torch

    from index_builder.cli import main

    test_file = base / "test_classes.txt"
    test_file.write_text("\n".join(c for c in TEST_CLASSES if (data / "sketch" / c).is_dir()))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        args = [
            "train",
            "--data",
            str(data),
            "--test-classes",
            str(test_file),
            "--out",
            str(base / "run"),
            "--steps",
            str(TRAIN_STEPS),
            "--log-every",
            "100",
            "--eval-every",
            "100000",
            "--checkpoint-every",
            "100000",
        ]
        assert main(args) == 0
        assert main(["export-onnx", "--run", str(base / "run"), "--out", str(base / "model")]) == 0
    finally:
        torch.set_num_threads(threads)
    return base / "model"


@pytest.fixture(scope="session")
def service_assets(tmp_path_factory: pytest.TempPathFactory) -> ServiceAssets:
    """Model and index, built once per session from real images."""
    from index_builder.indexing.rebuild import BuildOptions, build_new_index

    base = tmp_path_factory.mktemp("service-assets")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SBIR_CACHE_DIR", str(base / "cache"))
        real = make_data(base / "data")
        model_dir = train_and_export(base / "data", base)
    build_new_index(model_dir, base / "data" / "photo", base / "index", BuildOptions(workers=1))
    return ServiceAssets(base / "data", model_dir, base / "index", real)


# --- a real server ---------------------------------------------------------------------------


@dataclass
class RunningService:
    """A ``python -m service`` subprocess and where to reach it."""

    url: str
    process: subprocess.Popen
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def service_env(assets: ServiceAssets, tmp: Path, **settings: object) -> dict[str, str]:
    """SBIR_* settings for a server over ``assets`` (extra ones as keyword arguments)."""
    env = {
        "SBIR_MODEL_DIR": str(assets.model_dir),
        "SBIR_INDEX_DIR": str(assets.index_dir),
        "SBIR_THUMBNAIL_DIR": str(tmp / "thumbnails"),
        "SBIR_ADMIN_TOKEN": ADMIN_TOKEN,
        "SBIR_WATCH_INTERVAL_S": "0",
    }
    return env | {f"SBIR_{k.upper()}": str(v) for k, v in settings.items()}


@contextmanager
def run_service(
    env: dict[str, str],
    log_file: Path,
    ready: bool = True,
    timeout: float = 120.0,
    as_user: list[str] | None = None,
) -> Iterator[RunningService]:
    """``python -m service`` on a free 127.0.0.1 port, until it answers /healthz (and
    /readyz when ``ready``); terminated on exit. ``as_user``: a command prefix that runs it as
    another user (``setpriv --reuid ...``)."""
    port = free_port()
    cmd = [
        *(as_user or []),
        sys.executable,
        "-m",
        "service",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--no-access-log",
    ]
    with open(log_file, "wb") as log:
        process = subprocess.Popen(
            cmd, cwd=REPO, env=os.environ | LEAN_ENV | env, stdout=log, stderr=subprocess.STDOUT
        )
    running = RunningService(f"http://127.0.0.1:{port}", process, log_file)
    try:
        wait_for(running, "/readyz" if ready else "/healthz", timeout)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_for(service: RunningService, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if service.process.poll() is not None:
            raise RuntimeError(
                f"the service exited ({service.process.returncode}):\n{service.log()}"
            )
        try:
            if httpx.get(service.url + path, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{service.url}{path} not 200 after {timeout}s:\n{service.log()}")


SMALL_LIMITS = {
    "max_upload_bytes": 1_000_000,
    "max_pixels": 4_000_000,
    "max_k": 50,
    "max_strokes": 200,
    "max_points": 5_000,
}


@pytest.fixture(scope="session")
def service(
    service_assets: ServiceAssets, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """A ready server over the session's index, with small limits the tests can reach."""
    tmp = tmp_path_factory.mktemp("service")
    env = service_env(service_assets, tmp, **SMALL_LIMITS)
    with run_service(env, tmp / "service.log") as running:
        yield running


@pytest.fixture(scope="session")
def qdrant_path(service_assets: ServiceAssets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The session's gallery in a Qdrant local-mode folder, built by the builder with the same
    model (the client is closed after: one process at a time holds such a folder)."""
    from gallery_store.qdrant_store import QdrantStore
    from gallery_store.settings import StoreSettings
    from index_builder.indexing.rebuild import BuildOptions, build_new_index

    path = tmp_path_factory.mktemp("qdrant") / "store"
    store = QdrantStore(StoreSettings(store="qdrant", qdrant_path=path))
    try:
        build_new_index(
            service_assets.model_dir, service_assets.photos, store, BuildOptions(workers=1)
        )
    finally:
        store.close()
    return path


def copy_qdrant(qdrant_path: Path, target: Path) -> Path:
    """A private copy of the session's Qdrant folder (each process needs its own)."""
    return Path(shutil.copytree(qdrant_path, target))


@pytest.fixture(scope="session")
def qdrant_service(
    service_assets: ServiceAssets, qdrant_path: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningService]:
    """``service`` over the Qdrant store."""
    tmp = tmp_path_factory.mktemp("qdrant-service")
    store = copy_qdrant(qdrant_path, tmp / "qdrant")
    env = service_env(service_assets, tmp, store="qdrant", qdrant_path=store, **SMALL_LIMITS)
    with run_service(env, tmp / "service.log") as running:
        yield running


@pytest.fixture(scope="session", params=STORES)
def any_service(request: pytest.FixtureRequest) -> RunningService:
    """The server over each store in turn (same model, same photos, same limits)."""
    return request.getfixturevalue("service" if request.param == "faiss" else "qdrant_service")
