"""core.benchstore against the session's PostgreSQL: a run's lifecycle, results landing once (counts with them),
what a resumed runner skips, result pages, visibility, summaries from core.benchstats."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.benchstore import BenchRecord, BenchStore, new_bench_id
from gateway.db.database import Database

OPTIONS = {"parallel": 2, "rate": None, "sweep": None, "repeat": 1,
           "slo": {"ttft_ms": 100, "tpot_ms": None, "itl_ms": None, "e2e_ms": None}}
SUITE = {"name": "qa", "sandbox": "local", "items": [{"id": "q1", "prompt": "hi"}, {"id": "q2", "prompt": "yo"}]}


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[BenchStore]:
    db = Database(database_url)
    assert await db.open()  # connects and migrates
    yield BenchStore(db)
    await db.close()


async def new_run(store: BenchStore, owner: str | None = "ak-owner", **kw: Any) -> BenchRecord:
    fields: dict[str, Any] = {"run_id": new_bench_id(), "owner_id": owner, "key_id": owner, "team_id": "team-x",
                              "user_id": None, "tenant": f"key:{owner}", "gateway_url": "http://gw:4000",
                              "suite": SUITE, "models": ["echo", "fake"], "options": OPTIONS, "total": 4,
                              "metadata": {"job": "nightly"}, **kw}
    return await store.create(**fields)


def result(model: str = "echo", item: str = "q1", rep: int = 0, status: str = "ok", level: str = "c=2",
           **kw: Any) -> dict[str, Any]:
    return {"model": model, "level": level, "item_id": item, "repeat": rep, "status": status,
            "error": None if status == "ok" else {"status": 500, "code": "x", "message": "boom"},
            "started_at": 1_765_000_000.0, "ttft_ms": 50.0, "itl_ms": [2.0, 4.0], "tpot_ms": 3.0, "e2e_ms": 100.0,
            "input_tokens": 10, "output_tokens": 5, "cost": 0.5, "score": None, "task": None, **kw}


def test_ids_sort_by_creation_and_have_26_characters() -> None:
    a, b = new_bench_id(), new_bench_id()
    assert a.startswith("bench_") and len(a) == len(b) == len("bench_") + 26 and a != b
    assert a[:18] <= b[:18]  # bench_ + milliseconds since 1970, then random digits


async def test_lifecycle(store: BenchStore) -> None:
    run = await new_run(store)
    api = run.to_api()
    assert api["status"] == "queued" and api["object"] == "benchmark"
    assert api["suite"] == {"name": "qa", "items": 2, "sandbox": "local"}
    assert api["options"] == OPTIONS and api["metadata"] == {"job": "nightly"}
    assert api["request_counts"] == {"total": 4, "completed": 0, "failed": 0}
    assert isinstance(api["created_at"], int) and api["started_at"] is None and api["errors"] is None
    assert run.id in [run_id for run_id, _ in await store.active()]
    assert await store.mark_running(run.id) and not await store.mark_running(run.id)
    assert await store.finish(run.id, "completed")
    assert not await store.finish(run.id, "failed", [{"code": "x", "message": "late"}])  # final stays final
    done = await store.get(run.id)
    assert done is not None and done.status == "completed" and done.final and done.errors is None
    assert done.to_api()["started_at"] is not None and done.to_api()["completed_at"] is not None
    assert run.id not in [run_id for run_id, _ in await store.active()]
    with pytest.raises(ValueError):
        await store.finish(run.id, "running")


async def test_cancel_is_idempotent_and_leaves_final_runs(store: BenchStore) -> None:
    run = await new_run(store)
    first = await store.cancel(run.id)
    assert first is not None and first.status == "cancelling" and first.stamps["cancelling_at"] is not None
    again = await store.cancel(run.id)
    assert again is not None and again.status == "cancelling" and again.stamps == first.stamps
    assert await store.finish(run.id, "cancelled")
    after = await store.cancel(run.id)
    assert after is not None and after.status == "cancelled"
    failed = await new_run(store)
    assert await store.finish(failed.id, "failed", [{"code": "bad\x00", "message": "no models"}])
    got = await store.cancel(failed.id)
    assert got is not None and got.status == "failed" and got.errors == [{"code": "bad\ufffd", "message": "no models"}]
    assert await store.cancel("bench_nope") is None


async def test_visibility_by_scope(store: BenchStore) -> None:
    mine, theirs = await new_run(store, "ak-mine"), await new_run(store, "ak-theirs")
    assert await store.get(mine.id, "ak-theirs") is None and await store.cancel(mine.id, "ak-theirs") is None
    assert (await store.get(mine.id, "ak-mine")) is not None and (await store.get(mine.id, None)) is not None
    page, _ = await store.list("ak-theirs", limit=100)
    assert [r.id for r in page] == [theirs.id]
    page, _ = await store.list(None, limit=100)
    assert {mine.id, theirs.id} <= {r.id for r in page}


async def test_list_is_newest_first_in_pages(store: BenchStore) -> None:
    ids = [(await new_run(store, "ak-pages")).id for _ in range(3)]
    page, more = await store.list("ak-pages", limit=2)
    assert [r.id for r in page] == ids[::-1][:2] and more
    rest, more = await store.list("ak-pages", after=page[-1].id, limit=2)
    assert [r.id for r in rest] == [ids[0]] and not more


async def test_results_land_once_and_count(store: BenchStore) -> None:
    run = await new_run(store)
    assert await store.record(run.id, result("echo", "q1"))
    assert not await store.record(run.id, result("echo", "q1", ttft_ms=1.0))  # the first one stays
    assert await store.record(run.id, result("echo", "q2", status="error"))
    assert await store.record_many(run.id, [result("fake", "q1"), result("fake", "q1", rep=1),
                                            result("echo", "q2")]) == 2
    assert await store.record_many(run.id, []) == 0
    assert await store.counts(run.id) == (3, 1)
    got = await store.get(run.id)
    assert got is not None and got.to_api()["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    assert await store.done_keys(run.id) == {("echo", "c=2", "q1", 0), ("echo", "c=2", "q2", 0),
                                             ("fake", "c=2", "q1", 0), ("fake", "c=2", "q1", 1)}
    everything = await store.all_results(run.id)
    assert [(r["model"], r["item_id"], r["repeat"]) for r in everything] == [
        ("echo", "q1", 0), ("echo", "q2", 0), ("fake", "q1", 0), ("fake", "q1", 1)]  # the order they landed
    assert everything[0]["ttft_ms"] == 50.0
    with pytest.raises((KeyError, ValueError)):
        await store.record(run.id, {"model": "echo", "level": "c=2", "item_id": "q9", "status": "ok"})


async def test_result_pages(store: BenchStore) -> None:
    run = await new_run(store)
    await store.record_many(run.id, [result(item=f"q{i}") for i in range(5)])
    first, more, cursor = await store.results(run.id, None, 2)
    assert [r["item_id"] for r in first] == ["q0", "q1"] and more and cursor is not None
    second, more, cursor = await store.results(run.id, cursor, 2)
    assert [r["item_id"] for r in second] == ["q2", "q3"] and more
    last, more, cursor = await store.results(run.id, cursor, 2)
    assert [r["item_id"] for r in last] == ["q4"] and not more
    empty, more, end = await store.results(run.id, cursor, 2)
    assert empty == [] and not more and end is None


async def test_nul_in_an_answer_is_stored(store: BenchStore) -> None:
    run = await new_run(store)
    assert await store.record(run.id, result(output="a\x00b", note="\\u0000 stays"))
    (got,) = await store.all_results(run.id)
    assert got["output"] == "a\ufffdb" and got["note"] == "\\u0000 stays"


async def test_summaries(store: BenchStore) -> None:
    run = await new_run(store)
    await store.record_many(run.id, [result("echo", "q1", ttft_ms=50.0), result("echo", "q2", ttft_ms=150.0),
                                     result("fake", "q1", status="error")])
    levels, models = await store.summaries(run)
    assert set(levels) == {"echo", "fake"} and set(levels["echo"]) == {"c=2"}
    echo = models["echo"]
    assert echo["requests"] == 2 and echo["errors"] == 0 and echo["ttft_ms"]["mean"] == 100.0
    assert echo["goodput_ratio"] == 0.5  # the SLO is ttft 100 ms
    assert models["fake"]["errors"] == 1 and models["fake"]["ttft_ms"]["p50"] is None
    assert await store.summaries(await new_run(store)) == ({}, {})
