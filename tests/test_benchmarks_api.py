"""The benchmark runs API (docs/benchmark-runs-contract.md) against the real stack (gateway, worker, Valkey,
PostgreSQL): create, list, retrieve with summaries, results pages, cancel, ownership, and every validation error
as an OpenAI error body. What the runner does with a run is tested with the runner; here runs use the slow fake
model (0.2 s a chunk) and are cancelled at once where a test needs them to stay as they are."""

from __future__ import annotations

import time
from typing import Any

import httpx
import orjson
import pytest
from conftest import admin, create_key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.benchstore import BenchStore, new_bench_id
from gateway.db.database import Database

SUITE: dict[str, Any] = {"name": "qa", "items": [
    {"id": "q1", "prompt": "Say hi", "expected": "hi", "scorer": "contains"},
    {"id": "q2", "messages": [{"role": "user", "content": "Say yo"}], "max_tokens": 8}]}
RUN_KEYS = {"id", "object", "status", "suite", "models", "options", "request_counts", "created_at", "started_at",
            "completed_at", "failed_at", "cancelling_at", "cancelled_at", "errors", "metadata"}
NO_SLO = {"ttft_ms": None, "tpot_ms": None, "itl_ms": None, "e2e_ms": None}


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def post(stack, body: Any, headers: dict[str, str] | None = None, path: str = "/v1/benchmarks") -> httpx.Response:  # type: ignore[no-untyped-def]
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    return httpx.post(stack.base_url + path, content=content, timeout=30,
                      headers={"content-type": "application/json", **(headers or admin(stack))})


def get(stack, path: str, headers: dict[str, str] | None = None, **params: Any) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.get(stack.base_url + path, params=params, headers=headers or admin(stack), timeout=30)


