"""Where a model group's deployments keep their shared routing state in Redis, and a read of it.

Per deployment (its id from ``core.routing``):

    gatehouse:route:busy:<id>             sorted set: job attempt -> lease end (ms); its size is the in-flight count
    gatehouse:route:rpm:<id>:<minute>     requests started in that minute
    gatehouse:route:tpm:<id>:<minute>     tokens used in that minute
    gatehouse:route:fails:<id>            failures in the current window (expires a minute after the first)
    gatehouse:route:cooldown:<id>         present while the deployment is cooled down (expires by itself)

The worker side writes it (``workers.balancer``: picks, leases, cooldowns); the gateway reads it for ``/health``
and the console's models page (``read``). Only deployments that need routing (several in a group, or limits)
hold leases: a lone unlimited deployment's in-flight count is the queue's (``core.lanes``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from redis.asyncio import Redis

from core.routing import Deployment

KEY_PREFIX = "gatehouse:route:"


def busy_key(deployment_id: str) -> str:
    return f"{KEY_PREFIX}busy:{deployment_id}"


def rpm_key(deployment_id: str, minute: int) -> str:
    return f"{KEY_PREFIX}rpm:{deployment_id}:{minute}"


def tpm_key(deployment_id: str, minute: int) -> str:
    return f"{KEY_PREFIX}tpm:{deployment_id}:{minute}"


def fails_key(deployment_id: str) -> str:
    return f"{KEY_PREFIX}fails:{deployment_id}"


def cooldown_key(deployment_id: str) -> str:
    return f"{KEY_PREFIX}cooldown:{deployment_id}"


@dataclass(frozen=True, slots=True)
class DeploymentState:
    in_flight: int  # unexpired leases
    requests_this_minute: int
    tokens_this_minute: int
    recent_failures: int  # in the current failure window
    cooldown_s: float  # seconds of cooldown left; 0: not cooled down

    @property
    def healthy(self) -> bool:
        return self.cooldown_s == 0


async def read(redis: Redis, deployments: Sequence[Deployment], now: float | None = None) -> list[DeploymentState]:
    """Each deployment's state, in ``deployments``' order: one pipelined round trip, read only."""
    now = time.time() if now is None else now
    minute = int(now // 60)
    async with redis.pipeline(transaction=False) as pipe:
        for d in deployments:
            pipe.zcount(busy_key(d.id), int(now * 1000), "+inf")
            pipe.mget(rpm_key(d.id, minute), tpm_key(d.id, minute), fails_key(d.id))
            pipe.pttl(cooldown_key(d.id))
        replies = await pipe.execute()
    out: list[DeploymentState] = []
    for i in range(len(deployments)):
        in_flight, (rpm, tpm, fails), cooldown_ms = replies[3 * i: 3 * i + 3]
        out.append(DeploymentState(int(in_flight), int(rpm or 0), int(tpm or 0), int(fails or 0),
                                   round(max(0, int(cooldown_ms)) / 1000, 1)))
    return out
