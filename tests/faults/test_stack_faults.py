"""Faults under a running gateway and two workers (issue #12), in this order: upstream failures, a worker killed
while it streams, a worker killed before its first output, both workers killed (readiness), Valkey paused; then no
process logged a traceback through any of it.

Each test starts from a repaired, ready stack (the ``faults`` fixture) and asserts counts and generous time
bounds only. Failures are gathered and reported together, so one run shows everything that was observed.
"""

from __future__ import annotations

import asyncio
import signal
import time

import httpx

from bench.fake_upstream import CANNED
from faults.clients import StreamRecord, chat, is_openai_error, stream_chat, until
from faults.harness import (
    WORKER_CONCURRENCY,
    FaultStack,
    traceback_excerpts,
    upstream_count,
)

SLOW_DELAY = 0.5  # seconds before each chunk of "slow": a stream of its six words lasts about 3 s
RETRIES = "gatehouse_backend_retries_total"


def new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(60), limits=httpx.Limits(max_connections=200))


async def test_upstream_faults(faults: FaultStack) -> None:
    """500 (retried max_retries times), connection refused, a hung upstream past its per-model timeout, a stream cut
    after output: 502/504 with an OpenAI error body, or an SSE error event then [DONE]; retries counted."""
    h, key = faults, faults.master_key
    problems: list[str] = []
    async with new_client() as c:
        calls_before = upstream_count(h.upstream, "status-500")
        retries_before = await asyncio.to_thread(h.metric, RETRIES, backend="openai", reason="server_error")
        a = await chat(c, h.base_url, key, "status-500", limit_s=20)
        calls = upstream_count(h.upstream, "status-500") - calls_before
        retried = await asyncio.to_thread(h.metric, RETRIES, backend="openai", reason="server_error") - retries_before
        if a.status != 502 or not is_openai_error(a.body) or a.elapsed > 10:
            problems.append(f"status-500: expected 502 + OpenAI error within 10 s, got {a}")
        if calls != 3:
            problems.append(f"status-500 with max_retries 2: upstream saw {calls} attempts, expected 3")
        if retried != 2:
            problems.append(f"status-500: {RETRIES}{{reason=server_error}} rose by {retried}, expected 2")

        retries_before = await asyncio.to_thread(h.metric, RETRIES, backend="openai", reason="unreachable")
        a = await chat(c, h.base_url, key, "refused", limit_s=20)
        retried = await asyncio.to_thread(h.metric, RETRIES, backend="openai", reason="unreachable") - retries_before
        if a.status != 502 or not is_openai_error(a.body) or a.elapsed > 10:
            problems.append(f"refused: expected 502 + OpenAI error within 10 s, got {a}")
        if retried != 1:
            problems.append(f"refused with max_retries 1: {RETRIES}{{reason=unreachable}} rose by {retried}, "
                            "expected 1")

        calls_before = upstream_count(h.upstream, "hang")
        a = await chat(c, h.base_url, key, "hang", limit_s=20, delay=30)  # per-model timeout: 1 s
        calls = upstream_count(h.upstream, "hang") - calls_before
        if a.status != 504 or not is_openai_error(a.body) or a.elapsed > 5:
            problems.append(f"hang (timeout 1 s): expected 504 + OpenAI error within 5 s, got {a}")
        if calls != 1:
            problems.append(f"hang with max_retries 0: upstream saw {calls} attempts, expected 1")

        calls_before = upstream_count(h.upstream, "cut")
        rec = await stream_chat(c, h.base_url, key, "cut", StreamRecord(), limit_s=20)
        calls = upstream_count(h.upstream, "cut") - calls_before
        if not (rec.ended_cleanly and rec.content and rec.error is not None):
            problems.append(f"cut stream: expected output, then an error event and [DONE]; got {rec.describe()}")
        if rec.error_code == "internal_error":
            problems.append("cut stream: reported as the worker's internal error (a bug path) instead of an "
                            f"upstream failure: {rec.error}")
        if calls != 1:
            problems.append(f"cut stream (output already sent): upstream saw {calls} attempts, expected 1")
    assert not problems, "\n".join(problems)


