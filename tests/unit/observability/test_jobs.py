"""observability.jobs.JobObserver, without a stack: the record it fills and the metrics it counts, the entropy
pool's gauges, trace contexts from another version. (Error labels: test_calls.py; the queue-state collector:
test_queue_state.py; rendering: test_metrics.py.)"""

from __future__ import annotations

import time

import pytest
from prometheus_client import REGISTRY

from core.queue import JobSpec
from gpu_apps.qgpt.entropy import EntropyPool, QrngClient
from observability.calls import TraceContext
from observability.jobs import JobObserver


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def job(trace: bool = False, stream: bool = False) -> JobSpec:
    ctx = TraceContext(route="POST /v1/chat/completions", received_at=time.time()).to_dict() if trace else None
    return JobSpec(id="job-1", kind="chat", model="unit-model", body={"messages": [{"role": "user", "content": "hi"}],
                   "temperature": 0.2}, stream=stream, deadline=time.time() + 30, trace=ctx)


def test_observer_fills_the_record_and_counts_the_job() -> None:
    obs = JobObserver(worker_id="w1", lane="unit-lane", backend_kinds={"unit-model": "openai"},
                      prices={"unit-model": (0.001, 0.002)}, tracer=object())  # a tracer: output is collected
    before = sample("gatehouse_jobs_total", lane="unit-lane", outcome="ok")
    call = obs.start(job(trace=True, stream=True))
    obs.chunk(call, {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
    assert call.first_token_at is None  # the opening role delta is not a token
    obs.chunk(call, {"choices": [{"index": 0, "delta": {"content": "Hel"}}]})
    obs.chunk(call, {"choices": [{"index": 0, "delta": {"content": "lo"}}], "quantum_diagnostics": {"x": 1}})
    obs.chunk(call, {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}})
    obs.finish(call, "ok")
    assert call.output == "Hello" and call.input == [{"role": "user", "content": "hi"}]
    assert call.model_parameters == {"temperature": 0.2} and call.metadata == {"quantum_diagnostics": {"x": 1}}
    assert call.usage == {"input": 3, "output": 2, "total": 5}
    assert call.cost == pytest.approx({"input": 0.003, "output": 0.004, "total": 0.007})
    assert call.first_token_at is not None and call.started_at <= call.first_token_at <= call.finished_at
    assert sample("gatehouse_jobs_total", lane="unit-lane", outcome="ok") == before + 1
    assert sample("gen_ai_client_token_usage_sum", gen_ai_operation_name="chat", gen_ai_request_model="unit-model",
                  gen_ai_token_type="output") >= 2


def test_a_job_is_observed_on_the_lane_it_came_from() -> None:
    obs = JobObserver(worker_id="w1", lane="unit-lane", backend_kinds={}, prices={}, tracer=None)
    waits = sample("gatehouse_queue_wait_seconds_count", lane="batch")
    call = obs.start(job(), "batch")  # a batch-lane key's call: the worker claimed it from the batch lane
    assert call.lane == "batch" and sample("gatehouse_queue_wait_seconds_count", lane="batch") == waits + 1
    obs.finish(call, "ok")
    assert obs.start(job()).lane == "unit-lane"  # the worker did not say: by its id
    line = job()
    line.id = "batch_0123:4"
    assert obs.start(line).lane == "batch"


def test_untraced_jobs_keep_no_input_or_output() -> None:
    obs = JobObserver(worker_id="w1", lane="unit-lane", backend_kinds={}, prices={}, tracer=None)
    call = obs.start(job(trace=True))
    obs.result(call, {"choices": [{"index": 0, "message": {"content": "Hello"}}]})
    obs.finish(call, "ok")
    assert call.input is None and call.output is None and not obs.traced(call)


async def test_pool_gauges_say_when_os_entropy_stands_in_for_the_qrng() -> None:
    obs = JobObserver(worker_id="w1", lane="unit-lane", backend_kinds={}, prices={}, tracer=None)
    plain = EntropyPool(None)  # no QRNG configured: the OS CSPRNG is the chosen source, not a fallback
    plain.take(64)
    obs.sample_pool(plain)
    assert sample("gatehouse_qrng_fallback_active") == 0
    fallbacks = sample("gatehouse_qrng_fallback_bytes_total")
    qrng = EntropyPool(QrngClient("unit-key", base_url="http://127.0.0.1:9"))  # configured, never filled
    obs = JobObserver(worker_id="w1", lane="unit-lane", backend_kinds={}, prices={}, tracer=None)
    qrng.take(100)
    obs.sample_pool(qrng)
    assert sample("gatehouse_qrng_fallback_active") == 1
    assert sample("gatehouse_qrng_fallback_bytes_total") == fallbacks + 100
    obs.sample_pool(qrng)  # nothing new taken from the OS
    assert sample("gatehouse_qrng_fallback_active") == 0
    assert sample("gatehouse_qrng_pool_bytes") == qrng.stats()["level_bytes"]


def test_trace_context_from_another_version_never_loses_the_job() -> None:
    newer = TraceContext.from_dict({"route": "POST /v1/chat/completions", "received_at": 1.0, "tenant_tier": "gold"})
    assert newer is not None and newer.route == "POST /v1/chat/completions"  # unknown fields ignored
    assert TraceContext.from_dict({"received_at": 1.0}) is None  # unusable: the job runs untraced
    obs = JobObserver(worker_id="w1", lane="unit-lane", backend_kinds={}, prices={}, tracer=object())
    spec = job()
    spec.trace = {"garbage": True}
    call = obs.start(spec)
    assert call.context is None and not obs.traced(call)
