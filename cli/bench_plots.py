"""The plots of a benchmark report, drawn with matplotlib's Agg canvas (no GUI, no pyplot state): latency
CDFs, TTFT and output throughput per model, throughput against latency per load level, score per model.

Every plot copes with what a run may lack: a model with errors only, a single request, no scores, one load
level (no sweep plot). Text is never parsed as mathtext (a ``$`` in a model name stays a ``$``)."""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import matplotlib
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from cli.bench_view import levels_of, pct, several_levels

Agg = dict[str, Any]
PERCENTILES = ("p50", "p90", "p99")
RC: dict[Any, Any] = {"text.parse_math": False, "font.size": 9, "axes.spines.top": False, "axes.spines.right": False}


@dataclass(frozen=True, slots=True)
class Plot:
    name: str  # the PNG's file stem
    title: str
    png: bytes


def _colour(i: int) -> Any:
    return matplotlib.colormaps["tab10"](i % 10)


def _figure(width: float = 8.0, height: float = 4.2) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


def _no_data(ax: Axes, text: str) -> None:
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", color="0.45")
    ax.set_xticks([])
    ax.set_yticks([])


def e2e_of(r: dict[str, Any]) -> float | None:
    """A request's end-to-end time, or an agent task's wall time."""
    value = r.get("e2e_ms")
    if value is None and isinstance(r.get("task"), dict):
        value = r["task"].get("wall_ms")
    return None if value is None else float(value)


def _samples(results: Sequence[dict[str, Any]], model: str, get: Callable[[dict[str, Any]], Any]) -> list[float]:
    return sorted(float(v) for r in results if r.get("model") == model and r.get("status") == "ok"
                  and (v := get(r)) is not None)


# ── the plots ─────────────────────────────────────────────────────────────────────────────────────────
def latency_cdf(models: list[str], results: Sequence[dict[str, Any]]) -> Figure:
    fig = _figure(10.0, 4.2)
    axes = fig.subplots(1, 2)
    fields: list[tuple[str, Callable[[dict[str, Any]], Any]]] = [
        ("TTFT", lambda r: r.get("ttft_ms")), ("End-to-end latency", e2e_of)]
    for ax, (title, get) in zip(axes, fields, strict=True):
        ax.set_title(title)
        drawn = False
        for i, model in enumerate(models):
            xs = _samples(results, model, get)
            if not xs:
                ax.plot([], [], " ", label=f"{model}: no data")
                continue
            ys = [k / len(xs) for k in range(1, len(xs) + 1)]
            ax.step([xs[0], *xs], [0.0, *ys], where="post", color=_colour(i), label=f"{model} (n={len(xs)})")
            if len(xs) == 1:
                ax.plot(xs, ys, "o", color=_colour(i))
            drawn = True
        if not drawn:
            _no_data(ax, "no successful request")
            continue
        ax.set_xlabel("ms")
        ax.set_ylabel("fraction of requests")
        ax.set_ylim(0, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize="small")
    fig.suptitle("Latency CDFs (TTFT and end-to-end), one line per model")
    return fig


def ttft_per_model(models: dict[str, Agg]) -> Figure:
    fig = _figure()
    ax = fig.subplots()
    names = list(models)
    ax.set_title("TTFT per model (p50 / p90 / p99)")
    if not any(pct(a, "ttft_ms", "p50") is not None for a in models.values()):
        _no_data(ax, "no TTFT measured (no successful streaming request)")
        return fig
    width = 0.8 / len(PERCENTILES)
    for j, p in enumerate(PERCENTILES):
        xs = [i + (j - 1) * width for i in range(len(names))]
        values = [pct(models[m], "ttft_ms", p) for m in names]
        bars = ax.bar(xs, [v or 0.0 for v in values], width, label=p, color=_colour(0), alpha=(0.45, 0.7, 1.0)[j])
        ax.bar_label(bars, labels=["" if v is None else f"{v:.0f}" for v in values], fontsize="x-small")
    for i, m in enumerate(names):
        if pct(models[m], "ttft_ms", "p50") is None:
            ax.text(i, 0, "no data", ha="center", va="bottom", color="0.45")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("ms")
    ax.legend(fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return fig


def throughput_per_model(models: dict[str, Agg]) -> Figure:
    fig = _figure()
    ax = fig.subplots()
    names = list(models)
    ax.set_title("Output throughput per model")
    values = [models[m].get("output_tokens_per_s") for m in names]
    if all(v is None for v in values):
        _no_data(ax, "no throughput measured")
        return fig
    bars = ax.bar(range(len(names)), [v or 0.0 for v in values], 0.6, color=[_colour(i) for i in range(len(names))])
    labels = []
    for m, v in zip(names, values, strict=True):
        rps, errors = models[m].get("requests_per_s"), models[m].get("errors")
        label = "no data" if v is None else f"{v:.1f} tok/s" + ("" if rps is None else f"\n{rps:.2f} req/s")
        labels.append(label + (f"\n{errors} error{'s' if errors != 1 else ''}" if errors else ""))
    ax.bar_label(bars, labels=labels, fontsize="x-small")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylabel("output tokens / s")
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)
    return fig


