"""Traces end to end: OpenAI SDK → gateway → queue → worker → Langfuse's OTLP endpoint (a local server that
decodes the protobuf as Langfuse does), and ``gatehouse traces verify`` against the running stack."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid
from datetime import datetime
from typing import Any

import httpx
import openai
import pytest
import yaml
from conftest import LANGFUSE_PK, LANGFUSE_SK, create_key, free_port, start_processes, stop_processes, wait_http

MSG = [{"role": "user", "content": "Say hello to the gatehouse."}]


def spans_by_name(lf: Any, trace_id: str) -> dict[str, dict[str, Any]]:
    spans = lf.fake.wait_for_spans(trace_id, 4, timeout_s=15)
    assert len(spans) == 4, [s["name"] for s in spans]
    return {s["name"]: s for s in spans}


def ts(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def test_streamed_chat_is_one_trace_with_queue_wait_and_ttft(stack, langfuse_server) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    session = f"session-{uuid.uuid4().hex[:8]}"
    raw = client.chat.completions.with_raw_response.create(
        model="fake", messages=MSG, stream=True, stream_options={"include_usage": True},
        extra_headers={"x-session-id": session})
    rid = raw.headers["x-request-id"]
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    spans = spans_by_name(langfuse_server, rid)  # trace id = request id
    root = spans["POST /v1/chat/completions"]
    assert root["parentSpanId"] is None
    assert root["attributes"]["session.id"] == session and root["attributes"]["user.id"] == "master"
    assert set(root["attributes"]["langfuse.trace.tags"]) == {"model:fake", "backend:openai", "lane:interactive"}
    assert {spans["queue wait"]["parentSpanId"], spans["upstream call"]["parentSpanId"]} == {root["spanId"]}
    gen = spans["chat fake"]
    assert gen["parentSpanId"] == spans["upstream call"]["spanId"]

    trace = langfuse_server.fake.trace(rid)  # the public API's view
    assert trace["name"] == "POST /v1/chat/completions" and trace["sessionId"] == session
    assert trace["metadata"]["request_id"] == rid and trace["metadata"]["queue_wait_ms"] >= 0
    assert trace["metadata"]["worker_id"] and trace["metadata"]["retries"] == 0
    obs = {o["name"]: o for o in trace["observations"]}
    g = obs["chat fake"]
    assert g["type"] == "GENERATION" and g["model"] == "fake"
    assert g["input"] == MSG and g["output"] == text
    assert g["usageDetails"]["input"] > 0 and g["usageDetails"]["output"] > 0
    assert g["completionStartTime"] is not None
    assert ts(g["startTime"]) <= ts(g["completionStartTime"]) <= ts(g["endTime"])
    qw = obs["queue wait"]
    assert ts(trace["timestamp"]) <= ts(qw["startTime"]) <= ts(qw["endTime"]) <= ts(g["startTime"])


def test_keyed_non_streamed_chat_names_the_caller_and_costs(stack, langfuse_server) -> None:  # type: ignore[no-untyped-def]
    key = create_key(stack, key_alias="tracing-team-bot", user_id="ada")
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key["key"], max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="priced", messages=MSG)
    rid = raw.headers["x-request-id"]
    spans_by_name(langfuse_server, rid)
    trace = langfuse_server.fake.trace(rid)
    assert trace["userId"] == "ada" and trace["metadata"]["key_alias"] == "tracing-team-bot"
    gen = next(o for o in trace["observations"] if o["type"] == "GENERATION")
    assert gen["completionStartTime"] is None  # not streamed
    assert gen["costDetails"]["total"] > 0 and gen["output"] == raw.parse().choices[0].message.content


def test_failure_is_an_error_level_trace(stack, langfuse_server) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(stack.base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {stack.master_key}"},
                   json={"model": "status-400", "messages": MSG}, timeout=30)
    assert r.status_code == 400
    spans_by_name(langfuse_server, r.headers["x-request-id"])
    trace = langfuse_server.fake.trace(r.headers["x-request-id"])
    gen = next(o for o in trace["observations"] if o["type"] == "GENERATION")
    assert gen["level"] == "ERROR" and gen["statusMessage"]


def test_qgpt_and_classify_traces_carry_their_diagnostics(stack, langfuse_server) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    raw = client.chat.completions.with_raw_response.create(model="qgpt", messages=[{"role": "user", "content": "def "}],
                                                           max_tokens=20, extra_body={"quantum_profile": "medium"})
    rid = raw.headers["x-request-id"]
    spans_by_name(langfuse_server, rid)
    diag = langfuse_server.fake.trace(rid)["metadata"]["quantum_diagnostics"]
    assert diag == raw.parse().model_extra["quantum_diagnostics"]
    assert diag["quantum_profile"] == "medium" and diag["total_entropy_consumed"] > 0

    r = httpx.post(stack.base_url + "/v1/classify", headers={"authorization": f"Bearer {stack.master_key}"},
                   json={"model": "prompt-classifier", "prompts": ["Write a Python script that uses a for loop."]},
                   timeout=60)
    assert r.status_code == 200
    spans_by_name(langfuse_server, r.headers["x-request-id"])
    trace = langfuse_server.fake.trace(r.headers["x-request-id"])
    assert trace["name"] == "POST /v1/classify"
    assert trace["metadata"]["classifier"]["prompt_complexity_score"] == r.json()["prompt_complexity_score"]


def test_traces_verify_against_the_running_stack(stack, langfuse_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "LANGFUSE_PUBLIC_KEY": LANGFUSE_PK, "LANGFUSE_SECRET_KEY": LANGFUSE_SK,
           "LANGFUSE_BASE_URL": langfuse_server.base_url, "GATEHOUSE_API_KEY": stack.master_key}
    env.pop("GATEHOUSE_CONFIG", None)
    cmd = [sys.executable, "-m", "cli", "traces", "verify", "--base-url", stack.base_url, "--model", "fake",
           "--timeout", "30"]
    done = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "POST /v1/chat/completions" in done.stdout
    # the same call with Langfuse's keys wrong: the trace never shows up through the public API -> exit 1
    bad = subprocess.run([*cmd[:-1], "3"], env={**env, "LANGFUSE_SECRET_KEY": "sk-wrong"}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode in (1, 2), bad.stdout + bad.stderr
    assert bad.stdout.strip() or bad.stderr.strip()


@pytest.mark.parametrize("path", ["/metrics"])
def test_tracing_counters_show_exports(stack, path) -> None:  # type: ignore[no-untyped-def]
    text = httpx.get(stack.base_url + path, timeout=10).text
    line = next(ln for ln in text.splitlines() if ln.startswith("gatehouse_tracing_exported_spans_total"))
    assert float(line.split()[-1]) > 0


def test_worker_flushes_traces_on_graceful_shutdown(stack, langfuse_server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A worker that exports once a minute still delivers its last traces when it is stopped (SIGTERM)."""
    cfg = yaml.safe_load(stack.config_path.read_text())
    cfg["gatehouse"]["port"] = port = free_port()
    cfg["gatehouse"]["tracing"].update(flush_interval_s=60, flush_at=1000)
    path = tmp_path / "lazy-exporter.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "REDIS_URL": stack.redis_url.rsplit("/", 1)[0] + "/3",  # a queue of its own
           "DATABASE_URL": stack.database_url, "GATEHOUSE_MASTER_KEY": stack.master_key}
    for name in ("GATEHOUSE_CONFIG", "GATEHOUSE_PORT", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    gateway, worker = procs = start_processes(path, env, tmp_path / "logs")
    try:
        wait_http(f"http://127.0.0.1:{port}/health/ready", procs=procs)
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json={"model": "fake", "messages": MSG},
                       headers={"authorization": f"Bearer {stack.master_key}"}, timeout=30)
        assert r.status_code == 200
        rid = r.headers["x-request-id"]
        time.sleep(1.0)
        assert langfuse_server.fake.spans_of(rid) == []  # not exported yet: the batch waits for a minute
        stop_processes([worker])
        assert worker.returncode == 0
        assert len(langfuse_server.fake.wait_for_spans(rid, 4, timeout_s=5)) == 4
    finally:
        stop_processes([gateway, worker])


def test_each_batch_line_is_a_trace_in_the_batchs_session(stack, langfuse_server) -> None:  # type: ignore[no-untyped-def]
    import orjson

    from observability.tracing import trace_id_for

    client = stack.client()
    content = b"\n".join(orjson.dumps({"custom_id": f"t-{i}", "method": "POST", "url": "/v1/chat/completions",
                                       "body": {"model": "fake", "messages": MSG}}) for i in range(2))
    f = client.files.create(file=("traced.jsonl", content), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.time() + 60
    while batch.status != "completed":
        assert time.time() < deadline and batch.status in ("validating", "in_progress", "finalizing"), batch.status
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    for line in (1, 2):
        trace_id = trace_id_for(f"{batch.id}:{line}")  # a line's job id
        langfuse_server.fake.wait_for_spans(trace_id, 4, timeout_s=15)
        trace = langfuse_server.fake.trace(trace_id)
        assert trace is not None and trace["sessionId"] == batch.id
        assert trace["name"] == "POST /v1/chat/completions (batch)"
        assert "lane:batch" in trace["tags"]
