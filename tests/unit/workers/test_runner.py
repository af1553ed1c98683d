"""``run_request`` against a real Valkey with the FakeBackend: what reaches the output stream, the last events
handed to the worker, one error event per failure (backend error, deadline, unsupported kind, cancellation,
a bug in the worker)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from arq.connections import ArqRedis, RedisSettings, create_pool
from prometheus_client import REGISTRY

from core import queue as q
from core.config import Config
from core.queue import JobKind, JobSpec, SamplingParams
from observability.jobs import JobObserver
from unit.workers.fake_backend import ChatOnly, FakeBackend
from workers.backends import Backend, BackendError, Backends
from workers.runner import opens_only, run_request, with_opening
from workers.state import STATE_KEY, WorkerState


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[ArqRedis]:
    pool = await create_pool(RedisSettings.from_dsn(redis_url))
    yield pool
    await pool.aclose()


def make_state(redis: ArqRedis, **backends: Backend) -> WorkerState:
    registry = Backends(Config())
    for name, backend in backends.items():
        registry.register(name, backend)
    observer = JobObserver(worker_id="w-test", lane="interactive", backend_kinds={}, prices={})
    return WorkerState(redis=redis, backends=registry, observer=observer)


def spec(kind: JobKind = "chat", *, stream: bool = False, model: str = "fake", deadline_in: float = 10.0,
         body: dict[str, Any] | None = None) -> JobSpec:
    body = body or ({"messages": [{"role": "user", "content": "hi"}]} if kind == "chat" else {"prompts": ["a"]})
    return JobSpec(id=uuid.uuid4().hex, kind=kind, model=model, body=body, stream=stream,
                   deadline=time.time() + deadline_in, params=SamplingParams(seed=7))


async def streamed(redis: ArqRedis, job_id: str) -> list[dict[str, Any]]:
    entries = await redis.xrange(q.output_key(job_id))
    return [ev for _, fields in entries for ev in q.unpack_events(fields[q.EVENT_FIELD])]


def last(state: WorkerState, job_id: str) -> list[dict[str, Any]]:
    return [q.loads(e) for e in state.final_events[job_id]]


async def test_a_stream_opens_with_role_and_first_token_in_one_event(redis: ArqRedis) -> None:
    state = make_state(redis, fake=FakeBackend(pieces=("Hel", "lo")))
    job = spec(stream=True)
    await run_request({STATE_KEY: state}, job.to_dict())
    events = [*await streamed(redis, job.id), *last(state, job.id)]
    kinds = [e["k"] for e in events]
    assert kinds == ["chunk", "chunk", "chunk", "chunk", "end"]
    assert events[0]["d"]["choices"][0]["delta"] == {"role": "assistant", "content": "Hel"}
    assert events[1]["d"]["choices"][0]["delta"] == {"content": "lo"}
    assert events[2]["d"]["choices"][0]["finish_reason"] == "stop"
    assert events[3]["d"]["usage"] == {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}


async def test_a_whole_answer_rides_with_the_end(redis: ArqRedis) -> None:
    fake = FakeBackend()
    state = make_state(redis, fake=fake)
    job = spec()
    await run_request({STATE_KEY: state}, job.to_dict())
    assert await streamed(redis, job.id) == []  # nothing written before the end-of-job transaction
    result, end = last(state, job.id)
    assert result["k"] == "result" and result["d"]["choices"][0]["message"]["content"] == "Hello"
    assert end == {"k": "end"}
    assert fake.jobs[0].params.seed == 7  # the typed parameters reach the backend


@pytest.mark.parametrize(("kind", "body"), [("generate", {"form": "chargpt"}), ("classify", {"prompts": ["a", "b"]})])
async def test_seed_endpoints_by_capability(redis: ArqRedis, kind: JobKind, body: dict[str, Any]) -> None:
    state = make_state(redis, fake=FakeBackend())
    job = spec(kind, body=body)
    await run_request({STATE_KEY: state}, job.to_dict())
    result, _ = last(state, job.id)
    assert result["k"] == "result"
    assert ("generated_text" in result["d"]) if kind == "generate" else result["d"] == {
        "prompt_complexity_score": [0.5, 0.5]}


async def test_a_benchmark_call_leaves_its_timing_record_for_the_worker(redis: ArqRedis) -> None:
    state = make_state(redis, fake=FakeBackend(delay_s=0.05))
    state.observer.prices = {"fake": (0.001, 0.002)}
    job = spec(stream=True)
    job.bench_run, job.enqueued_at = "bench_unit", time.time() - 0.25  # it waited a quarter second in the queue
    await run_request({STATE_KEY: state}, job.to_dict(), lane="unit-bench-lane")
    timing = q.loads(state.bench_timings[job.id])
    assert timing["bench_run"] == "bench_unit" and 250 <= timing["queue_ms"] < 2_000
    assert timing["upstream_ms"] >= timing["upstream_ttft_ms"] >= 50
    assert timing["cost"] == pytest.approx(1 * 0.001 + 2 * 0.002)  # usage(1, 2) at the model's prices
    assert (timing["cold_start"], timing["retries"]) == (False, 0)
    # observed on the lane the worker claimed it from
    assert (REGISTRY.get_sample_value("gatehouse_jobs_total", {"lane": "unit-bench-lane", "outcome": "ok"})
            or 0) >= 1
    whole = spec()  # not streamed: no first token to time
    whole.bench_run = "bench_unit"
    await run_request({STATE_KEY: state}, whole.to_dict())
    assert q.loads(state.bench_timings[whole.id])["upstream_ttft_ms"] is None


async def test_other_calls_leave_no_timing_record(redis: ArqRedis) -> None:
    state = make_state(redis, fake=FakeBackend())
    await run_request({STATE_KEY: state}, spec(stream=True).to_dict())
    assert state.bench_timings == {}


def error_of(state: WorkerState, job_id: str) -> dict[str, Any]:
    *_, error, end = last(state, job_id)
    assert end == {"k": "end"}
    assert error["k"] == "error" and set(error) == {"k", "status", "type", "code", "message", "param"}
    return error


async def test_a_backend_error_is_one_error_event_with_its_param(redis: ArqRedis) -> None:
    err = BackendError(400, "Unknown quantum_profile 'x'.", code="invalid_value", param="quantum_profile")
    state = make_state(redis, fake=FakeBackend(error=err))
    job = spec()
    await run_request({STATE_KEY: state}, job.to_dict())
    e = error_of(state, job.id)
    assert (e["status"], e["code"], e["param"], e["type"]) == (400, "invalid_value", "quantum_profile",
                                                               "invalid_request_error")


async def test_an_error_mid_stream_follows_what_was_streamed(redis: ArqRedis) -> None:
    state = make_state(redis, fake=FakeBackend(pieces=("a", "b", "c"), error=BackendError(502, "upstream broke"),
                                               error_after=2))
    job = spec(stream=True)
    await run_request({STATE_KEY: state}, job.to_dict())
    sent = await streamed(redis, job.id) + last(state, job.id)[:-2]
    assert [c["d"]["choices"][0]["delta"].get("content") for c in sent] == ["a", "b"]
    assert error_of(state, job.id)["status"] == 502


async def test_past_the_deadline_is_a_timeout(redis: ArqRedis) -> None:
    state = make_state(redis, fake=FakeBackend(delay_s=5))
    job = spec(deadline_in=0.2)
    started = time.perf_counter()
    await run_request({STATE_KEY: state}, job.to_dict())
    assert time.perf_counter() - started < 2
    e = error_of(state, job.id)
    assert (e["status"], e["code"], e["type"]) == (504, "timeout", "timeout_error")


async def test_a_kind_the_backend_does_not_serve_is_refused(redis: ArqRedis) -> None:
    state = make_state(redis, chat=ChatOnly())
    job = spec("classify", model="chat")
    await run_request({STATE_KEY: state}, job.to_dict())
    e = error_of(state, job.id)
    assert (e["status"], e["code"], e["param"]) == (400, "unsupported_endpoint", "model")
    assert "is not a classifier" in e["message"]


async def test_an_unknown_model_is_404(redis: ArqRedis) -> None:
    state = make_state(redis)
    job = spec(model="nope")
    await run_request({STATE_KEY: state}, job.to_dict())
    assert error_of(state, job.id)["code"] == "model_not_found"


async def test_cancellation_reports_once_and_propagates(redis: ArqRedis) -> None:
    state = make_state(redis, fake=FakeBackend(delay_s=5))
    job = spec()
    task = asyncio.create_task(run_request({STATE_KEY: state}, job.to_dict()))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    e = error_of(state, job.id)
    assert (e["status"], e["code"]) == (499, "cancelled")


async def test_a_bug_in_the_worker_is_an_internal_error(redis: ArqRedis, caplog: pytest.LogCaptureFixture) -> None:
    state = make_state(redis, fake=FakeBackend(error=RuntimeError("boom")))
    job = spec()
    await run_request({STATE_KEY: state}, job.to_dict())
    e = error_of(state, job.id)
    assert (e["status"], e["code"]) == (500, "internal_error")
    assert "boom" not in e["message"]  # the client gets no internals
    assert any("failed in the worker" in r.message for r in caplog.records)


def test_opening_chunks() -> None:
    role = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None}]}
    assert opens_only(role)
    assert not opens_only({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "x"}}]})
    assert not opens_only({"choices": [], "usage": {"prompt_tokens": 1}})
    assert not opens_only({"choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": "stop"}]})
    merged = with_opening(role, {"choices": [{"index": 0, "delta": {"content": "Hi"}}], "system_fingerprint": "f"})
    assert merged == {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}}],
                      "system_fingerprint": "f"}
    # n=2: the second choice's opening is kept in front when the next chunk is only for the first
    two = {"choices": [{"index": 0, "delta": {"role": "assistant"}}, {"index": 1, "delta": {"role": "assistant"}}]}
    merged = with_opening(two, {"choices": [{"index": 0, "delta": {"content": "a"}}]})
    assert merged["choices"] == [{"index": 1, "delta": {"role": "assistant"}},
                                 {"index": 0, "delta": {"role": "assistant", "content": "a"}}]
