"""Writes a request's output events to its Redis Stream, coalescing bursts into one pipelined round trip.

``emit`` never waits: events are buffered and a single flusher task writes whatever has accumulated while
the previous write was in flight. ``settle`` waits for that task and returns what is left, so the last events
can ride in the worker's end-of-job transaction. The stream expires OUTPUT_TTL_S after its last write.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from core import queue as q


class EventWriter:
    def __init__(self, redis: Redis, request_id: str, ttl_s: int = q.OUTPUT_TTL_S):
        self.redis = redis
        self.key = q.output_key(request_id)
        self.ttl_s = ttl_s
        self._buf: list[bytes] = []
        self._flusher: asyncio.Task[None] | None = None

    def emit(self, event: bytes) -> None:
        self._buf.append(event)
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.get_running_loop().create_task(self._flush())

    async def _flush(self) -> None:
        while self._buf:
            batch, self._buf = self._buf, []
            await self.write(batch)

    async def write(self, events: list[bytes]) -> None:
        """Append ``events`` now, in one round trip. MULTI/EXEC, so they land together: a reader blocked on the
        stream wakes once with all of them rather than once per event."""
        async with self.redis.pipeline(transaction=len(events) > 1) as pipe:
            for ev in events:
                pipe.xadd(self.key, {q.EVENT_FIELD: ev})
            pipe.expire(self.key, self.ttl_s)
            await pipe.execute()

    async def settle(self) -> list[bytes]:
        """Wait for the write in flight (if any); return and forget what is still buffered."""
        if self._flusher is not None:
            await self._flusher
        rest, self._buf = self._buf, []
        return rest
