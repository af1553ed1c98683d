"""Langfuse tracing against a fake Langfuse (bench/fake_langfuse.py): real HTTP, real OTLP protobuf from the
real exporter, the real Langfuse SDK in between. (``gatehouse traces verify``: test_traces_verify.py.)"""

from __future__ import annotations

import hashlib
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from conftest import free_port
from prometheus_client import REGISTRY
from tracing_support import ANSWER, MESSAGES, PK, ROUTE, SK, auth, record, settings

from bench.fake_langfuse import LangfuseThread
from core.settings import TracingSettings
from observability.calls import TraceContext
from observability.tracing import Tracer, build_tracer, trace_id_for

pytestmark = pytest.mark.usefixtures("clean_langfuse_env")


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in spans}


def ns(unix_s: float) -> int:
    return int(unix_s * 1_000_000_000)


def counter(reason: str | None = None) -> float:
    if reason is None:
        return REGISTRY.get_sample_value("gatehouse_tracing_exported_spans_total") or 0.0
    return REGISTRY.get_sample_value("gatehouse_tracing_dropped_spans_total", {"reason": reason}) or 0.0


# ── what a trace looks like ─────────────────────────────────────────────────────────────────────────
def test_streamed_chat_becomes_one_trace_of_four_spans(langfuse: LangfuseThread, make_tracer: Callable[..., Tracer]
                                                       ) -> None:
    from langfuse._client.attributes import create_generation_attributes

    tracer = make_tracer(langfuse.base_url)
    call = record(metadata={"quantum_diagnostics": {"entropy_source": "qrng", "total_entropy_consumed": 4}})
    exported = counter()
    tracer.record(call)
    assert tracer.flush(10)
    spans = langfuse.fake.wait_for_spans(call.request_id, 4)
    assert counter() - exported == 4 and tracer.pending == 0
    s = by_name(spans)
    assert set(s) == {ROUTE, "queue wait", "upstream call", "chat gpt-test"}
    assert {x["traceId"] for x in spans} == {call.request_id}  # the trace id is the request id

    root, queue, upstream, gen = s[ROUTE], s["queue wait"], s["upstream call"], s["chat gpt-test"]
    assert root["parentSpanId"] is None
    assert queue["parentSpanId"] == upstream["parentSpanId"] == root["spanId"]
    assert gen["parentSpanId"] == upstream["spanId"]
    assert root["scope"]["name"] == "gatehouse"
    ctx = call.context
    assert ctx is not None
    assert (root["startTimeUnixNano"], root["endTimeUnixNano"]) == (ns(ctx.received_at), ns(call.finished_at))
    assert (queue["startTimeUnixNano"], queue["endTimeUnixNano"]) == (ns(call.enqueued_at), ns(call.started_at))
    assert (upstream["startTimeUnixNano"], upstream["endTimeUnixNano"]) == (ns(call.started_at), ns(call.finished_at))
    assert (gen["startTimeUnixNano"], gen["endTimeUnixNano"]) == (ns(call.started_at), ns(call.finished_at))

    a = root["attributes"]
    assert a["langfuse.trace.name"] == ROUTE and a["user.id"] == "key-123" and a["session.id"] == "session-abc"
    assert a["langfuse.trace.tags"] == ["model:gpt-test", "backend:openai", "lane:default"]
    assert root["resource"]["langfuse.environment"] == "test" and root["resource"]["langfuse.release"] == "v1.2.3"
    assert "user.id" not in queue["attributes"] and "langfuse.trace.tags" not in upstream["attributes"]
    assert a["langfuse.observation.type"] == "span"
    meta = {k.removeprefix("langfuse.trace.metadata."): v for k, v in a.items()
            if k.startswith("langfuse.trace.metadata.")}
    assert meta["request_id"] == json.dumps(call.request_id)  # every value JSON-encoded, strings too (SDK v5)
    assert {k: json.loads(v) for k, v in meta.items()} == {
        "request_id": call.request_id, "queue_wait_ms": 100.0, "worker_id": "worker-1", "retries": 1,
        "cold_start": False, "key_alias": "ci", "team_id": "team-a",
        "quantum_diagnostics": {"entropy_source": "qrng", "total_entropy_consumed": 4}}
    assert json.loads(a["langfuse.observation.input"]) == MESSAGES and a["langfuse.observation.output"] == ANSWER
    assert "langfuse.observation.level" not in a
    assert json.loads(queue["attributes"]["langfuse.observation.metadata.queue_wait_ms"]) == 100.0
    assert json.loads(upstream["attributes"]["langfuse.observation.metadata.backend"]) == "openai"
    assert json.loads(upstream["attributes"]["langfuse.observation.metadata.retries"]) == 1

    g = gen["attributes"]
    assert g["langfuse.observation.type"] == "generation" and g["langfuse.observation.model.name"] == "gpt-test"
    assert g["user.id"] == "key-123" and g["langfuse.trace.name"] == ROUTE  # trace attributes on every span
    # encoded exactly as the SDK encodes them (the SDK's own attribute builder as the reference)
    first_token = datetime.fromtimestamp(call.first_token_at or 0, tz=UTC)
    sdk = create_generation_attributes(model="gpt-test", model_parameters=call.model_parameters,
                                       usage_details=call.usage, cost_details=call.cost,
                                       completion_start_time=first_token, input=MESSAGES, output=ANSWER)
    assert g["langfuse.observation.completion_start_time"] == sdk["langfuse.observation.completion_start_time"]
    assert g["langfuse.observation.completion_start_time"].startswith('"') and g[
        "langfuse.observation.completion_start_time"].endswith('Z"')
    for key in ("langfuse.observation.usage_details", "langfuse.observation.cost_details",
                "langfuse.observation.model.parameters", "langfuse.observation.input"):
        assert json.loads(g[key]) == json.loads(sdk[key]), key
    assert g["langfuse.observation.output"] == sdk["langfuse.observation.output"] == ANSWER

    headers = langfuse.fake.export_headers[-1]
    assert headers["authorization"] == auth()["authorization"]
    assert headers["content-type"] == "application/x-protobuf" and headers["content-encoding"] == "gzip"
    assert headers["x-langfuse-sdk-name"] == "python" and headers["x-langfuse-public-key"] == PK


