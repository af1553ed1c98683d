"""core.benchstats: percentiles as numpy's, SLOs and goodput, aggregates, summaries, comparisons, levels."""

from __future__ import annotations

import random
from typing import Any

import pytest

from core.benchstats import (
    aggregate,
    compare,
    dist,
    level_label,
    levels_of,
    meets_slo,
    parse_slo,
    percentile,
    summarize,
)

AGGREGATE_KEYS = {"requests", "errors", "ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "queue_ms", "overhead_ms",
                  "upstream_ms", "output_tokens_per_s", "requests_per_s", "goodput", "goodput_ratio",
                  "input_tokens", "output_tokens", "cost", "score", "cold_starts", "duration_s"}


def result(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": "chargpt", "level": "c=1", "item_id": "q", "repeat": 0, "status": "ok", "error": None,
        "started_at": 100.0, "ttft_ms": None, "itl_ms": [], "tpot_ms": None, "e2e_ms": None,
        "input_tokens": None, "output_tokens": None, "output_tokens_per_s": None, "queue_ms": None,
        "upstream_ms": None, "overhead_ms": None, "cold_start": False, "cost": None, "score": None,
        "output": "", "request_id": "r", "task": None,
    }
    return base | fields


# --- percentiles -----------------------------------------------------------------------------------------


def test_percentile_of_1_to_100_matches_numpy_linear() -> None:
    values = list(range(1, 101))
    # numpy: position (n - 1) * q / 100 between closest ranks; e.g. p90 at 89.1 -> 90 + 0.1 * (91 - 90)
    assert percentile(values, 50) == pytest.approx(50.5)
    assert percentile(values, 90) == pytest.approx(90.1)
    assert percentile(values, 95) == pytest.approx(95.05)
    assert percentile(values, 99) == pytest.approx(99.01)
    assert percentile(values, 0) == 1
    assert percentile(values, 100) == 100


def test_percentile_small_samples() -> None:
    assert percentile([40, 10, 30, 20], 50) == pytest.approx(25.0)   # unsorted input is fine
    assert percentile([10, 20, 30, 40], 90) == pytest.approx(37.0)   # position 2.7
    assert percentile([10, 20, 30, 40], 95) == pytest.approx(38.5)
    assert percentile([10, 20, 30, 40], 99) == pytest.approx(39.7)
    assert percentile([7.5], 99) == 7.5
    assert percentile([], 50) is None
    with pytest.raises(ValueError, match=r"percentile 101 is outside 0\.\.100"):
        percentile([1], 101)


def test_percentile_agrees_with_numpy_on_random_samples() -> None:
    np = pytest.importorskip("numpy")
    rng = random.Random(14)
    for n in (1, 2, 3, 10, 101, 1000):
        values = [rng.lognormvariate(3, 1) for _ in range(n)]
        for q in (0, 1, 25, 50, 90, 95, 99, 99.9, 100):
            assert percentile(values, q) == float(np.percentile(values, q))  # exactly, same lerp


def test_dist() -> None:
    assert dist(range(1, 101)) == pytest.approx({"mean": 50.5, "p50": 50.5, "p90": 90.1, "p95": 95.05,
                                                  "p99": 99.01})
    assert dist([None, 2.0, None, 4.0]) == pytest.approx({"mean": 3.0, "p50": 3.0, "p90": 3.8, "p95": 3.9,
                                                           "p99": 3.98})
    empty = {"mean": None, "p50": None, "p90": None, "p95": None, "p99": None}
    assert dist([]) == empty
    assert dist([None, None]) == empty


# --- SLOs ------------------------------------------------------------------------------------------------


def test_parse_slo() -> None:
    assert parse_slo("ttft=500ms,tpot=50ms") == {"ttft_ms": 500.0, "tpot_ms": 50.0}
    assert parse_slo("e2e=2s, itl=20 ,TTFT=0.5s") == {"e2e_ms": 2000.0, "itl_ms": 20.0, "ttft_ms": 500.0}
    assert parse_slo("ttft_ms=250,tpot=1.5ms") == {"ttft_ms": 250.0, "tpot_ms": 1.5}
    assert parse_slo("") == {}
    assert parse_slo("ttft=500ms,") == {"ttft_ms": 500.0}


