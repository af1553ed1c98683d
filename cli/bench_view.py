"""How a benchmark run reads, whatever draws it (the terminal's rich tables, the HTML report, CSV): the
metrics shown per model and per load level, the run's facts, and one row per request."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

Agg = dict[str, Any]  # an AGGREGATE (docs/benchmark-runs-contract.md)
NONE = "-"

LATENCIES = (("ttft_ms", "TTFT"), ("itl_ms", "ITL"), ("tpot_ms", "TPOT"), ("e2e_ms", "e2e"))


def num(value: Any, digits: int = 1) -> str:
    if value is None:
        return NONE
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.{digits}f}" if abs(value) < 1e6 else f"{value:,.0f}"
    return str(value)


def ms(value: Any) -> str:
    return num(value, 2 if isinstance(value, float) and abs(value) < 10 else 1)


def cost(value: Any) -> str:
    """Dollars: at least cents, up to millionths (``$1.50``, ``$0.0012``, ``$0``)."""
    if value is None:
        return NONE
    if not value:
        return "$0"
    whole, _, cents = f"{value:.6f}".partition(".")
    return f"${whole}.{cents.rstrip('0').ljust(2, '0')}"


def pct(agg: Agg, dist: str, p: str) -> Any:
    d = agg.get(dist)
    return d.get(p) if isinstance(d, dict) else None


def _goodput(agg: Agg) -> str:
    value = agg.get("goodput")
    if value is None:
        return NONE
    ratio = agg.get("goodput_ratio")
    return num(value, 2) + ("" if ratio is None else f" ({ratio:.0%})")


def _latency(dist: str, p: str) -> Callable[[Agg], str]:
    return lambda a: ms(pct(a, dist, p))


# (label, formatted value of an AGGREGATE): the rows of every summary table
METRICS: list[tuple[str, Callable[[Agg], str]]] = [
    ("requests", lambda a: num(a.get("requests"))),
    ("errors", lambda a: num(a.get("errors"))),
    ("req/s", lambda a: num(a.get("requests_per_s"), 2)),
    ("output tok/s", lambda a: num(a.get("output_tokens_per_s"), 1)),
    *[(f"{label} {p} (ms)", _latency(dist, p)) for dist, label in LATENCIES for p in ("p50", "p99")],
    ("queue p50 (ms)", lambda a: ms(pct(a, "queue_ms", "p50"))),
    ("overhead p50 (ms)", lambda a: ms(pct(a, "overhead_ms", "p50"))),
    ("goodput (req/s)", _goodput),
    ("cost", lambda a: cost(a.get("cost"))),
    ("score", lambda a: num(a.get("score"), 3)),
]


def metric_rows(aggs: dict[str, Agg]) -> list[list[str]]:
    """One row per metric: its label, then its value in each column of ``aggs`` (models, or levels)."""
    return [[label, *(value(agg or {}) for agg in aggs.values())] for label, value in METRICS]


def level_key(level: str) -> tuple[str, float, str]:
    """``c=2`` before ``c=10``; ``c=…`` before ``rate=…``."""
    kind, _, value = level.partition("=")
    try:
        return kind, float(value), level
    except ValueError:
        return kind, 0.0, level


def levels_of(run: dict[str, Any]) -> dict[str, dict[str, Agg]]:
    """MODEL → {LEVEL → AGGREGATE}, levels in load order."""
    summary: dict[str, dict[str, Agg]] = run.get("summary") or {}
    return {model: dict(sorted(per.items(), key=lambda kv: level_key(kv[0]))) for model, per in summary.items()}


def several_levels(run: dict[str, Any]) -> bool:
    return any(len(per) > 1 for per in levels_of(run).values())


def when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def load_text(options: dict[str, Any]) -> str:
    if options.get("sweep"):
        return "sweep " + ",".join(str(c) for c in options["sweep"])
    if options.get("rate") is not None:
        return f"rate {num(options['rate'], 2).rstrip('0').rstrip('.')}/s per model"
    return f"parallel {options.get('parallel') or 1} per model"


def slo_text(slo: dict[str, Any] | None) -> str:
    parts = [f"{name.removesuffix('_ms')} ≤ {v:g} ms" for name, v in (slo or {}).items() if v is not None]
    return ", ".join(parts) or "none"


def counts_text(run: dict[str, Any]) -> str:
    c = run.get("request_counts") or {}
    return f"{c.get('total', 0)} total, {c.get('completed', 0)} completed, {c.get('failed', 0)} failed"


def suite_text(run: dict[str, Any]) -> str:
    s = run.get("suite") or {}
    return f"{s.get('name') or '(unnamed)'}: {s.get('items', '?')} items, sandbox {s.get('sandbox') or 'local'}"


STAMPS = ("created_at", "started_at", "completed_at", "failed_at", "cancelling_at", "cancelled_at")


def facts(run: dict[str, Any]) -> list[tuple[str, str]]:
    """The run's metadata, as (label, text) pairs; all text is the user's or the API's (no markup)."""
    options = run.get("options") or {}
    rows = [("id", run["id"]), ("status", run["status"]), ("suite", suite_text(run)),
            ("models", ", ".join(run.get("models") or [])), ("load", load_text(options)),
            ("repeat", str(options.get("repeat") or 1)), ("SLO", slo_text(options.get("slo"))),
            ("requests", counts_text(run))]
    rows += [(name.removesuffix("_at").replace("_", " "), when(run[name])) for name in STAMPS if run.get(name)]
    errors = run.get("errors")
    if errors:
        rows.append(("errors", error_text(errors)))
    rows += [(f"metadata {k}", str(v)) for k, v in (run.get("metadata") or {}).items()]
    return rows


