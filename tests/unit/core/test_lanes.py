"""core.lanes: lane depths per tenant, counted from the queues themselves against a real Valkey."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from arq.constants import in_progress_key_prefix

from core import lanes
from core import queue as q
from tests.unit.core.test_queue import Keys, claim, enqueue, keys, r  # noqa: F401 - fixtures used by name


def lanes_of(k: Keys) -> dict[str, str]:
    return {"interactive": k.queue, "batch": k.batch}


def shown(depths: lanes.LaneTenants) -> dict[str, dict[str, tuple[int, int]]]:
    return {lane: {t: (d.waiting, d.running) for t, d in by.items()} for lane, by in depths.lanes.items()}


async def test_depths_per_lane_and_tenant(r: aioredis.Redis, keys: Keys) -> None:  # noqa: F811
    for i in range(5):
        await enqueue(r, keys, f"a{i}", tenant="team:a")
    await enqueue(r, keys, "b0", tenant="key:b")
    await enqueue(r, keys, "line0", tenant="key:b", queue=keys.batch)
    await claim(r, keys, want=2, batch_room=0)  # a0 and b0 (fair order) are now running
    depths = await lanes.tenant_depths(r, lanes_of(keys), lock_prefix=keys.lock_prefix)
    assert shown(depths) == {"interactive": {"team:a": (4, 1), "key:b": (0, 1)}, "batch": {"key:b": (1, 0)}}
    assert depths.waiting("interactive") == 4 and depths.waiting("nowhere") == 0


async def test_a_job_without_a_tenant_is_counted_as_unknown(r: aioredis.Redis, keys: Keys) -> None:  # noqa: F811
    await r.zadd(keys.queue, {"old": 1})  # queued by a gateway that did not record tenants
    depths = await lanes.tenant_depths(r, lanes_of(keys))
    assert shown(depths)["interactive"] == {lanes.UNKNOWN: (1, 0)}


async def test_departed_jobs_are_swept_and_an_empty_lane_forgets(r: aioredis.Redis, keys: Keys) -> None:  # noqa: F811
    tenants = q.tenants_key(keys.queue)
    for i in range(3):
        await enqueue(r, keys, f"j{i}", tenant="t")
    await r.zrem(keys.queue, "j0", "j1")  # e.g. cancelled by the gateway, reaped: the hash still names them
    depths = await lanes.tenant_depths(r, lanes_of(keys))
    assert shown(depths)["interactive"] == {"t": (1, 0)}  # counted from the queue, never from the hash
    assert await r.hgetall(tenants) == {b"j2": b"t\tm"}  # the sweep dropped the departed ones
    await r.zrem(keys.queue, "j2")
    assert shown(await lanes.tenant_depths(r, lanes_of(keys)))["interactive"] == {}
    assert await r.exists(tenants, tenants + ":sweep") == 0


async def test_counting_is_bounded(r: aioredis.Redis, keys: Keys) -> None:  # noqa: F811
    await r.zadd(keys.queue, {f"j{i}": i for i in range(10)})
    depths = await lanes.tenant_depths(r, lanes_of(keys), look=4)
    assert depths.waiting("interactive") == 4


async def test_a_running_job_is_one_holding_arqs_lock(r: aioredis.Redis, keys: Keys) -> None:  # noqa: F811
    """What the script calls running is exactly what the claim script marks: arq's in-progress key."""
    await enqueue(r, keys, "x", tenant="t")
    args: list[Any] = [in_progress_key_prefix + "x", "1"]
    await r.set(*args, px=5_000)
    assert shown(await lanes.tenant_depths(r, lanes_of(keys)))["interactive"] == {"t": (0, 1)}
    await r.delete(in_progress_key_prefix + "x")


async def test_depths_per_model_over_both_lanes(r: aioredis.Redis, keys: Keys) -> None:  # noqa: F811
    for i in range(3):
        await enqueue(r, keys, f"c{i}", tenant="team:a", model="chargpt")
    await enqueue(r, keys, "q0", tenant="key:b", model="qgpt")
    await enqueue(r, keys, "line0", tenant="key:b", model="chargpt", queue=keys.batch)
    await claim(r, keys, want=1, batch_room=0)  # c0 runs
    depths = await lanes.tenant_depths(r, lanes_of(keys), lock_prefix=keys.lock_prefix)
    models = {lane: {m: (d.waiting, d.running) for m, d in by.items()} for lane, by in depths.models.items()}
    assert models == {"interactive": {"chargpt": (2, 1), "qgpt": (1, 0)}, "batch": {"chargpt": (1, 0)}}
    both = depths.of_model("chargpt")
    assert (both.waiting, both.running) == (3, 1)
    assert shown(depths)["interactive"] == {"team:a": (2, 1), "key:b": (1, 0)}  # tenants as before
