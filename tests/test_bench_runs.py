"""Benchmark runs driven by the runner in the worker (workers/benchmarks), on the real stack: runs submitted over
HTTP are sent through the gateway with run-scoped keys and measured; every result row, the summaries, scoring
(plain scorers and a judge), a first-token delay seen in TTFT, fixed-rate spacing, a sweep, cancel mid-run, and
agent tasks whose calls are attributed to them and whose keys stop working when they end. (A worker killed
mid-run: tests/faults/test_bench_faults.py.)"""

from __future__ import annotations

import ast
import asyncio
import itertools
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
import redis as sync_redis
from conftest import admin

from core.queue import bench_timing_key
from workers.benchmarks.keys import keys_set
from workers.benchmarks.sandbox import LocalSandbox

ROOT = Path(__file__).resolve().parents[1]
FINAL = ("completed", "failed", "cancelled")
RESULT_KEYS = {"model", "level", "item_id", "repeat", "status", "error", "started_at", "ttft_ms", "itl_ms",
               "tpot_ms", "e2e_ms", "input_tokens", "output_tokens", "output_tokens_per_s", "queue_ms",
               "upstream_ms", "overhead_ms", "cold_start", "cost", "score", "output", "request_id", "task"}


def submit(stack, suite: Any, models: list[str], **options: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    r = httpx.post(stack.base_url + "/v1/benchmarks", json={"suite": suite, "models": models, **options},
                   headers=admin(stack), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def show(stack, run_id: str) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    r = httpx.get(f"{stack.base_url}/v1/benchmarks/{run_id}", headers=admin(stack), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def wait_for(stack, run_id: str, done: Any = lambda run: run["status"] in FINAL,  # type: ignore[no-untyped-def]
             timeout: float = 90) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run = show(stack, run_id)
        if done(run):
            return run
        time.sleep(0.2)
    raise AssertionError(f"run {run_id} still {run['status']} after {timeout} s: {run['request_counts']}")


def results(stack, run_id: str) -> list[dict[str, Any]]:  # type: ignore[no-untyped-def]
    out: list[dict[str, Any]] = []
    after = None
    while True:
        r = httpx.get(f"{stack.base_url}/v1/benchmarks/{run_id}/results", headers=admin(stack), timeout=30,
                      params={"limit": 1000, **({"after": after} if after else {})})
        assert r.status_code == 200, r.text
        page = r.json()
        out += page["data"]
        if not page["has_more"]:
            return out
        after = page["last_id"]


def run_keys(database_url: str, run_id: str) -> list[asyncpg.Record]:
    """The virtual keys minted for the run (their metadata names it)."""
    return asyncio.run(_run_keys(database_url, run_id))


async def _run_keys(database_url: str, run_id: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(database_url)
    try:
        return await conn.fetch("SELECT key_id, key_alias, models, team_id, metadata, expires_at, revoked_at "
                                "FROM virtual_keys WHERE metadata->>'bench_run' = $1 ORDER BY key_alias", run_id)
    finally:
        await conn.close()


def by_key(rows: list[dict[str, Any]]) -> dict[tuple[str, str, str, int], dict[str, Any]]:
    out = {(r["model"], r["level"], r["item_id"], r["repeat"]): r for r in rows}
    assert len(out) == len(rows), "a (model, level, item, repeat) has two results"
    return out


def check_measured(r: dict[str, Any]) -> None:
    """An ok streamed result: every figure there and consistent."""
    assert set(r) == RESULT_KEYS, set(r) ^ RESULT_KEYS
    assert r["status"] == "ok" and r["error"] is None, r
    assert 0 < r["ttft_ms"] <= r["e2e_ms"], r
    assert r["output_tokens"] > 0 and r["input_tokens"] > 0 and r["output_tokens_per_s"] > 0
    assert len(r["itl_ms"]) == r["output_tokens"] - 1 and all(g >= 0 for g in r["itl_ms"])
    if r["output_tokens"] > 1:
        assert r["tpot_ms"] == pytest.approx((r["e2e_ms"] - r["ttft_ms"]) / (r["output_tokens"] - 1), abs=0.01)
    assert r["queue_ms"] is not None and r["queue_ms"] >= 0, r
    assert r["upstream_ms"] is not None and 0 < r["upstream_ms"] <= r["e2e_ms"], r
    assert r["overhead_ms"] == pytest.approx(r["e2e_ms"] - r["upstream_ms"], abs=0.01)
    assert r["cold_start"] is False and r["cost"] == 0.0
    assert r["request_id"] and r["task"] is None and r["output"]
    assert r["started_at"] == pytest.approx(time.time(), abs=120)


SUITE = {"name": "qa", "items": [
    {"id": "contains", "prompt": "apple banana", "expected": "apple", "scorer": "contains", "max_tokens": 16},
    {"id": "exact", "messages": [{"role": "user", "content": "hello world"}], "expected": "hello world",
     "scorer": "exact"},
    {"id": "judged", "prompt": "SCORE: 0.75", "scorer": {"judge": "echo", "rubric": "Is it a score?"}},
    {"id": "json", "prompt": '{"a": 1, "b": 2}', "expected": {"a": 1}, "scorer": "json_valid"},
    *({"id": f"plain-{i}", "prompt": f"plain question number {i}"} for i in range(4)),
]}
# echo answers the prompt itself, fake a canned sentence; the judge (echo) repeats the grading request, whose
# "Answer to grade" section ends in the graded answer: "SCORE: 0.75" only where the answer was that
SCORES = {"echo": {"contains": 1.0, "exact": 1.0, "judged": 0.75, "json": 1.0},
          "fake": {"contains": 0.0, "exact": 0.0, "judged": None, "json": 0.0}}


def test_two_models_in_parallel(stack, database_url: str) -> None:  # type: ignore[no-untyped-def]
    created = submit(stack, SUITE, ["echo", "fake"], parallel=2)
    assert created["status"] == "queued" and created["request_counts"]["total"] == 16
    run = wait_for(stack, created["id"])
    assert run["status"] == "completed", run
    assert run["request_counts"] == {"total": 16, "completed": 16, "failed": 0}
    assert run["started_at"] and run["completed_at"] and run["errors"] is None
    rows = by_key(results(stack, run["id"]))
    assert set(rows) == {(m, "c=2", item["id"], 0) for m in ("echo", "fake") for item in SUITE["items"]}
    for (model, _, item_id, _), r in rows.items():
        check_measured(r)
        assert r["score"] == SCORES[model].get(item_id), (model, item_id, r["score"], r["output"])
    assert rows["echo", "c=2", "plain-3", 0]["output"] == "plain question number 3"
    assert rows["echo", "c=2", "contains", 0]["output_tokens"] == 2  # max_tokens 16: all of it

    for model, expected_score in (("echo", (1 + 1 + 0.75 + 1) / 4), ("fake", 0.0)):
        agg = run["models_summary"][model]
        assert agg["requests"] == 8 and agg["errors"] == 0
        assert agg["score"] == pytest.approx(expected_score)
        assert agg["ttft_ms"]["p50"] > 0 and agg["e2e_ms"]["p99"] >= agg["e2e_ms"]["p50"] >= agg["ttft_ms"]["p50"]
        assert agg["upstream_ms"]["mean"] > 0 and agg["overhead_ms"]["mean"] is not None
        assert agg["requests_per_s"] > 0 and agg["output_tokens_per_s"] > 0 and agg["goodput"] == agg["requests_per_s"]
        assert run["summary"][model]["c=2"]["requests"] == 8

    keys = run_keys(database_url, run["id"])  # one per model, revoked now that the run is over
    assert [k["key_alias"].rsplit(" ", 1)[0] for k in keys] == [f"bench {run['id']} echo", f"bench {run['id']} fake"]
    assert [list(k["models"]) for k in keys] == [["echo"], ["fake", "echo"]]  # the judge, echo, too
    assert all(k["revoked_at"] is not None for k in keys)
    assert all(orjson.loads(k["metadata"]) == {"bench_run": run["id"], "lane": "batch"} for k in keys)
    assert sync_redis.Redis.from_url(stack.redis_url).exists(keys_set(run["id"])) == 0


def test_first_token_delay_shows_in_ttft(stack) -> None:  # type: ignore[no-untyped-def]
    """The upstream (``ttft-50``) sends its first chunk 50 ms after the request: TTFT is that plus overhead."""
    items = [{"id": f"t{i}", "prompt": f"delay {i}"} for i in range(5)]
    run = wait_for(stack, submit(stack, items, ["ttft-50"])["id"])
    assert run["status"] == "completed", run
    rows = results(stack, run["id"])
    assert len(rows) == 5
    for r in rows:
        check_measured(r)
        assert r["ttft_ms"] >= 50 and r["upstream_ms"] >= 50, r
    ttft = statistics.median(r["ttft_ms"] for r in rows)
    overhead = statistics.median(r["overhead_ms"] for r in rows)
    print(f"ttft-50: TTFT p50 {ttft:.1f} ms, gateway overhead p50 {overhead:.1f} ms")
    assert ttft < 50 + 100  # 100 ms: generous for a busy 2-core box (typically 5 to 15 ms)


def test_fixed_rate_and_sweep(stack) -> None:  # type: ignore[no-untyped-def]
    items = [{"id": f"r{i}", "prompt": f"rate {i}"} for i in range(8)]
    rated = submit(stack, items, ["fake"], rate=20)
    swept = submit(stack, items[:3], ["fake"], sweep=[1, 3], repeat=2)
    run = wait_for(stack, rated["id"])
    assert run["status"] == "completed" and set(run["summary"]["fake"]) == {"rate=20"}
    starts = sorted(r["started_at"] for r in results(stack, run["id"]))
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert 0.04 <= statistics.median(gaps) <= 0.07, gaps  # one request every 50 ms
    assert starts[-1] - starts[0] == pytest.approx(7 * 0.05, abs=0.1)

    run = wait_for(stack, swept["id"])
    assert run["status"] == "completed" and run["request_counts"]["total"] == 12
    rows = by_key(results(stack, run["id"]))
    assert set(rows) == {("fake", lvl, f"r{i}", rep) for lvl in ("c=1", "c=3") for i in range(3) for rep in (0, 1)}
    assert list(run["summary"]["fake"]) == ["c=1", "c=3"] and run["models_summary"]["fake"]["requests"] == 12
    first_c3 = min(r["started_at"] for r in rows.values() if r["level"] == "c=3")
    assert all(r["started_at"] < first_c3 for r in rows.values() if r["level"] == "c=1")  # levels in order


def test_cancel_mid_run(stack, database_url: str) -> None:  # type: ignore[no-untyped-def]
    items = [{"id": f"s{i}", "prompt": f"slow {i}"} for i in range(30)]  # slow: 0.2 s a chunk, ~1.2 s each
    run = submit(stack, items, ["slow"], parallel=2)
    wait_for(stack, run["id"], lambda x: x["request_counts"]["completed"] >= 2, timeout=60)
    r = httpx.post(f"{stack.base_url}/v1/benchmarks/{run['id']}/cancel", headers=admin(stack), timeout=30)
    assert r.status_code == 200 and r.json()["status"] in ("cancelling", "cancelled"), r.text
    t0 = time.monotonic()
    done = wait_for(stack, run["id"], timeout=30)
    assert done["status"] == "cancelled" and done["cancelled_at"] and done["completed_at"] is None, done
    print(f"cancelled {time.monotonic() - t0:.1f} s after the request")
    assert time.monotonic() - t0 < 5
    landed = done["request_counts"]["completed"] + done["request_counts"]["failed"]
    assert 2 <= landed < 30
    time.sleep(2.0)  # nothing lands after the cancel
    rows = results(stack, run["id"])
    assert len(rows) == landed and all(x["status"] == "ok" for x in rows)
    keys = run_keys(database_url, run["id"])
    assert keys and all(k["revoked_at"] is not None for k in keys)


def test_agent_tasks(stack, database_url: str, langfuse_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Each task gets a key of its own: its two calls (one offering a tool, one streamed) are counted for it, with
    each call's latencies (the worker's timing records) and Langfuse traces (user: the task's key, session: the
    run), and the key is revoked when it ends. Exit 0 passes; a scorer reads stdout."""
    script = str(ROOT / "tests" / "agent_task.py")
    key_file = tmp_path / "agent-key"
    suite = {"name": "agents", "sandbox": "local", "items": [
        {"id": "passes", "command": [sys.executable, script, "{prompt}", str(key_file)], "prompt": "hello agent",
         "timeout_s": 60},
        {"id": "scored", "command": [sys.executable, script, "{prompt}"], "prompt": "fail but say kiwi",
         "expected": "kiwi", "scorer": "contains", "timeout_s": 60},
        {"id": "exits-3", "command": [sys.executable, script, "{prompt}"], "prompt": "fail", "timeout_s": 60}]}
    run = wait_for(stack, submit(stack, suite, ["echo"])["id"], timeout=120)
    assert run["status"] == "completed", run
    rows = {r["item_id"]: r for r in results(stack, run["id"])}
    assert set(rows) == {"passes", "scored", "exits-3"}
    for item_id, exit_code, score in (("passes", 0, 1.0), ("scored", 3, 1.0), ("exits-3", 3, 0.0)):
        r = rows[item_id]
        task = r["task"]
        assert r["status"] == "ok" and task["exit_code"] == exit_code and r["score"] == score, r
        assert task["calls"] == 2, task  # both calls of the script, and only those, are the task's
        assert task["input_tokens"] == 14 and task["output_tokens"] > 0 and task["cost"] == 0.0
        assert task["wall_ms"] > 0 and r["ttft_ms"] is None and r["e2e_ms"] is None
        assert f"run {run['id']} model echo cwd-empty True" in task["stdout_tail"], task
    assert "answer: hello agent" in rows["passes"]["task"]["stdout_tail"]
    keys = {orjson.loads(k["metadata"]).get("bench_task"): k for k in run_keys(database_url, run["id"])}
    redis = sync_redis.Redis.from_url(stack.redis_url)
    for item_id, r in rows.items():  # each call's latencies, and its trace, are the task's
        task = r["task"]
        assert task["key_id"] == keys[item_id]["key_id"], task
        details = task["calls_detail"]
        assert len(details) == 2 and len({d["request_id"] for d in details}) == 2, task
        for d in details:
            assert set(d) == {"request_id", "queue_ms", "upstream_ms", "upstream_ttft_ms", "cold_start"}, d
            assert d["upstream_ms"] > 0 and d["queue_ms"] >= 0 and d["cold_start"] is False, d
            assert d["upstream_ttft_ms"] is None or 0 <= d["upstream_ttft_ms"] <= d["upstream_ms"], d
            assert redis.exists(bench_timing_key(d["request_id"])) == 0  # read (and deleted) by the runner
            langfuse_server.fake.wait_for_spans(d["request_id"], 4, timeout_s=15)  # trace id = request id
            trace = langfuse_server.fake.trace(d["request_id"])
            assert trace["userId"] == task["key_id"] and trace["sessionId"] == run["id"], trace
        assert any(d["upstream_ttft_ms"] is not None for d in details), details  # the streamed call's
        assert task["upstream_ms"] == pytest.approx(sum(d["upstream_ms"] for d in details), abs=0.01)
        assert 0 < task["upstream_ms"] < task["wall_ms"]
    redis.close()
    agg = run["models_summary"]["echo"]
    assert agg["requests"] == 3 and agg["errors"] == 0 and agg["score"] == pytest.approx(2 / 3)
    assert agg["input_tokens"] == 42 and agg["e2e_ms"]["p50"] > 0  # a task's wall time is its e2e

    secret = key_file.read_text()  # the key the task was given no longer works
    r = httpx.get(stack.base_url + "/v1/models", headers={"authorization": f"Bearer {secret}"}, timeout=30)
    assert r.status_code == 401, r.text
    assert set(keys) == {"passes", "scored", "exits-3"}  # the run's own key for echo was never needed
    for item_id, k in keys.items():
        assert list(k["models"]) == ["echo"] and k["revoked_at"] is not None
        assert orjson.loads(k["metadata"]) == {"bench_run": run["id"], "bench_task": item_id, "lane": "batch"}
        assert (k["expires_at"] - k["revoked_at"]).total_seconds() > 60


async def test_local_sandbox_timeout_and_environment() -> None:
    sandbox = LocalSandbox()
    code = ("import os, sys; print(sorted(os.environ)); print(os.listdir('.')); "
            "sys.stderr.write('err\\n'); sys.exit(4)")
    out = await sandbox.run([sys.executable, "-c", code], {"OPENAI_API_KEY": "sk-x"}, 30)
    assert out.exit_code == 4 and not out.timed_out and out.stderr == "err\n"
    names = ast.literal_eval(out.stdout.splitlines()[0])  # a few variables, none of the worker's secrets
    assert "OPENAI_API_KEY" in names and "PATH" in names
    assert not {"REDIS_URL", "DATABASE_URL", "GATEHOUSE_MASTER_KEY"} & set(names)
    assert out.stdout.splitlines()[1] == "[]"  # a fresh, empty directory

    t0 = time.monotonic()  # a command that outlives its timeout is killed with what it started
    out = await sandbox.run(["sh", "-c", "sleep 30 & sleep 30; echo never"], {}, 0.5)
    assert out.timed_out and out.exit_code is None and "never" not in out.stdout
    assert 400 < out.wall_ms < 5000 and time.monotonic() - t0 < 10


def test_errors_are_results(stack) -> None:  # type: ignore[no-untyped-def]
    """An HTTP error status and an error mid-stream are results with status ``error``; the run still completes."""
    items = [{"id": f"e{i}", "prompt": f"error {i}", "expected": "x", "scorer": "contains"} for i in range(2)]
    run = wait_for(stack, submit(stack, items, ["status-400", "broken-stream"], parallel=2)["id"])
    assert run["status"] == "completed" and run["request_counts"] == {"total": 4, "completed": 0, "failed": 4}, run
    rows = results(stack, run["id"])
    for r in rows:
        assert r["status"] == "error" and r["score"] is None and r["request_id"], r
    refused = [r["error"] for r in rows if r["model"] == "status-400"]
    broken = [r for r in rows if r["model"] == "broken-stream"]
    assert all(e["status"] == 400 and e["code"] and e["message"] for e in refused), refused
    assert all(r["error"]["status"] == 502 and "broke" in r["error"]["message"] for r in broken), broken
    assert all(r["ttft_ms"] is not None and r["output"] for r in broken)  # what came before the error is kept
    assert run["models_summary"]["broken-stream"]["errors"] == 2 and run["models_summary"]["status-400"]["errors"] == 2


async def test_runner_waits_quietly_without_its_tables(redis_url: str, database_url: str,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    """A worker may start before the gateway migrated the database: the runner takes the lease, says once that the
    tables are missing, and waits (no traceback, the loop goes on); it hands the lease back when closed."""
    from urllib.parse import urlsplit, urlunsplit

    from redis.asyncio import Redis

    from core.config import Config
    from core.database import Database
    from workers.benchmarks.runner import RUNNER_KEY, BenchRunner

    name = f"bench_empty_{int(time.time() * 1000)}"
    conn = await asyncpg.connect(database_url)
    await conn.execute(f"CREATE DATABASE {name}")
    await conn.close()
    redis = Redis.from_url(redis_url.rsplit("/", 1)[0] + "/7")  # a keyspace of its own: not the stack's lease
    db = Database(urlunsplit(urlsplit(database_url)._replace(path="/" + name)))
    runner = BenchRunner(redis, db, Config(), "test-runner")
    caplog.set_level("INFO", logger="gatehouse.benchmarks")
    task = asyncio.create_task(runner.run())
    try:
        await asyncio.sleep(2.5)
        assert not task.done() and runner.leading and await redis.get(RUNNER_KEY) == b"test-runner"
        said = [(r.levelname, r.getMessage()) for r in caplog.records if r.name == "gatehouse.benchmarks"]
        assert said.count(("WARNING", "benchmark runner waiting: the benchmark tables do not exist yet (the gateway "
                                      "creates them when it starts)")) == 1, said
        assert not [r for r in caplog.records if r.exc_info or r.levelname == "ERROR"]
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await runner.aclose()
        await db.close()
        conn = await asyncpg.connect(database_url)
        await conn.execute(f"DROP DATABASE {name}")
        await conn.close()
    assert await redis.get(RUNNER_KEY) is None
    await redis.aclose()


def test_a_runs_usage_counts_against_the_submitting_key(stack) -> None:  # type: ignore[no-untyped-def]
    """The calls run under minted keys; their tokens and cost are charged to the key that submitted the run, as
    its batches' are (the TPM window and the budget the gateway checks)."""
    from conftest import create_key

    from core.usage import Scope

    key = create_key(stack, tpm_limit=1_000_000, max_budget=1_000.0)
    auth = {"authorization": f"Bearer {key['key']}"}
    # one call first: the gateway loads the key's budget counter (a counter is never started at zero elsewhere)
    assert httpx.post(stack.base_url + "/v1/chat/completions", headers=auth, timeout=30,
                      json={"model": "priced", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    r = sync_redis.Redis.from_url(stack.redis_url)
    before = float(r.get(Scope("key", key["key_id"]).spend_key(time.time())) or 0)
    created = httpx.post(stack.base_url + "/v1/benchmarks", headers=auth, timeout=30,
                         json={"suite": {"name": "priced", "items": [{"prompt": f"question {i}"} for i in range(4)]},
                               "models": ["priced"], "parallel": 2}).json()
    run = wait_for(stack, created["id"])
    assert run["status"] == "completed", run
    rows = results(stack, run["id"])
    cost = sum(x["cost"] for x in rows)
    assert cost > 0 and all(x["input_tokens"] and x["output_tokens"] for x in rows)
    deadline = time.time() + 10
    while (spent := float(r.get(Scope("key", key["key_id"]).spend_key(time.time())) or 0)) < before + cost - 1e-9:
        assert time.time() < deadline, (before, spent, cost)
        time.sleep(0.1)
    assert spent == pytest.approx(before + cost, abs=0.1)  # give or take the first call's own settling
    r.close()
