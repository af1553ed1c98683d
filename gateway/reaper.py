"""The gateway's share of worker-death detection: reap the jobs of workers whose lease ran out (core.leases).

The surviving workers reap too; the gateway does it as well so that a client is answered even when no
worker survives (the only worker was killed and is still restarting). The script is atomic: however many
processes run it, each dead worker's jobs are settled once.
"""

from __future__ import annotations

import asyncio
import logging

from redis.asyncio import Redis

from core import leases
from core import queue as q

log = logging.getLogger("gatehouse.gateway")


class Reaper:
    def __init__(self, redis: Redis, queue: str = q.INTERACTIVE_QUEUE):
        self.redis = redis
        self.queue = queue
        self._script = redis.register_script(leases.REAP_LUA)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()

    async def reap(self) -> leases.Reaped:
        return leases.reaped(await self._script(keys=leases.reap_keys(self.queue), args=leases.reap_args()))

    async def _run(self) -> None:
        """Every heartbeat interval (the script itself holds off after a Redis outage: core.leases)."""
        while True:
            await asyncio.sleep(q.HEARTBEAT_INTERVAL_S)
            try:
                done = await self.reap()
                if done:
                    log.warning("reaped: %s", done.describe())
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis down: readiness reports it; try again next beat
                log.debug("reaper: %s", type(e).__name__)