def test_non_streamed_chat_has_no_completion_start(langfuse: LangfuseThread, make_tracer: Callable[..., Tracer]
                                                   ) -> None:
    tracer = make_tracer(langfuse.base_url)
    call = record(stream=False)
    tracer.record(call)
    assert tracer.flush(10)
    gen = by_name(langfuse.fake.wait_for_spans(call.request_id, 4))["chat gpt-test"]["attributes"]
    assert "langfuse.observation.completion_start_time" not in gen
    assert json.loads(gen["langfuse.observation.model.parameters"])["stream"] is False
    trace = langfuse.fake.trace(call.request_id)
    assert trace is not None
    generation = next(o for o in trace["observations"] if o["type"] == "GENERATION")
    assert generation["completionStartTime"] is None and generation["usageDetails"] == call.usage


def test_failed_call_is_an_error_on_the_generation_and_the_root(langfuse: LangfuseThread,
                                                                make_tracer: Callable[..., Tracer]) -> None:
    tracer = make_tracer(langfuse.base_url)
    error = {"status": 503, "type": "upstream_error", "code": "fake_503", "message": "fake upstream says 503"}
    call = record(status="error", error=error, output=None, usage=None, cost=None, first_token_at=None, retries=2)
    tracer.record(call)
    assert tracer.flush(10)
    s = by_name(langfuse.fake.wait_for_spans(call.request_id, 4))
    for name in (ROUTE, "chat gpt-test"):
        a = s[name]["attributes"]
        assert a["langfuse.observation.level"] == "ERROR"
        assert a["langfuse.observation.status_message"] == "fake upstream says 503"
        assert s[name]["status"] == {"code": 2, "message": "fake upstream says 503"}  # OTel status ERROR too
        assert "langfuse.observation.output" not in a
    assert "langfuse.observation.level" not in s["queue wait"]["attributes"]
    assert json.loads(s[ROUTE]["attributes"]["langfuse.trace.metadata.error"]) == error
    assert "langfuse.observation.usage_details" not in s["chat gpt-test"]["attributes"]
    trace = langfuse.fake.trace(call.request_id)
    assert trace is not None and trace["metadata"]["status"] == "error"
    levels = {o["name"]: o["level"] for o in trace["observations"]}
    assert levels == {ROUTE: "ERROR", "queue wait": "DEFAULT", "upstream call": "DEFAULT", "chat gpt-test": "ERROR"}


