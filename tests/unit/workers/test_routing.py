"""Routing against a real Valkey: picks shared through Redis (least-busy, weights, order, limits), waiting when
every deployment is full, cooldowns, retries on another deployment, fallbacks before any output, and the
fallback's name in what the runner writes."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool

from core import queue as q
from core.config import Config, LiteLLMParams, ModelEntry
from core.queue import JobSpec, SamplingParams
from core.routestate import cooldown_key
from core.routing import NO_ORDER, Deployment, RouterSettings
from observability.jobs import JobObserver
from unit.workers.fake_backend import FakeBackend
from workers.backends import Backend, BackendError, Backends
from workers.balancer import ALL_COOLED, Balancer
from workers.routing import Group, Route, build_routes, is_context_window
from workers.runner import run_request
from workers.state import STATE_KEY, WorkerState


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    yield pool
    await pool.aclose()


def dep(group: str = "g", *, rpm: int | None = None, tpm: int | None = None, weight: float = 1.0,
        order: int = NO_ORDER, parallel: int | None = None) -> Deployment:
    entry = ModelEntry(model_name=group, litellm_params=LiteLLMParams(model="openai/x"))
    return Deployment(group=group, id=f"{group}-{uuid.uuid4().hex[:8]}", entry=entry, rpm=rpm, tpm=tpm,
                      weight=weight, order=order, max_parallel_requests=parallel)


def job(*, stream: bool = False, deadline_in: float = 10.0, model: str = "g") -> JobSpec:
    return JobSpec(id=uuid.uuid4().hex, kind="chat", model=model,
                   body={"messages": [{"role": "user", "content": "hi"}]}, stream=stream,
                   deadline=time.time() + deadline_in, params=SamplingParams())


async def test_least_busy_spreads_what_is_in_flight(redis: ArqRedis) -> None:
    b, deps = Balancer(RouterSettings()), [dep(), dep()]
    j = job()
    picks = [await b.acquire(redis, "g", deps, j, f"{j.id}#{n}") for n in range(6)]
    assert sorted(picks) == [0, 0, 0, 1, 1, 1]
    for n, i in enumerate(picks):
        b.release(redis, deps[i], f"{j.id}#{n}")
    await b.settle()
    assert await redis.zcard(f"gatehouse:route:busy:{deps[0].id}") == 0


async def test_weights_share_simple_shuffle_and_least_busy(redis: ArqRedis) -> None:
    b, deps = Balancer(RouterSettings(routing_strategy="simple-shuffle")), [dep(weight=9), dep(weight=1)]
    counts = [0, 0]
    for _ in range(200):
        j = job()
        i = await b.acquire(redis, "g", deps, j, j.id)
        counts[i] += 1
        b.release(redis, deps[i], j.id)
    assert counts[0] > 150 and counts[1] > 3
    await b.settle()
    b, deps, j = Balancer(RouterSettings()), [dep(weight=2), dep(weight=1)], job()
    picks = [await b.acquire(redis, "g", deps, j, f"{j.id}#{n}") for n in range(6)]
    assert picks.count(0) == 4  # in flight relative to weight


async def test_order_is_kept_while_the_first_has_room(redis: ArqRedis) -> None:
    b, deps, j = Balancer(RouterSettings()), [dep(order=2), dep(order=1, parallel=2)], job()
    assert [await b.acquire(redis, "g", deps, j, f"{j.id}#{n}") for n in range(4)] == [1, 1, 0, 0]


async def test_rpm_is_a_limit_per_minute(redis: ArqRedis) -> None:
    b = Balancer(RouterSettings())
    for _ in range(3):  # (again if the minute turned in between)
        deps, minute = [dep(rpm=2, order=1), dep(order=2)], int(time.time() // 60)
        picks = [await b.acquire(redis, "g", deps, job(), f"h{n}") for n in range(3)]
        if int(time.time() // 60) == minute:
            break
    assert picks == [0, 0, 1]


async def test_limits_are_respected_and_a_full_group_waits(redis: ArqRedis) -> None:
    b, deps = Balancer(RouterSettings()), [dep(parallel=1), dep(parallel=1)]
    j = job(deadline_in=5)
    held = {await b.acquire(redis, "g", deps, j, "a"): "a", await b.acquire(redis, "g", deps, j, "b"): "b"}
    assert sorted(held) == [0, 1]
    with pytest.raises(BackendError) as e:  # with somewhere to fall back to, a full group says so at once
        await b.acquire(redis, "g", deps, j, "c", may_fall_back=True)
    assert (e.value.status, e.value.code) == (429, "deployments_busy")
    waiting = asyncio.create_task(b.acquire(redis, "g", deps, j, "c"))  # otherwise the job waits for room
    await asyncio.sleep(0.3)
    assert not waiting.done()
    b.release(redis, deps[0], held[0])
    assert await asyncio.wait_for(waiting, 2) == 0
    with pytest.raises(TimeoutError):  # ... until the job's deadline
        await b.acquire(redis, "g", deps, job(deadline_in=0.3), "d")


async def test_tokens_count_against_tpm(redis: ArqRedis) -> None:
    b, deps, j = Balancer(RouterSettings()), [dep(tpm=100, order=1), dep(order=5)], job()
    assert await b.acquire(redis, "g", deps, j, "a") == 0
    b.release(redis, deps[0], "a", tokens=150)
    await b.settle()
    assert await b.acquire(redis, "g", deps, j, "b") == 1


async def test_a_lease_past_its_end_is_not_in_flight(redis: ArqRedis) -> None:
    b, deps = Balancer(RouterSettings()), [dep(parallel=1)]
    await redis.zadd(f"gatehouse:route:busy:{deps[0].id}", {"dead-worker#0": int(time.time() * 1000) - 1})
    assert await b.acquire(redis, "g", deps, job(), "a") == 0


async def test_failures_past_allowed_fails_cool_a_deployment_down(redis: ArqRedis) -> None:
    b, deps = Balancer(RouterSettings(allowed_fails=2, cooldown_time=1)), [dep(), dep()]
    err = BackendError(502, "boom")
    for n in range(3):
        b.release(redis, deps[0], f"x{n}", failure=err)
        await b.settle()
        assert await redis.exists(cooldown_key(deps[0].id)) == (n == 2)
    j = job()
    assert {await b.acquire(redis, "g", deps, j, f"{j.id}#{n}") for n in range(4)} == {1}
    b.release(redis, deps[1], "y", failure=BackendError(429, "slow down"))  # overloaded: at once
    b.release(redis, deps[1], "z", failure=BackendError(400, "bad request"))  # the request's fault: not counted
    await b.settle()
    assert await b.pick(redis, deps, j, "s", strict=True) == (-1, ALL_COOLED)
    assert (await b.pick(redis, deps, j, "t"))[0] in (0, 1)  # nowhere else to go: tried rather than failing
    await asyncio.sleep(1.1)
    assert not await redis.exists(cooldown_key(deps[0].id))


class Tries:
    """The runner's side of a routed job, scripted."""

    def __init__(self, *, sends: bool = False) -> None:
        self.ran: list[tuple[Backend, str | None]] = []
        self.sends = sends
        self.emitted = False

    async def run(self, backend: Backend, answered_by: str | None) -> list[bytes]:
        self.ran.append((backend, answered_by))
        assert isinstance(backend, FakeBackend)
        if self.sends:
            self.emitted = True
        await backend.complete(job())
        return [answered_by.encode() if answered_by else b"own"]

    def sent(self) -> bool:
        return self.emitted

    def tokens(self) -> int:
        return 3


