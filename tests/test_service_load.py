"""The service under concurrent load, against a real uvicorn on loopback: 50 concurrent
searches are micro-batched and all succeed with the rankings single requests get (on both
stores); an index rebuilt by the builder (one photo added) is switched to in the middle of
load, by the admin endpoint and by watching CURRENT, and on the Qdrant store by watching its
alias, without dropping a request.

Qdrant's embedded local mode lets one process hold its folder, so the Qdrant case runs the
server (uvicorn, real HTTP) and the builder in this process, sharing the client; with a
Qdrant server they would be separate processes, as the FAISS cases are.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import shutil
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvicorn
from conftest import (
    ADMIN_TOKEN,
    HOUSE,
    STAMPS,
    RunningService,
    ServiceAssets,
    copy_qdrant,
    free_port,
    run_service,
    service_env,
)

from gallery_store.qdrant_store import QdrantStore
from gallery_store.settings import StoreSettings
from index_builder.indexing.rebuild import BuildOptions, rebuild
from model.preprocess import render_strokes
from service.app import create_app
from service.settings import ServiceSettings

pytestmark = pytest.mark.slow


def sketch_requests(assets: ServiceAssets, n: int) -> list[dict]:
    """``n`` search requests (httpx keyword arguments) over real sketches, in all three forms."""
    files = assets.sketches()[:: max(1, len(assets.sketches()) // 5)][:5]
    forms = []
    for i, path in enumerate(files):
        data = path.read_bytes()
        if i % 3 == 0:
            forms.append({"files": {"image": ("s.png", data)}, "data": {"k": "5"}})
        elif i % 3 == 1:
            forms.append({"json": {"image_base64": base64.b64encode(data).decode(), "k": 5}})
        else:
            forms.append({"json": {"strokes": HOUSE, "k": 5}})
    return [forms[i % len(forms)] for i in range(n)]


def top_ids(response: httpx.Response) -> list[int]:
    return [r["id"] for r in response.json()["results"]]


async def served_version(client: httpx.AsyncClient, wanted: str, polls: int = 150) -> str:
    """The version /readyz reports once it is ``wanted``, or the last one after ``polls``
    checks 0.1 s apart."""
    for _ in range(polls):
        version = (await client.get("/readyz")).json()["index_version"]
        if version == wanted:
            return version
        await asyncio.sleep(0.1)
    return version


def test_50_concurrent_searches_all_succeed_batched(
    any_service: RunningService, service_assets: ServiceAssets
) -> None:
    service = any_service
    requests = sketch_requests(service_assets, 50)
    with service.client() as client:
        expected = [top_ids(client.post("/v1/search", **r)) for r in requests[:5]]

    async def burst() -> list[httpx.Response]:
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=service.url, timeout=120, limits=limits) as c:
            return await asyncio.gather(*(c.post("/v1/search", **r) for r in requests))

    responses = asyncio.run(burst())
    assert [r.status_code for r in responses] == [200] * 50
    for i, response in enumerate(responses):
        assert top_ids(response) == expected[i % 5]  # batching mixes no results up
    assert max(r.json()["timing"]["batch_size"] for r in responses) > 1


# --- reload under load -----------------------------------------------------------------------


def add_photo(gallery: Path, n: int) -> Path:
    """Copy one more real photo (a TuxPaint stamp) into the gallery; a stand-in without them."""
    target = gallery / "extra"
    target.mkdir(exist_ok=True)
    if STAMPS.is_dir():
        source = sorted((STAMPS / "animals" / "mammals").rglob("*.png"))[n]
        return Path(shutil.copy(source, target / source.name))
    from standins import write_images

    write_images(target, [f"extra_{n}.jpg"], 7, "photo", seed=n)
    return target / f"extra_{n}.jpg"


def copy_index(assets: ServiceAssets, tmp: Path) -> tuple[Path, Path]:
    """A private copy of the session's gallery and index, to rebuild freely."""
    gallery, index = tmp / "gallery", tmp / "index"
    shutil.copytree(assets.photos, gallery)
    shutil.copytree(assets.index_dir, index)
    return gallery, index


