"""Langfuse tracing against a fake Langfuse (bench/fake_langfuse.py): real HTTP, real OTLP protobuf from the
real exporter, the real Langfuse SDK in between. Also ``gatehouse traces verify``'s logic."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from conftest import free_port
from prometheus_client import REGISTRY

from bench.fake_langfuse import LangfuseThread
from gateway.cli_traces import VerifyError, verify, wait_for_trace
from observability.calls import CallRecord, TraceContext
from observability.settings import TracingSettings
from observability.tracing import Tracer, build_tracer, trace_id_for

PK, SK = "pk-lf-test", "sk-lf-test"
ROUTE = "POST /v1/chat/completions"
MESSAGES = [{"role": "user", "content": "What is a gatehouse?"}]
ANSWER = "A gatehouse guards the way in."


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The environment beats the settings' arguments: keep the developer's Langfuse variables out."""
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST",
                 "LANGFUSE_TRACING_ENVIRONMENT", "LANGFUSE_RELEASE", "LANGFUSE_SAMPLE_RATE", "GATEHOUSE_TRACE_MASKING",
                 "LANGFUSE_TRACING_ENABLED", "OTEL_SDK_DISABLED", "GATEHOUSE_CONFIG", "GATEHOUSE_API_KEY"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def langfuse() -> Iterator[LangfuseThread]:
    lf = LangfuseThread(public_key=PK, secret_key=SK).start()
    yield lf
    lf.stop()


@pytest.fixture
def make_tracer() -> Iterator[Callable[..., Tracer]]:
    """Builds tracers (shut down after the test)."""
    made: list[Tracer] = []

    def make(base_url: str, **overrides: Any) -> Tracer:
        tracer = build_tracer(settings(base_url, **overrides))
        assert tracer is not None
        made.append(tracer)
        return tracer

    yield make
    for tracer in made:
        tracer.shutdown()


def settings(base_url: str, **overrides: Any) -> TracingSettings:
    values: dict[str, Any] = {"public_key": PK, "secret_key": SK, "base_url": base_url, "export_timeout_s": 0.5,
                              "flush_interval_s": 0.2, "shutdown_timeout_s": 5, "environment": "test",
                              "release": "v1.2.3"}
    return TracingSettings(**(values | overrides))


def record(kind: str = "chat", model: str = "gpt-test", *, stream: bool = True, **overrides: Any) -> CallRecord:
    """A finished job, with times 10 ms apart: received, +10 enqueued, +110 started, +160 first token, +310 end."""
    t0 = time.time() - 1.0
    fields: dict[str, Any] = {
        "request_id": uuid.uuid4().hex, "kind": kind, "model": model, "backend": "openai", "lane": "default",
        "worker_id": "worker-1", "enqueued_at": t0 + 0.010, "started_at": t0 + 0.110,
        "context": TraceContext(route=ROUTE, received_at=t0, user_id="key-123", session_id="session-abc",
                                key_alias="ci", team_id="team-a"),
        "input": MESSAGES, "model_parameters": {"max_tokens": 64, "temperature": 0.2, "stream": stream},
        "output": ANSWER, "first_token_at": t0 + 0.160 if stream else None, "finished_at": t0 + 0.310,
        "usage": {"input": 12, "output": 7, "total": 19}, "cost": {"input": 1.2e-5, "output": 1.4e-5, "total": 2.6e-5},
        "retries": 1, "cold_start": False}
    return CallRecord(**(fields | overrides))