def test_classify_call_carries_its_scores(langfuse: LangfuseThread, make_tracer: Callable[..., Tracer]) -> None:
    tracer = make_tracer(langfuse.base_url)
    scores = {"task_type": "Open QA", "prompt_complexity_score": 0.31, "creativity_scope": 0.12}
    call = record("classify", "prompt-classifier", stream=False, backend="classifier", lane="gpu",
                  input=["What is a gatehouse?"], output={"results": [scores]}, model_parameters={},
                  usage=None, cost=None, metadata={"scores": [scores]},
                  context=TraceContext(route="POST /classify", received_at=time.time() - 1.0, user_id="master"))
    tracer.record(call)
    assert tracer.flush(10)
    trace = langfuse.fake.trace(call.request_id)
    assert trace is not None
    assert trace["name"] == "POST /classify" and trace["userId"] == "master" and trace["sessionId"] is None
    assert trace["tags"] == ["backend:classifier", "lane:gpu", "model:prompt-classifier"]
    assert trace["metadata"]["scores"] == [scores]
    assert "key_alias" not in trace["metadata"] and "team_id" not in trace["metadata"]
    gen = next(o for o in trace["observations"] if o["type"] == "GENERATION")
    assert gen["name"] == "classify prompt-classifier" and gen["output"] == {"results": [scores]}
    assert gen["modelParameters"] == {} and gen["usageDetails"] == {}


@pytest.mark.parametrize("masking", ["hash", "drop"])
def test_masking_applies_to_input_and_output_everywhere(masking: str, langfuse: LangfuseThread,
                                                        make_tracer: Callable[..., Tracer]) -> None:
    tracer = make_tracer(langfuse.base_url, masking=masking)
    call = record()
    tracer.record(call)
    assert tracer.flush(10)
    s = by_name(langfuse.fake.wait_for_spans(call.request_id, 4))
    for name in (ROUTE, "chat gpt-test"):
        a = s[name]["attributes"]
        if masking == "drop":
            assert "langfuse.observation.input" not in a and "langfuse.observation.output" not in a
        else:
            expected_in = "sha256:" + hashlib.sha256(orjson.dumps(MESSAGES, option=orjson.OPT_SORT_KEYS)).hexdigest()
            assert a["langfuse.observation.input"] == expected_in
            assert a["langfuse.observation.output"] == "sha256:" + hashlib.sha256(orjson.dumps(ANSWER)).hexdigest()
    everything = json.dumps([x["attributes"] for x in s.values()])
    assert "gatehouse?" not in everything and "guards the way" not in everything


def test_trace_id_is_the_request_id_or_derived_from_it() -> None:
    rid = uuid.uuid4().hex
    assert trace_id_for(rid) == rid and trace_id_for(rid.upper()) == rid
    assert trace_id_for("req-42") == hashlib.sha256(b"req-42").hexdigest()[:32]
    assert trace_id_for("0" * 32) != "0" * 32  # not a valid trace id
    assert trace_id_for("req-42") == trace_id_for("req-42")


def test_sampling_is_deterministic_on_the_request_id(langfuse: LangfuseThread, make_tracer: Callable[..., Tracer]
                                                     ) -> None:
    half = make_tracer(langfuse.base_url, sample_rate=0.5, flush_interval_s=60)
    half.record(record(request_id="ab" * 8 + "0" * 16))  # lower 64 bits small: kept
    half.record(record(request_id="ab" * 8 + "f" * 16))  # lower 64 bits large: sampled out
    assert half.pending == 4
    none = make_tracer(langfuse.base_url, sample_rate=0.0)
    none.record(record())
    assert none.pending == 0


def test_not_configured_means_no_tracer() -> None:
    assert build_tracer(TracingSettings(public_key=None, secret_key=None)) is None
    assert build_tracer(TracingSettings(public_key=PK, secret_key=None)) is None