def create(stack, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    r = post(stack, {"suite": SUITE, "models": ["slow"], "repeat": 50, **body}, headers)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def cancel(stack, run_id: str, headers: dict[str, str] | None = None) -> httpx.Response:  # type: ignore[no-untyped-def]
    return post(stack, b"", headers, path=f"/v1/benchmarks/{run_id}/cancel")


def assert_error(r: httpx.Response, status: int, code: str | None, param: str | None, text: str = "") -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert (err["code"], err["param"]) == (code, param), err
    assert text in err["message"], err


def test_create_retrieve_list_cancel(stack) -> None:  # type: ignore[no-untyped-def]
    before = int(time.time())
    run = create(stack, models=["slow", "echo"], parallel=4, repeat=2, slo={"ttft_ms": 500, "tpot_ms": 50},
                 metadata={"job": "nightly"})
    assert set(run) == RUN_KEYS
    assert run["id"].startswith("bench_") and len(run["id"]) == 6 + 26
    assert (run["object"], run["status"], run["models"]) == ("benchmark", "queued", ["slow", "echo"])
    assert run["suite"] == {"name": "qa", "items": 2, "sandbox": "local"}
    assert run["options"] == {"parallel": 4, "rate": None, "sweep": None, "repeat": 2,
                              "slo": {**NO_SLO, "ttft_ms": 500, "tpot_ms": 50}}
    assert run["request_counts"] == {"total": 2 * 2 * 2, "completed": 0, "failed": 0}
    assert before <= run["created_at"] <= time.time() + 1
    assert all(run[k] is None for k in ("started_at", "completed_at", "failed_at", "cancelling_at", "cancelled_at"))
    assert run["errors"] is None and run["metadata"] == {"job": "nightly"}

    cancelled = cancel(stack, run["id"])
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelling" and cancelled.json()["cancelling_at"] >= run["created_at"]
    again = cancel(stack, run["id"]).json()  # idempotent
    assert again["status"] in ("cancelling", "cancelled")
    assert again["cancelling_at"] == cancelled.json()["cancelling_at"]

    got = get(stack, f"/v1/benchmarks/{run['id']}")
    assert got.status_code == 200, got.text
    body = got.json()
    assert set(body) == RUN_KEYS | {"summary", "models_summary"}
    assert body["summary"] == {} and body["models_summary"] == {}  # no results yet
    assert {k: v for k, v in body.items() if k not in ("status", "cancelled_at", "summary", "models_summary")} == {
        k: v for k, v in cancelled.json().items() if k not in ("status", "cancelled_at")}
    alias = get(stack, f"/benchmarks/{run['id']}")  # the routes without /v1
    assert alias.status_code == 200 and alias.json()["id"] == run["id"]

    listed = get(stack, "/v1/benchmarks", limit=100).json()
    assert listed["object"] == "list" and set(listed) == {"object", "data", "first_id", "last_id", "has_more"}
    assert listed["data"][0]["id"] == run["id"] == listed["first_id"]  # newest first
    assert set(listed["data"][0]) == RUN_KEYS
    assert get(stack, "/benchmarks").json()["data"][0]["id"] == run["id"]


def test_load_options_and_totals(stack) -> None:  # type: ignore[no-untyped-def]
    swept = create(stack, sweep=[1, 2, 4], repeat=3)
    assert swept["options"] == {"parallel": None, "rate": None, "sweep": [1, 2, 4], "repeat": 3, "slo": NO_SLO}
    assert swept["request_counts"]["total"] == 2 * 1 * 3 * 3
    rated = create(stack, rate=2.5, repeat=1, models=["slow", "fake"])
    assert rated["options"]["rate"] == 2.5 and rated["options"]["parallel"] is None
    assert rated["request_counts"]["total"] == 2 * 2
    default = create(stack, repeat=None, parallel=None, slo=None, metadata=None)
    assert default["options"] == {"parallel": 1, "rate": None, "sweep": None, "repeat": 1, "slo": NO_SLO}
    assert default["metadata"] == {} and default["request_counts"]["total"] == 2
    bare = create(stack, suite=[{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}])  # a list of items
    assert bare["suite"] == {"name": "suite", "items": 3, "sandbox": "local"}
    alias = post(stack, {"suite": SUITE, "models": ["slow"]}, path="/benchmarks")
    assert alias.status_code == 200 and alias.json()["request_counts"]["total"] == 2
    for run in (swept, rated, default, bare, alias.json()):
        assert cancel(stack, run["id"]).status_code == 200


def test_ownership(stack) -> None:  # type: ignore[no-untyped-def]
    alice = bearer(create_key(stack, key_alias="bench-alice")["key"])
    bob = bearer(create_key(stack, key_alias="bench-bob")["key"])
    boss = bearer(create_key(stack, key_alias="bench-admin", is_admin=True)["key"])
    run = create(stack, alice)
    path = f"/v1/benchmarks/{run['id']}"
    for r in (get(stack, path, bob), get(stack, path + "/results", bob), cancel(stack, run["id"], bob)):
        assert_error(r, 404, "benchmark_not_found", "benchmark_id", run["id"])
    assert run["id"] not in [x["id"] for x in get(stack, "/v1/benchmarks", bob, limit=100).json()["data"]]
    mine = create(stack, bob)
    assert [x["id"] for x in get(stack, "/v1/benchmarks", bob, limit=100).json()["data"]] == [mine["id"]]
    assert get(stack, path, alice).json()["id"] == run["id"]
    for who in (admin(stack), boss):  # the master key and admin keys see and cancel every run
        assert get(stack, path, who).status_code == 200
        assert run["id"] in [x["id"] for x in get(stack, "/v1/benchmarks", who, limit=100).json()["data"]]
    assert cancel(stack, run["id"], boss).json()["status"] == "cancelling"
    assert cancel(stack, mine["id"], bob).json()["status"] == "cancelling"
    for missing in ("bench_nope", "batch_123", "x" * 300):
        assert_error(get(stack, f"/v1/benchmarks/{missing}"), 404, "benchmark_not_found", "benchmark_id")
        assert_error(cancel(stack, missing), 404, "benchmark_not_found", "benchmark_id")
    r = httpx.get(stack.base_url + "/v1/benchmarks")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"


def item(**kw: Any) -> dict[str, Any]:
    return {"suite": {"items": [{"id": "only", "prompt": "x", **kw}]}, "models": ["slow"]}


@pytest.mark.parametrize("body, code, param, text", [
    (b"{not json", "invalid_json", None, "parse the JSON"),
    (b"[1, 2]", "invalid_json", None, "JSON object"),
    ({"models": ["slow"]}, "missing_required_parameter", "suite", "'suite'"),
    ({"suite": SUITE}, "missing_required_parameter", "models", "'models'"),
    ({"suite": SUITE, "models": ["slow"], "paralel": 2}, "unknown_parameter", "paralel", "paralel"),
    ({"suite": "qa.json", "models": ["slow"]}, "invalid_suite", "suite", "must be a list of items"),
    ({"suite": {"items": []}, "models": ["slow"]}, "invalid_suite", "suite", "no items"),
    (item(max_tokens=0), "invalid_suite", "suite", "item 1 (id 'only'): max_tokens"),
    ({"suite": {"items": [{"id": "a", "prompt": "x"}, {"id": "b"}]}, "models": ["slow"]}, "invalid_suite", "suite",
     "item 2 (id 'b')"),
    (item(scorer="vibes"), "invalid_suite", "suite", "bad scorer"),
    (item(prompt="a\x00b"), "invalid_suite", "suite", "NUL"),
    (b'{"suite": [{"prompt": "x", "expected": ' + b"[" * 300 + b"]" * 300 + b'}], "models": ["slow"]}',
     "invalid_suite", "suite", "nested too deeply"),
    ({"suite": SUITE, "models": []}, "invalid_value", "models", "1 to 32"),
    ({"suite": SUITE, "models": "slow"}, "invalid_value", "models", "1 to 32"),
    ({"suite": SUITE, "models": ["slow", 3]}, "invalid_value", "models", "1 to 32"),
    ({"suite": SUITE, "models": ["slow", "slow"]}, "invalid_value", "models", "listed twice"),
    ({"suite": SUITE, "models": ["slow", "gpt-nope"]}, "model_not_found", "models", "`gpt-nope`"),
    ({"suite": SUITE, "models": ["prompt-classifier"]}, "invalid_value", "models", "classifier"),
    (item(scorer="judge: nope-judge"), "model_not_found", "suite", "`nope-judge` (the judge of suite item 'only')"),
    ({"suite": SUITE, "models": ["slow"], "parallel": 2, "rate": 1}, "invalid_value", "rate", "exclusive"),
    ({"suite": SUITE, "models": ["slow"], "rate": 1, "sweep": [1]}, "invalid_value", "sweep", "exclusive"),
    ({"suite": SUITE, "models": ["slow"], "parallel": 0}, "invalid_value", "parallel", "1 to 256"),
    ({"suite": SUITE, "models": ["slow"], "parallel": 257}, "invalid_value", "parallel", "1 to 256"),
    ({"suite": SUITE, "models": ["slow"], "parallel": 2.5}, "invalid_value", "parallel", "1 to 256"),
    ({"suite": SUITE, "models": ["slow"], "parallel": True}, "invalid_value", "parallel", "1 to 256"),
    ({"suite": SUITE, "models": ["slow"], "rate": 0}, "invalid_value", "rate", "0.001 to 1000"),
    ({"suite": SUITE, "models": ["slow"], "rate": 0.0001}, "invalid_value", "rate", "0.001 to 1000"),
    ({"suite": SUITE, "models": ["slow"], "rate": 1001}, "invalid_value", "rate", "0.001 to 1000"),
    ({"suite": SUITE, "models": ["slow"], "rate": "2/s"}, "invalid_value", "rate", "0.001 to 1000"),
    ({"suite": SUITE, "models": ["slow"], "sweep": []}, "invalid_value", "sweep", "1 to 16"),
    ({"suite": SUITE, "models": ["slow"], "sweep": list(range(1, 18))}, "invalid_value", "sweep", "1 to 16"),
    ({"suite": SUITE, "models": ["slow"], "sweep": [1, 300]}, "invalid_value", "sweep", "1 to 256"),
    ({"suite": SUITE, "models": ["slow"], "sweep": [2, 2]}, "invalid_value", "sweep", "listed twice"),
    ({"suite": SUITE, "models": ["slow"], "sweep": 4}, "invalid_value", "sweep", "1 to 16"),
    ({"suite": SUITE, "models": ["slow"], "repeat": 0}, "invalid_value", "repeat", "1 to 100"),
    ({"suite": SUITE, "models": ["slow"], "repeat": 101}, "invalid_value", "repeat", "1 to 100"),
    ({"suite": SUITE, "models": ["slow"], "slo": {"ttft": 500}}, "invalid_value", "slo", "unknown target 'ttft'"),
    ({"suite": SUITE, "models": ["slow"], "slo": {"ttft_ms": -1}}, "invalid_value", "slo", "ttft_ms must be"),
    ({"suite": SUITE, "models": ["slow"], "slo": {"e2e_ms": "2s"}}, "invalid_value", "slo", "e2e_ms must be"),
    ({"suite": SUITE, "models": ["slow"], "slo": "ttft=500ms"}, "invalid_value", "slo", "an object"),
    ({"suite": SUITE, "models": ["slow"], "metadata": {"a": 1}}, "invalid_value", "metadata", "string pairs"),
    ({"suite": SUITE, "models": ["slow"], "metadata": [1]}, "invalid_value", "metadata", "string pairs"),
    ({"suite": {"items": [{"id": str(i), "prompt": "x"} for i in range(10_000)]}, "models": ["slow", "echo"],
      "sweep": list(range(1, 11)), "repeat": 6}, "too_many_requests", None, "1200000 requests"),
])
def test_validation_errors(stack, body: Any, code: str, param: str | None, text: str) -> None:  # type: ignore[no-untyped-def]
    assert_error(post(stack, body), 400, code, param, text)


def test_models_the_key_may_not_use_and_agent_tasks(stack) -> None:  # type: ignore[no-untyped-def]
    narrow = bearer(create_key(stack, key_alias="bench-narrow", models=["slow"])["key"])
    assert_error(post(stack, {"suite": SUITE, "models": ["slow", "echo"]}, narrow), 400, "model_not_allowed",
                 "models", "`echo`")
    judged = item(scorer={"judge": "echo", "rubric": "is it short?"})
    assert_error(post(stack, judged, narrow), 400, "model_not_allowed", "suite", "`echo`")
    r = post(stack, judged)  # the master key may use the judge
    assert r.status_code == 200, r.text
    assert cancel(stack, r.json()["id"]).status_code == 200
    task = {"suite": {"items": [{"id": "t", "command": ["true"], "prompt": "x"}]}, "models": ["slow"]}
    assert_error(post(stack, task, narrow), 403, "permission_denied", "suite", "only the master key and admin keys")
    r = post(stack, task)
    assert r.status_code == 200, r.text
    assert cancel(stack, r.json()["id"]).status_code == 200
    big = {"suite": SUITE, "models": ["slow"], "metadata": {"x": "y" * 513}}
    assert_error(post(stack, big, narrow), 400, "invalid_value", "metadata")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 2**40) | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=12)
