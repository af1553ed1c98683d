"""GatehouseWorker.run_job with what the claim script returned, against a real Valkey: a job runs and its last
events land with arq's bookkeeping; a job whose earlier worker died is not run twice but answered ``worker_lost``;
an expired or cancelled one is dropped."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix
from prometheus_client import REGISTRY

from core import queue as q
from core.config import Config
from core.queue import JobSpec
from gateway.enqueue import JobQueue
from observability.jobs import JobObserver
from unit.workers.fake_backend import FakeBackend
from workers.backends import Backends
from workers.runner import run_request
from workers.state import STATE_KEY, WorkerState
from workers.worker import BATCH_TRICKLE_S, BUSY_HOLD_S, Claimed, GatehouseWorker


@pytest.fixture
async def worker(redis_url: str) -> AsyncIterator[tuple[GatehouseWorker, FakeBackend]]:
    pool: ArqRedis = await create_pool(RedisSettings.from_dsn(redis_url))
    fake = FakeBackend()
    backends = Backends(Config())
    backends.register("fake", fake)
    w = GatehouseWorker(functions=[run_request], redis_settings=RedisSettings.from_dsn(redis_url), max_tries=1,
                        queue_name=f"test:queue:{uuid.uuid4().hex}", keep_result=0)
    w._pool = pool
    w.ctx[STATE_KEY] = WorkerState(redis=pool, backends=backends, observer=JobObserver(
        worker_id="w", lane="interactive", backend_kinds={}, prices={}))
    yield w, fake
    await pool.aclose()


def payload(job: JobSpec) -> bytes:
    return q.serialize_job(job, int(time.time() * 1000))


async def events_of(redis: ArqRedis, job_id: str) -> list[dict[str, object]]:
    return [ev for _, f in await redis.xrange(q.output_key(job_id)) for ev in q.unpack_events(f[q.EVENT_FIELD])]


def new_job() -> JobSpec:
    return JobSpec(id=uuid.uuid4().hex, kind="chat", model="fake", stream=False, deadline=time.time() + 10,
                   body={"messages": [{"role": "user", "content": "hi"}]})


async def test_a_claimed_job_runs_and_its_answer_lands_with_the_bookkeeping(
        worker: tuple[GatehouseWorker, FakeBackend]) -> None:
    w, fake = worker
    job = new_job()
    await w.pool.set(in_progress_key_prefix + job.id, b"1")
    await w.pool.set(job_key_prefix + job.id, payload(job))
    w._claimed[job.id] = Claimed(payload(job), 1, False)
    await w.run_job(job.id, 0)
    assert [e["k"] for e in await events_of(w.pool, job.id)] == ["result", "end"]
    assert fake.jobs[0].id == job.id and w.jobs_complete == 1
    assert not await w.pool.exists(in_progress_key_prefix + job.id, job_key_prefix + job.id,
                                   retry_key_prefix + job.id)


async def test_a_job_already_tried_is_answered_worker_lost_not_run_again(
        worker: tuple[GatehouseWorker, FakeBackend]) -> None:
    w, fake = worker
    job = new_job()
    w._claimed[job.id] = Claimed(payload(job), 2, False)
    await w.run_job(job.id, 0)
    events = await events_of(w.pool, job.id)
    assert [e["k"] for e in events] == ["error", "end"]
    assert (events[0]["status"], events[0]["code"]) == (502, "worker_lost")
    assert fake.jobs == [] and w.jobs_failed == 1


@pytest.mark.parametrize("claim", [Claimed(None, 1, False), "aborted"])
async def test_expired_or_cancelled_jobs_are_dropped(worker: tuple[GatehouseWorker, FakeBackend],
                                                     claim: Claimed | str) -> None:
    w, fake = worker
    job = new_job()
    w._claimed[job.id] = claim if isinstance(claim, Claimed) else Claimed(payload(job), 1, True)
    await w.run_job(job.id, 0)
    assert fake.jobs == [] and await events_of(w.pool, job.id) == []


def test_batch_lines_yield_to_interactive_calls_but_never_stall() -> None:
    w = GatehouseWorker(functions=[run_request], redis_settings=RedisSettings(), max_jobs=100, keep_result=0)
    w.batch_share, w.batch_busy_slots = 0.75, 0
    assert w._batch_room(100) == 75  # idle: batch lines take their share, interactive calls keep the rest
    assert w._batch_room(10) == 10  # never more than the free slots
    w.job_counter = w._batch_running = 75
    assert w._batch_room(25) == 0  # the share is taken
    w.job_counter, w._batch_running, w._interactive_running = 1, 0, 1  # an interactive call runs here: batch
    w._batch_at = time.monotonic()  # lines wait ...
    assert w._batch_room(99) == 0
    w._batch_at -= BATCH_TRICKLE_S  # ... but one starts each BATCH_TRICKLE_S
    assert w._batch_room(99) == 1
    w.job_counter, w._batch_running = 2, 1
    w._batch_at = time.monotonic()
    assert w._batch_room(98) == 0
    w.job_counter, w._interactive_running = 1, 0  # the interactive call ended just now: the worker is still busy
    w._interactive_at = time.monotonic()
    assert w._batch_room(99) == 0
    w._interactive_at -= BUSY_HOLD_S  # and idle again after BUSY_HOLD_S
    assert w._batch_room(99) == 74
    w.job_counter = 2  # a batch line whose end is still being written holds its slot, not the worker's attention
    assert w._batch_room(98) == 74
    w.batch_busy_slots = 8  # where upstreams are the bottleneck, operators let batch lines run beside
    w.job_counter, w._interactive_running = 2, 1
    assert w._batch_room(98) == 7


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_batch_lane_call_waits_for_interactive_calls_runs_as_batch_work_and_leaves_its_timing(
        worker: tuple[GatehouseWorker, FakeBackend]) -> None:
    """A benchmark key's call (batch lane, ``bench_run``) queued before an interactive call is claimed after it,
    counts as batch work while it runs, is observed on the batch lane, and leaves its timing record; the
    interactive call leaves none."""
    w, fake = worker
    fake.delay_s = 0.2
    interactive, batch = w.queue_name, w.queue_name + ":batch"  # this test's own lanes
    w.batch_queue = batch
    w._lanes = [interactive, q.fair_key(interactive), batch, q.fair_key(batch)]
    w._claim = w.pool.register_script(q.CLAIM_LUA)
    w._slot_freed = asyncio.Event()
    bench, chat = new_job(), new_job()
    bench.stream, bench.bench_run = True, "bench_unit"
    await JobQueue(w.pool, name=batch, wake=interactive).submit(bench)
    await JobQueue(w.pool, name=interactive).submit(chat)
    assert await w.pool.llen(q.wake_key(interactive)) == 2 and not await w.pool.exists(q.wake_key(batch))
    before = {lane: sample("gatehouse_jobs_total", lane=lane, outcome="ok") for lane in q.LANES}
    waits = sample("gatehouse_queue_wait_seconds_count", lane=q.BATCH_LANE)

    await w._poll_iteration()
    assert list(w.tasks) == [chat.id, bench.id]  # the interactive call first, though queued last
    assert (w.job_counter, w._batch_running, w._batch_jobs) == (2, 1, {bench.id})
    await asyncio.gather(*w.tasks.values())

    assert (w._batch_running, w._batch_jobs) == (0, set())
    assert sample("gatehouse_jobs_total", lane=q.BATCH_LANE, outcome="ok") == before[q.BATCH_LANE] + 1
    assert sample("gatehouse_jobs_total", lane=q.INTERACTIVE_LANE, outcome="ok") == before[q.INTERACTIVE_LANE] + 1
    assert sample("gatehouse_queue_wait_seconds_count", lane=q.BATCH_LANE) == waits + 1
    assert [e["k"] for e in await events_of(w.pool, bench.id)][-1] == "end"
    for lane in (interactive, batch):  # each job left its own lane's queue and tenants hash
        assert await w.pool.zcard(lane) == 0 and await w.pool.hlen(q.tenants_key(lane)) == 0
    timing = q.loads(await w.pool.get(q.bench_timing_key(bench.id)))
    assert set(timing) == {"queue_ms", "upstream_ms", "upstream_ttft_ms", "cold_start", "retries", "cost",
                           "bench_run"}
    assert timing["bench_run"] == "bench_unit" and timing["queue_ms"] >= 0 and timing["upstream_ms"] >= 200
    assert timing["upstream_ms"] >= timing["upstream_ttft_ms"] >= 200
    assert (timing["cold_start"], timing["retries"], timing["cost"]) == (False, 0, 0.0)
    assert 0 < await w.pool.ttl(q.bench_timing_key(bench.id)) <= q.BENCH_TIMING_TTL_S
    assert not await w.pool.exists(q.bench_timing_key(chat.id)) and w.state.bench_timings == {}