# ── bounded, counted, never in the way ──────────────────────────────────────────────────────────────
def test_langfuse_down_costs_the_request_nothing_and_is_counted(make_tracer: Callable[..., Tracer]) -> None:
    tracer = make_tracer(f"http://127.0.0.1:{free_port()}", flush_interval_s=60)  # nothing listens there
    failed, exported = counter("export_failed"), counter()
    call = record()
    tracer.record(call)  # returns: no I/O on the caller's path
    assert tracer.pending == 4
    assert tracer.flush(10)
    assert counter("export_failed") - failed == 4 and counter() == exported and tracer.pending == 0


@pytest.mark.parametrize("mode", ["slow", "error"])
def test_slow_or_failing_langfuse_is_counted(mode: str, make_tracer: Callable[..., Tracer]) -> None:
    lf = LangfuseThread(public_key=PK, secret_key=SK).start()
    try:
        lf.fake.mode, lf.fake.stall_s = mode, 3.0  # stalls past the 0.5 s export timeout
        tracer = make_tracer(lf.base_url, flush_interval_s=60)
        failed = counter("export_failed")
        tracer.record(record())
        assert tracer.pending == 4  # queued, not sent: record() returned at once
        assert tracer.flush(10)
        assert counter("export_failed") - failed == 4 and tracer.pending == 0
        assert lf.fake.export_attempts >= 1 and lf.fake.spans == []
    finally:
        lf.stop()


def test_wrong_keys_are_refused_and_counted(langfuse: LangfuseThread, make_tracer: Callable[..., Tracer]) -> None:
    tracer = make_tracer(langfuse.base_url, public_key="pk-lf-wrong", flush_interval_s=60)
    failed = counter("export_failed")
    call = record()
    tracer.record(call)
    assert tracer.flush(10)
    assert counter("export_failed") - failed == 4 and langfuse.fake.spans_of(call.request_id) == []


def test_a_full_queue_drops_whole_traces_and_counts_them(make_tracer: Callable[..., Tracer]) -> None:
    lf = LangfuseThread(public_key=PK, secret_key=SK).start()
    try:
        lf.fake.mode, lf.fake.stall_s = "slow", 3.0  # exports hang: nothing leaves the queue meanwhile
        tracer = make_tracer(lf.base_url, max_queue_spans=16, export_timeout_s=1.0, flush_interval_s=60)
        full, failed = counter("queue_full"), counter("export_failed")
        for _ in range(6):
            tracer.record(record())
        assert counter("queue_full") - full == 8  # traces 5 and 6, four spans each
        assert tracer.pending == 16
        assert tracer.flush(10)
        assert counter("export_failed") - failed == 16 and tracer.pending == 0
        tracer.record(record())  # room again
        assert tracer.pending == 4
    finally:
        lf.stop()


def test_shutdown_flushes_what_is_queued(langfuse: LangfuseThread) -> None:
    tracer = build_tracer(settings(langfuse.base_url, flush_interval_s=60))
    assert tracer is not None
    calls = [record(), record(stream=False)]
    for call in calls:
        tracer.record(call)
    assert tracer.pending == 8
    tracer.shutdown()
    for call in calls:
        assert len(langfuse.fake.spans_of(call.request_id)) == 4
    late = record()
    tracer.record(late)  # after shutdown: ignored, not an error
    assert tracer.pending == 0 and langfuse.fake.spans_of(late.request_id) == []
    tracer.shutdown()  # twice is fine
    again = build_tracer(settings(langfuse.base_url))  # the same key again (a new worker loop): a working tracer
    assert again is not None
    call = record()
    again.record(call)
    again.shutdown()
    assert len(langfuse.fake.spans_of(call.request_id)) == 4


def test_shutdown_is_bounded_when_langfuse_hangs() -> None:
    lf = LangfuseThread(public_key=PK, secret_key=SK).start()
    try:
        lf.fake.mode, lf.fake.stall_s = "slow", 10.0
        tracer = build_tracer(settings(lf.base_url, export_timeout_s=8, shutdown_timeout_s=0.5, flush_interval_s=60))
        assert tracer is not None
        failed = counter("export_failed")
        tracer.record(record())
        started = time.monotonic()
        tracer.shutdown()
        assert time.monotonic() - started < 5  # bounded by shutdown_timeout_s, not by the 8 s export timeout
        assert counter("export_failed") - failed == 4 and tracer.pending == 0  # what could not go out is counted
    finally:
        lf.stop()
