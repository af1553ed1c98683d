"""core.queue, the gateway↔worker contract: the job payload and its arq envelope, the output events, and the
enqueue and claim scripts run against a real Valkey (the session's ``redis_url``)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import arq.jobs
import orjson
import pytest
import redis.asyncio as aioredis

from core import queue as q
from core.queue import DEFAULT_PARAMS, JobSpec, SamplingParams

# ── payload ───────────────────────────────────────────────────────────────────────────────────────────


def spec(**over: Any) -> JobSpec:
    fields: dict[str, Any] = {
        "id": "req-1", "kind": "chat", "model": "gpt-test",
        "body": {"model": "gpt-test", "messages": [{"role": "user", "content": "hi"}], "top_k": 40},
        "stream": True, "deadline": 1_700_000_030.5,
        "params": SamplingParams(max_tokens=64, temperature=0.2, top_p=0.9, seed=7, stop=("###", "\n\n"), n=2,
                                 quantum_profile="high"),
        "enqueued_at": 1_700_000_000.25, "trace": {"route": "POST /v1/chat/completions", "received_at": 1.0},
    }
    return JobSpec(**{**fields, **over})


def test_job_round_trips_through_its_wire_form() -> None:
    original = spec()
    wire = orjson.loads(q.dumps(original.to_dict()))  # what actually travels: JSON (the stop tuple is a list)
    assert wire["params"]["stop"] == ["###", "\n\n"]
    back = JobSpec.from_dict(wire)
    assert back == original
    assert back.params.stop == ("###", "\n\n") and isinstance(back.params.stop, tuple)


def test_to_dict_keeps_the_body_object() -> None:
    s = spec()
    assert s.to_dict()["body"] is s.body  # not deep-copied: it is on the hot path


def test_sampling_params_round_trip_and_defaults() -> None:
    p = SamplingParams(max_tokens=5, stop=("x",), quantum_profile="low")
    assert SamplingParams.from_dict(orjson.loads(q.dumps(p.to_dict()))) == p
    assert SamplingParams.from_dict(None) is DEFAULT_PARAMS and SamplingParams.from_dict({}) is DEFAULT_PARAMS
    assert SamplingParams(None, None, None, None, (), 1, None) == DEFAULT_PARAMS
    assert SamplingParams.from_dict({"stop": None, "n": 3}) == SamplingParams(stop=(), n=3)


def test_from_dict_tolerates_a_gateway_without_params() -> None:
    """An older gateway sends no ``params``: the job runs with the backend's defaults."""
    wire = spec().to_dict()
    del wire["params"]
    back = JobSpec.from_dict(wire)
    assert back.params is DEFAULT_PARAMS
    assert (back.id, back.kind, back.model, back.body, back.stream) == ("req-1", "chat", "gpt-test",
                                                                         spec().body, True)


def test_from_dict_ignores_unknown_fields_of_a_newer_gateway() -> None:
    wire = spec().to_dict()
    wire["priority"] = "high"
    wire["params"] = {**wire["params"], "min_p": 0.05, "logit_bias": {"50256": -100}}
    back = JobSpec.from_dict(wire)
    assert back == spec()


def test_from_dict_coerces_and_defaults() -> None:
    wire = {"id": "r", "kind": "completion", "model": "m", "body": {}, "stream": 0, "deadline": "12.5"}
    before = time.time()
    back = JobSpec.from_dict(wire)
    assert back.stream is False and back.deadline == 12.5 and back.trace is None
    assert before <= back.enqueued_at <= time.time()  # missing: now
    assert back.remaining() < 0  # a deadline in 1970 has passed


def test_bench_run_rides_in_the_payload_only_when_set() -> None:
    assert "bench_run" not in spec().to_dict()  # every other job's payload stays as it was
    s = spec(bench_run="bench_01JABC")
    wire = orjson.loads(q.dumps(s.to_dict()))
    assert wire["bench_run"] == "bench_01JABC" and JobSpec.from_dict(wire) == s
    # tolerant: anything but a short non-empty string is no run at all
    for bad in (None, "", 42, ["bench_x"], "b" * (q.BENCH_RUN_MAX + 1)):
        assert JobSpec.from_dict({**wire, "bench_run": bad}).bench_run is None
    assert q.bench_run_of("b" * q.BENCH_RUN_MAX) == "b" * q.BENCH_RUN_MAX


def test_remaining_counts_down_to_the_deadline() -> None:
    s = spec(deadline=time.time() + 30)
    assert 29 < s.remaining() <= 30