@pytest.mark.parametrize(("text", "message"), [
    ("latency=5ms", "invalid SLO 'latency=5ms': use NAME=VALUE with NAME one of ttft, tpot, itl, e2e"),
    ("ttft", "invalid SLO 'ttft': use NAME=VALUE"),
    ("ttft=fast", "invalid SLO value 'fast' for ttft: use a positive number of ms or s (500ms, 2s)"),
    ("ttft=5m", "invalid SLO value '5m' for ttft"),
    ("ttft=0", "invalid SLO value '0' for ttft"),
    ("ttft=-5ms", "invalid SLO value '-5ms' for ttft"),
    ("ttft=5ms,ttft_ms=6", "SLO ttft_ms is given twice"),
])
def test_parse_slo_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError) as e:
        parse_slo(text)
    assert str(e.value).startswith(message)


def test_meets_slo() -> None:
    r = result(ttft_ms=400.0, tpot_ms=40.0, itl_ms=[10.0, 50.0, 30.0], e2e_ms=1500.0)
    assert meets_slo(r, {"ttft_ms": 500, "tpot_ms": 50})
    assert meets_slo(r, {"ttft_ms": 400})                   # at the target meets it
    assert not meets_slo(r, {"ttft_ms": 399.9})
    assert not meets_slo(r, {"ttft_ms": 500, "tpot_ms": 39})  # every SLO must hold
    assert meets_slo(r, {"itl_ms": 30})                     # ITL: the mean gap (30), not the worst (50)
    assert not meets_slo(r, {"itl_ms": 29})
    assert meets_slo(r, {"e2e_ms": 1500, "itl_ms": None})   # a null target is no SLO
    assert meets_slo(r, {}) and meets_slo(r, None)
    assert not meets_slo(result(ttft_ms=10.0, itl_ms=[]), {"itl_ms": 100})  # a metric missing fails
    assert not meets_slo(result(ttft_ms=None), {"ttft_ms": 100})
    assert not meets_slo(result(status="error", ttft_ms=10.0), {"ttft_ms": 100})
    assert not meets_slo(result(status="error"), None)      # an error never meets an SLO
    task = result(task={"wall_ms": 2000.0, "exit_code": 0})
    assert meets_slo(task, {"e2e_ms": 2000})                # a task's e2e is its wall time
    assert not meets_slo(task, {"e2e_ms": 1999})
    assert not meets_slo(task, {"ttft_ms": 10_000})         # a task has no TTFT


# --- aggregates ------------------------------------------------------------------------------------------


def sample_results() -> list[dict[str, Any]]:
    return [
        result(item_id="a", started_at=100.0, e2e_ms=1000.0, ttft_ms=100.0, itl_ms=[10.0, 20.0], tpot_ms=15.0,
               input_tokens=10, output_tokens=20, queue_ms=1.0, upstream_ms=900.0, overhead_ms=100.0,
               cold_start=True, cost=0.01, score=1.0),
        result(item_id="b", started_at=100.5, e2e_ms=1500.0, ttft_ms=300.0, itl_ms=[30.0], tpot_ms=30.0,
               input_tokens=10, output_tokens=30, queue_ms=3.0, upstream_ms=1400.0, overhead_ms=100.0,
               cost=0.02, score=0.0),
        result(item_id="c", started_at=101.0, status="error", itl_ms=None,
               error={"status": 502, "code": "upstream_error", "message": "boom"}),
        result(item_id="d", started_at=101.0, e2e_ms=500.0, ttft_ms=600.0, itl_ms=[5.0, 5.0, 5.0], tpot_ms=5.0,
               input_tokens=5, output_tokens=10, queue_ms=2.0, upstream_ms=450.0, overhead_ms=50.0, cost=0.0),
    ]


