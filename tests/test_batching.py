"""The service's micro-batcher: results and errors reach the right callers; stop drains.

A real ``MicroBatcher`` on its worker thread, real coroutines on a real event loop. The
worker is held inside a batch (a gate the batch waits on) while later items queue, so which
items share the next batch is known, not left to timing.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import pytest

from service.batching import BatcherClosed, MicroBatcher, Pending

HOLD = "hold"  # an item whose batch waits for the gate
POISON = "poison"  # an item whose batch fails


class Worker:
    """``process``: ten times each number; waits for ``gate`` on HOLD; fails on POISON."""

    def __init__(self) -> None:
        self.gate, self.holding = threading.Event(), threading.Event()
        self.batches: list[list[object]] = []

    def __call__(self, batch: Sequence[Pending[object]]) -> list[object]:
        items = [p.item for p in batch]
        self.batches.append(items)
        if HOLD in items:
            self.holding.set()
            assert self.gate.wait(10), "the test never opened the gate"
        if POISON in items:
            raise ValueError(f"cannot process item {POISON!r}")
        return [item if item == HOLD else 10 * item for item in items]


@contextmanager
def running(worker: Worker, max_batch: int, max_wait_s: float = 0.05) -> Iterator[MicroBatcher]:
    """A started batcher over ``worker``; on exit the gate opens and the batcher stops."""
    batcher = MicroBatcher(worker, max_batch=max_batch, max_wait_s=max_wait_s)
    batcher.start()
    try:
        yield batcher
    finally:
        worker.gate.set()
        batcher.stop()


async def held(batcher: MicroBatcher, worker: Worker) -> asyncio.Task:
    """Submit HOLD and wait until the worker is inside its batch."""
    task = asyncio.create_task(batcher.submit(HOLD))
    await asyncio.to_thread(worker.holding.wait, 10)
    return task


async def queued(batcher: MicroBatcher, items: list[object]) -> list[asyncio.Task]:
    tasks = [asyncio.create_task(batcher.submit(i)) for i in items]
    await asyncio.sleep(0.05)  # every submit has put its item on the queue
    return tasks


def test_a_failing_batch_fails_each_of_its_callers_and_the_others_succeed() -> None:
    async def scenario() -> None:
        worker = Worker()
        with running(worker, max_batch=4) as batcher:
            hold = await held(batcher, worker)
            failing = await queued(batcher, [1, 2, POISON, 3])  # one batch of four
            later = await queued(batcher, [4, 5])  # the batch after it
            worker.gate.set()
            assert await hold == HOLD
            outcomes = await asyncio.gather(*failing, return_exceptions=True)
            assert worker.batches[1] == [1, 2, POISON, 3]
            for outcome in outcomes:  # each caller of the failed batch gets its error
                assert isinstance(outcome, ValueError)
                assert str(outcome) == "cannot process item 'poison'"
            assert await asyncio.gather(*later) == [40, 50]  # the worker lives on
            assert await batcher.submit(6) == 60

    asyncio.run(scenario())


def test_each_caller_gets_its_own_result_from_a_shared_batch() -> None:
    async def scenario() -> None:
        worker = Worker()
        with running(worker, max_batch=8) as batcher:
            hold = await held(batcher, worker)
            tasks = await queued(batcher, list(range(7)))
            worker.gate.set()
            await hold
            assert await asyncio.gather(*tasks) == [10 * i for i in range(7)]
            assert worker.batches[1] == list(range(7))  # one batch, not seven

    asyncio.run(scenario())


def test_a_wrong_number_of_results_fails_the_batch_clearly() -> None:
    async def scenario() -> None:
        batcher = MicroBatcher(lambda batch: [0] * (len(batch) + 1), max_batch=2)
        batcher.start()
        try:
            with pytest.raises(RuntimeError, match=r"2 results for a batch of 1"):
                await batcher.submit(1)
        finally:
            batcher.stop()

    asyncio.run(scenario())


def test_a_caller_that_gave_up_leaves_the_others_their_results() -> None:
    async def scenario() -> None:
        worker = Worker()
        with running(worker, max_batch=4) as batcher:
            hold = await held(batcher, worker)
            tasks = await queued(batcher, [1, 2, 3])
            tasks[1].cancel()  # a client that went away
            worker.gate.set()
            await hold
            outcomes = await asyncio.gather(*tasks, return_exceptions=True)
            assert outcomes[0] == 10 and outcomes[2] == 30
            assert isinstance(outcomes[1], asyncio.CancelledError)
            assert await batcher.submit(4) == 40

    asyncio.run(scenario())


def test_stop_drains_what_is_queued_and_refuses_new_items() -> None:
    async def scenario() -> None:
        worker = Worker()
        batcher = MicroBatcher(worker, max_batch=2, max_wait_s=0.0)
        batcher.start()
        hold = await held(batcher, worker)
        tasks = await queued(batcher, [1, 2, 3, 4, 5])
        stopping = asyncio.create_task(asyncio.to_thread(batcher.stop))
        await asyncio.sleep(0.05)
        with pytest.raises(BatcherClosed, match="shutting down"):
            await batcher.submit(6)
        assert not stopping.done()  # stop waits for the queued batches
        worker.gate.set()
        await stopping
        assert await hold == HOLD
        assert await asyncio.gather(*tasks) == [10, 20, 30, 40, 50]
        assert worker.batches[1:] == [[1, 2], [3, 4], [5]]
        assert not batcher._thread.is_alive()

    asyncio.run(scenario())