async def test_worker_killed_mid_stream(faults: FaultStack) -> None:
    """20 streams over two workers of 8 slots; one worker SIGKILLed once 16 streams have output. Each running
    stream ends within 5 s of the kill (completed, or an error event "worker_lost" then [DONE]); the 4 that were
    queued complete normally; the upstream saw each request once (nothing with output ran twice)."""
    h, n, running = faults, 20, 2 * WORKER_CONCURRENCY
    before = upstream_count(h.upstream, "slow")
    recs = [StreamRecord() for _ in range(n)]
    async with new_client() as c:
        tasks = [asyncio.create_task(stream_chat(c, h.base_url, h.master_key, "slow", r, limit_s=60,
                                                 delay=SLOW_DELAY)) for r in recs]
        try:
            started = await until(lambda: sum(r.first_content_at is not None for r in recs) >= running, 30)
            assert started, "streams did not start:\n" + "\n".join(r.describe() for r in recs)
            killed_at = time.monotonic()
            h.kill_worker(0)
            had_output = {id(r) for r in recs if r.first_content_at is not None}
            await asyncio.wait_for(asyncio.gather(*tasks), 90)
        finally:
            for t in tasks:
                t.cancel()
    runs = upstream_count(h.upstream, "slow") - before
    problems = [f"not a clean end: {r.describe()}" for r in recs if not r.ended_cleanly]
    problems += [f"ended {r.ended_at - killed_at:.1f}s after the kill (limit 5 s): {r.describe()}"
                 for r in recs if id(r) in had_output and r.ended_at is not None and r.ended_at - killed_at > 5]
    lost = [r for r in recs if r.error is not None]
    problems += [f"error other than worker_lost: {r.describe()}" for r in lost if r.error_code != "worker_lost"]
    if len(lost) != WORKER_CONCURRENCY:
        problems.append(f"{len(lost)} streams ended with an error; the killed worker held {WORKER_CONCURRENCY}, "
                        "all with output")
    queued = [r for r in recs if id(r) not in had_output]
    problems += [f"queued behind, did not complete: {r.describe()}" for r in queued
                 if not r.finished or r.error is not None]
    if runs != n:
        problems.append(f"the upstream saw {runs} requests for {n} client requests (a job with output ran twice?)")
    ends = [r.ended_at - killed_at for r in recs if id(r) in had_output and r.ended_at is not None]
    print(f"worker_lost: {len(lost)}; running streams ended at most {max(ends, default=0):.1f}s after the kill; "
          f"upstream requests: {runs}")
    assert not problems, "\n".join(problems)


async def test_worker_killed_before_output(faults: FaultStack) -> None:
    """Non-streamed calls running on a worker that is SIGKILLed before any output are run again on the other
    worker: every client gets 200 and the canned answer; the upstream saw each request exactly twice."""
    h, n = faults, 6
    before = upstream_count(h.upstream, "slow")
    async with new_client() as c:
        h.signal_worker(1, signal.SIGSTOP)  # so that worker 0 takes every job
        try:
            tasks = [asyncio.create_task(chat(c, h.base_url, h.master_key, "slow", limit_s=60, delay=3.0))
                     for _ in range(n)]
            reached = await until(lambda: upstream_count(h.upstream, "slow") - before >= n, 15, interval=0.1)
        finally:
            h.signal_worker(1, signal.SIGCONT)
        assert reached, f"the {n} calls did not all reach the upstream"
        held = h.jobs_by_worker()  # None where the queue keeps no per-worker record
        assert held is None or len(held.get(h.workers[0].pid, ())) == n, f"jobs by worker pid: {held}"
        killed_at = time.monotonic()
        h.kill_worker(0)
        answers = await asyncio.wait_for(asyncio.gather(*tasks), 90)
        answered_after = time.monotonic() - killed_at
    runs = upstream_count(h.upstream, "slow") - before
    problems = [f"expected 200 and the canned answer, got {a}" for a in answers
                if a.status != 200 or a.body["choices"][0]["message"]["content"] != CANNED]
    if runs != 2 * n:
        problems.append(f"the upstream saw {runs} requests for {n} calls (expected {2 * n}: each run once more)")
    if answered_after > 30:
        problems.append(f"answers took {answered_after:.1f}s after the kill (limit 30 s)")
    print(f"answered {answered_after:.1f}s after the kill; upstream requests: {runs}")
    assert not problems, "\n".join(problems)


async def test_gateway_killed_drops_its_queued_jobs(faults: FaultStack) -> None:
    """Jobs queued by a gateway that is SIGKILLed have nobody to answer: they are dropped once its lease runs
    out (never run, never counted against the queue limit), by the gateway started in its place."""
    from core import queue as q

    h, n = faults, 5
    r = h.valkey.client()
    before = upstream_count(h.upstream, "fake")
    for slot in (0, 1):
        h.signal_worker(slot, signal.SIGSTOP)  # nothing runs the jobs meanwhile
    try:
        async with new_client() as c:
            tasks = [asyncio.create_task(chat(c, h.base_url, h.master_key, "fake", limit_s=60)) for _ in range(n)]
            queued = await until(lambda: r.zcard(q.INTERACTIVE_QUEUE) >= n, 10)
            assert queued, f"the {n} calls were not queued: depth {r.zcard(q.INTERACTIVE_QUEUE)}"
            h.gateway.send_signal(signal.SIGKILL)
            h.gateway.wait(10)
            killed_at = time.monotonic()
            await asyncio.gather(*tasks, return_exceptions=True)  # their connections died with the gateway
        h.spawn_gateway()
        dropped = await until(lambda: r.zcard(q.INTERACTIVE_QUEUE) == 0, 30, interval=0.2)
        dropped_after = time.monotonic() - killed_at
        assert dropped, f"still queued 30 s after the kill: {r.zrange(q.INTERACTIVE_QUEUE, 0, -1)}"
    finally:
        for slot in (0, 1):
            h.signal_worker(slot, signal.SIGCONT)
    h.wait_ready(60)
    async with new_client() as c:
        fresh = await chat(c, h.base_url, h.master_key, "fake", limit_s=30)
    assert fresh.status == 200, fresh
    runs = upstream_count(h.upstream, "fake") - before
    print(f"a killed gateway's {n} queued jobs dropped {dropped_after:.1f}s after the kill; upstream requests: {runs}")
    assert runs == 1, f"the upstream saw {runs} requests: the dead gateway's jobs ran (expected only the fresh one)"


