"""What a running service holds: engine, micro-batcher, decoding threads, thumbnails, metrics,
and the task that picks up a new index version when the store serves another one (the FAISS
directory's ``CURRENT`` moved, Qdrant's alias was switched).

Blocking work never runs on the event loop: decoding and thumbnails go to a thread pool,
encoding and searching to the batcher's worker thread, loading to ``asyncio.to_thread``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import faiss

from gallery_store.photos import MAX_PIXELS
from model.preprocess import DecodeLimits
from service.batching import MicroBatcher, Pending
from service.inputs import SketchRequest, to_query_array
from service.metrics import Metrics
from service.search import Hits, Query, ReloadError, ReloadResult, SearchEngine
from service.settings import ServiceSettings
from service.thumbnails import ThumbnailCache, ThumbnailError

log = logging.getLogger(__name__)
T = TypeVar("T")


class PhotoUnavailable(LookupError):
    """The photo is in the index but its file is gone or unreadable."""


class Busy(RuntimeError):
    """Every decode thread is busy and the queue for them is full: retry shortly."""


class Runtime:
    """The service's moving parts; ``start`` and ``stop`` bracket the app's life."""

    def __init__(self, settings: ServiceSettings) -> None:
        self.settings = settings
        self.metrics = Metrics()
        self.engine = SearchEngine(settings)
        self.pool = ThreadPoolExecutor(settings.decode_workers, thread_name_prefix="decode")
        # An upload waits a bounded time for a decode thread, in a bounded queue, and else
        # gets a quick 503: the pool's own queue would make every later upload wait.
        self.slots = asyncio.Semaphore(settings.decode_workers)
        self.waiting, self.last_busy = 0, -1e9
        self.batcher: MicroBatcher[Query, Hits] = MicroBatcher(
            self._process, settings.max_batch, settings.batch_wait_ms / 1000.0
        )
        # gallery photos: the builder's pixel limit (they were indexed under it)
        thumbs = settings.thumbnail_dir, settings.thumbnail_size, MAX_PIXELS
        self.thumbnails = ThumbnailCache(*thumbs)
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        """Start the batcher, load in the background (healthz answers meanwhile), watch."""
        if self.settings.faiss_threads:
            faiss.omp_set_num_threads(self.settings.faiss_threads)
        self.batcher.start()
        self._tasks.append(asyncio.create_task(self._first_load()))
        if self.settings.watch_interval_s > 0:
            self._tasks.append(asyncio.create_task(self._watch()))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await asyncio.to_thread(self.batcher.stop)
        self.pool.shutdown(wait=False, cancel_futures=True)

    async def reload(self) -> ReloadResult:
        """Switch to the index's current version (ReloadError keeps the old one)."""
        try:
            result = await asyncio.to_thread(self.engine.load)
        except ReloadError:
            self.metrics.reloads.labels("failed").inc()
            self.metrics.ready.set(int(self.engine.ready))
            raise
        self.metrics.reloads.labels("changed" if result.changed else "unchanged").inc()
        snap = self.engine.snapshot
        self.metrics.set_index(snap.version, snap.count)
        self.metrics.ready.set(1)
        return result

    async def _first_load(self) -> None:
        with contextlib.suppress(ReloadError):  # logged; /readyz says why
            await self.reload()

    async def _watch(self) -> None:
        """Reload when the store serves another version than the one served here, or when
        the one served here was removed from the store (``engine.orphaned`` while it is)."""
        seen: str | None = None
        while True:
            await asyncio.sleep(self.settings.watch_interval_s)
            try:
                served = await asyncio.to_thread(self.engine.served)
                present = await asyncio.to_thread(self.engine.serving_present)
            except Exception as err:  # a damaged CURRENT, a Qdrant server away: try again
                log.warning("cannot read the served index version: %s", err)
                continue
            if not present and self.engine.orphaned is None:
                seen = None  # try the store's version again, whatever failed before
            if served is not None and served != seen:
                seen = served
                if not (self.engine.ready and self.engine.snapshot.version == served):
                    await self._follow(served)
                present = await asyncio.to_thread(self.engine.serving_present)
            self._mark_orphaned(present)

    async def _follow(self, served: str) -> None:
        pointer = "CURRENT" if self.engine.store.engine == "faiss" else "the Qdrant alias"
        log.info("%s moved to %s; reloading", pointer, served)
        with contextlib.suppress(ReloadError):
            await self.reload()

    def _mark_orphaned(self, present: bool) -> None:
        if present:
            self.engine.orphaned = None
            return
        if self.engine.orphaned is None:
            version = self.engine.snapshot.version
            why = self.engine.last_reload_error or {}
            self.engine.orphaned = (
                f"index version {version} was removed from the store, and no version this "
                "model can serve is current" + (f" ({why['reason']})" if why.get("reason") else "")
            )
            log.error("%s", self.engine.orphaned)

    @property
    def saturated(self) -> bool:
        """Whether uploads are being refused: the queue is full or one was turned away
        within the last second."""
        recent = time.monotonic() - self.last_busy < 1.0
        return self.waiting >= self.settings.decode_queue or recent

    def check_capacity(self) -> None:
        """Busy (counted) when the queue for the decode threads is full."""
        if self.waiting >= self.settings.decode_queue:
            self._busy(f"{self.waiting} sketches wait for the decode threads")

    def _busy(self, why: str) -> None:
        self.metrics.busy.inc()
        self.last_busy = time.monotonic()
        raise Busy(f"{why}; retry shortly")

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on a decode thread; Busy when none frees up within
        ``decode_wait_s`` or too many wait already."""
        self.check_capacity()
        self.waiting += 1  # only the event loop's thread counts, so no lock
        try:
            async with asyncio.timeout(self.settings.decode_wait_s):
                await self.slots.acquire()
        except TimeoutError:
            self._busy(f"no decode thread was free within {self.settings.decode_wait_s:g} s")
        finally:
            self.waiting -= 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)
        finally:
            self.slots.release()

    def decode_limits(self) -> DecodeLimits:
        s = self.settings
        return DecodeLimits(s.max_pixels, s.max_jpeg_scans, self.engine.preprocessing.image_size)

    async def search(self, request: SketchRequest) -> tuple[Hits, float]:
        """Decode (thread pool), then encode and search (micro-batched): hits, decode seconds."""
        prep = self.engine.preprocessing
        started = time.perf_counter()
        array = await self.offload(to_query_array, request, prep, self.decode_limits())
        decode_s = time.perf_counter() - started
        self.metrics.decode.observe(decode_s)
        query = Query(array, request.k, request.where, request.offset, request.min_score)
        return await self.batcher.submit(query), decode_s

    async def similar(self, photo_id: int, k: int, version: str | None) -> Hits:
        """The photos nearest to a gallery photo (the store is read on a decode thread)."""
        self.engine.lookup(photo_id, version)  # UnknownPhoto before taking a thread
        return await self.offload(self.engine.similar, photo_id, k, version)

    def _process(self, batch: Sequence[Pending[Query]]) -> list[Hits]:
        hits = self.engine.search_batch(batch)
        first = hits[0]
        self.metrics.observe_batch(
            len(batch), first.encode_s, first.search_s, [h.queue_s for h in hits]
        )
        return hits

    def photo_file(self, photo_id: int, version: str | None) -> Path:
        """The file of a photo, by id (and version); UnknownPhoto / PhotoUnavailable."""
        index, _ = self.engine.lookup(photo_id, version)
        path = index.photo_path(photo_id)
        if not path.is_file():
            raise PhotoUnavailable(f"photo {photo_id}'s file is missing from the gallery")
        return path

    async def thumbnail(self, photo_id: int, version: str | None) -> Path:
        """The cached thumbnail of a photo, made on first use (in the thread pool)."""
        index, item = self.engine.lookup(photo_id, version)
        source = index.photo_path(photo_id)
        try:
            return await asyncio.get_running_loop().run_in_executor(
                self.pool, self.thumbnails.get, source, item.sha256
            )
        except ThumbnailError as err:
            raise PhotoUnavailable(f"photo {photo_id}: {err}") from err
