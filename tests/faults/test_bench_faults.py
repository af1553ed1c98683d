"""Benchmark runs under faults, on the fault suite's gateway and two workers: the worker whose runner drives a run
is SIGKILLed mid-run and a new one started in its place; another runner takes the lease over, resumes the run
skipping what was recorded, and the run completes with exactly one result per (model, level, item, repeat). Every
key minted for it, by either runner, is revoked at the end."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx
from conftest import MASTER_KEY

from faults.harness import FaultStack, traceback_excerpts, upstream_count
from workers.benchmarks.runner import RUNNER_KEY

ITEMS = 40
PARALLEL = 4
HEADERS = {"authorization": f"Bearer {MASTER_KEY}"}


def show(h: FaultStack, run_id: str) -> dict[str, Any]:
    r = httpx.get(f"{h.base_url}/v1/benchmarks/{run_id}", headers=HEADERS, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def poll(h: FaultStack, run_id: str, done: Any, within: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + within
    run: dict[str, Any] = {}
    while time.monotonic() < deadline:
        run = show(h, run_id)
        if done(run):
            return run
        time.sleep(0.1)
    raise AssertionError(f"no {what} within {within:.0f}s; last: {run.get('status')} {run.get('request_counts')}")


def leader(h: FaultStack) -> int | None:
    """The pid of the worker whose benchmark runner holds the lease (worker ids are ``host:pid:suffix``)."""
    wid: bytes | None = h.valkey.client().get(RUNNER_KEY)  # type: ignore[assignment]  # sync client
    return int(wid.decode().split(":")[1]) if wid else None


async def _keys(database_url: str, run_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch("SELECT key_id, revoked_at FROM virtual_keys WHERE metadata->>'bench_run' = $1",
                                run_id)
    finally:
        await conn.close()


def test_worker_driving_the_run_killed(faults: FaultStack, database_url: str) -> None:
    h = faults
    before = upstream_count(h.upstream, "slow")
    items = [{"id": f"k{i}", "prompt": f"kill {i}", "max_tokens": 2} for i in range(ITEMS)]  # ~0.4 s each
    r = httpx.post(h.base_url + "/v1/benchmarks", headers=HEADERS, timeout=10,
                   json={"suite": {"name": "resume", "items": items}, "models": ["slow"], "parallel": PARALLEL})
    assert r.status_code == 200, r.text
    run_id = r.json()["id"]
    mid = poll(h, run_id, lambda x: x["request_counts"]["completed"] >= 8, 40, "8 results")
    assert mid["request_counts"]["completed"] < ITEMS * 0.6, f"the kill would land too late: {mid['request_counts']}"
    pid = leader(h)
    slot = next((i for i, w in enumerate(h.workers) if w.pid == pid), None)
    assert pid is not None and slot is not None, f"no worker of ours holds the lease ({RUNNER_KEY}): {pid}"
    h.kill_worker(slot)
    killed_at = time.monotonic()
    landed = show(h, run_id)["request_counts"]["completed"]
    h.spawn_worker(slot)

    done = poll(h, run_id, lambda x: x["status"] in ("completed", "failed", "cancelled"), 60, "the run's end")
    took = time.monotonic() - killed_at
    assert done["status"] == "completed", done
    assert done["request_counts"] == {"total": ITEMS, "completed": ITEMS, "failed": 0}
    rows = httpx.get(f"{h.base_url}/v1/benchmarks/{run_id}/results", headers=HEADERS, params={"limit": 1000},
                     timeout=10).json()["data"]
    keys = [(x["model"], x["level"], x["item_id"], x["repeat"]) for x in rows]
    assert sorted(keys) == sorted(("slow", f"c={PARALLEL}", f"k{i}", 0) for i in range(ITEMS)), "missing or repeated"
    assert all(x["status"] == "ok" and x["ttft_ms"] <= x["e2e_ms"] for x in rows)
    sent = upstream_count(h.upstream, "slow") - before
    print(f"killed the runner's worker (pid {pid}) with {landed} of {ITEMS} results recorded; the run completed "
          f"{took:.1f}s later; the upstream saw {sent} requests for {ITEMS} results")
    # more than once: a request in flight at the kill (PARALLEL) is sent again by the new runner, and may also be
    # run again by the worker reaper when the killed worker held its job; a result that had ended but was not
    # recorded yet (0.1 s of them) is sent again too
    assert ITEMS <= sent <= ITEMS + 3 * PARALLEL, sent
    minted = asyncio.run(_keys(database_url, run_id))
    assert len(minted) >= 2 and all(k["revoked_at"] is not None for k in minted), minted  # both runners' keys
    assert h.valkey.client().exists(f"gatehouse:bench:keys:{run_id}") == 0
    broken = {n: traceback_excerpts(t) for n, t in h.log_texts().items() if "Traceback" in t}
    assert not broken, broken