def by_name(spans: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {s["name"]: s for s in spans}


def ns(unix_s: float) -> int:
    return int(unix_s * 1_000_000_000)


def counter(reason: str | None = None) -> float:
    if reason is None:
        return REGISTRY.get_sample_value("gatehouse_tracing_exported_spans_total") or 0.0
    return REGISTRY.get_sample_value("gatehouse_tracing_dropped_spans_total", {"reason": reason}) or 0.0


def auth() -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{PK}:{SK}".encode()).decode()}


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


# ── the fake's public API, and verify ───────────────────────────────────────────────────────────────
def test_public_api_returns_the_trace(langfuse: LangfuseThread, make_tracer: Callable[..., Tracer]) -> None:
    tracer = make_tracer(langfuse.base_url)
    call = record()
    tracer.record(call)
    assert tracer.flush(10)
    with httpx.Client(base_url=langfuse.base_url, headers=auth()) as c:
        assert httpx.get(f"{langfuse.base_url}/api/public/traces/{call.request_id}").status_code == 401
        assert c.get("/api/public/health").json()["status"] == "OK"
        trace = c.get(f"/api/public/traces/{call.request_id}").json()
        assert trace["name"] == ROUTE and trace["userId"] == "key-123" and trace["sessionId"] == "session-abc"
        assert trace["metadata"]["queue_wait_ms"] == 100.0 and trace["input"] == MESSAGES
        assert trace["observations"][0]["name"] == ROUTE
        gen = next(o for o in trace["observations"] if o["type"] == "GENERATION")
        assert gen["model"] == "gpt-test" and gen["usageDetails"] == {"input": 12, "output": 7, "total": 19}
        assert gen["costDetails"] == call.cost and abs(gen["timeToFirstToken"] - 0.05) < 1e-3
        listed = c.get("/api/public/traces", params={"sessionId": "session-abc", "limit": 100}).json()
        assert call.request_id in [t["id"] for t in listed["data"]] and listed["meta"]["totalItems"] >= 1
        obs = c.get("/api/public/v2/observations", params={"traceId": call.request_id, "type": "GENERATION",
                                                           "fields": "core,basic,usage,io"}).json()["data"]
        assert len(obs) == 1 and obs[0]["usageDetails"]["total"] == 19
        assert obs[0]["input"] == json.dumps(MESSAGES, separators=(",", ":"))  # v2 gives raw strings
        assert "model" not in obs[0]  # field group not asked for

    from langfuse.api.client import LangfuseAPI  # the SDK's own REST client reads the fake's answers

    api = LangfuseAPI(base_url=langfuse.base_url, username=PK, password=SK)
    assert api.health.health().status == "OK"
    parsed = api.observations.get_many(trace_id=call.request_id, fields="core,basic,time,usage,model,metrics").data
    assert len(parsed) == 4 and parsed[0].name == ROUTE  # sorted by start time: the root first
    gen = next(o for o in parsed if o.type == "GENERATION")
    assert gen.model == "gpt-test" and gen.usage_details == call.usage
    assert gen.time_to_first_token == pytest.approx(0.05, abs=1e-4)
    assert gen.completion_start_time is not None and gen.completion_start_time.timestamp() == pytest.approx(
        call.first_token_at, abs=1e-5)


def test_wait_for_trace_finds_it_through_either_api(langfuse: LangfuseThread, make_tracer: Callable[..., Tracer]
                                                    ) -> None:
    tracer = make_tracer(langfuse.base_url)
    call = record()
    tracer.record(call)  # flushed by the processor within flush_interval_s: the poll must wait for it
    first = wait_for_trace(call.request_id, settings(langfuse.base_url), timeout_s=10, poll_interval_s=0.05)
    assert first.ok and first.trace_name == ROUTE  # found by whichever API polled first once it arrived
    result = wait_for_trace(call.request_id, settings(langfuse.base_url), timeout_s=10, poll_interval_s=0.05)
    assert result.ok and result.source == "traces" and result.trace_name == ROUTE
    assert result.queue_wait_ms == pytest.approx(100, abs=0.01)
    assert result.time_to_first_token_ms == pytest.approx(50, abs=0.01)
    assert [o["type"] for o in result.observations].count("GENERATION") == 1
    assert result.url == f"{langfuse.base_url}/project/fake-project/traces/{call.request_id}"

    langfuse.fake.legacy_trace_api = False  # only the v2 observations API
    try:
        fallback = wait_for_trace(call.request_id, settings(langfuse.base_url), timeout_s=5, poll_interval_s=0.05)
    finally:
        langfuse.fake.legacy_trace_api = True
    assert fallback.ok and fallback.source == "observations" and fallback.trace_name == ROUTE
    assert fallback.queue_wait_ms == pytest.approx(100, abs=0.01)
    assert fallback.time_to_first_token_ms == pytest.approx(50, abs=0.01)

    missing = wait_for_trace(uuid.uuid4().hex, settings(langfuse.base_url), timeout_s=0.3, poll_interval_s=0.05)
    assert not missing.ok and "did not arrive" in missing.message
    refused = wait_for_trace(call.request_id, settings(langfuse.base_url, secret_key="nope"), timeout_s=5)
    assert not refused.ok and "refused the keys" in refused.message


class MiniGateway:
    """Just enough of the gateway for ``verify``: streams a chat completion with an ``x-request-id`` and, once
    the stream ends, records the job's trace (as the worker will)."""

    def __init__(self, tracer: Tracer):
        self.tracer = tracer
        self.sessions: list[str] = []
        self.app = web.Application()
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()
        assert self.ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.runner = web.AppRunner(self.app, access_log=None, shutdown_timeout=0.2)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.ready.set()
        self.loop.run_forever()

    async def chat(self, request: web.Request) -> web.StreamResponse:
        received = time.time()
        if request.headers.get("authorization") != "Bearer sk-test":
            return web.json_response({"error": {"message": "invalid key", "type": "auth_error"}}, status=401)
        body = await request.json()
        rid = uuid.uuid4().hex
        session = request.headers.get("x-session-id")
        self.sessions.append(session or "")
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "x-request-id": rid})
        await resp.prepare(request)
        started = time.time()
        for word in ("Hello", " there"):
            await resp.write(b"data: " + orjson.dumps({"choices": [{"index": 0, "delta": {"content": word}}]})
                             + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        self.tracer.record(CallRecord(
            request_id=rid, kind="chat", model=body["model"], backend="local", lane="default", worker_id="w",
            enqueued_at=received, started_at=started, first_token_at=started, finished_at=time.time(),
            context=TraceContext(route=ROUTE, received_at=received, user_id="master", session_id=session),
            input=body["messages"], output="Hello there", usage={"input": 5, "output": 2, "total": 7}))
        return resp

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)