def group(name: str, *backends: FakeBackend, parallel: int | None = None) -> Group:
    return Group(name, tuple(dep(name, parallel=parallel) for _ in backends), backends)


def failing(status: int = 502, code: str | None = None, message: str = "upstream failed") -> FakeBackend:
    return FakeBackend(error=BackendError(status, message, code=code))


async def test_a_failed_deployment_is_retried_on_another(redis: ArqRedis) -> None:
    bad, good = failing(), FakeBackend()
    route = Route(group("g", bad, good), [], [], Balancer(RouterSettings()), retries=2, max_fallbacks=5)
    for _ in range(4):
        tries = Tries()
        assert await route.run(job(), redis, tries) == [b"own"]
        assert tries.ran[-1][0] is good
    assert len(bad.jobs) >= 1


async def test_fallbacks_answer_and_are_named(redis: ArqRedis) -> None:
    settings = RouterSettings(fallbacks=[{"a": ["b", "c"]}], context_window_fallbacks=[{"a": ["big"]}])
    groups = {"a": group("a", failing()), "b": group("b", failing(503)), "c": group("c", FakeBackend()),
              "big": group("big", FakeBackend())}
    routes = build_routes(settings, groups, retries=0)
    assert set(routes) == {"a"}  # the others are called directly
    tries = Tries()
    assert await routes["a"].run(job(model="a"), redis, tries) == [b"c"]
    assert [name for _, name in tries.ran] == [None, "b", "c"]
    groups["a"] = group("a", failing(400, "context_length_exceeded"))
    tries = Tries()
    assert await build_routes(settings, groups, 0)["a"].run(job(model="a"), redis, tries) == [b"big"]


