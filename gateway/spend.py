"""Spend: usage × the model's price, recorded per request in PostgreSQL in batches.

``SpendRecorder.record`` only appends to a buffer; a background task writes the buffer with one ``COPY`` every
``FLUSH_EVERY_S`` (or sooner when it grows past ``FLUSH_ROWS``), so the request path never waits for the
database. On shutdown the buffer is flushed. Prices are core.pricing's.

PostgreSQL down: rows stay in the buffer and the next flush retries them, at most ``MAX_BUFFERED`` of them
(past that the oldest are dropped, and counted in the log) so an outage cannot exhaust memory. A write that
timed out may still have landed, so a retried row can be counted twice: at least once, never silently lost
below the bound.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from core.usage import spent_in_period
from gateway.db.database import Database, DatabaseUnavailable
from gateway.limits import Scope, SpendLoader

log = logging.getLogger("gatehouse.spend")
FLUSH_EVERY_S = 1.0
FLUSH_ROWS = 500
MAX_BUFFERED = 100_000
COLUMNS = ("request_id", "key_id", "team_id", "user_id", "model", "prompt_tokens", "completion_tokens", "cost",
           "created_at")


class SpendRecorder:
    def __init__(self) -> None:
        self.pool: Database | None = None
        self._rows: list[tuple[Any, ...]] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self.dropped = 0  # rows dropped while the database was down (the buffer was full)
        self._failing = False

    def start(self, pool: Database | None) -> None:
        self.pool = pool
        self._task = asyncio.get_running_loop().create_task(self._run())

    def record(self, request_id: str, key_id: str | None, team_id: str | None, user_id: str | None, model: str,
               prompt_tokens: int, completion_tokens: int, cost: float) -> None:
        self._rows.append((request_id, key_id, team_id, user_id, model, prompt_tokens, completion_tokens, cost,
                           datetime.now(UTC)))
        if len(self._rows) >= FLUSH_ROWS:
            self._wake.set()
        if len(self._rows) > MAX_BUFFERED:
            self._drop_oldest()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_EVERY_S)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except Exception:  # a bug here must not end the writer: log it, keep going
                log.exception("spend flush failed")

    async def flush(self) -> None:
        if not self._rows or self.pool is None:
            return
        rows, self._rows = self._rows, []
        try:
            await self.pool.copy_records("spend_log", rows, COLUMNS)
        except DatabaseUnavailable:
            if not self._failing:
                log.warning("could not write %d spend rows (database unavailable); keeping them for the next try",
                            len(rows))
            self._failing = True
            self._rows[:0] = rows
            self._drop_oldest()
            return
        if self._failing:
            self._failing = False
            log.info("spend rows written again after the database outage")

    async def flush_within(self, timeout_s: float) -> None:
        """Flush, waiting at most ``timeout_s`` (for a request that wants its own spend written first); the
        flush goes on in the background past that."""
        task = asyncio.ensure_future(self.flush())
        await asyncio.wait({task}, timeout=timeout_s)
        if task.done() and not task.cancelled() and task.exception() is not None:
            raise task.exception()  # type: ignore[misc]

    def _drop_oldest(self) -> None:
        extra = len(self._rows) - MAX_BUFFERED
        if extra > 0:
            del self._rows[:extra]
            self.dropped += extra
            log.error("spend buffer full while the database is down: dropped %d rows (%d so far)", extra,
                      self.dropped)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.flush()
        if self._rows:
            log.error("shutting down with %d spend rows unwritten: the database is not reachable", len(self._rows))


class PgSpendLoader(SpendLoader):
    """A budget counter's starting value: what the spend log holds for the scope's current period (503
    database_unavailable when it cannot be read: a budget is not enforced on a guess)."""

    def __init__(self, pool_getter: Callable[[], Awaitable[Database | None]]):
        self.pool_getter = pool_getter

    async def spent(self, scope: Scope, now: float) -> float:
        pool = await self.pool_getter()
        return 0.0 if pool is None else await spent_in_period(pool, scope, now)