def test_serialize_job_is_arqs_job_dict() -> None:
    s, et = spec(), 1_700_000_000_123
    data = q.serialize_job(s, et)
    function, args, kwargs, job_try, enqueue_time = arq.jobs.deserialize_job_raw(data, deserializer=q.loads)
    assert (function, kwargs, job_try, enqueue_time) == (q.JOB_FUNCTION, {}, 1, et)
    assert len(args) == 1 and JobSpec.from_dict(args[0]) == s
    # byte for byte what arq's own serialize_job writes with the same serializer
    assert data == arq.jobs.serialize_job(q.JOB_FUNCTION, (s.to_dict(),), {}, 1, et, serializer=q.dumps)
    job = arq.jobs.deserialize_job(data, deserializer=q.loads)
    assert job.function == "run_request" and job.job_try == 1
    assert job.enqueue_time.timestamp() == pytest.approx(et / 1000, abs=1e-3)


def test_dumps_falls_back_to_str() -> None:
    assert q.loads(q.dumps({"error": ValueError("boom")})) == {"error": "boom"}


# ── events and key names ──────────────────────────────────────────────────────────────────────────────


def test_event_shapes() -> None:
    assert q.END_EVENT == b'{"k":"end"}'
    assert q.loads(q.chunk_event({"choices": [{"index": 0, "delta": {"content": "a"}}]})) == {
        "k": "chunk", "d": {"choices": [{"index": 0, "delta": {"content": "a"}}]}}
    assert q.loads(q.result_event({"choices": [], "usage": {"total_tokens": 3}})) == {
        "k": "result", "d": {"choices": [], "usage": {"total_tokens": 3}}}
    assert q.loads(q.error_event(502, "upstream said no", "upstream_error")) == {
        "k": "error", "status": 502, "type": "upstream_error", "code": None, "message": "upstream said no",
        "param": None}
    assert q.loads(q.error_event(400, "bad", "invalid_request_error", "invalid_value", "temperature")) == {
        "k": "error", "status": 400, "type": "invalid_request_error", "code": "invalid_value", "message": "bad",
        "param": "temperature"}
    assert q.loads(q.QUEUE_FULL_EVENT) == {
        "k": "error", "status": 503, "type": "server_error", "code": "queue_full",
        "message": "The gateway's queue is full; retry shortly.", "param": None}


def test_key_names() -> None:
    assert q.wake_key(q.INTERACTIVE_QUEUE) == "gatehouse:queue:interactive:wake"
    assert q.output_key("abc") == "gatehouse:out:abc"
    assert q.busy_key("interactive") == "gatehouse:busy:interactive"
    assert q.lane_of(q.INTERACTIVE_QUEUE) == "interactive"
    assert q.lane_of("gatehouse:queue:gpu") == "gpu"  # not a configured lane: the name's last part
    assert q.lane_of(q.BATCH_QUEUE) == q.BATCH_LANE == "batch" and q.LANES[q.INTERACTIVE_LANE] == q.INTERACTIVE_QUEUE
    assert q.bench_timing_key("abc") == "gatehouse:bench:timing:abc" and q.BENCH_TIMING_TTL_S == 3600


# ── the scripts, on a real Valkey ─────────────────────────────────────────────────────────────────────


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@dataclass
class Keys:
    """A test's own key names (a unique prefix), laid out as the gateway lays out the real ones."""

    prefix: str

    @property
    def queue(self) -> str:
        return self.prefix + "queue"

    @property
    def wake(self) -> str:
        return q.wake_key(self.queue)

    @property
    def lock_prefix(self) -> str:
        return self.prefix + "in-progress:"

    @property
    def job_prefix(self) -> str:
        return self.prefix + "job:"

    @property
    def retry_prefix(self) -> str:
        return self.prefix + "retry:"

    @property
    def abort(self) -> str:
        return self.prefix + "abort"

    @property
    def batch(self) -> str:
        return self.prefix + "batch"

    def job(self, job_id: str) -> str:
        return self.job_prefix + job_id

    def out(self, job_id: str) -> str:
        return self.prefix + "out:" + job_id


@pytest.fixture
def keys() -> Keys:
    return Keys(f"gh-unit:{uuid.uuid4().hex}:")


async def enqueue(r: aioredis.Redis, k: Keys, job_id: str, *, max_depth: int = 10, tenant: str = "t",
                  priority: int = 128, ttl_ms: int = 30_000, payload: bytes | None = None,
                  queue: str | None = None, model: str = "m") -> int:
    queue = queue or k.queue
    payload = payload if payload is not None else q.serialize_job(spec(id=job_id), 1_000)
    args: list[Any] = [queue, k.job(job_id), q.wake_key(queue), k.out(job_id), q.fair_key(queue),  # KEYS
                       q.tenants_key(queue),
                       job_id, payload, tenant, ttl_ms, max_depth, q.QUEUE_FULL_EVENT, q.OUTPUT_TTL_S,
                       priority, q.job_label(tenant, model)]  # ARGV, as the gateway sends them
    return int(await r.eval(q.ENQUEUE_LUA, 6, *args))


