"""The terminal's view of benchmark runs (rich): the run list, a run's figures per model and per load level,
every request, a comparison of two runs, and the progress bar of ``bench run --wait``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from rich.console import Console, RenderableType
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cli.bench_view import (
    REQUEST_HEADERS,
    counts_text,
    facts,
    levels_of,
    metric_rows,
    num,
    request_row,
    several_levels,
    when,
)

_COLOURS = {"completed": "green", "failed": "red", "cancelled": "yellow", "cancelling": "yellow",
            "running": "cyan"}


def status_markup(status: str) -> str:
    colour = _COLOURS.get(status)
    return f"[{colour}]{status}[/{colour}]" if colour else status


def runs_table(runs: list[dict[str, Any]]) -> Table:
    t = Table("id", "suite", "models", "status", "completed/failed/total", "created")
    for b in runs:
        c = b.get("request_counts") or {}
        t.add_row(b["id"], Text(str((b.get("suite") or {}).get("name") or "")), Text(", ".join(b.get("models") or [])),
                  status_markup(b["status"]), f"{c.get('completed', 0)}/{c.get('failed', 0)}/{c.get('total', 0)}",
                  when(b.get("created_at")))
    return t


def _facts_grid(run: dict[str, Any]) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    for label, value in facts(run):
        t.add_row(label, status_markup(value) if label == "status" else Text(value))
    return t


def _metric_table(title: str, columns: list[str], rows: list[list[str]]) -> Table:
    t = Table(title=title, title_justify="left", title_style="bold")
    t.add_column("metric")
    for name in columns:
        t.add_column(Text(name), justify="right")
    for row in rows:
        t.add_row(*(Text(cell) for cell in row))
    return t


def results_tables(run: dict[str, Any]) -> list[RenderableType]:
    """The run's facts, its figures per model (models as columns) and, for several load levels, each model's
    figures per level."""
    shown: list[RenderableType] = [_facts_grid(run)]
    models: dict[str, Any] = run.get("models_summary") or {}
    if not models:
        shown.append(Text(f"no results yet ({counts_text(run)})", style="dim"))
        return shown
    shown.append(_metric_table("per model", list(models), metric_rows(models)))
    if several_levels(run):
        for model, per_level in levels_of(run).items():
            shown.append(_metric_table(f"{model} per load level", list(per_level), metric_rows(per_level)))
    return shown


def requests_table(results: list[dict[str, Any]]) -> Table:
    t = Table(*REQUEST_HEADERS, title=f"{len(results)} requests", title_justify="left", title_style="bold")
    for r in results:
        row = request_row(r)
        style = "red" if r.get("status") != "ok" else None
        t.add_row(*(Text(cell) for cell in row), style=style)
    return t


# ── compare ───────────────────────────────────────────────────────────────────────────────────────────
LABELS = {"ttft_ms": "TTFT p50 (ms)", "itl_ms": "ITL p50 (ms)", "tpot_ms": "TPOT p50 (ms)",
          "e2e_ms": "e2e p50 (ms)", "overhead_ms": "overhead p50 (ms)", "queue_ms": "queue p50 (ms)",
          "output_tokens_per_s": "output tok/s", "requests_per_s": "req/s", "goodput": "goodput (req/s)",
          "errors": "errors", "cost": "cost ($)", "score": "score"}


def change_text(change: float | None) -> str:
    return "-" if change is None else f"{change:+.1%}"


def verdict(better: str | None) -> Text:
    """B against A: ▲ better (green), ▼ worse (red), = the same, blank when a side has no figure."""
    if better == "b":
        return Text("▲ better", style="green")
    if better == "a":
        return Text("▼ worse", style="red")
    if better == "same":
        return Text("= same", style="dim")
    return Text("")


def compare_tables(a: dict[str, Any], b: dict[str, Any], models: dict[str, Any]) -> list[RenderableType]:
    shown: list[RenderableType] = [Text(f"A = {a['id']} ({a['status']}), B = {b['id']} ({b['status']})")]
    for model, metrics in models.items():
        t = Table("metric", "A", "B", "change", "B vs A", title=model, title_justify="left", title_style="bold")
        for metric, d in metrics.items():
            t.add_row(LABELS.get(metric, metric), num(d.get("a"), 2), num(d.get("b"), 2), change_text(d.get("change")),
                      verdict(d.get("better")))
        shown.append(t)
    only = sorted(set(a.get("models_summary") or {}) ^ set(b.get("models_summary") or {}))
    if only:
        shown.append(Text(f"in one run only: {', '.join(only)}", style="dim"))
    return shown


# ── progress ──────────────────────────────────────────────────────────────────────────────────────────
class RunProgress:
    """One bar for the run (completed + failed of total) and, with several models, one per model."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.overall: TaskID | None = None
        self.per_model: dict[str, TaskID] = {}

    def show(self, run: dict[str, Any]) -> None:
        c = run.get("request_counts") or {}
        total = c.get("total") or None
        done = c.get("completed", 0) + c.get("failed", 0)
        label = f"{run['id']} {status_markup(run['status'])}"
        if self.overall is None:
            self.overall = self.progress.add_task(label, total=total, failed=0)
        self.progress.update(self.overall, description=label, total=total, completed=done, failed=c.get("failed", 0))
        models = run.get("models") or []
        if len(models) < 2 or not total:
            return
        summary = run.get("models_summary") or {}
        for model in models:
            agg = summary.get(model) or {}
            if model not in self.per_model:
                self.per_model[model] = self.progress.add_task(f"  {escape(model)}", total=total // len(models),
                                                               failed=0)
            self.progress.update(self.per_model[model], completed=agg.get("requests", 0), failed=agg.get("errors", 0))


@contextmanager
def progress(console: Console) -> Iterator[RunProgress]:
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("[red]{task.fields[failed]} failed[/red]"), TimeElapsedColumn())
    with Progress(*columns, console=console) as p:
        yield RunProgress(p)
