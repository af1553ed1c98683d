"""``gatehouse traces verify``'s logic, and the fake Langfuse's public API it polls: against a tracer exporting
to the fake (real OTLP), and a minimal stand-in gateway."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from aiohttp import web
from conftest import free_port
from tracing_support import MESSAGES, PK, ROUTE, SK, auth, record, settings

from bench.fake_langfuse import LangfuseThread
from cli.traces import VerifyError, verify, wait_for_trace
from core.settings import TracingSettings
from observability.calls import CallRecord, TraceContext
from observability.tracing import Tracer

pytestmark = pytest.mark.usefixtures("clean_langfuse_env")


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

    from cli.main import app

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