item_like = st.fixed_dictionaries({}, optional={
    "id": json_values, "prompt": json_values | st.text(max_size=8), "messages": json_values,
    "max_tokens": json_values, "expected": json_values, "scorer": st.sampled_from(["exact", "regex", "judge: slow",
                                                                                  "judge: nope"]) | json_values,
    "command": json_values, "timeout_s": json_values})
run_like = st.fixed_dictionaries({}, optional={
    "suite": st.lists(item_like, max_size=3) | st.fixed_dictionaries(
        {"items": st.lists(item_like, max_size=3)}, optional={"name": json_values, "sandbox": json_values})
    | json_values,
    "models": st.lists(st.sampled_from(["slow", "echo", "nope", "prompt-classifier", ""]), max_size=3) | json_values,
    "parallel": st.integers(-1, 300) | json_values, "rate": st.floats(-1, 2000) | json_values,
    "sweep": st.lists(st.integers(-1, 300), max_size=4) | json_values, "repeat": st.integers(-1, 120) | json_values,
    "slo": st.dictionaries(st.sampled_from(["ttft_ms", "tpot_ms", "x"]), json_values, max_size=2) | json_values,
    "metadata": json_values})


@settings(max_examples=80, deadline=None, suppress_health_check=list(HealthCheck))
@given(body=run_like)
def test_random_bodies_get_a_run_or_an_openai_4xx(stack, body: dict[str, Any]) -> None:  # type: ignore[no-untyped-def]
    r = post(stack, body)
    assert r.status_code in (200, 400, 403), r.text
    if r.status_code == 200:
        assert r.json()["status"] == "queued" and cancel(stack, r.json()["id"]).status_code == 200
    else:
        assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_bad_query_parameters(stack) -> None:  # type: ignore[no-untyped-def]
    run = create(stack)
    assert cancel(stack, run["id"]).status_code == 200
    path = f"/v1/benchmarks/{run['id']}/results"
    for params, param in (({"limit": 1001}, "limit"), ({"limit": 0}, "limit"), ({"after": "abc"}, "after"),
                          ({"after": "-1"}, "after"), ({"after": "1" * 40}, "after")):
        r = get(stack, path, **params)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (params, r.text)
    for params, param in (({"limit": 101}, "limit"), ({"limit": "x"}, "limit"), ({"after": "é"}, "after")):
        r = get(stack, "/v1/benchmarks", **params)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, (params, r.text)