@dataclass
class Load:
    """Searches sent by ``workers`` clients in a loop until stopped: statuses and versions."""

    statuses: list[int] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    old_urls: list[str] = field(default_factory=list)
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    async def worker(self, client: httpx.AsyncClient, requests: list[dict]) -> None:
        i = 0
        while not self.stop.is_set():
            response = await client.post("/v1/search", **requests[i % len(requests)])
            self.statuses.append(response.status_code)
            if response.status_code == 200:
                body = response.json()
                self.versions.append(body["index_version"])
                if body["index_version"] == "v000001" and body["results"]:
                    self.old_urls.append(body["results"][0]["url"])
            i += 1


async def under_load(
    service: RunningService | InProcessService,
    requests: list[dict],
    during: Callable[[httpx.AsyncClient], Awaitable[object]],
    workers: int = 4,
) -> tuple[Load, object]:
    """Run ``during`` while ``workers`` clients search; a moment of load before and after."""
    load = Load()
    async with httpx.AsyncClient(base_url=service.url, timeout=120) as client:
        tasks = [asyncio.create_task(load.worker(client, requests)) for _ in range(workers)]
        await asyncio.sleep(1.0)
        outcome = await during(client)
        await asyncio.sleep(1.0)
        load.stop.set()
        await asyncio.gather(*tasks)
    return load, outcome


def rebuild_with_a_photo(gallery: Path, index: Path, n: int) -> str | None:
    add_photo(gallery, n)
    return rebuild(index, photos=gallery, options=BuildOptions(workers=1)).version


def test_admin_reload_under_load_drops_nothing(
    service_assets: ServiceAssets, tmp_path: Path
) -> None:
    gallery, index = copy_index(service_assets, tmp_path)
    env = service_env(service_assets, tmp_path, index_dir=index)
    requests = sketch_requests(service_assets, 6)

    async def rebuild_then_reload(client: httpx.AsyncClient) -> httpx.Response:
        assert await asyncio.to_thread(rebuild_with_a_photo, gallery, index, 0) == "v000002"
        await asyncio.sleep(0.5)  # CURRENT moved, but nobody watches: still v000001
        auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        return await client.post("/v1/admin/reload", headers=auth)

    with run_service(env, tmp_path / "service.log") as running:
        load, reloaded = asyncio.run(under_load(running, requests, rebuild_then_reload))
        assert reloaded.json() == {
            "changed": True,
            "index_version": "v000002",
            "previous_version": "v000001",
        }
        with running.client() as client:
            stats = client.get("/v1/index").json()
            old_photo = client.get(load.old_urls[-1])  # a URL handed out before the swap
    assert set(load.statuses) == {200}, load.statuses
    assert load.versions[0] == "v000001" and load.versions[-1] == "v000002"
    assert load.versions == sorted(load.versions)  # never back to the old one
    assert stats["version"] == "v000002"
    assert stats["count"] == sum(1 for p in gallery.rglob("*") if p.is_file())
    assert old_photo.status_code == 200


def test_current_moving_is_picked_up_under_load(
    service_assets: ServiceAssets, tmp_path: Path
) -> None:
    gallery, index = copy_index(service_assets, tmp_path)
    env = service_env(service_assets, tmp_path, index_dir=index, watch_interval_s=0.2)
    requests = sketch_requests(service_assets, 6)

    async def rebuild_and_wait(client: httpx.AsyncClient) -> str:
        assert await asyncio.to_thread(rebuild_with_a_photo, gallery, index, 1) == "v000002"
        return await served_version(client, "v000002")

    with run_service(env, tmp_path / "service.log") as running:
        load, version = asyncio.run(under_load(running, requests, rebuild_and_wait))
        assert "CURRENT moved to v000002" in running.log()
    assert version == "v000002"
    assert set(load.statuses) == {200}, load.statuses
    assert load.versions[0] == "v000001" and load.versions[-1] == "v000002"