@dataclass(frozen=True)
class Claimed:
    id: str
    score: int
    payload: bytes | None
    tries: int
    aborted: bool
    lane: int = q.CLAIM_INTERACTIVE  # the lane it came from


async def claim(r: aioredis.Redis, k: Keys, *, want: int = 10, batch_room: int = 10, look: int = 100,
                lock_ms: int = 5_000) -> list[Claimed]:
    lanes = [k.queue, q.fair_key(k.queue), k.batch, q.fair_key(k.batch)]
    args: list[Any] = [want, lock_ms, k.lock_prefix, batch_room, look,  # as the worker sends them
                       k.job_prefix, k.retry_prefix, k.abort, q.RETRY_KEY_TTL_S, k.prefix + "running:w1"]
    flat = await r.eval(q.CLAIM_LUA, 4, *lanes, *args)
    assert len(flat) % q.CLAIM_FIELDS == 0
    return [Claimed(job_id.decode(), int(float(score)), payload, int(tries), bool(aborted), lane)
            for job_id, score, payload, tries, aborted, lane in (flat[i:i + q.CLAIM_FIELDS]
                                                                 for i in range(0, len(flat), q.CLAIM_FIELDS))]


def ids(claimed: list[Claimed]) -> list[str]:
    return [c.id for c in claimed]


BAND = q.PRIORITY_BAND


async def test_enqueue_writes_job_queue_entry_and_wake_token(r: aioredis.Redis, keys: Keys) -> None:
    payload = q.serialize_job(spec(id="a"), 1_500)
    assert await enqueue(r, keys, "a", ttl_ms=20_000, payload=payload) == 1
    assert await enqueue(r, keys, "b") == 2
    assert await r.get(keys.job("a")) == payload
    assert 0 < await r.pttl(keys.job("a")) <= 20_000
    # one tenant, default priority: places one after the other in band 128
    assert await r.zrange(keys.queue, 0, -1, withscores=True) == [(b"a", 128.0 * BAND), (b"b", 128.0 * BAND + 1)]
    assert await r.llen(keys.wake) == 2 and 0 < await r.pttl(keys.wake) <= 60_000
    assert await r.exists(keys.out("a")) == 0  # accepted: nothing written for the reader yet
    assert await r.hgetall(q.tenants_key(keys.queue)) == {b"a": b"t\tm", b"b": b"t\tm"}  # whose, for which model


async def test_enqueue_refuses_when_full_and_tells_the_reader(r: aioredis.Redis, keys: Keys) -> None:
    for i in range(2):
        assert await enqueue(r, keys, f"j{i}", max_depth=2) == i + 1
    assert await enqueue(r, keys, "late", max_depth=2) == -1
    assert await r.zcard(keys.queue) == 2 and await r.exists(keys.job("late")) == 0
    assert await r.llen(keys.wake) == 2  # no wake token for a refused job
    entries = await r.xrange(keys.out("late"))
    assert [fields for _, fields in entries] == [{q.EVENT_FIELD: q.QUEUE_FULL_EVENT}, {q.EVENT_FIELD: q.END_EVENT}]
    assert 0 < await r.ttl(keys.out("late")) <= q.OUTPUT_TTL_S
    # a refused job takes no fair place: the tenant's next place is still the third
    assert await r.hget(q.fair_key(keys.queue), "128:t") == b"2"


async def test_enqueue_refuses_a_duplicate_id(r: aioredis.Redis, keys: Keys) -> None:
    assert await enqueue(r, keys, "dup") == 1
    first = await r.get(keys.job("dup"))
    assert await enqueue(r, keys, "dup", priority=0, payload=b"other") == -2
    assert await r.get(keys.job("dup")) == first and await r.zscore(keys.queue, "dup") == 128.0 * BAND
    assert await r.zcard(keys.queue) == 1 and await r.llen(keys.wake) == 1
    # an id whose output stream still exists (a refused request) is a duplicate too
    assert await enqueue(r, keys, "refused", max_depth=1) == -1
    assert await enqueue(r, keys, "refused", max_depth=10) == -2
    assert await r.exists(keys.job("refused")) == 0 and await r.xlen(keys.out("refused")) == 2


