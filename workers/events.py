"""Writes a request's output events to its Redis Stream, coalescing bursts into one pipelined round trip.

``emit`` never waits: events are buffered and a single flusher task writes whatever has accumulated while
the previous write was in flight. ``close`` drains the buffer; the stream then expires after OUTPUT_TTL_S.
"""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from workers import queue as q


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
            async with self.redis.pipeline(transaction=False) as pipe:
                for ev in batch:
                    pipe.xadd(self.key, {q.EVENT_FIELD: ev})
                pipe.expire(self.key, self.ttl_s)
                await pipe.execute()

    async def close(self) -> None:
        """Write everything still buffered (also when the surrounding task is being cancelled)."""
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._buf:
            await asyncio.shield(self._flush())
