"""Results of a run on their way to PostgreSQL, off the measured path: a request's coroutine hands its result
over and goes on to the next request at once; every ``FLUSH_S`` (or ``FLUSH_AT`` results) the recorder reads
their worker-side figures from Redis in one round trip (client.fill_timing) and writes them with one statement
(BenchStore.record_many: a result whose (model, level, item, repeat) has one already is ignored), and charges
their tokens and cost to the submitter's TPM and budget (core.usage, as the gateway charges its calls).

While PostgreSQL or Redis is down the results wait here (the run keeps going) and the next flush tries again;
``close`` insists for ``CLOSE_WITHIN_S`` and then raises, so that the runner retries the run (the results lost
with it run again: only those that landed are skipped)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from redis.asyncio import Redis

from core import queue as q
from core import usage
from core.benchstore import BenchStore
from core.database import DatabaseUnavailable
from workers.benchmarks.client import Result, fill_timing

log = logging.getLogger("gatehouse.benchmarks")
FLUSH_S = 0.1
FLUSH_AT = 200
CLOSE_WITHIN_S = 30.0
MAX_WAITING = 100_000  # results held while the database is down; past that the run fails over to a retry


class Recorder:
    def __init__(self, store: BenchStore, redis: Redis, run_id: str, scopes: tuple[usage.Scope, ...] = ()):
        self.store = store
        self.scopes = scopes
        self.redis = redis
        self.run_id = run_id
        self.waiting: list[Result] = []
        self.landed = 0
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._failing: str | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop())

    def add(self, result: Result) -> None:
        if len(self.waiting) >= MAX_WAITING:
            raise RuntimeError(f"{len(self.waiting)} results of run {self.run_id} wait for the database")
        self.waiting.append(result)
        if len(self.waiting) >= FLUSH_AT:
            self._wake.set()

    async def _loop(self) -> None:
        while True:
            try:
                await asyncio.wait_for(self._wake.wait(), FLUSH_S)
            except TimeoutError:
                pass
            self._wake.clear()
            try:
                await self.flush()
            except (*q.REDIS_DOWN, DatabaseUnavailable) as e:
                self._trouble(type(e).__name__)
                await asyncio.sleep(0.5)
            except Exception:  # a bug must not stop the recording: log it, the next flush tries again
                log.exception("recording results of benchmark run %s failed", self.run_id)
                await asyncio.sleep(1.0)

    async def flush(self) -> None:
        """Write what waits; on failure it waits on (and the failure propagates)."""
        if not self.waiting:
            return
        rows, self.waiting = self.waiting, []
        try:
            await fill_timing(self.redis, [r for r in rows if r.get("queue_ms") is None])
            self.landed += await self.store.record_many(self.run_id, [_clean(r) for r in rows])
        except BaseException:
            self.waiting[:0] = rows
            raise
        if self.scopes:  # a result recorded twice (a resumed run) was also run twice: its usage was real
            tokens, cost = usage_of(rows)
            try:
                await usage.charge(self.redis, self.scopes, tokens, cost)
            except q.REDIS_DOWN as e:
                log.warning("benchmark run %s: usage of %d results not charged (%s)", self.run_id, len(rows),
                            type(e).__name__)
        if self._failing is not None:
            log.info("benchmark run %s: recording results again after %s", self.run_id, self._failing)
            self._failing = None

    async def close(self) -> None:
        """Stop the loop and write everything still waiting (trying for ``CLOSE_WITHIN_S``, then raising)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        deadline = time.monotonic() + CLOSE_WITHIN_S
        while True:
            try:
                await self.flush()
                return
            except (*q.REDIS_DOWN, DatabaseUnavailable) as e:
                if time.monotonic() > deadline:
                    raise
                self._trouble(type(e).__name__)
                await asyncio.sleep(0.5)

    def _trouble(self, what: str) -> None:
        if self._failing != what:
            log.warning("benchmark run %s: cannot record results yet (%s); %d wait", self.run_id, what,
                        len(self.waiting))
        self._failing = what


def usage_of(rows: list[Result]) -> tuple[int, float]:
    """Tokens and cost of results: a call's from its usage and timing record, an agent task's from its calls."""
    tokens, cost = 0, 0.0
    for r in rows:
        src = r.get("task") or r
        tokens += int(src.get("input_tokens") or 0) + int(src.get("output_tokens") or 0)
        cost += float(src.get("cost") or 0.0)
    return tokens, cost


def _clean(result: Result) -> Result:
    """PostgreSQL's jsonb cannot hold U+0000: such characters in an answer or a task's output become U+FFFD."""
    if b"\\u0000" not in orjson.dumps(result):
        return result
    return _replace_nul(result)  # type: ignore[no-any-return]


def _replace_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {k: _replace_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_replace_nul(v) for v in value]
    return value