async def test_a_flooding_tenant_does_not_starve_a_small_one(r: aioredis.Redis, keys: Keys) -> None:
    """Start-time fair queuing: 50 jobs of tenant A queued first, then 3 of tenant B; B's jobs are claimed
    among A's first ones, not after all 50."""
    for i in range(50):
        await enqueue(r, keys, f"a{i}", tenant="A", max_depth=100)
    for i in range(3):
        await enqueue(r, keys, f"b{i}", tenant="B", max_depth=100)
    order = ids(await claim(r, keys, want=6))
    assert order == ["a0", "b0", "a1", "b1", "a2", "b2"]
    # the lane's clock moved to the last start claimed: a tenant arriving now starts there, not at 0
    assert await r.hget(q.fair_key(keys.queue), "now:128") == b"2"
    await enqueue(r, keys, "c0", tenant="C", max_depth=100)
    assert await r.zscore(keys.queue, "c0") == 128.0 * BAND + 2
    assert ids(await claim(r, keys, want=2)) == ["c0", "a3"]


async def test_priority_bands_come_before_fair_share(r: aioredis.Redis, keys: Keys) -> None:
    for i in range(5):
        await enqueue(r, keys, f"low{i}", tenant="A", priority=200)
    await enqueue(r, keys, "mid", tenant="B")
    await enqueue(r, keys, "urgent", tenant="A", priority=0)
    assert ids(await claim(r, keys, want=3)) == ["urgent", "mid", "low0"]
    # each band keeps its own places: tenant A's urgent job did not push back its low ones
    fair = await r.hgetall(q.fair_key(keys.queue))
    assert (fair[b"0:A"], fair[b"128:B"], fair[b"200:A"]) == (b"1", b"1", b"5")


async def test_claim_takes_interactive_jobs_before_batch_lines(r: aioredis.Redis, keys: Keys) -> None:
    for i in range(3):
        await enqueue(r, keys, f"line{i}", queue=keys.batch, priority=0)  # even an urgent batch line waits
    await enqueue(r, keys, "chat0")
    await enqueue(r, keys, "chat1")
    first = await claim(r, keys, want=3, batch_room=3)
    assert ids(first) == ["chat0", "chat1", "line0"]
    # each job says which lane it came from (the worker counts and observes it there)
    assert [c.lane for c in first] == [q.CLAIM_INTERACTIVE, q.CLAIM_INTERACTIVE, q.CLAIM_BATCH]
    # batch room bounds the batch lines claimed, whatever is free
    assert ids(await claim(r, keys, want=10, batch_room=1)) == ["line1"]
    assert ids(await claim(r, keys, want=10, batch_room=0)) == []
    assert ids(await claim(r, keys, want=10, batch_room=5)) == ["line2"]


async def test_a_batch_lane_call_is_claimed_from_the_batch_lane_after_interactive_calls(
        r: aioredis.Redis, keys: Keys) -> None:
    """A call by a batch-lane key (a benchmark's, say) is no batch line, but it waits behind interactive calls as
    batch lines do, shares the batch room with them, and is reported as claimed from the batch lane."""
    await enqueue(r, keys, "bench0", queue=keys.batch, payload=q.serialize_job(spec(id="bench0", bench_run="b1"), 1))
    await enqueue(r, keys, "batch_x:1", queue=keys.batch)
    await enqueue(r, keys, "chat0")
    got = await claim(r, keys, want=2, batch_room=2)
    assert [(c.id, c.lane) for c in got] == [("chat0", q.CLAIM_INTERACTIVE), ("bench0", q.CLAIM_BATCH)]
    assert got[1].payload is not None and JobSpec.from_dict(q.loads(got[1].payload)["a"][0]).bench_run == "b1"
    assert [(c.id, c.lane) for c in await claim(r, keys, batch_room=1)] == [("batch_x:1", q.CLAIM_BATCH)]


async def test_claim_takes_queued_jobs_and_their_locks(r: aioredis.Redis, keys: Keys) -> None:
    await r.zadd(keys.queue, {"b": 20, "a": 10})
    assert ids(await claim(r, keys, lock_ms=7_000)) == ["a", "b"]
    for job_id in ("a", "b"):
        assert await r.get(keys.lock_prefix + job_id) == b"1"
        assert 0 < await r.pttl(keys.lock_prefix + job_id) <= 7_000
    assert await r.zcard(keys.queue) == 2  # claiming leaves the entries: arq removes them when a job ends
    assert await claim(r, keys) == []  # locked: not handed out twice
    # the claiming worker's running hash names every job it holds (core.leases reaps them if it dies)
    assert await r.hgetall(keys.prefix + "running:w1") == {b"a": b"10", b"b": b"20"}