def test_aggregate_figures() -> None:
    agg = aggregate(sample_results(), None)
    assert set(agg) == AGGREGATE_KEYS
    assert agg["requests"] == 4
    assert agg["errors"] == 1
    assert agg["duration_s"] == pytest.approx(2.0)       # 100.0 → 100.5 + 1.5 s
    assert agg["requests_per_s"] == pytest.approx(1.5)   # 3 ok in 2 s
    assert agg["output_tokens_per_s"] == pytest.approx(30.0)
    assert agg["goodput"] == pytest.approx(1.5)          # no SLO: every ok result
    assert agg["goodput_ratio"] == pytest.approx(0.75)   # of all requests
    assert (agg["input_tokens"], agg["output_tokens"]) == (25, 60)
    assert agg["cost"] == pytest.approx(0.03)
    assert agg["score"] == pytest.approx(0.5)            # mean of the two non-null scores
    assert agg["cold_starts"] == 1
    assert agg["ttft_ms"] == pytest.approx({"mean": 1000 / 3, "p50": 300.0, "p90": 540.0, "p95": 570.0,
                                            "p99": 594.0})
    # ITL pools every gap of every ok result: [5, 5, 5, 10, 20, 30]
    assert agg["itl_ms"] == pytest.approx({"mean": 12.5, "p50": 7.5, "p90": 25.0, "p95": 27.5, "p99": 29.5})
    assert agg["e2e_ms"]["p50"] == pytest.approx(1000.0)
    assert agg["queue_ms"]["mean"] == pytest.approx(2.0)
    assert agg["overhead_ms"]["p50"] == pytest.approx(100.0)
    assert agg["upstream_ms"]["mean"] == pytest.approx(2750 / 3)
    assert agg["tpot_ms"]["p50"] == pytest.approx(15.0)


def test_aggregate_goodput_with_slo() -> None:
    results = sample_results()
    agg = aggregate(results, {"ttft_ms": 500.0})   # a (100) and b (300) meet it, d (600) does not
    assert agg["goodput"] == pytest.approx(1.0)
    assert agg["goodput_ratio"] == pytest.approx(0.5)
    agg = aggregate(results, {"ttft_ms": 500.0, "tpot_ms": 20.0})  # only a meets both
    assert agg["goodput"] == pytest.approx(0.5)
    assert agg["goodput_ratio"] == pytest.approx(0.25)
    agg = aggregate(results, {"ttft_ms": 500.0, "tpot_ms": None, "itl_ms": None, "e2e_ms": None})
    assert agg["goodput"] == pytest.approx(1.0)    # the run's stored SLO with nulls: only ttft counts
    assert agg["requests_per_s"] == pytest.approx(1.5)  # throughput does not depend on the SLO


def test_aggregate_of_agent_tasks() -> None:
    task = {"exit_code": 0, "wall_ms": 2000.0, "calls": 2, "input_tokens": 50, "output_tokens": 70, "cost": 0.5,
            "stdout_tail": "", "stderr_tail": ""}
    results = [result(started_at=200.0, task=task, score=1.0, itl_ms=None),
               result(started_at=201.0, task=task | {"wall_ms": 3000.0, "exit_code": 1}, score=0.0, itl_ms=None)]
    agg = aggregate(results, {"e2e_ms": 2500.0})
    assert agg["duration_s"] == pytest.approx(4.0)       # 200 → 201 + 3 s
    assert agg["e2e_ms"]["mean"] == pytest.approx(2500.0)
    assert agg["ttft_ms"]["p50"] is None
    assert agg["itl_ms"]["mean"] is None
    assert (agg["input_tokens"], agg["output_tokens"]) == (100, 140)
    assert agg["cost"] == pytest.approx(1.0)
    assert agg["output_tokens_per_s"] == pytest.approx(35.0)
    assert agg["goodput"] == pytest.approx(0.25)         # only the 2 s task meets e2e ≤ 2.5 s
    assert agg["score"] == pytest.approx(0.5)


def test_aggregate_of_nothing_and_of_errors_only() -> None:
    agg = aggregate([], None)
    assert agg["requests"] == 0
    assert agg["duration_s"] is None
    assert agg["requests_per_s"] is None
    assert agg["goodput_ratio"] is None
    assert agg["score"] is None
    assert agg["ttft_ms"] == {"mean": None, "p50": None, "p90": None, "p95": None, "p99": None}
    agg = aggregate([result(status="error", started_at=5.0)], {"ttft_ms": 1.0})
    assert (agg["requests"], agg["errors"], agg["cost"], agg["output_tokens"]) == (1, 1, 0.0, 0)
    assert agg["duration_s"] == 0.0
    assert agg["requests_per_s"] is None                 # no time elapsed: no rate
    assert agg["goodput_ratio"] == 0.0


