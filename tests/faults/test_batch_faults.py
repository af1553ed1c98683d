"""The Batch API under faults, on the fault suite's gateway and two workers (each 8 slots, 6 of them for batch
lines): a batch of a few hundred lines on the slow model is hit mid-way by a SIGKILL of the worker leading the
batch runner, a gateway SIGKILLed and started again, and Valkey stopped and started again. Each time the batch
ends ``completed`` with every line answered exactly once in the output file (a line that legitimately failed with
``worker_lost`` would be accounted for exactly in the error file), and the upstream saw each line once; only a
killed worker's lines may run once more (at most its batch slots). Then no process logged a traceback.

The client is the official SDK throughout (while the gateway is down it gets connection errors, and retries).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import openai
import orjson
import pytest

from core import batches as b
from core.config import GatehouseSettings
from faults.harness import WORKER_CONCURRENCY, FaultStack, traceback_excerpts, upstream_count

LINES = 300
DELAY = 0.3  # seconds the slow model takes per line: 12 lines at once, the batch runs for 8 s at the very least
BATCH_SLOTS = int(WORKER_CONCURRENCY * GatehouseSettings.model_fields["batch_worker_share"].default)  # per worker
FINAL = ("completed", "failed", "expired", "cancelled")


def sdk(h: FaultStack) -> openai.OpenAI:
    return openai.OpenAI(base_url=h.base_url + "/v1", api_key=h.master_key, max_retries=0, timeout=10)


def content(tag: str, n: int = LINES) -> tuple[bytes, set[str]]:
    ids = [f"{tag}-{i}" for i in range(n)]
    body = b"".join(orjson.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions", "body": {
        "model": "slow", "delay": DELAY, "messages": [{"role": "user", "content": f"{tag} line {i}"}]}}) + b"\n"
        for i, cid in enumerate(ids))
    return body, set(ids)


def submit(client: openai.OpenAI, data: bytes) -> Any:
    f = client.files.create(file=("in.jsonl", data), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")


def poll(client: openai.OpenAI, batch_id: str, done: Callable[[Any], bool], within: float, what: str) -> Any:
    """Retrieve the batch until ``done(batch)``; connection errors and 5xx (the gateway restarting) are retried."""
    deadline = time.monotonic() + within
    batch, failure = None, None
    while time.monotonic() < deadline:
        try:
            batch = client.batches.retrieve(batch_id)
            failure = None
        except (openai.APIConnectionError, openai.InternalServerError) as e:
            failure = repr(e)
        else:
            if done(batch):
                return batch
            assert batch.status not in FINAL, f"batch ended {batch.status} while waiting for {what}: {batch}"
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {within:.0f}s; last: {batch} {failure or ''}")


def mid_batch(client: openai.OpenAI, batch_id: str, answered: int = LINES // 5) -> Any:
    batch = poll(client, batch_id, lambda x: x.status == "in_progress" and x.request_counts.completed >= answered,
                 40, f"{answered} lines answered")
    assert batch.request_counts.completed < LINES * 0.7, f"the fault would land too late: {batch.request_counts}"
    return batch


def settled(client: openai.OpenAI, batch_id: str, ids: set[str], within: float = 50) -> list[Any]:
    """The batch ends ``completed``; each custom_id is in exactly one file, answered ones with 200, and only a
    ``worker_lost`` line may be in the error file (failed, and counted); the counts match the files. Returns the
    error file's lines."""
    batch = poll(client, batch_id, lambda x: x.status in FINAL, within, "final status")
    assert batch.status == "completed", batch
    counts = batch.request_counts
    out = [orjson.loads(x) for x in client.files.content(batch.output_file_id).content.splitlines()]
    err = ([orjson.loads(x) for x in client.files.content(batch.error_file_id).content.splitlines()]
           if batch.error_file_id else [])
    assert all(r["error"] is None and r["response"]["status_code"] == 200 for r in out)
    assert all(r["response"] is None and r["error"]["code"] == "worker_lost" for r in err), err[:3]
    assert (counts.total, counts.completed, counts.failed) == (len(ids), len(out), len(err)), counts
    seen = [r["custom_id"] for r in out + err]
    assert len(seen) == len(set(seen)) and set(seen) == ids, "custom_ids missing or repeated across the files"
    return err


def leader(h: FaultStack) -> int | None:
    """The pid of the worker whose batch runner holds the lease (worker ids are ``host:pid:suffix``)."""
    wid: bytes | None = h.valkey.client().get(b.RUNNER_KEY)  # type: ignore[assignment]  # sync client
    return int(wid.decode().split(":")[1]) if wid else None


