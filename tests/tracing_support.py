"""Shared by the tracing tests (a pytest plugin, see conftest.py): a fake Langfuse per test module, tracers
that are shut down after each test, settings and finished-job records to trace."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from bench.fake_langfuse import LangfuseThread
from core.settings import TracingSettings
from observability.calls import CallRecord, TraceContext
from observability.tracing import Tracer, build_tracer

PK, SK = "pk-lf-test", "sk-lf-test"
ROUTE = "POST /v1/chat/completions"
MESSAGES = [{"role": "user", "content": "What is a gatehouse?"}]
ANSWER = "A gatehouse guards the way in."


@pytest.fixture
def clean_langfuse_env(monkeypatch: pytest.MonkeyPatch) -> None:
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


def auth() -> dict[str, str]:
    return {"authorization": "Basic " + base64.b64encode(f"{PK}:{SK}".encode()).decode()}

