"""``MicroBatcher``: concurrent requests' inputs run together, one model call per batch.

A worker runs many jobs at once (``worker_concurrency``); for a model that computes a batch in about the time of
one input (an embedding model's forward pass), running each request alone wastes most of it. Requests
``submit`` their inputs; the batcher waits for more until ``max_wait_s`` has passed since the oldest waiting
request arrived, or until ``max_items`` inputs wait, then makes one call (``run``) with up to ``max_items``
inputs and hands each request its results, in order.

    request A (3 inputs) ─┐                      ┌─► A gets results 0..2
    request B (1 input)  ─┼─► [a0 a1 a2 b0 c0] ──┼─► B gets result 3
    request C (1 input)  ─┘    one run() call    └─► C gets result 4

Requests are served first come, first served; one with more than ``max_items`` inputs is split over several
calls (the others wait behind it). Under load no request waits for the window: inputs that arrived while a call
ran are older than ``max_wait_s`` by the time it ends, so the next call starts at once with all of them. A
request cancelled while waiting (its client went away, its deadline passed) loses its inputs not yet in a call;
a call that fails fails every request with inputs in it. Everything runs on the event loop: ``run`` is a
coroutine (it hands the work to a thread itself).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass(slots=True, eq=False)
class _Request(Generic[T, R]):
    items: list[T]
    future: asyncio.Future[list[R]]
    arrived: float
    results: list[R | None] = field(default_factory=list)
    taken: int = 0  # items already put into a call
    done: int = 0  # items whose results are in

    @property
    def waiting(self) -> int:
        return len(self.items) - self.taken


class MicroBatcher(Generic[T, R]):
    def __init__(self, run: Callable[[list[T]], Awaitable[Sequence[R]]], *, max_items: int = 64,
                 max_wait_s: float = 0.005):
        if max_items < 1 or max_wait_s < 0:
            raise ValueError("max_items must be at least 1 and max_wait_s not negative")
        self.run = run
        self.max_items = max_items
        self.max_wait_s = max_wait_s
        self._queue: deque[_Request[T, R]] = deque()
        self._waiting = 0  # inputs queued and not yet in a call
        self._arrived = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.calls = 0  # ``run`` calls made (for tests and stats)
        self.items = 0  # inputs run

    @property
    def waiting(self) -> int:
        """Inputs waiting for a call."""
        return self._waiting

    async def submit(self, items: Sequence[T]) -> list[R]:
        """The results for ``items``, in order, once the calls that held them have run."""
        if not items:
            return []
        loop = asyncio.get_running_loop()
        req: _Request[T, R] = _Request(list(items), loop.create_future(), loop.time())
        req.results = [None] * len(req.items)
        self._queue.append(req)
        self._waiting += len(req.items)
        self._arrived.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._serve(), name="microbatch")
        return await req.future

    async def aclose(self) -> None:
        """Stop: requests still waiting are cancelled."""
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for req in self._queue:
            req.future.cancel()
        self._queue.clear()
        self._waiting = 0

    async def _serve(self) -> None:
        """Until the queue is empty: wait for the window, make one call, hand out its results."""
        loop = asyncio.get_running_loop()
        while True:
            self._drop_abandoned()
            if not self._queue:
                return  # no await between this check and the end: submit() sees the task done and starts another
            await self._window(loop)
            batch, parts = self._take()
            if not batch:
                continue
            self.calls += 1
            self.items += len(batch)
            try:
                results = await self.run(batch)
                if len(results) != len(batch):
                    raise RuntimeError(f"the batch function returned {len(results)} results for {len(batch)} inputs")
            except asyncio.CancelledError:
                for req, _, _, _ in parts:
                    req.future.cancel()
                raise
            except Exception as e:  # noqa: BLE001 - handed to every request with inputs in this call
                for req, _, _, _ in parts:
                    if not req.future.done():
                        req.future.set_exception(e)
                continue
            for req, start, count, offset in parts:
                req.results[start:start + count] = results[offset:offset + count]
                req.done += count
                if req.done == len(req.items) and not req.future.done():
                    req.future.set_result(req.results)  # type: ignore[arg-type]  # every slot is filled now

    async def _window(self, loop: asyncio.AbstractEventLoop) -> None:
        """Wait while fewer than ``max_items`` inputs wait and the oldest waiting request is younger than
        ``max_wait_s``."""
        while self._waiting < self.max_items:
            left = self._queue[0].arrived + self.max_wait_s - loop.time() if self._queue else 0.0
            if left <= 0:
                return
            self._arrived.clear()
            try:
                async with asyncio.timeout(left):
                    await self._arrived.wait()
            except TimeoutError:
                return
            self._drop_abandoned()

    def _take(self) -> tuple[list[T], list[tuple[_Request[T, R], int, int, int]]]:
        """Up to ``max_items`` inputs from the head of the queue, and where each request's share sits:
        (request, first of its items taken, how many, offset in the batch)."""
        batch: list[T] = []
        parts: list[tuple[_Request[T, R], int, int, int]] = []
        while self._queue and len(batch) < self.max_items:
            req = self._queue[0]
            n = min(self.max_items - len(batch), req.waiting)
            parts.append((req, req.taken, n, len(batch)))
            batch.extend(req.items[req.taken:req.taken + n])
            req.taken += n
            self._waiting -= n
            if req.waiting == 0:
                self._queue.popleft()
        return batch, parts

    def _drop_abandoned(self) -> None:
        """Forget the inputs of requests that are over (cancelled, or failed by an earlier call)."""
        if any(req.future.done() for req in self._queue):
            kept = deque(req for req in self._queue if not req.future.done())
            self._waiting = sum(req.waiting for req in kept)
            self._queue = kept