def took_over(h: FaultStack, dead: int, within: float) -> int:
    """The pid of a live worker whose runner holds the lease that the worker ``dead`` held."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pid = leader(h)
        if pid not in (None, dead) and any(w.pid == pid and w.poll() is None for w in h.workers):
            return pid
        time.sleep(0.05)
    raise AssertionError(f"no live worker took the runner's lease within {within:.0f}s; it names {leader(h)}")


def held_lines(h: FaultStack, slot: int, batch_id: str) -> int:
    held = h.jobs_by_worker() or {}
    return sum(1 for j in held.get(h.workers[slot].pid, ()) if j.startswith(batch_id + ":"))


def test_worker_leading_the_runner_killed(faults: FaultStack) -> None:
    """SIGKILL of the worker whose runner drives the batch, a fifth of the way in, and a new worker started in its
    place: another live worker's runner (the survivor's or the newcomer's) takes the lease over within 10 s, the
    killed worker's lines run again elsewhere; the batch completes with each line once; the upstream saw at most
    the killed worker's batch slots more requests than there are lines."""
    h = faults
    client = sdk(h)
    before = upstream_count(h.upstream, "slow")
    data, ids = content("kill")
    batch = submit(client, data)
    t0 = time.monotonic()
    mid_batch(client, batch.id)
    pid = leader(h)
    slot = next((i for i, w in enumerate(h.workers) if w.pid == pid), None)
    assert pid is not None and slot is not None, f"no worker of ours holds the lease ({b.RUNNER_KEY}): {pid}"
    in_flight = held_lines(h, slot, batch.id)
    h.kill_worker(slot)
    killed_at = time.monotonic()
    h.spawn_worker(slot)  # the surviving worker or this new one takes the lease over
    new = took_over(h, pid, 15)
    taken = time.monotonic() - killed_at
    assert client.batches.retrieve(batch.id).status == "in_progress"
    lost = settled(client, batch.id, ids)
    runs = upstream_count(h.upstream, "slow") - before
    print(f"killed the leader (pid {pid}) holding {in_flight} line(s); runner taken over in {taken:.1f}s by "
          f"{'the new worker' if new == h.workers[slot].pid else 'the other worker'}; "
          f"completed {time.monotonic() - killed_at:.1f}s after the kill ({time.monotonic() - t0:.1f}s in all); "
          f"upstream requests {runs} for {LINES} lines; worker_lost {len(lost)}")
    assert taken < 10, f"the runner's lease moved {taken:.1f}s after the kill"
    assert LINES - len(lost) <= runs <= LINES + BATCH_SLOTS, (
        f"the upstream saw {runs} requests for {LINES} lines; a line runs again only when the killed worker held "
        f"it (at most {BATCH_SLOTS}; {in_flight} when it was killed)")


def test_gateway_restarted(faults: FaultStack) -> None:
    """The gateway SIGKILLed and started again mid-batch: the batch runs on in the workers meanwhile and completes
    with each line once; the upstream saw exactly one request per line."""
    h = faults
    client = sdk(h)
    before = upstream_count(h.upstream, "slow")
    data, ids = content("gateway")
    batch = submit(client, data)
    answered = mid_batch(client, batch.id).request_counts.completed
    h.gateway.kill()
    h.gateway.wait(10)
    killed_at = time.monotonic()
    with pytest.raises(openai.APIConnectionError):
        client.batches.retrieve(batch.id)
    time.sleep(1.0)
    h.spawn_gateway()
    back = poll(client, batch.id, lambda _: True, 40, "the new gateway answering")
    back_after = time.monotonic() - killed_at
    assert back.request_counts.completed >= answered
    lost = settled(client, batch.id, ids)
    runs = upstream_count(h.upstream, "slow") - before
    print(f"gateway back {back_after:.1f}s after the kill, {back.request_counts.completed - answered} more line(s) "
          f"answered meanwhile; completed {time.monotonic() - killed_at:.1f}s after the kill; upstream requests "
          f"{runs} for {LINES} lines")
    assert not lost and runs == LINES, f"the upstream saw {runs} requests for {LINES} lines; lost: {lost[:3]}"


def test_valkey_restarted(faults: FaultStack) -> None:
    """Valkey stopped (its append-only file kept) and started again on the same port 2 s later, mid-batch: the
    workers and the runner wait it out; the batch completes with each line once, and the upstream saw exactly one
    request per line (no worker died: lines that finished during the outage write their results once Valkey is
    back, they are not run again)."""
    h = faults
    client = sdk(h)
    before = upstream_count(h.upstream, "slow")
    data, ids = content("valkey")
    batch = submit(client, data)
    mid_batch(client, batch.id)
    h.valkey.stop()
    stopped_at = time.monotonic()
    time.sleep(2.0)
    h.valkey.start()
    lost = settled(client, batch.id, ids)
    runs = upstream_count(h.upstream, "slow") - before
    print(f"completed {time.monotonic() - stopped_at:.1f}s after Valkey stopped; upstream requests {runs} for "
          f"{LINES} lines; worker_lost {len(lost)}")
    assert not lost and runs == LINES, (
        f"the upstream saw {runs} requests for {LINES} lines (up to {len(h.workers) * BATCH_SLOTS} were running at "
        f"the restart; one that ran again lost its result); worker_lost: {lost[:3]}")
    assert all(w.poll() is None for w in (h.gateway, *h.workers)), "a process exited"


def test_no_tracebacks(fault_stack: FaultStack) -> None:
    """After the faults above, no gateway or worker log holds a traceback."""
    counts = fault_stack.traceback_counts()
    texts = fault_stack.log_texts()
    assert not counts, f"tracebacks per log: {counts}\n" + "\n\n".join(
        f"--- {name} ---\n{traceback_excerpts(texts[name])}" for name in counts)
