"""``gatehouse bench report``: one self-contained HTML file for a benchmark run — the run's settings, its
figures per model (and per load level), the plots (cli/bench_plots.py) embedded as base64 PNG, the errors and
the requests. Inline CSS, no script, no external URL: it opens anywhere, offline."""

from __future__ import annotations

import base64
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

from cli.bench_api import fail
from cli.bench_plots import Plot, plots
from cli.bench_view import REQUEST_HEADERS, error_text, facts, levels_of, metric_rows, request_row, several_levels

MOST_REQUESTS = 2000  # rows of the per-request table in the report
MOST_ERRORS = 30  # distinct errors listed
WRAP, ROW_CLASS = ' class="wrap"', ' class="{}"'

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d2330; margin: 2rem auto;
       max-width: 1180px; padding: 0 1rem; }
h1 { font-size: 1.6rem; margin-bottom: 0.2rem; } h2 { font-size: 1.2rem; margin-top: 2rem;
     border-bottom: 1px solid #d8dce4; padding-bottom: 0.2rem; }
.sub { color: #5b6475; margin-top: 0; }
table { border-collapse: collapse; margin: 0.6rem 0; font-variant-numeric: tabular-nums; }
th, td { padding: 0.25rem 0.7rem; border-bottom: 1px solid #eceff4; text-align: right; white-space: nowrap; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f3f5f9; border-bottom: 1px solid #d8dce4; }
table.facts td { text-align: left; white-space: normal; } table.facts td:first-child { font-weight: 600; }
tr.error td { color: #b42318; }
td.wrap { white-space: normal; text-align: left; max-width: 28rem; }
figure { margin: 1.2rem 0; } figure img { max-width: 100%; border: 1px solid #eceff4; }
figcaption { color: #5b6475; font-size: 0.9rem; }
.note { color: #5b6475; font-style: italic; }
.status-completed { color: #067647; } .status-failed { color: #b42318; } .status-cancelled { color: #b54708; }
footer { margin-top: 3rem; color: #8a93a6; font-size: 0.8rem; }
"""


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "",
           row_classes: Sequence[str] | None = None) -> str:
    thead = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = []
    for i, row in enumerate(rows):
        rc = row_classes[i] if row_classes else ""
        wrap = len(row) - 1 if cls == "requests" else -1  # the last column (an error message) wraps
        cells = "".join(f"<td{WRAP if j == wrap else ''}>{escape(c)}</td>" for j, c in enumerate(row))
        body.append(f"<tr{ROW_CLASS.format(rc) if rc else ''}>{cells}</tr>")
    attrs = ROW_CLASS.format(cls) if cls else ""
    return f'<table{attrs}><thead><tr>{thead}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _facts(run: dict[str, Any]) -> str:
    rows = []
    for label, value in facts(run):
        shown = escape(value)
        if label == "status":
            shown = f'<span class="status-{escape(value)}">{shown}</span>'
        rows.append(f"<tr><td>{escape(label)}</td><td>{shown}</td></tr>")
    return f'<table class="facts"><tbody>{"".join(rows)}</tbody></table>'


def _summaries(run: dict[str, Any]) -> str:
    models: dict[str, Any] = run.get("models_summary") or {}
    if not models:
        return '<p class="note">No results yet.</p>'
    parts = ["<h2>Per model</h2>", _table(["metric", *models], metric_rows(models))]
    if several_levels(run):
        for model, per_level in levels_of(run).items():
            parts += [f"<h2>{escape(model)} per load level</h2>", _table(["metric", *per_level],
                                                                        metric_rows(per_level))]
    return "".join(parts)


def _figure(plot: Plot) -> str:
    data = base64.b64encode(plot.png).decode("ascii")
    return (f'<figure id="plot-{escape(plot.name)}"><img src="data:image/png;base64,{data}" '
            f'alt="{escape(plot.title)}"><figcaption>{escape(plot.title)}</figcaption></figure>')


def _errors(results: Sequence[dict[str, Any]]) -> str:
    counts = Counter((str(r.get("model", "")), error_text(r.get("error") or {}) or "error")
                     for r in results if r.get("status") != "ok")
    if not counts:
        return ""
    rows = [[model, str(n), message] for (model, message), n in counts.most_common(MOST_ERRORS)]
    more = len(counts) - MOST_ERRORS
    note = f'<p class="note">… and {more} other distinct errors.</p>' if more > 0 else ""
    return "<h2>Errors</h2>" + _table(["model", "count", "error"], rows, "requests") + note


def _requests(results: Sequence[dict[str, Any]]) -> str:
    if not results:
        return ""
    shown = results[:MOST_REQUESTS]
    rows = [request_row(r) for r in shown]
    classes = ["error" if r.get("status") != "ok" else "" for r in shown]
    note = (f'<p class="note">The first {MOST_REQUESTS} of {len(results)} requests; '
            "<code>gatehouse bench results RUN_ID --csv</code> exports them all.</p>"
            if len(results) > MOST_REQUESTS else "")
    return (f"<h2>Requests</h2><details><summary>{len(results)} requests</summary>"
            f"{_table(REQUEST_HEADERS, rows, 'requests', classes)}{note}</details>")


def render(run: dict[str, Any], results: Sequence[dict[str, Any]]) -> tuple[str, list[Plot]]:
    """The report's HTML and its plots."""
    from core import __version__

    drawn, notes = plots(run, results)
    suite = (run.get("suite") or {}).get("name") or "benchmark"
    title = f"Benchmark {suite} — {run['id']}"
    generated = datetime.now().strftime("%Y-%m-%d %H:%M:%S")
    body = [
        f"<h1>{escape(title)}</h1>",
        f'<p class="sub">{escape(", ".join(run.get("models") or []))} · status {escape(run["status"])}</p>',
        "<h2>Run</h2>", _facts(run),
        _summaries(run),
        "<h2>Plots</h2>", *(_figure(p) for p in drawn),
        *(f'<p class="note">{escape(n)}</p>' for n in notes),
        _errors(results), _requests(results),
        f"<footer>Written by gatehouse {escape(__version__)} (gatehouse bench report) on {generated}. "
        "Latencies in milliseconds; percentiles by linear interpolation.</footer>",
    ]
    html = (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
            f'<meta name="viewport" content="width=device-width, initial-scale=1"><style>{CSS}</style></head>\n'
            f"<body>{''.join(body)}</body></html>\n")
    return html, drawn


def write_report(run: dict[str, Any], results: Sequence[dict[str, Any]], html_path: Path,
                 png_dir: Path | None) -> list[Path]:
    """Write the HTML file (and each plot into ``png_dir``); the PNG files written. A path that cannot be
    written is one line on stderr and exit 2."""
    html, drawn = render(run, results)
    written: list[Path] = []
    try:
        if png_dir is not None:
            png_dir.mkdir(parents=True, exist_ok=True)
            for p in drawn:
                path = png_dir / f"{p.name}.png"
                path.write_bytes(p.png)
                written.append(path)
        html_path.write_text(html, encoding="utf-8")
    except OSError as e:
        fail(f"cannot write {e.filename or html_path}: {e.strerror or e}", 2)
    return written
