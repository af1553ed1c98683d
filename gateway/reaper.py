"""The gateway's lease, and its share of reaping (core.leases).

The gateway beats every second under its own id (``gateway_id``), which every job it enqueues carries: when
the gateway dies, the others drop the jobs nobody is waiting for any more. It also reaps like the workers
do, so that a client is answered even when no worker survives (the only worker was killed and is still
restarting). The scripts are atomic: however many processes run them, each death is settled once.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid

from redis.asyncio import Redis

from core import leases, recent
from core import queue as q

log = logging.getLogger("gatehouse.gateway")


class Reaper:
    def __init__(self, redis: Redis, queue: str = q.INTERACTIVE_QUEUE):
        self.redis = redis
        self.queue = queue
        self.gateway_id = f"gw:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._beat = redis.register_script(leases.GATEWAY_BEAT_LUA)
        self._reap_workers = redis.register_script(leases.REAP_LUA)
        self._reap_gateways = redis.register_script(leases.REAP_GATEWAYS_LUA)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def aclose(self) -> None:
        """Stop beating and leave the lease set (a clean stop: the drain has settled this gateway's jobs)."""
        if self._task is not None:
            self._task.cancel()
        try:
            await self.redis.zrem(leases.GATEWAYS_KEY, self.gateway_id)
        except Exception as e:  # noqa: BLE001 - Redis gone at shutdown: the lease expires by itself
            log.debug("could not leave the gateway lease set: %s", type(e).__name__)

    async def beat(self) -> bool:
        """Renew the lease; True when this gateway had been taken for dead meanwhile."""
        return bool(await self._beat(keys=[leases.GATEWAYS_KEY], args=[self.gateway_id]))

    async def reap(self) -> tuple[leases.Reaped, leases.GatewaysReaped]:
        workers = leases.reaped(await self._reap_workers(keys=leases.reap_keys(self.queue), args=leases.reap_args()))
        gateways = leases.gateways_reaped(await self._reap_gateways(keys=leases.gateway_reap_keys(self.queue),
                                                                    args=leases.gateway_reap_args()))
        return workers, gateways

    async def _run(self) -> None:
        """Every heartbeat interval (the reap scripts hold off after a Redis outage by themselves)."""
        first = True
        while True:
            try:
                if await self.beat() and not first:
                    log.error("this gateway missed its lease and was taken for dead: requests it had queued "
                              "may have been dropped (they answer 503 gateway_lost)")
                first = False
                workers, gateways = await self.reap()
                for done in (workers, gateways):
                    if done:
                        log.warning("reaped: %s", done.describe())
                if workers.ended:
                    await recent.note(self.redis, recent.reaped_record(workers.describe(), self.gateway_id))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - Redis down: readiness reports it; try again next beat
                log.debug("reaper: %s", type(e).__name__)
            await asyncio.sleep(q.HEARTBEAT_INTERVAL_S)
