"""Benchmark figures (issue #14, ADR 0018): distributions, SLOs, goodput, per-model summaries, comparisons.

Pure functions over RESULT dicts as ``docs/benchmark-runs-contract.md`` defines them. Percentiles are linear
interpolation between closest ranks (numpy's default method); goodput is as ``vllm bench serve --goodput``:
successful requests per second that met every SLO given. An agent task's end-to-end time is its wall time
and its tokens and cost are the task's. Reports are computed from the rows on read, never stored."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

SLO_METRICS = ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms")
DIST_METRICS = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "queue_ms", "overhead_ms", "upstream_ms")
PERCENTILES = {"p50": 50.0, "p90": 90.0, "p95": 95.0, "p99": 99.0}
LOWER_IS_BETTER = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "overhead_ms", "queue_ms", "errors", "cost")
HIGHER_IS_BETTER = ("output_tokens_per_s", "requests_per_s", "goodput", "score")
COMPARE_METRICS = ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "overhead_ms", "queue_ms",
                   "output_tokens_per_s", "requests_per_s", "goodput", "errors", "cost", "score")
SAME_WITHIN = 0.02  # a relative change smaller than this is "same"
_SLO_VALUE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)?\s*$", re.IGNORECASE)


def percentile(values: Iterable[float], q: float) -> float | None:
    """The q-th percentile (0–100) by linear interpolation, as ``numpy.percentile``; None when empty."""
    xs = sorted(values)
    if not xs:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is outside 0..100")
    position = (len(xs) - 1) * (q / 100)
    below = math.floor(position)
    above = min(below + 1, len(xs) - 1)
    a, b, t = xs[below], xs[above], position - below
    # numpy's lerp: from the nearer end, so that t = 1 gives exactly b
    return b - (b - a) * (1 - t) if t >= 0.5 else a + (b - a) * t


def dist(values: Iterable[float | None]) -> dict[str, float | None]:
    """``{"mean", "p50", "p90", "p95", "p99"}`` of the values that are not None (all None when there are none)."""
    xs = sorted(v for v in values if v is not None)
    out: dict[str, float | None] = {"mean": math.fsum(xs) / len(xs) if xs else None}
    for name, q in PERCENTILES.items():
        out[name] = percentile(xs, q)
    return out


def parse_slo(text: str) -> dict[str, float]:
    """``ttft=500ms,tpot=50ms,itl=20,e2e=2s`` → ``{"ttft_ms": 500.0, ...}`` (a bare number is milliseconds)."""
    slo: dict[str, float] = {}
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        name, eq, raw = (s.strip() for s in part.partition("="))
        key = name.lower() if name.lower().endswith("_ms") else f"{name.lower()}_ms"
        if not eq or key not in SLO_METRICS:
            raise ValueError(f"invalid SLO {part!r}: use NAME=VALUE with NAME one of ttft, tpot, itl, e2e")
        m = _SLO_VALUE.match(raw)
        if not m or float(m.group(1)) <= 0:
            raise ValueError(f"invalid SLO value {raw!r} for {name}: use a positive number of ms or s (500ms, 2s)")
        if key in slo:
            raise ValueError(f"SLO {name} is given twice")
        slo[key] = float(m.group(1)) * (1000.0 if (m.group(2) or "ms").lower() == "s" else 1.0)
    return slo


def meets_slo(result: Mapping[str, Any], slo: Mapping[str, float | None] | None) -> bool:
    """An ok result whose every SLO metric given is at or under its target (ITL: the mean of its gaps).
    A missing metric fails; an error result never meets an SLO."""
    if result.get("status") != "ok":
        return False
    for key, target in (slo or {}).items():
        if target is None:
            continue
        if key == "itl_ms":
            gaps = [g for g in result.get("itl_ms") or [] if g is not None]
            value = math.fsum(gaps) / len(gaps) if gaps else None
        elif key == "e2e_ms":
            value = _e2e_ms(result)
        else:
            value = result.get(key)
        if value is None or value > target:
            return False
    return True


def aggregate(results: list[dict[str, Any]], slo: Mapping[str, float | None] | None = None) -> dict[str, Any]:
    """The contract's AGGREGATE of a set of results (one model and level, or one model over all levels)."""
    ok = [r for r in results if r.get("status") == "ok"]
    good = [r for r in ok if meets_slo(r, slo)]
    spans = [(r["started_at"], r["started_at"] + (_e2e_ms(r) or 0.0) / 1000)
             for r in results if r.get("started_at") is not None]
    duration = max(end for _, end in spans) - min(start for start, _ in spans) if spans else None
    output_tokens = _total(results, "output_tokens")
    scores = [r["score"] for r in results if r.get("score") is not None]
    out: dict[str, Any] = {"requests": len(results), "errors": sum(r.get("status") == "error" for r in results)}
    for metric in DIST_METRICS:
        if metric == "itl_ms":
            out[metric] = dist(g for r in ok for g in r.get("itl_ms") or [])
        elif metric == "e2e_ms":
            out[metric] = dist(_e2e_ms(r) for r in ok)
        else:
            out[metric] = dist(r.get(metric) for r in ok)
    out |= {
        "output_tokens_per_s": _rate(output_tokens, duration),
        "requests_per_s": _rate(len(ok), duration),
        "goodput": _rate(len(good), duration),
        "goodput_ratio": len(good) / len(results) if results else None,
        "input_tokens": int(_total(results, "input_tokens")),
        "output_tokens": int(output_tokens),
        "cost": _total(results, "cost"),
        "score": math.fsum(scores) / len(scores) if scores else None,
        "cold_starts": sum(bool(r.get("cold_start")) for r in results),
        "duration_s": duration,
    }
    return out


