"""Micro-batching: concurrent requests share one encoder and index call.

Coroutines ``await batcher.submit(item)``; one worker thread takes the oldest waiting item,
waits at most ``max_wait_s`` for more (up to ``max_batch``), runs ``process`` on the batch
and resolves every caller's asyncio future on its own event loop. Under load, items pile
up while a batch runs, so batches grow with the load and throughput with them; when idle a
request waits at most ``max_wait_s``. ``max_batch=1`` turns batching off. The event loop
never blocks: it only enqueues and awaits.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")
log = logging.getLogger(__name__)


@dataclass
class Pending(Generic[T]):
    """A submitted item, the future that awaits it and when it was queued."""

    item: T
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    queued: float = field(default_factory=time.perf_counter)


class BatcherClosed(RuntimeError):
    """The batcher was stopped before the item ran."""


_STOP = object()


class MicroBatcher(Generic[T, R]):
    """Run ``process(pending items) -> one result per item`` on batches from a worker thread."""

    def __init__(
        self,
        process: Callable[[Sequence[Pending[T]]], Sequence[R]],
        max_batch: int = 8,
        max_wait_s: float = 0.002,
        name: str = "micro-batcher",
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, not {max_batch}")
        self.process, self.max_batch, self.max_wait_s = process, max_batch, max_wait_s
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._closed = False

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Finish the batches already queued, then end the worker thread."""
        self._closed = True
        self._queue.put(_STOP)
        if self._thread.is_alive():
            self._thread.join(timeout)

    async def submit(self, item: T) -> R:
        """Queue ``item`` and wait for its result (exceptions of ``process`` propagate)."""
        if self._closed:
            raise BatcherClosed("the service is shutting down")
        loop = asyncio.get_running_loop()
        pending = Pending(item, loop, loop.create_future())
        self._queue.put(pending)
        return await pending.future

    def _run(self) -> None:
        while (batch := self._collect()) is not None:
            self._execute(batch)

    def _collect(self) -> list[Pending[T]] | None:
        """The next batch; None once stopped and drained."""
        first = self._queue.get()
        if first is _STOP:
            return None
        batch = [first]
        deadline = time.perf_counter() + self.max_wait_s
        while len(batch) < self.max_batch:
            remaining = deadline - time.perf_counter()
            try:  # past the deadline, still take what is already waiting
                nxt = self._queue.get(remaining > 0, max(remaining, 0))
            except queue.Empty:
                break
            if nxt is _STOP:
                self._queue.put(_STOP)  # stop after this batch
                break
            batch.append(nxt)
        return batch

    def _execute(self, batch: list[Pending[T]]) -> None:
        try:
            results = self.process(batch)
            if len(results) != len(batch):
                raise RuntimeError(f"{len(results)} results for a batch of {len(batch)}")
        except Exception as err:  # every caller gets the error, the worker lives on
            log.exception("a batch of %d failed", len(batch))
            for p in batch:
                p.loop.call_soon_threadsafe(_resolve, p.future, None, err)
            return
        for p, result in zip(batch, results, strict=True):
            p.loop.call_soon_threadsafe(_resolve, p.future, result, None)


def _resolve(future: asyncio.Future, result: Any, error: BaseException | None) -> None:
    """Set a future's outcome unless its caller gave up (a client that went away)."""
    if future.done():
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)
