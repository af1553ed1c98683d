"""The benchmark workflow end to end, with real runs (issue #14's "submit → run → results → compare → report"): the
``gatehouse bench`` CLI as a subprocess against the real stack submits a suite file for two models (the local
char-level ``chargpt`` and the fake upstream's ``echo``), the worker's runner sends every request through the
gateway and records its figures, and the CLI reads them back: results, the list of runs, a comparison of two
runs and an HTML report with its plots. (The CLI's options and output formats, on runs written straight into
PostgreSQL: tests/test_cli_bench.py; the runner on its own: tests/test_bench_runs.py.)"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import yaml
from conftest import ROOT, admin

MODELS = ("chargpt", "echo")
DIST_KEYS = {"mean", "p50", "p90", "p95", "p99"}
AGG_KEYS = {"requests", "errors", "ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "queue_ms", "overhead_ms",
            "output_tokens_per_s", "requests_per_s", "goodput", "cost", "score"}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MAX_TOKENS = 8  # chargpt makes one token per character: a few ms each on a CPU
# echo answers with the prompt itself: every scorer passes but the exact one that expects something else
SUITE: dict[str, Any] = {"name": "workflow", "items": [
    {"id": "greet", "prompt": "hello gatehouse", "expected": "hello", "scorer": "contains", "max_tokens": MAX_TOKENS},
    {"id": "exact", "messages": [{"role": "user", "content": "ping"}], "expected": "pong", "scorer": "exact",
     "max_tokens": MAX_TOKENS},
    {"id": "regex", "prompt": "The gate", "expected": r"^The\b", "scorer": "regex", "max_tokens": MAX_TOKENS},
    {"id": "json", "prompt": '{"ok": true}', "scorer": "json_valid", "max_tokens": MAX_TOKENS},
]}
ECHO_SCORES = {"greet": 1.0, "exact": 0.0, "regex": 1.0, "json": 1.0}


def bench(stack: Any, cwd: Path, *args: str) -> Any:
    """``gatehouse bench ARGS --json`` against the stack: its JSON output (exit 0, nothing on stderr but progress)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_") and k not in ("REDIS_URL",
                                                                                                 "DATABASE_URL")}
    r = subprocess.run([sys.executable, "-m", "cli", "bench", *args, "--json", "--base-url", stack.base_url,
                        "--api-key", stack.master_key], cwd=cwd, capture_output=True, text=True, timeout=300,
                       env={**env, "PYTHONPATH": str(ROOT), "COLUMNS": "250"})
    assert r.returncode == 0, (args, r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr, r.stderr
    return orjson.loads(r.stdout)


def requests_of(stack: Any, run_id: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{stack.base_url}/v1/benchmarks/{run_id}/results", params={"limit": 1000}, headers=admin(stack),
                  timeout=30)
    assert r.status_code == 200, r.text
    assert not r.json()["has_more"]
    return r.json()["data"]  # type: ignore[no-any-return]


def check_run(stack: Any, shown: dict[str, Any], repeat: int) -> None:
    """A finished run as ``bench run --wait --json`` prints it, and the rows the runner recorded behind it."""
    n = len(SUITE["items"]) * repeat
    assert set(shown) == {"id", "status", "models", "levels"} and shown["status"] == "completed", shown
    assert set(shown["models"]) == set(MODELS) and {m: list(lv) for m, lv in shown["levels"].items()} == {
        m: ["c=4"] for m in MODELS}
    for model, agg in shown["models"].items():
        assert set(agg) >= AGG_KEYS, AGG_KEYS - set(agg)
        assert all(set(agg[k]) == DIST_KEYS for k in AGG_KEYS if k.endswith("_ms")), agg
        assert agg["requests"] == n and agg["errors"] == 0, (model, agg)
        assert 0 < agg["ttft_ms"]["p50"] <= agg["e2e_ms"]["p50"], (model, agg)
        assert agg["queue_ms"]["p50"] is not None and agg["overhead_ms"]["p50"] is not None, (model, agg)
        assert agg["requests_per_s"] > 0 and agg["output_tokens_per_s"] > 0, (model, agg)
        assert agg["goodput"] == agg["requests_per_s"] and agg["cost"] == 0.0, (model, agg)  # no SLO, no prices
        assert shown["levels"][model]["c=4"]["requests"] == n
    assert shown["models"]["echo"]["score"] == pytest.approx(sum(ECHO_SCORES.values()) / len(ECHO_SCORES))
    assert 0.0 <= shown["models"]["chargpt"]["score"] <= 1.0

    rows = requests_of(stack, shown["id"])  # sent, measured and recorded by the runner, one per request
    assert sorted((r["model"], r["item_id"], r["repeat"]) for r in rows) == sorted(
        (m, item["id"], rep) for m in MODELS for item in SUITE["items"] for rep in range(repeat))
    for r in rows:
        assert r["status"] == "ok" and r["level"] == "c=4" and r["request_id"], r
        assert r["upstream_ms"] > 0 and r["overhead_ms"] == pytest.approx(r["e2e_ms"] - r["upstream_ms"], abs=0.01)
        if r["model"] == "chargpt":
            assert 0 < r["output_tokens"] <= MAX_TOKENS and len(r["output"]) == r["output_tokens"], r
        else:
            assert r["score"] == ECHO_SCORES[r["item_id"]], r


def test_submit_run_results_compare_report(stack: Any, tmp_path: Path) -> None:
    (tmp_path / "suite.yaml").write_text(yaml.safe_dump(SUITE, sort_keys=False))
    base = "chargpt,echo"

    a = bench(stack, tmp_path, "run", "suite.yaml", "--models", base, "--parallel", "4", "--wait")
    check_run(stack, a, repeat=1)
    b = bench(stack, tmp_path, "run", "suite.yaml", "--models", base, "--parallel", "4", "--repeat", "2", "--wait")
    check_run(stack, b, repeat=2)

    listed = bench(stack, tmp_path, "results", "--limit", "100")
    ids = [run["id"] for run in listed]
    assert a["id"] in ids and b["id"] in ids and ids.index(b["id"]) < ids.index(a["id"])  # newest first
    shown = {run["id"]: run for run in listed}
    assert shown[b["id"]]["request_counts"] == {"total": 16, "completed": 16, "failed": 0}
    assert shown[b["id"]]["options"]["repeat"] == 2 and shown[b["id"]]["models"] == list(MODELS)
    assert bench(stack, tmp_path, "results", a["id"]) == a  # the same object, read again

    compared = bench(stack, tmp_path, "compare", a["id"], b["id"])
    assert (compared["a"], compared["b"]) == (a["id"], b["id"]) and set(compared["models"]) == set(MODELS)
    for model, metrics in compared["models"].items():
        assert {"ttft_ms", "e2e_ms", "requests_per_s", "errors", "score"} <= set(metrics), (model, metrics)
        assert all(set(d) == {"a", "b", "change", "better"} for d in metrics.values()), (model, metrics)
        assert metrics["ttft_ms"]["a"] == a["models"][model]["ttft_ms"]["p50"]
        assert metrics["ttft_ms"]["b"] == b["models"][model]["ttft_ms"]["p50"]
        assert metrics["errors"]["a"] == metrics["errors"]["b"] == 0 and metrics["errors"]["better"] == "same"
    assert compared["models"]["echo"]["score"]["better"] == "same"  # echo scores the same every time

    meta = bench(stack, tmp_path, "report", b["id"], "-o", "report.html", "--png", "plots")
    pngs = sorted((tmp_path / "plots").iterdir())
    assert meta["html"] == "report.html" and sorted(meta["png"]) == [str(Path("plots") / p.name) for p in pngs]
    assert [p.name for p in pngs] == ["latency_cdf.png", "score.png", "throughput.png", "ttft.png"]  # no sweep
    html = (tmp_path / "report.html").read_text()
    assert html.startswith("<!doctype html>") and b["id"] in html
    assert "https://" not in html and "http://" not in html and "<script" not in html  # self-contained
    embedded = re.findall(r'<img src="data:image/png;base64,([A-Za-z0-9+/=]+)" alt="([^"]+)">', html)
    assert [alt for _, alt in embedded] == ["Latency CDFs", "TTFT per model", "Output throughput per model",
                                            "Score per model"], [alt for _, alt in embedded]
    images = [base64.b64decode(data) for data, _ in embedded]
    assert all(img.startswith(PNG_MAGIC) and len(img) > 1000 for img in images)
    assert sorted(images) == sorted(p.read_bytes() for p in pngs)  # the files are the plots the page shows
    for model in MODELS:
        assert model in html
