"""core.leases against a real Valkey: heartbeats, and how the jobs of a dead (or stopping) worker are settled.

Every key is under a per-test prefix (the scripts take all their key names as arguments), so nothing here
touches a running gateway's or worker's keys."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
import redis.asyncio as aioredis

from core import leases
from core import queue as q


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


class Keys:
    def __init__(self) -> None:
        self.p = f"gh-leases:{uuid.uuid4().hex}:"
        self.workers, self.queue, self.busy, self.abort, self.reaper, self.batch = (
            self.p + n for n in ("workers", "queue", "busy", "abort", "reaper", "batch"))
        self.wake = q.wake_key(self.queue)

    def prefix(self, name: str) -> str:
        return f"{self.p}{name}:"


async def reap(r: aioredis.Redis, k: Keys, worker_id: str = "", event: bytes = leases.LOST_EVENT) -> leases.Reaped:
    args: list[Any] = [q.WORKER_LEASE_S, worker_id, k.prefix("lock"), k.prefix("retry"), k.prefix("job"),
                       k.prefix("running"), k.prefix("out"), event, q.OUTPUT_TTL_S, q.MAX_TRIES, k.abort,
                       q.END_EVENT, leases.SWEEP_LIMIT, leases.REAP_GAP_S]
    return leases.reaped(await r.eval(leases.REAP_LUA, 6, k.workers, k.queue, k.wake, k.busy, k.reaper, k.batch,
                                      *args))


async def reaping_for_a_while(r: aioredis.Redis, k: Keys) -> None:
    """As if reapers had been running continuously for longer than a lease."""
    now = time.time()
    await r.hset(k.reaper, mapping={"last": now, "since": now - q.WORKER_LEASE_S - 1})


async def hold(r: aioredis.Redis, k: Keys, worker: str, job: str, score: int, *, tries: int = 1,
               output: bool = False, batch: bool = False) -> None:
    """What the claim script leaves for a running job (and, with ``output``, a chunk already streamed; with
    ``batch``, on the batch lane)."""
    await r.zadd(k.batch if batch else k.queue, {job: score})
    await r.set(k.prefix("job") + job, b"payload")
    await r.set(k.prefix("lock") + job, b"1")
    await r.set(k.prefix("retry") + job, tries)
    await r.hset(k.prefix("running") + worker, job, score)
    if output:
        await r.xadd(k.prefix("out") + job, {q.EVENT_FIELD: q.chunk_event({"choices": []})})


async def events(r: aioredis.Redis, k: Keys, job: str) -> list[dict[str, Any]]:
    return [ev for _, f in await r.xrange(k.prefix("out") + job) for ev in q.unpack_events(f[q.EVENT_FIELD])]


async def test_heartbeat_says_when_the_worker_was_not_listed(r: aioredis.Redis) -> None:
    k = Keys()
    beat = r.register_script(leases.HEARTBEAT_LUA)
    assert await beat(keys=[k.workers, k.busy], args=["w1", 3]) == 1  # first beat
    assert await beat(keys=[k.workers, k.busy], args=["w1", 2]) == 0
    score = await r.zscore(k.workers, "w1")
    assert score is not None and abs(score - time.time()) < 5  # Redis's clock, in unix seconds
    assert await r.hget(k.busy, "w1") == b"2"
    await r.zrem(k.workers, "w1")  # reaped meanwhile
    assert await beat(keys=[k.workers, k.busy], args=["w1", 0]) == 1


async def test_dead_worker_jobs_are_requeued_or_ended(r: aioredis.Redis) -> None:
    k = Keys()
    now = time.time()
    await r.zadd(k.workers, {"dead": now - q.WORKER_LEASE_S - 5, "alive": now})
    await r.hset(k.busy, mapping={"dead": 3, "alive": 1})
    await hold(r, k, "dead", "fresh", 100)  # no output, first try: runs again
    await hold(r, k, "dead", "streamed", 200, output=True)  # output sent: never run twice
    await hold(r, k, "dead", "second-try", 300, tries=2)  # its second worker died too
    await hold(r, k, "alive", "other", 400)
    await r.zadd(k.queue, {"expired": 50})  # its job key expired before anyone took it
    await reaping_for_a_while(r, k)

    done = await reap(r, k)
    assert done == leases.Reaped(workers=1, requeued=1, ended=2, swept=1)

    # re-queued: same place in the queue, lock gone, a wake-up token for the workers
    assert await r.zscore(k.queue, "fresh") == 100
    assert await r.exists(k.prefix("lock") + "fresh") == 0 and await r.exists(k.prefix("job") + "fresh") == 1
    assert await r.llen(k.wake) == 1
    # ended: the client reads worker_lost, then end; the job is gone
    for job in ("streamed", "second-try"):
        evs = await events(r, k, job)
        assert evs[-2]["k"] == "error" and evs[-2]["code"] == "worker_lost" and evs[-2]["status"] == 502
        assert evs[-1] == {"k": "end"}
        assert await r.zscore(k.queue, job) is None
        assert await r.exists(k.prefix("job") + job, k.prefix("lock") + job, k.prefix("retry") + job) == 0
    assert len(await events(r, k, "streamed")) == 3  # the chunk it had streamed, then the error and end
    # the dead worker is forgotten; the live one and its job untouched
    assert await r.zrange(k.workers, 0, -1) == [b"alive"]
    assert await r.hgetall(k.busy) == {b"alive": b"1"}
    assert await r.exists(k.prefix("running") + "dead") == 0
    assert await r.exists(k.prefix("lock") + "other") == 1 and await r.zscore(k.queue, "other") == 400
    assert await r.zscore(k.queue, "expired") is None

    assert await reap(r, k) == leases.Reaped()  # settled once: a second reaper finds nothing


async def test_a_batch_lane_call_goes_back_to_the_batch_lane(r: aioredis.Redis) -> None:
    """A call by a batch-lane key (no batch line: its client waits on its output stream) is re-queued on the lane
    it came from, or ends for its client with worker_lost like an interactive call."""
    k = Keys()
    await r.zadd(k.workers, {"dead": time.time() - q.WORKER_LEASE_S - 5})
    await hold(r, k, "dead", "bench-quiet", 100, batch=True)
    await hold(r, k, "dead", "bench-talking", 200, batch=True, output=True)
    await hold(r, k, "dead", "batch_x:1", 300, batch=True, tries=2)  # a batch line that cannot run again
    await reaping_for_a_while(r, k)
    assert await reap(r, k) == leases.Reaped(workers=1, requeued=1, ended=2)
    assert await r.zscore(k.batch, "bench-quiet") == 100 and await r.zscore(k.queue, "bench-quiet") is None
    assert await r.llen(k.wake) == 1
    assert (await events(r, k, "bench-talking"))[-2]["code"] == "worker_lost"
    assert await r.zcard(k.batch) == 1 and await r.zcard(k.queue) == 0
    assert await events(r, k, "batch_x:1") == []  # a line's result goes to the batch runner, never a stream


async def test_leases_are_not_judged_right_after_a_gap_in_reaping(r: aioredis.Redis) -> None:
    """A reap that waited out a stalled Redis must not take every lease for stale: live workers' beats may be
    queued right behind it. Reaping resumes a whole lease after the gap."""
    k = Keys()
    now = time.time()
    await r.hset(k.reaper, mapping={"last": now - 10, "since": now - 60})  # nobody reaped for 10 s
    await r.zadd(k.workers, {"stale-looking": now - 8})
    await hold(r, k, "stale-looking", "job", 1)
    assert await reap(r, k) == leases.Reaped()
    assert await r.zscore(k.workers, "stale-looking") is not None
    since = float(await r.hget(k.reaper, "since") or 0)
    assert abs(since - now) < 5  # reaping resumed just now
    await r.hset(k.reaper, "since", since - q.WORKER_LEASE_S)  # ...a lease ago
    assert (await reap(r, k)).workers == 1


async def test_a_stopping_worker_hands_its_jobs_back(r: aioredis.Redis) -> None:
    k = Keys()
    await r.zadd(k.workers, {"stopping": time.time()})  # its lease is current: only its own id settles it
    await hold(r, k, "stopping", "quiet", 1)
    await hold(r, k, "stopping", "talking", 2, output=True)
    assert await reap(r, k) == leases.Reaped()
    done = await reap(r, k, worker_id="stopping", event=leases.STOPPED_EVENT)
    assert (done.requeued, done.ended) == (1, 1)
    last = (await events(r, k, "talking"))[-2]
    assert (last["status"], last["code"]) == (503, "worker_stopped")
    assert await r.zcard(k.workers) == 0


def test_events_are_openai_errors() -> None:
    for raw, status in ((leases.LOST_EVENT, 502), (leases.STOPPED_EVENT, 503)):
        ev = orjson.loads(raw)
        assert ev["k"] == "error" and ev["status"] == status and ev["type"] == "server_error" and ev["message"]


async def reap_gateways(r: aioredis.Redis, k: Keys) -> leases.GatewaysReaped:
    args: list[Any] = [leases.GATEWAY_LEASE_S, k.prefix("job"), k.prefix("lock"), k.prefix("out"),
                       leases.GATEWAY_LOST_EVENT, q.END_EVENT, q.OUTPUT_TTL_S, k.p + "cancel", 100, leases.REAP_GAP_S]
    return leases.gateways_reaped(await r.eval(leases.REAP_GATEWAYS_LUA, 4, k.p + "gateways", k.queue, k.reaper,
                                               k.batch, *args))


def payload(job_id: str, origin: str) -> bytes:
    spec = q.JobSpec(id=job_id, kind="chat", model="m", body={}, stream=True, deadline=time.time() + 60,
                     origin=origin)
    return q.serialize_job(spec, 1)


async def test_a_dead_gateways_jobs_are_dropped_or_cancelled(r: aioredis.Redis) -> None:
    """Its clients were connected to it: queued jobs would run for nobody, running ones are cancelled."""
    k = Keys()
    now = time.time()
    await reaping_for_a_while(r, k)
    await r.hset(k.reaper, "since", now - leases.GATEWAY_LEASE_S - 1)
    await r.zadd(k.p + "gateways", {"gw:dead": now - leases.GATEWAY_LEASE_S - 5, "gw:alive": now})
    for job_id, origin in (("queued", "gw:dead"), ("running", "gw:dead"), ("other", "gw:alive")):
        await r.zadd(k.queue, {job_id: 1})
        await r.set(k.prefix("job") + job_id, payload(job_id, origin))
    await r.zadd(k.batch, {"bench-queued": 1})  # a batch-lane key's call from that gateway: dropped too
    await r.set(k.prefix("job") + "bench-queued", payload("bench-queued", "gw:dead"))
    await r.set(k.prefix("lock") + "running", b"1")
    pubsub = r.pubsub()
    await pubsub.subscribe(k.p + "cancel")
    await pubsub.get_message(timeout=1)  # the subscription's confirmation

    assert await reap_gateways(r, k) == leases.GatewaysReaped(gateways=1, dropped=2, cancelled=1)
    assert set(await r.zrange(k.queue, 0, -1)) == {b"other", b"running"}
    assert await r.zcard(k.batch) == 0 and (await events(r, k, "bench-queued"))[0]["code"] == "gateway_lost"
    assert await r.exists(k.prefix("job") + "queued") == 0
    evs = await events(r, k, "queued")  # if that gateway was only stalled, its client is not left waiting
    assert evs[0]["code"] == "gateway_lost" and evs[-1] == {"k": "end"}
    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=2)
    assert msg is not None and msg["data"] == b"running"  # the worker running it stops
    assert await r.zrange(k.p + "gateways", 0, -1) == [b"gw:alive"]
    await pubsub.aclose()
    assert await reap_gateways(r, k) == leases.GatewaysReaped()


async def test_gateway_leases_wait_for_continuous_reaping(r: aioredis.Redis) -> None:
    k = Keys()
    now = time.time()
    await r.hset(k.reaper, mapping={"last": now, "since": now})  # reaping just resumed
    await r.zadd(k.p + "gateways", {"gw:stale-looking": now - 60})
    assert await reap_gateways(r, k) == leases.GatewaysReaped()
    assert await r.zcard(k.p + "gateways") == 1


def test_jobs_name_their_gateway() -> None:
    spec = q.JobSpec.from_dict(orjson.loads(payload("j", "gw:host:1:abc"))["a"][0])
    assert spec.origin == "gw:host:1:abc"
    assert b'"origin":"gw:host:1:abc"' in payload("j", "gw:host:1:abc")  # what the reap script looks for