def throughput_vs_latency(run: dict[str, Any]) -> Figure:
    fig = _figure()
    ax = fig.subplots()
    ax.set_title("Throughput vs latency per load level")
    drawn = False
    for i, (model, per_level) in enumerate(levels_of(run).items()):
        points = [(float(e2e), float(tps), level) for level, agg in per_level.items()
                  if (e2e := pct(agg, "e2e_ms", "p50")) is not None
                  and (tps := agg.get("output_tokens_per_s")) is not None]
        if not points:
            ax.plot([], [], " ", label=f"{model}: no data")
            continue
        ax.plot([p[0] for p in points], [p[1] for p in points], "o-", color=_colour(i), label=model)
        for x, y, level in points:
            ax.annotate(level, (x, y), textcoords="offset points", xytext=(4, 4), fontsize="x-small")
        drawn = True
    if not drawn:
        _no_data(ax, "no level with successful requests")
        return fig
    ax.set_xlabel("end-to-end latency p50 (ms)")
    ax.set_ylabel("output tokens / s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    return fig


def score_per_model(models: dict[str, Agg]) -> Figure:
    fig = _figure()
    ax = fig.subplots()
    names = list(models)
    ax.set_title("Score per model (mean of scored items)")
    scores = [models[m].get("score") for m in names]
    bars = ax.bar(range(len(names)), [s or 0.0 for s in scores], 0.6, color=[_colour(i) for i in range(len(names))])
    ax.bar_label(bars, labels=["no score" if s is None else f"{s:.3f}" for s in scores], fontsize="x-small")
    ax.set_xticks(range(len(names)), names)
    ax.set_ylim(0, max(1.0, *(s for s in scores if s is not None)) * 1.12)
    ax.set_ylabel("score")
    ax.grid(axis="y", alpha=0.3)
    return fig


def plots(run: dict[str, Any], results: Sequence[dict[str, Any]]) -> tuple[list[Plot], list[str]]:
    """The report's plots, and a note for each one left out (and why)."""
    summary: dict[str, Agg] = run.get("models_summary") or {}
    models = list(dict.fromkeys([*(run.get("models") or []), *summary]))
    summary = {m: summary.get(m) or {} for m in models}
    notes: list[str] = []
    with matplotlib.rc_context(RC):
        figures: list[tuple[str, str, Figure]] = [
            ("latency_cdf", "Latency CDFs", latency_cdf(models, results)),
            ("ttft", "TTFT per model", ttft_per_model(summary)),
            ("throughput", "Output throughput per model", throughput_per_model(summary))]
        if several_levels(run):
            figures.append(("throughput_vs_latency", "Throughput vs latency per load level",
                            throughput_vs_latency(run)))
        else:
            notes.append("Throughput vs latency: the run has one load level (a --sweep run has several).")
        if any(a.get("score") is not None for a in summary.values()):
            figures.append(("score", "Score per model", score_per_model(summary)))
        else:
            notes.append("Score per model: no request was scored (no item has a scorer, or none finished).")
        return [Plot(name, title, _png(fig)) for name, title, fig in figures], notes