def error_text(errors: Any) -> str:
    if isinstance(errors, dict) and isinstance(errors.get("data"), list):
        errors = errors["data"]
    if isinstance(errors, list):
        return "; ".join(error_text(e) for e in errors[:5])
    if isinstance(errors, dict):
        return ": ".join(str(errors[k]) for k in ("status", "code", "message") if errors.get(k) is not None)
    return str(errors)


# ── one row per request ───────────────────────────────────────────────────────────────────────────────
def _mean(values: Any) -> float | None:
    return sum(values) / len(values) if isinstance(values, list) and values else None


RESULT_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("model", lambda r: r.get("model")), ("level", lambda r: r.get("level")),
    ("item_id", lambda r: r.get("item_id")), ("repeat", lambda r: r.get("repeat")),
    ("status", lambda r: r.get("status")),
    ("error_code", lambda r: (r.get("error") or {}).get("code")),
    ("error_message", lambda r: (r.get("error") or {}).get("message")),
    ("started_at", lambda r: r.get("started_at")),
    ("ttft_ms", lambda r: r.get("ttft_ms")), ("itl_ms_mean", lambda r: _mean(r.get("itl_ms"))),
    ("itl_count", lambda r: len(r.get("itl_ms") or [])),
    ("tpot_ms", lambda r: r.get("tpot_ms")), ("e2e_ms", lambda r: r.get("e2e_ms")),
    ("input_tokens", lambda r: r.get("input_tokens")), ("output_tokens", lambda r: r.get("output_tokens")),
    ("output_tokens_per_s", lambda r: r.get("output_tokens_per_s")),
    ("queue_ms", lambda r: r.get("queue_ms")), ("upstream_ms", lambda r: r.get("upstream_ms")),
    ("overhead_ms", lambda r: r.get("overhead_ms")), ("cold_start", lambda r: r.get("cold_start")),
    ("cost", lambda r: r.get("cost")), ("score", lambda r: r.get("score")),
    ("request_id", lambda r: r.get("request_id")),
    ("task_exit_code", lambda r: (r.get("task") or {}).get("exit_code")),
    ("task_wall_ms", lambda r: (r.get("task") or {}).get("wall_ms")),
    ("task_calls", lambda r: (r.get("task") or {}).get("calls")),
    ("output", lambda r: r.get("output")),
]


def csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return value


def result_csv_rows(results: Iterable[dict[str, Any]]) -> Iterable[list[Any]]:
    yield [name for name, _ in RESULT_COLUMNS]
    for r in results:
        yield [csv_cell(get(r)) for _, get in RESULT_COLUMNS]


RUN_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
    ("id", lambda b: b["id"]), ("status", lambda b: b["status"]),
    ("suite", lambda b: (b.get("suite") or {}).get("name")), ("items", lambda b: (b.get("suite") or {}).get("items")),
    ("models", lambda b: " ".join(b.get("models") or [])),
    ("total", lambda b: (b.get("request_counts") or {}).get("total")),
    ("completed", lambda b: (b.get("request_counts") or {}).get("completed")),
    ("failed", lambda b: (b.get("request_counts") or {}).get("failed")),
    ("created_at", lambda b: b.get("created_at")), ("completed_at", lambda b: b.get("completed_at")),
]


def run_csv_rows(runs: Iterable[dict[str, Any]]) -> Iterable[list[Any]]:
    yield [name for name, _ in RUN_COLUMNS]
    for b in runs:
        yield [csv_cell(get(b)) for _, get in RUN_COLUMNS]


def request_row(r: dict[str, Any]) -> list[str]:
    """A request as the ``--full`` table and the report show it."""
    task = r.get("task") or {}
    e2e = r.get("e2e_ms") if r.get("e2e_ms") is not None else task.get("wall_ms")
    problem = error_text(r["error"]) if r.get("error") else ""
    if task and task.get("exit_code") not in (None, 0) and not problem:
        problem = f"exit {task['exit_code']}"
    return [str(r.get("model", "")), str(r.get("level", "")), str(r.get("item_id", "")), str(r.get("repeat", "")),
            str(r.get("status", "")), ms(r.get("ttft_ms")), ms(r.get("tpot_ms")), ms(e2e),
            num(r.get("output_tokens")), num(r.get("output_tokens_per_s")), ms(r.get("queue_ms")),
            ms(r.get("overhead_ms")), cost(r.get("cost")), num(r.get("score"), 3), problem]


REQUEST_HEADERS = ["model", "level", "item", "rep", "status", "TTFT ms", "TPOT ms", "e2e ms", "out tok",
                   "tok/s", "queue ms", "overhead ms", "cost", "score", "error"]