def summarize(
    results: list[dict[str, Any]], slo: Mapping[str, float | None] | None = None
) -> tuple[dict[str, dict[str, dict[str, Any]]], dict[str, dict[str, Any]]]:
    """``({MODEL: {LEVEL: AGGREGATE}}, {MODEL: AGGREGATE over all its levels})``; models in order of first
    result, levels by kind then number (``c=1``, ``c=2``, ``c=10``, ``rate=0.5``)."""
    grouped: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for r in results:
        grouped.setdefault(r["model"], {}).setdefault(r["level"], []).append(r)
    levels = {
        model: {level: aggregate(by_level[level], slo) for level in sorted(by_level, key=_level_order)}
        for model, by_level in grouped.items()
    }
    models = {model: aggregate([r for rs in by_level.values() for r in rs], slo) for model, by_level in grouped.items()}
    return levels, models


def compare(agg_a: Mapping[str, Mapping[str, Any]], agg_b: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """``{MODEL: {METRIC: {"a", "b", "change", "better"}}}`` for each model in both (latencies by their p50);
    the CLI's ``compare --json`` puts it under ``"models"`` beside the two run ids."""
    out: dict[str, Any] = {}
    for model in (m for m in agg_a if m in agg_b):
        a, b = agg_a[model], agg_b[model]
        out[model] = {metric: _difference(metric, _figure(a, metric), _figure(b, metric)) for metric in COMPARE_METRICS}
    return out


def level_label(parallel: int | None = None, rate: float | None = None) -> str:
    """``c=4`` for a concurrency (1 when none), ``rate=2`` / ``rate=0.5`` for requests per second."""
    if rate is not None:
        return f"rate={_number(rate)}"
    return f"c={parallel or 1}"


def levels_of(options: Mapping[str, Any]) -> list[str]:
    """A run's levels from its options: each sweep step, else its rate, else its parallelism."""
    if options.get("sweep"):
        return [level_label(parallel=int(n)) for n in options["sweep"]]
    if options.get("rate") is not None:
        return [level_label(rate=float(options["rate"]))]
    return [level_label(parallel=options.get("parallel") or 1)]


def _e2e_ms(result: Mapping[str, Any]) -> float | None:
    """End-to-end time: the request's, or an agent task's wall time."""
    task = result.get("task")
    if isinstance(task, Mapping) and task.get("wall_ms") is not None:
        return float(task["wall_ms"])
    value = result.get("e2e_ms")
    return None if value is None else float(value)


def _total(results: list[dict[str, Any]], key: str) -> float:
    """The sum of a count over the results: an agent task's own figures, else the request's."""
    values = (r["task"].get(key) if isinstance(r.get("task"), Mapping) else r.get(key) for r in results)
    return math.fsum(v for v in values if v is not None)


def _rate(count: float, duration: float | None) -> float | None:
    return count / duration if duration else None


def _figure(agg: Mapping[str, Any], metric: str) -> float | None:
    value = agg.get(metric)
    if isinstance(value, Mapping):
        value = value.get("p50")
    return value if isinstance(value, int | float) and not isinstance(value, bool) else None


def _difference(metric: str, a: float | None, b: float | None) -> dict[str, Any]:
    change = None if a is None or b is None or a == 0 else b / a - 1
    if a is None or b is None:
        better = None
    elif a == b or (change is not None and abs(change) < SAME_WITHIN):
        better = "same"
    elif metric in HIGHER_IS_BETTER:
        better = "b" if b > a else "a"
    else:
        better = "b" if b < a else "a"
    return {"a": a, "b": b, "change": change, "better": better}


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _level_order(level: str) -> tuple[str, float, str]:
    kind, _, raw = level.partition("=")
    try:
        return kind, float(raw), level
    except ValueError:
        return kind, math.inf, level