async def test_claim_does_what_run_job_would_do_next(r: aioredis.Redis, keys: Keys) -> None:
    """Fetch the job, count the try (arq's retry key), take the job off the abort set."""
    await r.zadd(keys.queue, {"a": 1, "gone": 2})
    await r.set(keys.job("a"), b"payload-a")
    await r.set(keys.retry_prefix + "a", 2)  # tried twice before
    await r.zadd(keys.abort, {"a": 1, "other": 1})
    first, gone = await claim(r, keys)
    assert first == Claimed("a", 1, b"payload-a", 3, True, q.CLAIM_INTERACTIVE)
    assert gone == Claimed("gone", 2, None, 1, False)  # its job key expired: no payload, still claimed
    assert await r.zrange(keys.abort, 0, -1) == [b"other"]
    assert await r.get(keys.retry_prefix + "a") == b"3"
    assert 0 < await r.ttl(keys.retry_prefix + "gone") <= q.RETRY_KEY_TTL_S


async def test_claim_skips_a_job_locked_elsewhere(r: aioredis.Redis, keys: Keys) -> None:
    await r.zadd(keys.queue, {"a": 1, "b": 2})
    await r.set(keys.lock_prefix + "a", b"other-worker", px=5_000)
    assert ids(await claim(r, keys)) == ["b"]
    assert await r.get(keys.lock_prefix + "a") == b"other-worker"  # not taken over
    assert await r.exists(keys.retry_prefix + "a") == 0  # nor its try counted


async def test_claim_respects_the_most_jobs_and_the_read_limit(r: aioredis.Redis, keys: Keys) -> None:
    await r.zadd(keys.queue, {f"j{i}": i for i in range(1, 6)})
    assert ids(await claim(r, keys, want=2)) == ["j1", "j2"]
    assert await claim(r, keys, want=10, look=2) == []  # only the first two are looked at
    assert ids(await claim(r, keys, want=10, look=4)) == ["j3", "j4"]
    assert ids(await claim(r, keys, want=1)) == ["j5"]
    assert await claim(r, keys) == []


async def test_enqueued_jobs_are_claimable_and_readable_by_arq(r: aioredis.Redis, keys: Keys) -> None:
    """The two scripts together: what the gateway enqueues, a worker claims and arq can read."""
    now = int(time.time() * 1000)
    s = spec(id="e2e", deadline=time.time() + 30)
    assert await enqueue(r, keys, "e2e", payload=q.serialize_job(s, now)) == 1
    (claimed,) = await claim(r, keys)
    assert (claimed.id, claimed.score, claimed.tries, claimed.aborted) == ("e2e", 128 * BAND, 1, False)
    assert claimed.payload == await r.get(keys.job("e2e"))
    assert claimed.payload is not None
    _, args, _, _, enqueue_time = arq.jobs.deserialize_job_raw(claimed.payload, deserializer=q.loads)
    assert JobSpec.from_dict(args[0]) == s and enqueue_time == now


def test_events_written_together_share_one_entry() -> None:
    chunk = q.chunk_event({"choices": []})
    assert q.pack_events([chunk]) == chunk  # a single event is stored as itself
    packed = q.pack_events([chunk, q.result_event({"x": 1}), q.END_EVENT])
    assert [e["k"] for e in q.unpack_events(packed)] == ["chunk", "result", "end"]
    assert q.unpack_events(q.END_EVENT) == [{"k": "end"}]


def test_an_entry_that_ends_the_request_is_recognised_undecoded() -> None:
    assert q.ends_request(q.END_EVENT)
    assert q.ends_request(q.pack_events([q.result_event({"x": 1}), q.END_EVENT]))
    assert not q.ends_request(q.pack_events([q.chunk_event({"choices": []}), q.result_event({"x": 1})]))
    assert not q.ends_request(q.chunk_event({"choices": []}))


async def test_claim_reads_past_a_page_of_running_jobs(r: aioredis.Redis, keys: Keys) -> None:
    """Running jobs keep their entries at the head; the claim pages past them, up to its window."""
    ahead = q.CLAIM_PAGE + 44
    await r.zadd(keys.queue, {f"run{i}": i for i in range(ahead)})
    for i in range(ahead):
        await r.set(keys.lock_prefix + f"run{i}", "1", px=30_000)  # held by other workers
    await r.zadd(keys.queue, {"free": ahead + 1})
    assert ids(await claim(r, keys, want=1, look=ahead)) == []  # beyond the window: out of reach
    assert ids(await claim(r, keys, want=1, look=ahead + 1)) == ["free"]
