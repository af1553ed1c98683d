"""gateway.db.database without a server: a pool that never answers, refuses, or errs, behind bounded calls."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import pytest

from gateway.db.database import Database, DatabaseUnavailable


class FakeConnection:
    def __init__(self, behaviour: str):
        self.behaviour = behaviour

    async def fetchval(self, query: str, *args: Any, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        if self.behaviour == "hang":
            await asyncio.sleep(2)  # a paused server: the query was sent, no answer comes (for a while)
        if self.behaviour == "refuse":
            raise ConnectionRefusedError(111, "Connection refused")
        if self.behaviour == "unique":
            raise asyncpg.UniqueViolationError("duplicate key value")
        return 1


class FakePool:
    def __init__(self, behaviour: str):
        self.behaviour = behaviour
        self.acquired = 0

    @asynccontextmanager
    async def acquire(self, timeout: float | None = None) -> AsyncIterator[FakeConnection]:  # noqa: ASYNC109
        self.acquired += 1
        yield FakeConnection(self.behaviour)


async def test_a_silent_server_is_a_503_within_the_timeout_then_fails_fast() -> None:
    pool = FakePool("hang")
    db = Database(pool=pool, timeout_s=0.2, down_for_s=0.5)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(DatabaseUnavailable) as e:
        await db.fetchval("SELECT 1")
    assert 0.15 < time.monotonic() - started < 1.0
    assert e.value.status == 503 and e.value.code == "database_unavailable" and e.value.headers["retry-after"]
    assert db.down and not await db.ping()  # fails at once meanwhile, without touching the pool
    assert pool.acquired == 1
    await asyncio.sleep(0.55)
    pool.behaviour = "ok"
    assert await db.ping() and not db.down  # probes again after the window


async def test_refused_connections_are_503_and_real_errors_propagate() -> None:
    db = Database(pool=FakePool("refuse"), timeout_s=0.5, down_for_s=0.0)  # type: ignore[arg-type]
    with pytest.raises(DatabaseUnavailable):
        await db.fetchval("SELECT 1")
    db = Database(pool=FakePool("unique"), timeout_s=0.5)  # type: ignore[arg-type]
    with pytest.raises(asyncpg.UniqueViolationError):
        await db.fetchval("SELECT 1")
    assert not db.down  # a constraint violation says nothing about the server


async def test_an_unreachable_url_is_503_and_open_reports_it() -> None:
    db = Database("postgresql://nobody@127.0.0.1:9/none", timeout_s=0.5, down_for_s=0.0)
    assert await db.open() is False
    with pytest.raises(DatabaseUnavailable):
        await db.fetch("SELECT 1")
