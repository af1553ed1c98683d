"""GET /metrics on the live stack: gateway and worker metrics in one scrape, GenAI names, bounded labels."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import uuid

import httpx
import openai
import pytest
import yaml
from conftest import create_key, free_port, stop_processes, wait_http
from prometheus_client.parser import text_string_to_metric_families

from gateway.routes import openai as openai_routes

MSG = [{"role": "user", "content": "hi"}]
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(base: str) -> Samples:
    r = httpx.get(base + "/metrics", timeout=10)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    out: Samples = {}
    for family in text_string_to_metric_families(r.text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


def wait_for(base: str, cond, timeout: float = 10.0) -> Samples:  # type: ignore[no-untyped-def]
    """Scrape until ``cond(samples)`` holds: the worker records a job's metrics just after the client has it."""
    deadline = time.time() + timeout
    while True:
        samples = scrape(base)
        if cond(samples) or time.time() > deadline:
            return samples
        time.sleep(0.1)


def test_one_scrape_has_gateway_and_worker_metrics(stack, client) -> None:  # type: ignore[no-untyped-def]
    before = scrape(stack.base_url)
    client.chat.completions.create(model="fake", messages=MSG)
    stream = client.chat.completions.create(model="fake", messages=MSG, stream=True,
                                            stream_options={"include_usage": True})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    def done(s: Samples) -> bool:
        return value(s, "gen_ai_client_operation_duration_seconds_count", gen_ai_request_model="fake") >= \
            value(before, "gen_ai_client_operation_duration_seconds_count", gen_ai_request_model="fake") + 2

    after = wait_for(stack.base_url, done)

    def grew(name: str, by: float = 1, **labels: str) -> bool:
        return value(after, name, **labels) - value(before, name, **labels) >= by

    # worker process (a different process from the gateway): GenAI client metrics, queue wait, job outcomes
    assert grew("gen_ai_client_operation_duration_seconds_count", 2, gen_ai_operation_name="chat",
                gen_ai_request_model="fake", error_type="")
    assert grew("gen_ai_client_token_usage_count", 2, gen_ai_token_type="input", gen_ai_request_model="fake")
    assert grew("gen_ai_client_token_usage_sum", 1, gen_ai_token_type="output", gen_ai_request_model="fake")
    assert grew("gatehouse_queue_wait_seconds_count", 2, lane="interactive")
    assert grew("gatehouse_jobs_total", 2, lane="interactive", outcome="ok")
    # gateway process: HTTP traffic, server-side time to first token and per output token for the stream
    assert grew("gatehouse_http_requests_total", 2, route="/v1/chat/completions", code="200")
    assert grew("gatehouse_http_request_duration_seconds_count", 2, route="/v1/chat/completions")
    assert grew("gen_ai_server_time_to_first_token_seconds_count", 1, gen_ai_request_model="fake")
    assert grew("gen_ai_server_time_per_output_token_seconds_count", 1, gen_ai_request_model="fake")
    assert grew("gatehouse_tokens_total", 2, model="fake", gen_ai_token_type="output")
    # read from Redis at scrape time
    assert value(after, "gatehouse_queue_up") == 1
    assert value(after, "gatehouse_workers_live") >= 1
    assert ("gatehouse_queue_depth", frozenset({("lane", "interactive")})) in after
    assert value(after, "gatehouse_inflight_jobs", lane="interactive") >= 0
    # and from PostgreSQL: unfinished batches and benchmark runs (what wakes a worker scaled to zero)
    assert value(after, "gatehouse_runner_work", kind="batch") >= 0
    assert value(after, "gatehouse_runner_work", kind="benchmark") >= 0
    # the conventions' bucket boundaries
    ttft_buckets = {dict(ls)["le"] for (n, ls) in after if n == "gen_ai_server_time_to_first_token_seconds_bucket"}
    assert {"0.001", "0.04", "0.25", "10.0", "+Inf"} <= ttft_buckets