@dataclass
class InProcessService:
    """A uvicorn server on a thread of this process, and its log."""

    url: str
    log_file: Path

    def log(self) -> str:
        return self.log_file.read_text(errors="replace")


@contextmanager
def serve_in_process(settings: ServiceSettings, log_file: Path) -> Iterator[InProcessService]:
    """The service app under uvicorn on a free loopback port, in a thread, until /readyz."""
    handler = logging.FileHandler(log_file)
    logger = logging.getLogger("service")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    port = free_port()
    config = uvicorn.Config(
        create_app(settings), host="127.0.0.1", port=port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    running = InProcessService(f"http://127.0.0.1:{port}", log_file)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(running.url + "/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, f"not ready:\n{running.log()}"
            time.sleep(0.2)
        yield running
    finally:
        server.should_exit = True
        thread.join(30)
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_the_qdrant_alias_moving_is_picked_up_under_load(
    service_assets: ServiceAssets, qdrant_path: Path, tmp_path: Path
) -> None:
    gallery = Path(shutil.copytree(service_assets.photos, tmp_path / "gallery"))
    location = copy_qdrant(qdrant_path, tmp_path / "qdrant")
    settings = ServiceSettings(
        model_dir=service_assets.model_dir,
        store="qdrant",
        qdrant_path=location,
        thumbnail_dir=tmp_path / "thumbnails",
        watch_interval_s=0.2,
        ort_threads=1,
        faiss_threads=1,
        decode_workers=2,
    )
    store = QdrantStore(StoreSettings(store="qdrant", qdrant_path=location))
    requests = sketch_requests(service_assets, 6)

    def rebuild_with_a_photo() -> str | None:
        add_photo(gallery, 2)
        return rebuild(store, photos=gallery, options=BuildOptions(workers=1)).version

    async def rebuild_and_wait(client: httpx.AsyncClient) -> str:
        assert await asyncio.to_thread(rebuild_with_a_photo) == "v000002"
        return await served_version(client, "v000002")

    try:
        with serve_in_process(settings, tmp_path / "service.log") as running:
            load, version = asyncio.run(under_load(running, requests, rebuild_and_wait))
            assert "the Qdrant alias moved to v000002" in running.log()
            with httpx.Client(base_url=running.url) as client:
                stats = client.get("/v1/index").json()
    finally:
        store.close()
    assert version == "v000002"
    assert set(load.statuses) == {200}, load.statuses
    assert load.versions[0] == "v000001" and load.versions[-1] == "v000002"
    assert load.versions == sorted(load.versions)
    assert stats["store"] == "qdrant" and stats["count"] == sum(
        1 for p in gallery.rglob("*") if p.is_file()
    )


def test_liveness_answers_while_searches_queue(service: RunningService) -> None:
    """Nothing blocks the event loop: /healthz answers at once while 30 searches are queued."""
    png = io.BytesIO()
    render_strokes(HOUSE).save(png, "PNG")

    async def check() -> tuple[float, float]:
        loop = asyncio.get_running_loop()
        async with httpx.AsyncClient(base_url=service.url, timeout=120) as c:
            started = loop.time()
            searches = [
                asyncio.create_task(c.post("/v1/search", files={"image": png.getvalue()}))
                for _ in range(30)
            ]
            await asyncio.sleep(0.05)
            probe = loop.time()
            assert (await c.get("/healthz")).status_code == 200
            probe_s = loop.time() - probe
            assert all(r.status_code == 200 for r in await asyncio.gather(*searches))
            return probe_s, loop.time() - started

    probe_s, burst_s = asyncio.run(check())
    assert probe_s < max(0.5, burst_s / 4), f"/healthz took {probe_s:.2f}s of {burst_s:.2f}s"
