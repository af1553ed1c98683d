"""``gatehouse bench …`` as a subprocess against the real stack: run (ids, options, --wait, Ctrl-C), results
(list, table, --full, --json, --csv), compare, report (HTML with its plots, --png) and cancel, and every error
as one line on stderr with exit 1 (the gateway) or 2 (the command line, a local file), never a traceback.

Runs with figures are written straight into PostgreSQL with core.benchstore (as the workers' runner leaves
them), so these tests do not depend on the runner's timing."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from conftest import ROOT, admin, create_key

from core.benchstore import BenchStore, new_bench_id
from core.database import Database

GATEHOUSE = [sys.executable, "-m", "cli", "bench"]
COMMANDS = ("run", "results", "compare", "cancel", "report")
UNREACHABLE = "http://127.0.0.1:9"
DIST_KEYS = {"mean", "p50", "p90", "p95", "p99"}
AGG_KEYS = {"requests", "errors", "ttft_ms", "itl_ms", "tpot_ms", "e2e_ms", "queue_ms", "overhead_ms",
            "output_tokens_per_s", "requests_per_s", "goodput", "cost", "score"}
NO_SLO = {"ttft_ms": None, "tpot_ms": None, "itl_ms": None, "e2e_ms": None}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_") and k not in ("REDIS_URL",
                                                                                                  "DATABASE_URL")}
    return {**env, "PYTHONPATH": str(ROOT), "COLUMNS": "250"}


def argv(*args: str, base_url: str, key: str) -> list[str]:
    return [*GATEHOUSE, *args, "--base-url", base_url, "--api-key", key]


def run(cwd: Path, *args: str, base_url: str = UNREACHABLE, key: str = "sk-unused") -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv(*args, base_url=base_url, key=key), cwd=cwd, capture_output=True, text=True,
                          timeout=120, env=_env())


def gh(stack: Any, cwd: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    return run(cwd, *args, base_url=stack.base_url, key=key or stack.master_key)


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr
    return r


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str, code: int = 1) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == "", (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def api(stack: Any, path: str) -> Any:
    r = httpx.get(stack.base_url + path, headers=admin(stack), timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def find_run(stack: Any, tag: str, timeout: float = 30) -> dict[str, Any]:
    """The newest run whose metadata has ``test`` = ``tag`` (one submitted by a CLI still running)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for b in api(stack, "/v1/benchmarks?limit=100")["data"]:
            if b["metadata"].get("test") == tag:
                return b  # type: ignore[no-any-return]
        time.sleep(0.1)
    raise AssertionError(f"no run tagged {tag}")


# ── runs with figures, as the runner leaves them ──────────────────────────────────────────────────────
def result(model: str, level: str, item: str, ttft: float, *, ok: bool = True, score: float | None = None,
           start: float = 1_765_000_000.0) -> dict[str, Any]:
    e2e = ttft + 200.0
    return {"model": model, "level": level, "item_id": item, "repeat": 0, "status": "ok" if ok else "error",
            "error": None if ok else {"status": 503, "code": "upstream_error", "message": "upstream down"},
            "started_at": start, "ttft_ms": ttft if ok else None, "itl_ms": [2.0, 4.0] if ok else None,
            "tpot_ms": 3.0 if ok else None, "e2e_ms": e2e if ok else None, "input_tokens": 10,
            "output_tokens": 20 if ok else 0, "output_tokens_per_s": 20 / e2e * 1000 if ok else None,
            "queue_ms": 1.0 if ok else None, "upstream_ms": e2e - 1.5 if ok else None,
            "overhead_ms": 1.5 if ok else None, "cold_start": False, "cost": 0.25, "score": score,
            "output": "an answer, with a comma\nand a new line", "request_id": f"req-{model}-{level}-{item}",
            "task": None}


def results_for(models: dict[str, float], levels: list[str], items: int, *, scored: bool = True,
                failing: str | None = None) -> list[dict[str, Any]]:
    """Every (model, level, item): TTFT = the model's base + the item number; ``failing`` fails them all."""
    out = []
    for m, base in models.items():
        for n, level in enumerate(levels):
            for i in range(items):
                score = None if not scored or m == failing else 1.0 if base >= 100 or i % 2 == 0 else 0.0
                out.append(result(m, level, f"q{i}", base + i, ok=m != failing, score=score,
                                  start=1_765_000_000.0 + n * 10 + i * 0.25))
    return out