def test_refusals_are_counted_by_reason(stack) -> None:  # type: ignore[no-untyped-def]
    before = scrape(stack.base_url)
    url = stack.base_url + "/v1/chat/completions"
    body = {"model": "echo", "messages": MSG}
    assert httpx.post(url, json=body, timeout=10).status_code == 401  # no credential
    assert httpx.post(url, json=body, headers={"authorization": "Bearer sk-nope"}, timeout=10).status_code == 401
    limited = create_key(stack, rpm_limit=1)
    assert httpx.post(url, json=body, headers={"authorization": f"Bearer {limited['key']}"},
                      timeout=10).status_code == 200
    assert httpx.post(url, json=body, headers={"authorization": f"Bearer {limited['key']}"},
                      timeout=10).status_code == 429
    narrow = create_key(stack, models=["fake"])
    assert httpx.post(url, json=body, headers={"authorization": f"Bearer {narrow['key']}"},
                      timeout=10).status_code == 403
    after = scrape(stack.base_url)
    for name, labels in [("gatehouse_auth_failures_total", {"reason": "missing"}),
                         ("gatehouse_auth_failures_total", {"reason": "invalid"}),
                         ("gatehouse_auth_failures_total", {"reason": "forbidden"}),
                         ("gatehouse_rate_limit_rejections_total", {"scope": "key", "limit": "rpm"}),
                         ("gatehouse_http_requests_total", {"route": "/v1/chat/completions", "code": "429"})]:
        assert value(after, name, **labels) - value(before, name, **labels) >= 1, (name, labels)


def test_backend_errors_retries_and_cold_starts(stack, client) -> None:  # type: ignore[no-untyped-def]
    before = scrape(stack.base_url)
    with pytest.raises(openai.APIStatusError):
        client.with_options(max_retries=0).chat.completions.create(model="status-503", messages=MSG)
    client.chat.completions.create(model="cold-1", messages=[{"role": "user", "content": uuid.uuid4().hex}])

    def done(s: Samples) -> bool:
        return value(s, "gatehouse_modal_cold_starts_total", model="cold-1") > \
            value(before, "gatehouse_modal_cold_starts_total", model="cold-1")

    after = wait_for(stack.base_url, done)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("gatehouse_backend_retries_total", backend="openai", reason="server_error") >= 1
    assert delta("gatehouse_backend_errors_total", backend="openai") >= 1
    assert delta("gatehouse_jobs_total", lane="interactive", outcome="error") >= 1
    assert delta("gen_ai_client_operation_duration_seconds_count", gen_ai_request_model="status-503") >= 1
    assert any(n == "gen_ai_client_operation_duration_seconds_count" and ("gen_ai_request_model", "status-503") in ls
               and dict(ls)["error_type"] not in ("", "ok") for (n, ls) in after)
    assert delta("gatehouse_modal_cold_starts_total", model="cold-1") == 1  # once per request, however many tries
    assert delta("gatehouse_backend_retries_total", backend="openai", reason="cold_start") >= 1


def test_labels_stay_bounded(stack, client) -> None:  # type: ignore[no-untyped-def]
    secret = create_key(stack)["key"]
    httpx.get(stack.base_url + f"/no/such/{uuid.uuid4().hex}", headers={"authorization": f"Bearer {secret}"})
    httpx.get(stack.base_url + f"/v1/models?{uuid.uuid4().hex}=1", headers={"authorization": f"Bearer {secret}"})
    client.chat.completions.create(model="echo", messages=MSG, user=uuid.uuid4().hex,
                                   extra_headers={"x-session-id": uuid.uuid4().hex})
    text = httpx.get(stack.base_url + "/metrics", timeout=10).text
    assert secret not in text and stack.master_key not in text
    routes = {r.path for r in openai_routes.router.routes}
    samples = scrape(stack.base_url)
    seen_routes = {dict(ls)["route"] for (n, ls) in samples if n.startswith("gatehouse_http_requests")}
    assert "other" in seen_routes  # the unknown path, not its text
    assert "/v1/chat/completions" in seen_routes and routes & seen_routes
    hexid = re.compile(r"[0-9a-f]{32}")
    for (_, ls) in samples:
        for k, v in ls:
            assert not hexid.search(v), (k, v)  # no request ids, session ids or user ids as label values


def test_worker_on_another_host_serves_its_own_port(stack, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A worker with metrics.worker_port and no shared metrics directory (another host) serves /metrics."""
    port = free_port()
    cfg = yaml.safe_load(stack.config_path.read_text())
    cfg["gatehouse"]["metrics"] = {"worker_port": port, "worker_host": "127.0.0.1"}
    path = tmp_path / "remote-worker.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "REDIS_URL": stack.redis_url, "DATABASE_URL": stack.database_url,
           "GATEHOUSE_MASTER_KEY": stack.master_key}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    env.pop("GATEHOUSE_CONFIG", None)
    proc = subprocess.Popen([sys.executable, "-m", "cli", "worker", "-c", str(path)], env=env,
                            stdout=(tmp_path / "worker.log").open("ab"), stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/metrics", procs=[proc])
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        assert 'gatehouse_jobs_total{lane="interactive",outcome="ok"}' in text  # primed at start-up
        assert "gen_ai_client_operation_duration_seconds" in text
        assert "route=\"" not in text  # gateway series live in the gateway, not here
    finally:
        stop_processes([proc])
