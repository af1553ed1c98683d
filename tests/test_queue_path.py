"""The queue path itself: request ids, late readers, back-pressure, cancellation, timeouts."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest
from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis

from core import queue as q
from gateway.enqueue import JobQueue
from gateway.errors import QueueFull
from gateway.relay import read_events
from workers.events import EventWriter


def _auth(stack) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {"authorization": f"Bearer {stack.master_key}"}


def test_every_response_carries_a_request_id(stack) -> None:  # type: ignore[no-untyped-def]
    body = {"model": "fake", "messages": [{"role": "user", "content": "x"}]}
    r = httpx.post(stack.base_url + "/v1/chat/completions", json=body, headers=_auth(stack))
    assert r.status_code == 200
    rid = r.headers["x-request-id"]
    assert len(rid) == 32 and r.json()["id"] == f"chatcmpl-{rid}"
    r = httpx.get(stack.base_url + "/nope")
    assert r.status_code == 404 and len(r.headers.get_list("x-request-id")) == 1
    # a caller cannot choose the id (it names the job and its output stream)
    r = httpx.post(stack.base_url + "/v1/chat/completions", json=body,
                   headers={**_auth(stack), "x-request-id": rid})
    assert r.status_code == 200 and r.headers["x-request-id"] != rid


async def test_late_reader_gets_every_event(stack) -> None:  # type: ignore[no-untyped-def]
    redis = Redis.from_url(stack.redis_url)
    writer = EventWriter(redis, "late-reader-test")
    writer.emit(q.chunk_event({"choices": [{"index": 0, "delta": {"content": "a"}}]}))
    writer.emit(q.chunk_event({"choices": [{"index": 0, "delta": {"content": "b"}}]}))
    await writer.write(await writer.settle() + [q.END_EVENT])
    await asyncio.sleep(0.05)  # the worker is long done when the reader arrives
    events = [e async for e in read_events(redis, "late-reader-test", time.time() + 2)]
    assert [e["d"]["choices"][0]["delta"]["content"] for e in events] == ["a", "b"]
    assert await redis.ttl(q.output_key("late-reader-test")) > 0
    await redis.aclose()


async def test_queue_full_refuses_instead_of_growing(stack) -> None:  # type: ignore[no-untyped-def]
    redis = Redis.from_url(stack.redis_url)
    jq = JobQueue(redis, name="gatehouse:queue:test-full", max_depth=3)
    await redis.delete(jq.name)
    for i in range(3):
        await jq.submit(q.JobSpec(id=f"full-{i}-{time.time()}", kind="chat", model="fake", body={}, stream=False,
                                  deadline=time.time() + 5))
    with pytest.raises(QueueFull) as e:
        await jq.submit(q.JobSpec(id="full-x", kind="chat", model="fake", body={}, stream=False,
                                  deadline=time.time() + 5))
    assert e.value.status == 503 and e.value.headers["retry-after"] == "1"
    assert await jq.depth() == 3
    await redis.delete(jq.name)
    await redis.aclose()


def test_queue_full_over_http(stack) -> None:  # type: ignore[no-untyped-def]
    """Fill the real interactive queue behind the worker's back: the gateway answers 503 + retry-after."""
    import redis as sync_redis

    r = sync_redis.Redis.from_url(stack.redis_url)
    fake_ids = {f"blocker-{i}": 255e12 + i for i in range(2_000)}  # the least urgent band
    with r.pipeline(transaction=False) as pipe:  # real jobs (a queue entry without its job is swept as expired),
        for job_id in fake_ids:  # each held by a phantom worker, so no real one claims (and drops) it meanwhile
            pipe.set(q.ARQ_JOB_PREFIX + job_id, b"{}", ex=60)
            pipe.set(in_progress_key_prefix + job_id, b"1", ex=60)
        pipe.zadd(q.INTERACTIVE_QUEUE, fake_ids)
        pipe.execute()
    try:
        resp = httpx.post(stack.base_url + "/v1/chat/completions", headers=_auth(stack),
                          json={"model": "fake", "messages": [{"role": "user", "content": "x"}]})
        assert resp.status_code == 503
        assert resp.headers["retry-after"] == "1"
        assert resp.json()["error"]["code"] == "queue_full"
        with pytest.raises(openai.InternalServerError):
            stack.client().chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}])
    finally:
        r.zrem(q.INTERACTIVE_QUEUE, *fake_ids)
        r.delete(*(q.ARQ_JOB_PREFIX + job_id for job_id in fake_ids))
        r.delete(*(in_progress_key_prefix + job_id for job_id in fake_ids))