def test_summarize_by_model_and_level() -> None:
    results = [
        result(model="qgpt", level="c=10", started_at=0.0, e2e_ms=1000.0, output_tokens=10),
        result(model="chargpt", level="c=2", started_at=0.0, e2e_ms=1000.0, output_tokens=4),
        result(model="chargpt", level="c=1", started_at=10.0, e2e_ms=500.0, output_tokens=2),
        result(model="chargpt", level="c=2", started_at=0.5, e2e_ms=1500.0, output_tokens=6),
        result(model="qgpt", level="c=2", started_at=5.0, e2e_ms=1000.0, status="error"),
        result(model="qgpt", level="rate=0.5", started_at=9.0, e2e_ms=1000.0, output_tokens=1),
    ]
    levels, models = summarize(results, None)
    assert list(models) == ["qgpt", "chargpt"]                          # order of first result
    assert list(levels["chargpt"]) == ["c=1", "c=2"]
    assert list(levels["qgpt"]) == ["c=2", "c=10", "rate=0.5"]          # numeric, not string, order
    assert levels["chargpt"]["c=2"]["requests"] == 2
    assert levels["chargpt"]["c=2"]["duration_s"] == pytest.approx(2.0)
    assert levels["chargpt"]["c=2"]["output_tokens_per_s"] == pytest.approx(5.0)
    assert levels["qgpt"]["c=2"]["errors"] == 1
    assert models["chargpt"]["requests"] == 3
    assert models["chargpt"]["duration_s"] == pytest.approx(10.5)       # all levels together: 0 → 10.5
    assert models["qgpt"]["errors"] == 1
    assert set(models["qgpt"]) == AGGREGATE_KEYS
    assert summarize([], None) == ({}, {})


# --- comparisons -----------------------------------------------------------------------------------------


def test_compare() -> None:
    def agg(**overrides: Any) -> dict[str, Any]:
        base = aggregate(sample_results(), None)
        return base | overrides

    a = {"chargpt": agg(ttft_ms={"p50": 100.0}, errors=0, cost=0.0, score=0.5, goodput=10.0, requests_per_s=10.0),
         "only_a": agg()}
    b = {"chargpt": agg(ttft_ms={"p50": 80.0}, errors=2, cost=0.0, score=None, goodput=10.1, requests_per_s=12.0),
         "only_b": agg()}
    out = compare(a, b)
    assert list(out) == ["chargpt"]                                    # models in both runs only
    figures = out["chargpt"]
    assert list(figures) == ["ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "overhead_ms", "queue_ms",
                             "output_tokens_per_s", "requests_per_s", "goodput", "errors", "cost", "score"]
    assert figures["ttft_ms"] == {"a": 100.0, "b": 80.0, "change": pytest.approx(-0.2), "better": "b"}
    assert figures["requests_per_s"] == {"a": 10.0, "b": 12.0, "change": pytest.approx(0.2), "better": "b"}
    assert figures["goodput"]["better"] == "same"                      # +1 % is within 2 %
    assert figures["goodput"]["change"] == pytest.approx(0.01)
    assert figures["errors"] == {"a": 0, "b": 2, "change": None, "better": "a"}  # from zero: no ratio
    assert figures["cost"] == {"a": 0.0, "b": 0.0, "change": None, "better": "same"}
    assert figures["score"] == {"a": 0.5, "b": None, "change": None, "better": None}
    assert figures["itl_ms"] == {"a": 7.5, "b": 7.5, "change": 0.0, "better": "same"}  # by p50

    slower = compare({"m": {"e2e_ms": {"p50": 100.0}, "score": 0.9}}, {"m": {"e2e_ms": {"p50": 130.0}, "score": 0.6}})
    assert slower["m"]["e2e_ms"]["better"] == "a"                     # lower latency is better
    assert slower["m"]["score"]["better"] == "a"                      # higher score is better
    assert slower["m"]["tpot_ms"] == {"a": None, "b": None, "change": None, "better": None}


# --- levels ----------------------------------------------------------------------------------------------


def test_level_label() -> None:
    assert level_label(parallel=4) == "c=4"
    assert level_label() == "c=1"
    assert level_label(rate=2.0) == "rate=2"
    assert level_label(rate=2) == "rate=2"
    assert level_label(rate=0.5) == "rate=0.5"
    assert level_label(parallel=8, rate=1.25) == "rate=1.25"


def test_levels_of() -> None:
    assert levels_of({"sweep": [1, 2, 4, 8], "parallel": 1}) == ["c=1", "c=2", "c=4", "c=8"]
    assert levels_of({"rate": 2.0, "parallel": 1, "sweep": None}) == ["rate=2"]
    assert levels_of({"parallel": 4, "rate": None, "sweep": None}) == ["c=4"]
    assert levels_of({"parallel": None}) == ["c=1"]
    assert levels_of({}) == ["c=1"]