def test_list_pages(stack) -> None:  # type: ignore[no-untyped-def]
    key = bearer(create_key(stack, key_alias="bench-pages")["key"])
    ids = [create(stack, key)["id"] for _ in range(3)]
    first = get(stack, "/v1/benchmarks", key, limit=2).json()
    assert [x["id"] for x in first["data"]] == ids[::-1][:2] and first["has_more"]
    assert (first["first_id"], first["last_id"]) == (ids[2], ids[1])
    rest = get(stack, "/v1/benchmarks", key, limit=2, after=first["last_id"]).json()
    assert [x["id"] for x in rest["data"]] == [ids[0]] and not rest["has_more"]
    empty = get(stack, "/v1/benchmarks", key, after=ids[0]).json()
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    for run_id in ids:
        assert cancel(stack, run_id, key).status_code == 200


def result(model: str, item: str, ttft: float, *, rep: int = 0, ok: bool = True, score: float | None = None,
           start: float = 1_765_000_000.0) -> dict[str, Any]:
    return {"model": model, "level": "c=2", "item_id": item, "repeat": rep, "status": "ok" if ok else "error",
            "error": None if ok else {"status": 503, "code": "upstream_error", "message": "down"},
            "started_at": start, "ttft_ms": ttft if ok else None, "itl_ms": [2.0, 4.0] if ok else None,
            "tpot_ms": 3.0 if ok else None, "e2e_ms": 1000.0 if ok else None, "input_tokens": 10,
            "output_tokens": 20 if ok else 0, "output_tokens_per_s": 20.0 if ok else None, "queue_ms": 1.0,
            "upstream_ms": 990.0, "overhead_ms": 10.0, "cold_start": False, "cost": 0.25, "score": score,
            "output": "hi", "request_id": f"req-{model}-{item}-{rep}", "task": None}


