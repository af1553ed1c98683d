"""Spend: usage × the model's price, recorded per request in PostgreSQL in batches.

``SpendRecorder.record`` only appends to a buffer; a background task writes the buffer with one ``COPY`` every
``FLUSH_EVERY_S`` (or sooner when it grows past ``FLUSH_ROWS``), so the request path never waits for the
database. On shutdown the buffer is flushed. Prices are core.pricing's.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import asyncpg

from gateway.limits import Scope, SpendLoader

log = logging.getLogger("gatehouse.spend")
FLUSH_EVERY_S = 1.0
FLUSH_ROWS = 500
COLUMNS = ("request_id", "key_id", "team_id", "user_id", "model", "prompt_tokens", "completion_tokens", "cost",
           "created_at")


class SpendRecorder:
    def __init__(self) -> None:
        self.pool: asyncpg.Pool | None = None
        self._rows: list[tuple[Any, ...]] = []
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    def start(self, pool: asyncpg.Pool | None) -> None:
        self.pool = pool
        self._task = asyncio.get_running_loop().create_task(self._run())

    def record(self, request_id: str, key_id: str | None, team_id: str | None, user_id: str | None, model: str,
               prompt_tokens: int, completion_tokens: int, cost: float) -> None:
        self._rows.append((request_id, key_id, team_id, user_id, model, prompt_tokens, completion_tokens, cost,
                           datetime.now(UTC)))
        if len(self._rows) >= FLUSH_ROWS:
            self._wake.set()

    async def _run(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_EVERY_S)
            except TimeoutError:
                pass
            self._wake.clear()
            await self.flush()

    async def flush(self) -> None:
        if not self._rows or self.pool is None:
            return
        rows, self._rows = self._rows, []
        try:
            async with self.pool.acquire() as conn:
                await conn.copy_records_to_table("spend_log", records=rows, columns=COLUMNS)
        except (OSError, asyncpg.PostgresError) as e:
            log.warning("could not write %d spend rows (%s); keeping them for the next try", len(rows),
                        type(e).__name__)
            self._rows[:0] = rows

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
        await self.flush()


class PgSpendLoader(SpendLoader):
    """A budget counter's starting value: what the spend log holds for the scope's current period."""

    def __init__(self, pool_getter: Any):
        self.pool_getter = pool_getter

    async def spent(self, scope: Scope, now: float) -> float:
        pool = await self.pool_getter()
        if pool is None or scope.kind not in ("key", "team"):
            return 0.0
        start = datetime.fromtimestamp(now - now % scope.budget_period_s if scope.budget_period_s else 0,
                                       tz=UTC)
        column = "key_id" if scope.kind == "key" else "team_id"
        value = await pool.fetchval(
            f"SELECT COALESCE(sum(cost), 0) FROM spend_log WHERE {column} = $1 AND created_at >= $2", scope.id, start)
        return float(value)
