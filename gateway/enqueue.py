"""Enqueue side of the queue protocol: one pipelined round trip per request, and cancellation.

``submit`` sends the enqueue script and the first ``XREAD BLOCK`` on the request's output stream in one
pipeline: for a short answer the whole request costs the gateway a single Redis round trip. The first read
blocks at most ``FIRST_READ_MS``; longer requests continue with ordinary blocking reads (gateway/relay.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

from redis.asyncio import Redis

from core import queue as q
from gateway.errors import InvalidRequest, QueueFull

FIRST_READ_MS = 400  # within the command client's socket timeout (gateway.services.REDIS_TIMEOUT_S)
UNLINK_EVERY_S = 0.2
log = logging.getLogger("gatehouse.gateway")
Entries = list[tuple[bytes, dict[bytes, bytes]]]


class JobQueue:
    """Submits jobs to one lane's arq queue (``name``: the interactive lane unless told) and cancels them."""

    def __init__(self, redis: Redis, *, name: str = q.INTERACTIVE_QUEUE, max_depth: int = 2_000,
                 wake: str | None = None):
        self.redis = redis
        self.name = name
        self.max_depth = max_depth
        # ``wake``: the queue whose wake list the workers block on, if not ``name``'s (the batch lane's jobs wake
        # them through the interactive lane's list, as the batch runner's feed does)
        self._wake = q.wake_key(wake or name)
        self._fair = q.fair_key(name)
        self._tenants = q.tenants_key(name)
        self._background: set[asyncio.Task[None]] = set()
        self._consumed: list[str] = []
        self._unlinker: asyncio.Task[None] | None = None

    async def submit(self, spec: q.JobSpec) -> Entries:
        """Enqueue ``spec`` and return the first output entries (possibly none yet).

        Raises QueueFull (503 + retry-after) instead of letting the queue grow without bound."""
        now_ms = int(time.time() * 1000)
        remaining_ms = max(1, int(spec.remaining() * 1000))
        out_key = q.output_key(spec.id)
        async with self.redis.pipeline(transaction=False) as pipe:
            # EVAL, not EVALSHA: no NOSCRIPT failure mode after a Redis restart, and Redis caches the script
            # (redis-py types script arguments as str; bytes and ints are what Redis gets either way)
            args: list[Any] = [self.name, q.ARQ_JOB_PREFIX + spec.id, self._wake, out_key, self._fair, self._tenants,
                               spec.id,
                               q.serialize_job(spec, now_ms), spec.tenant, remaining_ms, self.max_depth,
                               q.QUEUE_FULL_EVENT, q.OUTPUT_TTL_S, spec.priority,
                               q.job_label(spec.tenant, spec.model)]
            pipe.eval(q.ENQUEUE_LUA, 6, *args)
            pipe.xread({out_key: b"0-0"}, count=1024, block=min(FIRST_READ_MS, remaining_ms))
            depth, first = await pipe.execute()
        if depth == -1:
            raise QueueFull(retry_after=1)
        if depth == -2:
            raise InvalidRequest("A request with this id is already in flight.", code="duplicate_request_id")
        return entries_of(first)

    async def cancel(self, request_id: str) -> None:
        """Drop a job that has not started and tell the worker running it (if any) to stop."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.name, request_id)
            pipe.hdel(self._tenants, request_id)
            pipe.publish(q.CANCEL_CHANNEL, request_id)
            await pipe.execute()

    def consumed(self, request_id: str) -> None:
        """The reader has the whole output: its stream can go. Deletions are batched (one UNLINK for many
        streams, every ``UNLINK_EVERY_S``) so a finished request costs no extra round trip of its own."""
        self._consumed.append(q.output_key(request_id))
        if self._unlinker is None or self._unlinker.done():
            self._unlinker = asyncio.get_running_loop().create_task(self._unlink_consumed())

    async def _unlink_consumed(self) -> None:
        while self._consumed:
            await asyncio.sleep(UNLINK_EVERY_S)
            keys, self._consumed = self._consumed, []
            try:
                await self.redis.unlink(*keys)
            except Exception as e:  # noqa: BLE001 - the streams expire on their own anyway
                log.warning("could not delete %d finished output streams: %s", len(keys), type(e).__name__)

    def cancel_soon(self, request_id: str) -> None:
        """``cancel`` from code that cannot await (a cancelled handler's ``finally``)."""
        self.run_soon(self.cancel(request_id))

    def run_soon(self, work: Coroutine[Any, Any, None]) -> None:
        """Redis work after a response, from code that cannot (or should not) await it. A failure (Redis
        down) is one log line: the work is bookkeeping, and the request is already answered."""
        task = asyncio.get_running_loop().create_task(_quietly(work))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def aclose(self, wait_s: float = 1.0) -> None:
        """Let the after-response work in flight (cancellations above all: a worker must not run a job whose
        client is gone) reach Redis before the connection closes, for at most ``wait_s`` seconds."""
        pending = [*self._background, *([self._unlinker] if self._unlinker else [])]
        if pending:
            await asyncio.wait(pending, timeout=wait_s)

    async def depth(self) -> int:
        return int(await self.redis.zcard(self.name))


async def _quietly(work: Coroutine[Any, Any, None]) -> None:
    try:
        await work
    except Exception as e:  # noqa: BLE001 - after-response bookkeeping: say it failed, never raise
        log.warning("after-response Redis work failed: %s", type(e).__name__)


def entries_of(xread_reply: Any) -> Entries:
    if not xread_reply:
        return []
    if isinstance(xread_reply, dict):  # RESP3 shape
        return next(iter(xread_reply.values()))[0]  # type: ignore[no-any-return]
    return xread_reply[0][1]  # type: ignore[no-any-return]