async def test_results_and_summary(stack) -> None:  # type: ignore[no-untyped-def]
    owner = create_key(stack, key_alias="bench-results")
    key = bearer(owner["key"])
    db = Database(stack.database_url)
    store = BenchStore(db)
    try:  # a finished run of this key's, as the runner leaves one
        run = await store.create(
            run_id=new_bench_id(), owner_id=owner["key_id"], key_id=owner["key_id"], team_id=None, user_id=None,
            tenant=f"key:{owner['key_id']}", gateway_url=stack.base_url, suite=SUITE, models=["echo", "fake"],
            options={"parallel": 2, "rate": None, "sweep": None, "repeat": 1,
                     "slo": {**NO_SLO, "ttft_ms": 100}}, total=4)
        await store.mark_running(run.id)
        await store.finish(run.id, "completed")  # at once: the runner drives no final run
        rows = [result("echo", "q1", 50.0, score=1.0), result("echo", "q2", 150.0, score=0.0, start=1_765_000_001.0),
                result("fake", "q1", 80.0), result("fake", "q2", 0, ok=False)]
        assert [await store.record(run.id, r) for r in rows] == [True] * 4
        assert not await store.record(run.id, result("echo", "q1", 1.0))  # lands once
    finally:
        await db.close()

    body = get(stack, f"/v1/benchmarks/{run.id}", key).json()
    assert body["status"] == "completed" and body["request_counts"] == {"total": 4, "completed": 3, "failed": 1}
    assert body["completed_at"] is not None and body["started_at"] is not None
    assert set(body["summary"]) == {"echo", "fake"} and list(body["summary"]["echo"]) == ["c=2"]
    echo = body["models_summary"]["echo"]
    assert (echo["requests"], echo["errors"], echo["input_tokens"], echo["output_tokens"]) == (2, 0, 20, 40)
    assert echo["ttft_ms"] == {"mean": 100.0, "p50": 100.0, "p90": 140.0, "p95": 145.0, "p99": 149.0}
    assert echo["itl_ms"]["mean"] == 3.0 and echo["e2e_ms"]["p50"] == 1000.0 and echo["score"] == 0.5
    assert echo["duration_s"] == pytest.approx(2.0) and echo["requests_per_s"] == pytest.approx(1.0)
    assert echo["goodput"] == pytest.approx(0.5) and echo["goodput_ratio"] == 0.5  # one under ttft 100 ms
    assert echo["cost"] == pytest.approx(0.5) and echo["output_tokens_per_s"] == pytest.approx(20.0)
    assert body["summary"]["echo"]["c=2"] == echo  # one level: the same figures
    fake = body["models_summary"]["fake"]
    assert (fake["requests"], fake["errors"], fake["score"]) == (2, 1, None)
    assert fake["ttft_ms"]["mean"] == 80.0

    path = f"/v1/benchmarks/{run.id}/results"
    first = get(stack, path, key, limit=3).json()
    assert set(first) == {"object", "data", "has_more", "last_id"} and first["object"] == "list"
    assert [(r["model"], r["item_id"]) for r in first["data"]] == [("echo", "q1"), ("echo", "q2"), ("fake", "q1")]
    assert first["has_more"] and isinstance(first["last_id"], str)
    assert first["data"][0] == rows[0]  # the RESULT as recorded
    rest = get(stack, path, key, limit=3, after=first["last_id"]).json()
    assert [r["item_id"] for r in rest["data"]] == ["q2"] and not rest["has_more"]
    assert rest["data"][0]["error"] == {"status": 503, "code": "upstream_error", "message": "down"}
    end = get(stack, path, key, after=rest["last_id"]).json()
    assert end == {"object": "list", "data": [], "has_more": False, "last_id": None}
    assert len(get(stack, f"/benchmarks/{run.id}/results").json()["data"]) == 4  # the master key; no /v1
    assert_error(cancel(stack, run.id, key), 409, "invalid_state", "benchmark_id", "'completed'")


def test_no_traceback_from_these_routes(stack) -> None:  # type: ignore[no-untyped-def]
    """Runs last in this module: nothing above made the gateway log a traceback through the benchmark code."""
    text = (stack.logs / "gateway.log").read_text(errors="replace")
    for source in ("routes/benchmarks.py", "core/benchstore.py", "core/benchsuite.py", "core/benchstats.py"):
        assert source not in text, text[text.index(source) - 3000:][:5000]
