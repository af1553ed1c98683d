"""cli.bench_report / cli.bench_plots / cli.bench_view on synthetic results: the HTML is one self-contained
file with its plots as base64 PNG, and every plot copes with a model that only failed, a single request,
missing scores and one load level."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest

from cli.bench_plots import plots
from cli.bench_report import render, write_report
from cli.bench_view import metric_rows, result_csv_rows
from core.benchstats import summarize

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
IMG = re.compile(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]*)"')


def result(model: str, level: str, i: int, *, ok: bool = True, score: float | None = None,
           ttft: float = 50.0) -> dict[str, Any]:
    base: dict[str, Any] = {"model": model, "level": level, "item_id": f"q{i}", "repeat": 0,
                            "started_at": 1_765_000_000.0 + i * 0.1, "request_id": f"req-{model}-{level}-{i}",
                            "task": None, "cold_start": False, "cost": 0.0001, "score": score}
    if not ok:
        return {**base, "status": "error", "error": {"status": 503, "code": "upstream_error",
                                                     "message": "upstream <down> & out"},
                "ttft_ms": None, "itl_ms": None, "tpot_ms": None, "e2e_ms": None, "input_tokens": 12,
                "output_tokens": 0, "output_tokens_per_s": None, "queue_ms": None, "upstream_ms": None,
                "overhead_ms": None, "output": None}
    e2e = ttft + 30.0 + i
    return {**base, "status": "ok", "error": None, "ttft_ms": ttft + i, "itl_ms": [3.0, 3.2, 2.9],
            "tpot_ms": 3.0, "e2e_ms": e2e, "input_tokens": 12, "output_tokens": 10,
            "output_tokens_per_s": 10 / (e2e / 1000), "queue_ms": 0.4, "upstream_ms": e2e - 1.3,
            "overhead_ms": 1.3, "output": f"answer {i}"}


def run_of(results: list[dict[str, Any]], models: list[str], **extra: Any) -> dict[str, Any]:
    summary, models_summary = summarize(results, {"ttft_ms": 500.0})
    return {"id": "bench_0193f2c4a1b2c3d4e5f6a7", "object": "benchmark", "status": "completed",
            "suite": {"name": "qa <suite>", "items": 4, "sandbox": "local"}, "models": models,
            "options": {"parallel": None, "rate": None, "sweep": [1, 4], "repeat": 1,
                        "slo": {"ttft_ms": 500, "tpot_ms": None, "itl_ms": None, "e2e_ms": None}},
            "request_counts": {"total": len(results), "completed": sum(r["status"] == "ok" for r in results),
                               "failed": sum(r["status"] != "ok" for r in results)},
            "created_at": 1_765_000_000, "started_at": 1_765_000_001, "completed_at": 1_765_000_009,
            "failed_at": None, "cancelling_at": None, "cancelled_at": None, "errors": None,
            "metadata": {"job": "nightly"}, "summary": summary, "models_summary": models_summary, **extra}


@pytest.fixture
def sweep() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Two models over levels c=1 and c=4 (one scored), plus one whose every request failed."""
    results = [result(m, level, i, score=1.0 if m == "chargpt" and i % 2 else 0.0 if m == "chargpt" else None,
                      ttft=ttft)
               for m, ttft in (("chargpt", 40.0), ("qgpt", 80.0)) for level in ("c=1", "c=4") for i in range(4)]
    results += [result("broken", "c=1", i, ok=False) for i in range(2)]
    return run_of(results, ["chargpt", "qgpt", "broken"]), results


class Tags(HTMLParser):
    """Every tag and attribute, to check that nothing refers outside the file."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def images(html: str) -> dict[str, bytes]:
    return {alt: base64.b64decode(data) for data, alt in IMG.findall(html)}


def test_the_report_embeds_every_plot_and_the_tables(sweep: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    run, results = sweep
    html, drawn = render(run, results)
    found = images(html)
    assert list(found) == ["Latency CDFs", "TTFT per model", "Output throughput per model",
                           "Throughput vs latency per load level", "Score per model"]
    assert [p.name for p in drawn] == ["latency_cdf", "ttft", "throughput", "throughput_vs_latency", "score"]
    assert all(png.startswith(PNG_MAGIC) and len(png) > 5000 for png in found.values())
    assert html.count('<img src="data:image/png;base64,') == 5
    for heading in ("Per model", "chargpt per load level", "qgpt per load level", "Errors", "Requests"):
        assert f"<h2>{heading}</h2>" in html
    assert "qa &lt;suite&gt;" in html and "qa <suite>" not in html  # the user's text is escaped
    assert "upstream &lt;down&gt; &amp; out" in html and "nightly" in html and "sweep 1,4" in html
    assert "ttft ≤ 500 ms" in html


def test_the_report_is_self_contained(sweep: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    html, _ = render(*sweep)
    parser = Tags()
    parser.feed(html)
    tags = {tag for tag, _ in parser.tags}
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    for _, attrs in parser.tags:
        for name in ("src", "href"):
            assert not attrs.get(name) or attrs[name].startswith("data:"), attrs  # type: ignore[union-attr]
    assert "http://" not in html and "https://" not in html and "url(" not in html


def test_plots_cope_with_errors_only_a_single_request_and_no_scores() -> None:
    results = [result("chargpt", "c=1", 0), result("broken", "c=1", 0, ok=False)]
    run = run_of(results, ["chargpt", "broken", "never-ran"], options={"parallel": 1})
    drawn, notes = plots(run, results)
    assert [p.name for p in drawn] == ["latency_cdf", "ttft", "throughput"]
    assert any("one load level" in n for n in notes) and any("no request was scored" in n for n in notes)
    assert all(p.png.startswith(PNG_MAGIC) for p in drawn)


def test_a_run_without_results_still_renders() -> None:
    run = run_of([], ["chargpt"], status="queued", options={"parallel": 4})
    run["summary"], run["models_summary"] = {}, {}
    html, drawn = render(run, [])
    assert len(drawn) == 3 and "No results yet." in html and "<h2>Errors</h2>" not in html
    only_errors = [result("broken", "rate=2", i, ok=False) for i in range(3)]
    html, drawn = render(run_of(only_errors, ["broken"], options={"rate": 2.0}), only_errors)
    assert html.count("data:image/png;base64,") == 3 and "rate 2/s per model" in html


def test_write_report_writes_the_html_and_the_pngs(tmp_path: Path,
                                                   sweep: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    written = write_report(*sweep, tmp_path / "r.html", tmp_path / "plots" / "deep")
    assert sorted(p.name for p in written) == ["latency_cdf.png", "score.png", "throughput.png",
                                               "throughput_vs_latency.png", "ttft.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in written)
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")


def test_text_with_dollar_signs_is_not_mathtext() -> None:
    results = [result("$cheap$", "c=1", i, score=0.5) for i in range(2)]
    drawn, _ = plots(run_of(results, ["$cheap$"]), results)
    assert len(drawn) == 4


def test_summary_rows_and_csv(sweep: tuple[dict[str, Any], list[dict[str, Any]]]) -> None:
    run, results = sweep
    rows = metric_rows(run["models_summary"])
    by_label = {row[0]: row[1:] for row in rows}
    assert by_label["requests"] == ["8", "8", "2"] and by_label["errors"] == ["0", "0", "2"]
    assert by_label["TTFT p50 (ms)"][2] == "-" and by_label["score"][1] == "-"
    csv_rows = list(result_csv_rows(results))
    assert csv_rows[0][:5] == ["model", "level", "item_id", "repeat", "status"]
    assert len(csv_rows) == len(results) + 1
