"""Writes a request's output events to its Redis Stream, coalescing bursts into one pipelined round trip.

``emit`` never waits: events are buffered and a single flusher task writes whatever has accumulated while
the previous write was in flight. ``settle`` waits for that task and returns what is left, so the last events
can ride in the worker's end-of-job transaction. The stream expires OUTPUT_TTL_S after a write; the TTL is
renewed once half of it has passed (and by the end-of-job transaction), not by every write.
"""

from __future__ import annotations

import asyncio
import logging
import time

from redis.asyncio import Redis

from core import queue as q

log = logging.getLogger("gatehouse.worker")

class EventWriter:
    def __init__(self, redis: Redis, request_id: str, ttl_s: int = q.OUTPUT_TTL_S):
        self.redis = redis
        self.key = q.output_key(request_id)
        self.ttl_s = ttl_s
        self._buf: list[bytes] = []
        self._flusher: asyncio.Task[None] | None = None
        self._expire_due = 0.0  # monotonic time after which a write renews the stream's TTL

    def emit(self, event: bytes) -> None:
        self._buf.append(event)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._buf:
            batch, self._buf = self._buf, []
            await self.write(batch)

    async def write(self, events: list[bytes]) -> None:
        """Append ``events`` now, in one round trip and one stream entry: a reader blocked on the stream wakes once
        with all of them rather than once per event."""
        now = time.monotonic()
        renew = now >= self._expire_due  # the TTL is renewed when half of it has passed, not on every write
        if not renew:
            await self.redis.xadd(self.key, {q.EVENT_FIELD: q.pack_events(events)})
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.xadd(self.key, {q.EVENT_FIELD: q.pack_events(events)})
            pipe.expire(self.key, self.ttl_s)
            self._expire_due = now + self.ttl_s / 2
            await pipe.execute()

    async def settle(self) -> list[bytes]:
        """Wait for the write in flight (if any); return and forget what is still buffered."""
        if self._flusher is not None:
            try:
                await self._flusher
            except q.REDIS_DOWN as e:  # its reader has lost Redis too
                log.warning("could not write output events: Redis is unreachable (%s)", type(e).__name__)
        rest, self._buf = self._buf, []
        return rest