async def test_worker_restart_readiness(faults: FaultStack) -> None:
    """/health/ready drops to not ready (checks.workers == 0) within 6 s of SIGKILL of both workers, and is ready
    again soon after they are restarted."""
    h = faults
    status, body = h.ready()
    assert status == 200 and body["checks"]["workers"] >= 1, body
    h.kill_worker(0)
    h.kill_worker(1)
    killed_at = time.monotonic()
    seen: list[tuple[float, int, object]] = []

    def dropped() -> bool:
        code, b = h.ready()
        seen.append((round(time.monotonic() - killed_at, 1), code, b))
        return code == 503 and isinstance(b, dict) and b["checks"]["workers"] == 0

    went_down = await until(dropped, 6, interval=0.2)
    print(f"/health/ready after the kill: {seen[-1]}")
    h.spawn_worker(0)
    h.spawn_worker(1)
    h.wait_worker_ready(0)
    h.wait_worker_ready(1)
    restarted_at = time.monotonic()
    back = await until(lambda: h.ready()[0] == 200, 10, interval=0.2)
    assert went_down, f"/health/ready still counted workers 6 s after both were killed; last: {seen[-3:]}"
    assert back, f"/health/ready not ready {time.monotonic() - restarted_at:.1f}s after the workers restarted"


async def test_valkey_paused(faults: FaultStack) -> None:
    """Valkey SIGSTOPped: a new request answers 503 (OpenAI error body) within 1.5 s; a stream in flight ends with
    a final event within 15 s; after SIGCONT new requests succeed within 5 s, nothing restarted."""
    h, key = faults, faults.master_key
    pids = [p.pid for p in (h.gateway, *h.workers)]
    problems: list[str] = []
    async with new_client() as c:
        rec = StreamRecord()
        streaming = asyncio.create_task(stream_chat(c, h.base_url, key, "slow", rec, limit_s=60, delay=SLOW_DELAY))
        assert await until(lambda: rec.first_content_at is not None, 15), rec.describe()
        h.valkey.pause()
        paused_at = time.monotonic()
        try:
            a = await chat(c, h.base_url, key, "fake", limit_s=10)
            ended = await until(lambda: rec.ended_at is not None, 15)
            stream_took = time.monotonic() - paused_at
        finally:
            h.valkey.resume()
        resumed_at = time.monotonic()
        recovered: float | None = None
        last = None
        while time.monotonic() - resumed_at < 5:
            last = await chat(c, h.base_url, key, "fake", limit_s=3)
            if last.status == 200:
                recovered = time.monotonic() - resumed_at
                break
            await asyncio.sleep(0.1)
        await asyncio.wait_for(streaming, 60)
    print(f"while paused: {a.status} {a.error.get('code')} in {a.elapsed:.2f}s; the stream ended "
          f"{stream_took:.1f}s after the pause ({rec.error_code or 'completed'}); after SIGCONT: 200 in {recovered}s")
    if a.status != 503 or not is_openai_error(a.body) or a.elapsed > 1.5:
        problems.append(f"request while Valkey is paused: expected 503 + OpenAI error within 1.5 s, got {a}")
    if not ended or not rec.ended_cleanly:
        problems.append(f"stream in flight: expected a final event then [DONE] within 15 s of the pause; after "
                        f"{stream_took:.1f}s: {rec.describe()}")
    if recovered is None:
        problems.append(f"no successful request within 5 s of SIGCONT; last: {last}")
    if [p.pid for p in (h.gateway, *h.workers)] != pids or any(p.poll() is not None for p in (h.gateway, *h.workers)):
        problems.append("a gateway or worker process exited or was replaced")
    assert not problems, "\n".join(problems)


def test_no_tracebacks(fault_stack: FaultStack) -> None:
    """After every fault above, no gateway or worker log holds a traceback."""
    counts = fault_stack.traceback_counts()
    texts = fault_stack.log_texts()
    assert not counts, f"tracebacks per log: {counts}\n" + "\n\n".join(
        f"--- {name} ---\n{traceback_excerpts(texts[name])}" for name in counts)
