"""Enqueue side of the queue protocol: one Lua call per request, and cancellation."""

from __future__ import annotations

import time

from redis.asyncio import Redis

from gateway.errors import InvalidRequest, QueueFull
from workers import queue as q


class JobQueue:
    """Submits interactive jobs to the arq queue and cancels them."""

    def __init__(self, redis: Redis, *, name: str = q.INTERACTIVE_QUEUE, max_depth: int = 2_000):
        self.redis = redis
        self.name = name
        self.max_depth = max_depth
        self._wake = q.wake_key(name)
        self._enqueue = redis.register_script(q.ENQUEUE_LUA)

    async def submit(self, spec: q.JobSpec) -> int:
        """Enqueue ``spec``; returns the queue depth. Raises QueueFull instead of growing without bound."""
        now_ms = int(time.time() * 1000)
        ttl_ms = max(1, int(spec.remaining() * 1000))
        depth = await self._enqueue(
            keys=[self.name, q.ARQ_JOB_PREFIX + spec.id, self._wake],
            args=[spec.id, q.serialize_job(spec, now_ms), now_ms, ttl_ms, self.max_depth],
        )
        if depth == -1:
            raise QueueFull(retry_after=1)
        if depth == -2:
            raise InvalidRequest("A request with this x-request-id is already in flight.", param="x-request-id",
                                 code="duplicate_request_id")
        return int(depth)

    async def cancel(self, request_id: str) -> None:
        """Drop a job that has not started and tell the worker running it (if any) to stop."""
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zrem(self.name, request_id)
            pipe.publish(q.CANCEL_CHANNEL, request_id)
            await pipe.execute()

    async def depth(self) -> int:
        return int(await self.redis.zcard(self.name))