async def test_no_fallback_for_the_requests_own_fault_or_once_output_went_out(redis: ArqRedis) -> None:
    settings = RouterSettings(fallbacks=[{"a": ["b"]}])
    groups = {"a": group("a", failing(400, "invalid_value")), "b": group("b", FakeBackend())}
    with pytest.raises(BackendError) as e:
        await build_routes(settings, groups, 0)["a"].run(job(model="a"), redis, Tries())
    assert e.value.status == 400
    groups["a"] = group("a", failing(502))
    with pytest.raises(BackendError):
        await build_routes(settings, groups, 0)["a"].run(job(model="a"), redis, Tries(sends=True))


async def test_a_busy_group_falls_back_when_it_may(redis: ArqRedis) -> None:
    settings = RouterSettings(fallbacks=[{"a": ["b"]}])
    slow = FakeBackend(delay_s=0.5)
    groups = {"a": group("a", slow, parallel=1), "b": group("b", FakeBackend())}
    route = build_routes(settings, groups, 0)["a"]
    first = asyncio.create_task(route.run(job(model="a"), redis, Tries()))
    await asyncio.sleep(0.2)
    assert await route.run(job(model="a"), redis, Tries()) == [b"b"]
    assert await first == [b"own"]


def test_context_window_errors_are_recognised() -> None:
    assert is_context_window(BackendError(400, "x", code="context_length_exceeded"))
    assert is_context_window(BackendError(400, "This model's maximum context length is 4096 tokens."))
    assert not is_context_window(BackendError(400, "temperature must be at most 2"))


async def test_the_runner_names_the_fallback_in_chunks_and_results(redis: ArqRedis) -> None:
    registry = Backends(Config())
    broken, backup = FakeBackend(error=BackendError(503, "down")), FakeBackend(pieces=("ok",))
    registry.register("a", broken)
    registry.routes = build_routes(RouterSettings(fallbacks=[{"a": ["b"]}]),
                                   {"a": group("a", broken), "b": group("b", backup)}, 0)
    observer = JobObserver(worker_id="w-test", lane="interactive", backend_kinds={}, prices={})
    state = WorkerState(redis=redis, backends=registry, observer=observer)
    for stream in (False, True):
        j = job(model="a", stream=stream)
        await run_request({STATE_KEY: state}, j.to_dict())
        entries = await redis.xrange(q.output_key(j.id))
        events: list[dict[str, Any]] = [ev for _, f in entries for ev in q.unpack_events(f[q.EVENT_FIELD])]
        events += [q.loads(e) for e in state.final_events.pop(j.id)]
        data = [ev["d"] for ev in events if ev["k"] in ("chunk", "result")]
        assert data and all(d["model"] == "b" for d in data), events
        assert "error" not in [ev["k"] for ev in events]


async def test_backends_route_only_the_models_that_need_it() -> None:
    def entry(name: str, base: str, **params: object) -> ModelEntry:
        return ModelEntry(model_name=name, litellm_params=LiteLLMParams(model="openai/m", api_base=base, **params))

    cfg = Config(model_list=[entry("pair", "http://a/v1"), entry("pair", "http://b/v1", weight=3),
                             entry("limited", "http://c/v1", rpm=10), entry("plain", "http://d/v1"),
                             entry("spare", "http://e/v1")],
                 router_settings=RouterSettings(fallbacks=[{"plain": ["spare"]}]))
    backends = Backends(cfg).build()
    try:
        assert set(backends.routes) == {"pair", "limited", "plain"}
        assert backends.route("spare") is None and backends.route("nope") is None
        pair = backends.routes["pair"].group
        assert [b.base for b in pair.backends] == ["http://a/v1", "http://b/v1"]
        assert [b.retries for b in pair.backends] == [0, 0]  # the router retries
        assert backends.get("spare").retries == cfg.settings.upstream_retries
        assert not backends.routes["plain"].group.balanced
    finally:
        await backends.aclose()