async def test_timeout_gives_504_and_stops_the_job(stack) -> None:  # type: ignore[no-untyped-def]
    """The SDK's read timeout header (sent by every OpenAI SDK) bounds a non-streaming job."""
    t0 = time.time()
    async with httpx.AsyncClient(timeout=10) as c:
        r = await c.post(stack.base_url + "/v1/chat/completions",
                         headers={**_auth(stack), "x-stainless-read-timeout": "0.6"},
                         json={"model": "slow", "delay": 2.0, "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 504
    assert r.json()["error"]["code"] == "timeout"
    assert time.time() - t0 < 1.5
    # the worker gave up too (its own deadline), instead of waiting 2 s for the upstream
    redis = Redis.from_url(stack.redis_url)
    events = [e async for e in read_events(redis, r.headers["x-request-id"], time.time() + 2)]
    await redis.aclose()
    assert events[-1]["k"] == "error" and events[-1]["code"] in ("timeout", "cancelled")


async def test_client_disconnect_cancels_the_job(stack) -> None:  # type: ignore[no-untyped-def]
    async with httpx.AsyncClient(timeout=10) as c, \
            c.stream("POST", stack.base_url + "/v1/chat/completions", headers=_auth(stack),
                     json={"model": "slow", "delay": 0.3, "stream": True,
                           "messages": [{"role": "user", "content": "x"}]}) as r:
        rid = r.headers["x-request-id"]
        async for _ in r.aiter_bytes():
            break  # first bytes arrive, then the client goes away
    redis = Redis.from_url(stack.redis_url)
    # the worker notices the cancellation and ends the output stream with a "cancelled" error well before
    # the 8 slow chunks (8 × 0.3 s) would have finished
    events = [e async for e in read_events(redis, rid, time.time() + 2)]
    await redis.aclose()
    assert events[-1]["k"] == "error" and events[-1]["code"] == "cancelled"
    chunks = [e for e in events if e["k"] == "chunk"]
    assert len(chunks) < 8


def test_logs_carry_request_ids_and_no_credentials(stack) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(stack.base_url + "/v1/chat/completions", headers=_auth(stack),
                   json={"model": "status-400", "messages": [{"role": "user", "content": "x"}]})
    rid = r.headers["x-request-id"]
    time.sleep(0.3)
    gateway_log = (stack.logs / "gateway.log").read_text()
    access = [line for line in gateway_log.splitlines() if rid in line and "gatehouse.access" in line]
    assert access and "POST /v1/chat/completions 400" in access[0]
    everything = "".join(p.read_text() for p in stack.logs.glob("*.log"))
    assert stack.master_key not in everything and "sk-upstream-secret" not in everything



async def test_consumed_output_streams_are_deleted(stack) -> None:  # type: ignore[no-untyped-def]
    """Redis memory stays bounded by the requests in flight, not by the last minute of traffic."""
    async with httpx.AsyncClient() as c:
        rs = [await c.post(stack.base_url + "/v1/chat/completions", headers=_auth(stack),
                           json={"model": "fake", "messages": [{"role": "user", "content": "x"}]}) for _ in range(5)]
    keys = [q.output_key(r.headers["x-request-id"]) for r in rs]
    redis = Redis.from_url(stack.redis_url)
    await asyncio.sleep(0.6)
    assert await redis.exists(*keys) == 0
    await redis.aclose()


def test_redis_down_gives_503_not_500(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    """A gateway whose Redis is unreachable answers 503 with an OpenAI body (and says not ready)."""
    import os
    import subprocess
    import sys

    import yaml
    from conftest import ROOT, free_port, stop_processes, wait_http

    port = free_port()
    path = tmp_path / "down.yaml"
    path.write_text(yaml.safe_dump({"model_list": [{"model_name": "echo", "litellm_params": {
        "model": "openai/echo", "api_base": stack.upstream.base_url}}], "gatehouse": {"port": port}}))
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "GATEHOUSE_MASTER_KEY": stack.master_key}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "-c", str(path)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", procs=[proc])
        assert httpx.get(f"http://127.0.0.1:{port}/health/ready").status_code == 503
        optional = httpx.get(f"http://127.0.0.1:{port}/health/ready?workers=optional")
        assert optional.status_code == 503 and "redis" in optional.json()["down"]  # only workers may be missing
        r = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", headers=_auth(stack),
                       json={"model": "echo", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 503 and r.json()["error"]["type"] == "server_error"
        assert r.headers["retry-after"] == "1" and r.headers["x-request-id"]
    finally:
        stop_processes([proc])


def test_ready_without_workers_only_when_asked(tmp_path, stack) -> None:  # type: ignore[no-untyped-def]
    """A gateway with no worker: /health/ready is 503 naming "workers"; ?workers=optional (the Kubernetes probe,
    workers scaled to zero) is 200, and a request waits in the queue instead of being refused."""
    import os
    import subprocess
    import sys

    import yaml
    from conftest import ROOT, free_port, stop_processes, wait_http

    port = free_port()
    path = tmp_path / "alone.yaml"
    path.write_text(yaml.safe_dump({"model_list": [{"model_name": "echo", "litellm_params": {
        "model": "openai/echo", "api_base": stack.upstream.base_url}}], "gatehouse": {"port": port}}))
    alone = stack.redis_url.rsplit("/", 1)[0] + "/9"  # a database no worker serves
    env = {**os.environ, "REDIS_URL": alone, "GATEHOUSE_MASTER_KEY": stack.master_key}
    env.pop("DATABASE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "-c", str(path)], env=env, cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health/live", procs=[proc])
        strict = httpx.get(base + "/health/ready")
        assert strict.status_code == 503 and strict.json()["down"] == ["workers"], strict.text
        optional = httpx.get(base + "/health/ready?workers=optional")
        assert optional.status_code == 200 and optional.json()["down"] == [], optional.text
        with pytest.raises(httpx.ReadTimeout):  # accepted and waiting: no 503, no error body
            httpx.post(base + "/v1/chat/completions", headers=_auth(stack), timeout=1.5,
                       json={"model": "echo", "messages": [{"role": "user", "content": "x"}]})
    finally:
        stop_processes([proc])


async def test_health_shows_lane_depths_per_tenant(stack) -> None:  # type: ignore[no-untyped-def]
    """/health counts what each tenant has waiting and running per lane; names them only to an admin."""
    from conftest import create_key

    flood, small = create_key(stack, key_alias="flood"), create_key(stack, team_id="team-lanes")
    body = {"model": "slow", "delay": 2.5, "messages": [{"role": "user", "content": "x"}]}

    async def call(c: httpx.AsyncClient, key: str) -> int:
        r = await c.post(stack.base_url + "/v1/chat/completions", json=body,
                         headers={"authorization": f"Bearer {key}"})
        return r.status_code

    async with httpx.AsyncClient(timeout=30) as c:
        calls = [asyncio.create_task(call(c, flood["key"])) for _ in range(24)]
        calls += [asyncio.create_task(call(c, small["key"])) for _ in range(3)]
        await asyncio.sleep(0.7)  # all queued; the first ones running
        named_health = (await c.get(stack.base_url + "/health", headers=_auth(stack))).json()
        public_health = (await c.get(stack.base_url + "/health")).json()
        named, public = named_health["lanes"]["interactive"], public_health["lanes"]["interactive"]
        for _ in range(20):  # a worker reports its running jobs with each heartbeat (every second)
            workers = (await c.get(stack.base_url + "/health", headers=_auth(stack))).json()["worker_list"]
            if sum(w["running"]["interactive"] for w in workers) >= 1:
                break
            await asyncio.sleep(0.1)
        assert sorted(await asyncio.gather(*calls)) == [200] * 27
        after = (await c.get(stack.base_url + "/health", headers=_auth(stack))).json()["lanes"]["interactive"]
    by = named["by_tenant"]
    mine = {t: d["waiting"] + d["running"] for t, d in by.items() if t in (f"key:{flood['key_id']}", "team:team-lanes")}
    assert mine == {f"key:{flood['key_id']}": 24, "team:team-lanes": 3}
    assert named["running"] >= 27  # this stack's worker runs up to 256 at once: all of them are running
    assert "by_tenant" not in public and public["tenants"] >= 2  # counted, not named
    assert not {f"key:{flood['key_id']}", "team:team-lanes"} & set(after.get("by_tenant", {}))
    slow = next(m for m in named_health["models"] if m["id"] == "slow")  # per model, for the console's models page
    assert slow["waiting"] + slow["running"] >= 27 and slow["running"] >= 1, slow
    assert [d["id"] for d in slow["deployments"]] == ["slow#0"] and slow["healthy"] is True, slow
    assert workers and all(w["last_heartbeat_s"] < 30 for w in workers if w["fresh"]), workers
    assert sum(w["running"]["interactive"] for w in workers) >= 1, workers
    assert "worker_list" not in public_health and "recent_errors" not in public_health


async def test_health_lists_recent_errors_for_admins(stack) -> None:  # type: ignore[no-untyped-def]
    """A job that fails upstream is in /health's recent_errors (admins only), with its request id and code."""
    async with httpx.AsyncClient(timeout=30) as c:
        r = await c.post(stack.base_url + "/v1/chat/completions", headers=_auth(stack),
                         json={"model": "status-500", "messages": [{"role": "user", "content": "x"}]})
        assert r.status_code == 502, r.text
        request_id = r.headers["x-request-id"]
        errors = (await c.get(stack.base_url + "/health", headers=_auth(stack))).json()["recent_errors"]
    mine = [e for e in errors if e["request_id"] == request_id]
    assert len(mine) == 1, errors
    e = mine[0]
    assert e["model"] == "status-500" and e["status"] == 502 and e["code"] == "upstream_error" and e["lane"], e
    assert e["worker"] and e["tenant"] and e["message"], e