async def stored_run(stack: Any, models: list[str], rows: list[dict[str, Any]], *, sweep: list[int] | None = None,
                     items: int = 4, status: str = "completed") -> str:
    db = Database(stack.database_url)
    store = BenchStore(db)
    suite = {"name": "qa", "sandbox": "local",
             "items": [{"id": f"q{i}", "prompt": f"question {i}", "expected": "yes", "scorer": "contains"}
                       for i in range(items)]}
    try:
        run = await store.create(
            run_id=new_bench_id(), owner_id=None, key_id=None, team_id=None, user_id=None, tenant="master",
            gateway_url=stack.base_url, suite=suite, models=models,
            options={"parallel": None if sweep else 2, "rate": None, "sweep": sweep, "repeat": 1,
                     "slo": {**NO_SLO, "ttft_ms": 120.0}},
            total=len(rows), metadata={"test": "stored"})
        await store.mark_running(run.id)
        assert await store.record_many(run.id, rows) == len(rows)
        await store.finish(run.id, status)
    finally:
        await db.close()
    return run.id


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("cli-bench")
    (path / "qa.jsonl").write_text('{"id": "q1", "prompt": "hello", "max_tokens": 8}\n'
                                   '{"id": "q2", "messages": [{"role": "user", "content": "hi"}], '
                                   '"expected": "hi", "scorer": "contains"}\n')
    return path


@pytest.fixture(scope="module")
async def runs(stack: Any) -> dict[str, str]:
    """``a``: echo and fake at c=2 (fake slower, both scored); ``b``: the same but echo slower and better
    scored; ``sweep``: echo and fake over c=1 and c=4, plus a model whose every request failed."""
    a = await stored_run(stack, ["echo", "fake"], results_for({"echo": 50.0, "fake": 80.0}, ["c=2"], 4))
    b = await stored_run(stack, ["echo", "fake"], results_for({"echo": 150.0, "fake": 80.0}, ["c=2"], 4))
    sweep_rows = results_for({"echo": 50.0, "fake": 80.0, "slow": 0.0}, ["c=1", "c=4"], 3, failing="slow")
    sweep = await stored_run(stack, ["echo", "fake", "slow"], sweep_rows, sweep=[1, 4], items=3)
    return {"a": a, "b": b, "sweep": sweep}


# ── help ──────────────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_with_an_example(command: str, tmp_path: Path) -> None:
    r = ok(subprocess.run([*GATEHOUSE, command, "--help"], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=_env()))
    assert "Example:" in r.stdout and f"gatehouse bench {command}" in r.stdout
    assert "--base-url" in r.stdout and "--api-key" in r.stdout and "--json" in r.stdout