def test_verify_sends_a_request_and_finds_its_trace(langfuse: LangfuseThread, make_tracer: Callable[..., Tracer]
                                                    ) -> None:
    gateway = MiniGateway(make_tracer(langfuse.base_url, flush_interval_s=0.1))
    try:
        url = f"http://127.0.0.1:{gateway.port}"
        result = verify(url, "sk-test", settings(langfuse.base_url), "chargpt", timeout_s=10, poll_interval_s=0.05)
        assert result.ok, result.message
        assert result.trace_id == result.request_id and result.session_id == gateway.sessions[-1]
        assert result.session_id and result.session_id.startswith("gatehouse-verify-")
        assert result.generation is not None and result.generation["name"] == "chat chargpt"
        trace = langfuse.fake.trace(result.trace_id)
        assert trace is not None and trace["sessionId"] == result.session_id

        with pytest.raises(VerifyError) as refused:
            verify(url, "sk-wrong", settings(langfuse.base_url), timeout_s=5)
        assert refused.value.exit_code == 1 and "401" in refused.value.message
    finally:
        gateway.stop()
    with pytest.raises(VerifyError) as unreachable:
        verify(f"http://127.0.0.1:{free_port()}", "sk-test", settings(langfuse.base_url), timeout_s=5)
    assert unreachable.value.exit_code == 2 and "cannot reach the gateway" in unreachable.value.message
    with pytest.raises(VerifyError) as unconfigured:
        verify(url, "sk-test", TracingSettings(), timeout_s=5)
    assert unconfigured.value.exit_code == 2 and "not configured" in unconfigured.value.message


def test_verify_command(langfuse: LangfuseThread, make_tracer: Callable[..., Tracer], tmp_path: Any) -> None:
    from typer.testing import CliRunner

    from gateway.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["traces", "verify", "--help"]).exit_code == 0
    bare = tmp_path / "bare.yaml"
    bare.write_text("gatehouse: {}\n")
    unconfigured = runner.invoke(app, ["traces", "verify", "-c", str(bare), "--api-key", "sk-test"])
    assert unconfigured.exit_code == 2 and "not configured" in unconfigured.output

    gateway = MiniGateway(make_tracer(langfuse.base_url, flush_interval_s=0.1))
    try:
        cfg = tmp_path / "traced.yaml"
        cfg.write_text(f"gatehouse:\n  tracing: {{public_key: {PK}, secret_key: {SK}, "
                       f"base_url: '{langfuse.base_url}'}}\n")
        ok = runner.invoke(app, ["traces", "verify", "-c", str(cfg), "--base-url", f"http://127.0.0.1:{gateway.port}",
                                 "--api-key", "sk-test", "--timeout", "10"])
        assert ok.exit_code == 0, ok.output
        assert "arrived in Langfuse" in ok.output and "chat chargpt (GENERATION)" in ok.output
        assert "queue wait" in ok.output and "time to first token" in ok.output
    finally:
        gateway.stop()