def test_group_help_lists_the_commands(tmp_path: Path) -> None:
    r = ok(subprocess.run([*GATEHOUSE, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                          env=_env()))
    assert all(c in r.stdout for c in COMMANDS)


# ── run ───────────────────────────────────────────────────────────────────────────────────────────────
def test_run_prints_the_id_and_sends_the_options(stack: Any, workdir: Path) -> None:
    r = ok(gh(stack, workdir, "run", "qa.jsonl", "--models", "echo,fake", "--parallel", "4", "--slo",
              "ttft=500ms,tpot=50ms", "--repeat", "2", "--metadata", "test=run-plain"))
    assert r.stdout.startswith("submitted bench_") and "(qa: 2 items × 2 models, 8 requests)" in r.stdout
    run_id = r.stdout.split()[1]
    assert f"gatehouse bench results {run_id}" in r.stdout
    shown = api(stack, f"/v1/benchmarks/{run_id}")
    assert shown["models"] == ["echo", "fake"] and shown["suite"] == {"name": "qa", "items": 2, "sandbox": "local"}
    assert shown["options"]["parallel"] == 4 and shown["options"]["repeat"] == 2
    assert shown["options"]["slo"] == {"ttft_ms": 500, "tpot_ms": 50, "itl_ms": None, "e2e_ms": None}
    assert shown["request_counts"]["total"] == 8 and shown["metadata"] == {"test": "run-plain"}

    r = ok(gh(stack, workdir, "run", "--synthetic", "prompt_tokens=16,output_tokens=4,n=3", "--models", "echo",
              "--sweep", "[1,2]", "--json"))
    out = orjson.loads(r.stdout)
    assert list(out) == ["id"] and out["id"].startswith("bench_")
    shown = api(stack, f"/v1/benchmarks/{out['id']}")
    assert shown["options"]["sweep"] == [1, 2] and shown["request_counts"]["total"] == 6
    assert shown["suite"]["name"] == "synthetic-p16-o4-n3"

    r = ok(gh(stack, workdir, "run", "qa.jsonl", "-m", "echo", "--rate", "2/s", "--json"))
    assert api(stack, f"/v1/benchmarks/{orjson.loads(r.stdout)['id']}")["options"]["rate"] == 2


def test_bad_suites_and_options_exit_2(workdir: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.jsonl").write_text('{"prompt": "fine"}\n{not json\n')
    (tmp_path / "noprompt.json").write_text('[{"id": "x", "max_tokens": 3}]')
    one_line_error(run(tmp_path, "run", "missing.jsonl", "-m", "echo"), "missing.jsonl", "no such file", code=2)
    one_line_error(run(tmp_path, "run", "bad.jsonl", "-m", "echo"), "line 2", "invalid JSON", code=2)
    one_line_error(run(tmp_path, "run", "noprompt.json", "-m", "echo"), "item 1", "'x'", code=2)
    one_line_error(run(tmp_path, "run", ".", "-m", "echo"), "directory", code=2)
    one_line_error(run(workdir, "run", "qa.jsonl"), "--models", code=2)
    one_line_error(run(workdir, "run", "-m", "echo"), "no suite", code=2)
    one_line_error(run(workdir, "run", "qa.jsonl", "--synthetic", "n=1", "-m", "echo"), "not both", code=2)
    one_line_error(run(workdir, "run", "--synthetic", "n=x", "-m", "echo"), "synthetic", code=2)
    one_line_error(run(workdir, "run", "qa.jsonl", "-m", "echo,echo"), "twice", code=2)
    one_line_error(run(workdir, "run", "qa.jsonl", "-m", "echo", "-p", "2", "--sweep", "1,2"), "exclusive", code=2)
    one_line_error(run(workdir, "run", "qa.jsonl", "-m", "echo", "--sweep", "1,x"), "--sweep", code=2)
    one_line_error(run(workdir, "run", "qa.jsonl", "-m", "echo", "--rate", "0"), "--rate", code=2)
    one_line_error(run(workdir, "run", "qa.jsonl", "-m", "echo", "--slo", "speed=9"), "--slo", code=2)
    one_line_error(run(workdir, "run", "qa.jsonl", "-m", "echo", "--metadata", "novalue"), "KEY=VALUE", code=2)


def test_the_gateway_refusing_exits_1(stack: Any, workdir: Path) -> None:
    one_line_error(gh(stack, workdir, "run", "qa.jsonl", "-m", "echo,no-such-model"), "400", "no-such-model")
    limited = create_key(stack, models=["echo"])
    one_line_error(gh(stack, workdir, "run", "qa.jsonl", "-m", "fake", key=limited["key"]), "400", "fake")
    one_line_error(gh(stack, workdir, "results", key="sk-gh-not-a-key"), "401")
    one_line_error(run(workdir, "results"), "cannot reach the gateway")
    one_line_error(run(workdir, "run", "qa.jsonl", "-m", "echo", "--wait"), "cannot reach the gateway")
    for command in (("results", "bench_nope"), ("cancel", "bench_nope"), ("report", "bench_nope"),
                    ("compare", "bench_nope", "bench_nope2")):
        one_line_error(gh(stack, workdir, *command), "404", "bench_nope")


async def test_wait_follows_the_run_and_prints_its_results(stack: Any, workdir: Path) -> None:
    cmd = argv("run", "qa.jsonl", "-m", "echo", "--wait", "--json", "--metadata", "test=wait-json",
               base_url=stack.base_url, key=stack.master_key)
    # the CLI waits in its own process while this test plays the runner
    proc = subprocess.Popen(cmd, cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,  # noqa: ASYNC220
                            env=_env())
    try:
        found = find_run(stack, "wait-json")
        db = Database(stack.database_url)
        store = BenchStore(db)
        try:  # what the runner does (if the real one is there too, each result still lands once)
            await store.record_many(found["id"], [result("echo", "c=1", q, 40.0, score=1.0) for q in ("q1", "q2")])
            await store.finish(found["id"], "completed")
        finally:
            await db.close()
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, (stdout, stderr)
    shown = orjson.loads(stdout)
    assert shown["id"] == found["id"] and shown["status"] == "completed"
    assert set(shown) == {"id", "status", "models", "levels"} and shown["models"]["echo"]["requests"] == 2
    assert "Traceback" not in stderr


def test_ctrl_c_stops_waiting_not_the_run(stack: Any, workdir: Path) -> None:
    proc = subprocess.Popen(argv("run", "--synthetic", "prompt_tokens=8,output_tokens=64,n=50", "-m", "slow",
                                 "--wait", "--metadata", "test=ctrl-c", base_url=stack.base_url,
                                 key=stack.master_key),
                            cwd=workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("submitted bench_")
        time.sleep(1.0)  # polling by now
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    run_id = find_run(stack, "ctrl-c")["id"]
    assert proc.returncode == 130, (stdout, stderr)
    assert "Traceback" not in stderr and "stopped waiting" in stderr and f"gatehouse bench cancel {run_id}" in stderr
    assert api(stack, f"/v1/benchmarks/{run_id}")["status"] in ("queued", "running")
    ok(gh(stack, workdir, "cancel", run_id))


# ── results ───────────────────────────────────────────────────────────────────────────────────────────
def test_results_lists_the_runs(stack: Any, workdir: Path, runs: dict[str, str]) -> None:
    listed = orjson.loads(ok(gh(stack, workdir, "results", "--limit", "100", "--json")).stdout)
    assert isinstance(listed, list) and {runs["a"], runs["b"], runs["sweep"]} <= {b["id"] for b in listed}
    assert [b["id"] for b in listed] == sorted((b["id"] for b in listed), reverse=True)  # newest first
    table = ok(gh(stack, workdir, "results", "--limit", "100")).stdout
    row = next(line for line in table.splitlines() if runs["sweep"] in line)
    assert "qa" in row and "echo, fake, slow" in row and "completed" in row
    rows = list(csv.DictReader(io.StringIO(ok(gh(stack, workdir, "results", "--limit", "100", "--csv")).stdout)))
    mine = next(r for r in rows if r["id"] == runs["a"])
    assert mine["status"] == "completed" and mine["models"] == "echo fake" and mine["total"] == "8"


def test_results_json_is_the_contract(stack: Any, workdir: Path, runs: dict[str, str]) -> None:
    shown = orjson.loads(ok(gh(stack, workdir, "results", runs["sweep"], "--json")).stdout)
    assert set(shown) == {"id", "status", "models", "levels"}
    assert shown["id"] == runs["sweep"] and shown["status"] == "completed"
    assert set(shown["models"]) == {"echo", "fake", "slow"}
    for agg in [*shown["models"].values(), *(a for per in shown["levels"].values() for a in per.values())]:
        assert set(agg) >= AGG_KEYS
        for name in AGG_KEYS:
            if name.endswith("_ms"):
                assert set(agg[name]) == DIST_KEYS, (name, agg[name])
    assert list(shown["levels"]["echo"]) == ["c=1", "c=4"]
    echo, slow = shown["models"]["echo"], shown["models"]["slow"]
    assert (echo["requests"], echo["errors"], slow["requests"], slow["errors"]) == (6, 0, 6, 6)
    assert echo["ttft_ms"]["p50"] == 51.0 and slow["ttft_ms"] == dict.fromkeys(DIST_KEYS)


def test_results_table_and_full(stack: Any, workdir: Path, runs: dict[str, str]) -> None:
    r = ok(gh(stack, workdir, "results", runs["sweep"]))
    for text in ("per model", "echo per load level", "TTFT p50 (ms)", "goodput (req/s)", "sweep 1,4", "c=4",
                 "ttft ≤ 120 ms"):
        assert text in r.stdout, text
    assert "req-echo" not in r.stdout
    full = ok(gh(stack, workdir, "results", runs["sweep"], "--full")).stdout
    assert "18 requests" in full and "upstream down" in full and "q2" in full
    one_line_error(gh(stack, workdir, "results", "--full"), "RUN_ID", code=2)
    one_line_error(gh(stack, workdir, "results", runs["a"], "--json", "--csv"), "pick one", code=2)


def test_results_csv_has_a_row_per_request(stack: Any, workdir: Path, runs: dict[str, str]) -> None:
    rows = list(csv.DictReader(io.StringIO(ok(gh(stack, workdir, "results", runs["sweep"], "--csv")).stdout)))
    assert len(rows) == 18
    assert {(r["model"], r["level"]) for r in rows} == {(m, lv) for m in ("echo", "fake", "slow")
                                                        for lv in ("c=1", "c=4")}
    echo = next(r for r in rows if r["model"] == "echo" and r["item_id"] == "q1" and r["level"] == "c=4")
    assert float(echo["ttft_ms"]) == 51.0 and echo["status"] == "ok" and float(echo["itl_ms_mean"]) == 3.0
    assert echo["output"] == "an answer, with a comma\nand a new line"
    failed = next(r for r in rows if r["model"] == "slow")
    assert failed["status"] == "error" and failed["error_code"] == "upstream_error" and failed["ttft_ms"] == ""


# ── compare ───────────────────────────────────────────────────────────────────────────────────────────
def test_compare(stack: Any, workdir: Path, runs: dict[str, str]) -> None:
    shown = orjson.loads(ok(gh(stack, workdir, "compare", runs["a"], runs["b"], "--json")).stdout)
    assert (shown["a"], shown["b"]) == (runs["a"], runs["b"]) and set(shown["models"]) == {"echo", "fake"}
    echo = shown["models"]["echo"]
    assert all(set(d) == {"a", "b", "change", "better"} for d in echo.values())
    assert echo["ttft_ms"]["better"] == "a" and echo["ttft_ms"]["b"] > echo["ttft_ms"]["a"]
    assert echo["ttft_ms"]["change"] == pytest.approx(echo["ttft_ms"]["b"] / echo["ttft_ms"]["a"] - 1)
    assert echo["score"]["better"] == "b" and echo["output_tokens_per_s"]["better"] == "a"
    assert shown["models"]["fake"]["ttft_ms"]["better"] == "same"
    table = ok(gh(stack, workdir, "compare", runs["a"], runs["b"])).stdout
    assert "▼ worse" in table and "▲ better" in table and "= same" in table and "TTFT p50 (ms)" in table
    assert "+" in next(line for line in table.splitlines() if "TTFT p50" in line)


# ── report ────────────────────────────────────────────────────────────────────────────────────────────
def test_report_writes_html_with_its_plots_and_pngs(stack: Any, workdir: Path, runs: dict[str, str]) -> None:
    r = ok(gh(stack, workdir, "report", runs["sweep"], "-o", "sweep.html", "--png", "plots"))
    assert "wrote sweep.html (18 requests) and 5 PNG file(s)" in r.stdout
    html = (workdir / "sweep.html").read_text()
    assert html.startswith("<!doctype html>") and html.count('<img src="data:image/png;base64,') == 5
    for title in ("Latency CDFs", "TTFT per model", "Output throughput per model",
                  "Throughput vs latency per load level", "Score per model"):
        assert f'alt="{title}"' in html and f"<figcaption>{title}</figcaption>" in html
    assert runs["sweep"] in html and "echo per load level" in html and "upstream down" in html
    assert "https://" not in html and "http://" not in html and "<script" not in html
    pngs = sorted((workdir / "plots").iterdir())
    assert [p.name for p in pngs] == ["latency_cdf.png", "score.png", "throughput.png",
                                      "throughput_vs_latency.png", "ttft.png"]
    assert all(p.read_bytes().startswith(PNG_MAGIC) for p in pngs)

    meta = orjson.loads(ok(gh(stack, workdir, "report", runs["a"], "--json")).stdout)
    assert meta == {"html": f"{runs['a']}.html", "png": []}
    html = (workdir / f"{runs['a']}.html").read_text()
    assert html.count("data:image/png;base64,") == 4 and "one load level" in html  # no sweep plot
    one_line_error(gh(stack, workdir, "report", runs["a"], "-o", "no/such/dir/r.html"), "cannot write", code=2)


# ── cancel ────────────────────────────────────────────────────────────────────────────────────────────
def test_cancel(stack: Any, workdir: Path, runs: dict[str, str]) -> None:
    r = ok(gh(stack, workdir, "run", "--synthetic", "prompt_tokens=8,output_tokens=64,n=50", "-m", "slow",
              "--json"))
    run_id = orjson.loads(r.stdout)["id"]
    r = ok(gh(stack, workdir, "cancel", run_id))
    assert r.stdout.startswith(f"{run_id}: cancelling") and "50 total" in r.stdout
    again = orjson.loads(ok(gh(stack, workdir, "cancel", run_id, "--json")).stdout)
    assert again["id"] == run_id and again["status"] in ("cancelling", "cancelled")
    assert again["cancelling_at"] is not None
    one_line_error(gh(stack, workdir, "cancel", runs["a"]), "409", "completed")
