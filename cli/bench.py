"""``gatehouse bench …``: submit benchmark runs (suites × models) to a running gateway, follow them, read and
export their results, compare two runs, write an HTML report, cancel.

The suite is read and validated here, then sent as JSON to ``POST /v1/benchmarks``; the gateway's workers run
it. ``--json`` prints the contract's objects (docs/benchmark-runs-contract.md) on stdout and nothing else;
progress, hints and errors go to stderr. An error is one line on stderr: exit 1 when the gateway refused or
could not be reached, 2 for a problem with the command line or a local file.
"""

from __future__ import annotations

import csv
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli.bench_api import (
    ApiKeyOpt,
    BaseUrlOpt,
    ConfigOpt,
    Gateway,
    JsonOpt,
    RunId,
    err,
    fail,
    out,
    print_json,
    results_object,
)
from cli.bench_options import load_options
from cli.bench_tables import compare_tables, progress, requests_table, results_tables, runs_table, status_markup
from cli.bench_view import counts_text, result_csv_rows, run_csv_rows

bench_app = typer.Typer(help="Benchmark runs: send a suite of prompts to several models through the gateway "
                             "(its workers run it), then read the latencies, throughput, goodput, cost and scores "
                             "(needs a running gateway).", no_args_is_help=True)

FINAL = ("completed", "failed", "cancelled")
CsvOpt = Annotated[bool, typer.Option("--csv", help="Print CSV on stdout: one row per request for a run, one "
                                      "row per run for the list.")]

RUN_HELP = (
    "Submit SUITE (a .json, .jsonl, .yaml or .yml file of prompts) to run against every model in --models.\n\n"
    "Example:\n  gatehouse bench run qa.jsonl --models chargpt,qgpt --parallel 4 --slo ttft=500ms,tpot=50ms --wait"
    "\n\nExample (generated prompts, a concurrency sweep):\n  gatehouse bench run --synthetic "
    "prompt_tokens=128,output_tokens=64,n=50 --models chargpt --sweep 1,2,4,8\n\n"
    "The suite is validated here, then stored by the gateway and run by its workers (on the batch lane, "
    "streaming, so TTFT is real); this prints the run id at once. Load per model: --parallel N concurrent "
    "requests (default 1), --rate R requests per second, or --sweep C1,C2,… (one pass per concurrency level); "
    "pick one. --wait shows a progress bar until the run ends, then the results table; Ctrl-C stops waiting, "
    "not the run.\n\n"
    'With --json: {"id": …}; with --wait --json: the object `gatehouse bench results RUN --json` prints.\n\n'
    "Exit status: 0 submitted (with --wait: completed); 1 the gateway refused (unknown model, a model the key "
    "may not use) or could not be reached, or (with --wait) the run failed or was cancelled; 2 a missing or "
    "invalid suite file or a bad option.")


@bench_app.command("run", help=RUN_HELP)
def run(
    suite: Annotated[Path | None, typer.Argument(help="Suite file: .json/.yaml (a list of items or {name, "
                                                 "sandbox, items}) or .jsonl (one item per line).",
                                                 show_default=False)] = None,
    models: Annotated[str, typer.Option("--models", "-m", help="Comma-separated models to run the suite "
                                        "against, e.g. chargpt,qgpt.", show_default=False)] = "",
    synthetic: Annotated[str | None, typer.Option("--synthetic", help="Generated prompts instead of SUITE: "
                                                  "prompt_tokens=N,output_tokens=M,n=K.")] = None,
    parallel: Annotated[int | None, typer.Option("--parallel", "-p", min=1, help="Concurrent requests per "
                                                 "model (default 1).")] = None,
    rate: Annotated[str | None, typer.Option("--rate", help="Requests per second per model, e.g. 2 or 2/s.")]
    = None,
    sweep: Annotated[str | None, typer.Option("--sweep", help="Concurrency levels, one pass each, e.g. 1,2,4,8 "
                                              "(or [1,2,4,8]).")] = None,
    repeat: Annotated[int, typer.Option("--repeat", "-r", min=1, help="Send every item this many times.")] = 1,
    slo: Annotated[str | None, typer.Option("--slo", help="Goodput SLOs, e.g. ttft=500ms,tpot=50ms "
                                            "(ttft, itl, tpot, e2e).")] = None,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", help="KEY=VALUE to tag the run with "
                                                       "(repeat).")] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Follow the run with a progress bar until it ends, "
                                       "then print its results; exit 0 only when it completed.")] = False,
    json_: JsonOpt = False, config: ConfigOpt = None, url: BaseUrlOpt = None, key: ApiKeyOpt = None,
) -> None:
    body = load_options(suite, models, synthetic, parallel, rate, sweep, repeat, slo, metadata)
    gw = Gateway.connect(config, url, key)
    created = gw.create(body)
    run_id = created["id"]
    if not json_:
        s = created.get("suite") or {}
        out.print(f"submitted {run_id} ({s.get('name')}: {s.get('items')} items × {len(created.get('models') or [])}"
                  f" models, {(created.get('request_counts') or {}).get('total')} requests)", soft_wrap=True)
    if not wait:
        if json_:
            print_json({"id": run_id})
        else:
            out.print(f"follow it: gatehouse bench results {run_id}", soft_wrap=True)
        return
    try:
        final = _wait(gw, created)
    except KeyboardInterrupt:
        fail(f"stopped waiting; {run_id} keeps running (gatehouse bench results {run_id} follows it, "
             f"gatehouse bench cancel {run_id} stops it)", 130)
    if json_:
        print_json(results_object(final))
    else:
        for table in results_tables(final):
            out.print(table)
    if final["status"] != "completed":
        err.print(f"{run_id} ended {final['status']} ({counts_text(final)})", soft_wrap=True)
        raise typer.Exit(1)


def _wait(gw: Gateway, run: dict[str, Any]) -> dict[str, Any]:
    """Poll the run (every 0.5 s for the first 10 s, then every second) under a progress bar on stderr.

    Ctrl-C sets a flag the loop checks between polls (a second one interrupts at once): a KeyboardInterrupt
    raised at an arbitrary point could leave the progress bar's console lock held, and its refresh thread
    would then wait for it forever."""
    stop = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    previous = signal.signal(signal.SIGINT, on_sigint)
    started = time.monotonic()
    try:
        with progress(err) as bar:
            while True:
                bar.show(run)
                if run["status"] in FINAL:
                    return run
                if stop.wait(0.5 if time.monotonic() - started < 10 else 1.0):
                    raise KeyboardInterrupt
                run = gw.run(run["id"])
                if stop.is_set():
                    raise KeyboardInterrupt
    finally:
        signal.signal(signal.SIGINT, previous)


# ── results ───────────────────────────────────────────────────────────────────────────────────────────
RESULTS_HELP = (
    "Without RUN_ID: your benchmark runs, newest first (id, suite, models, status, requests, created). "
    "With RUN_ID: that run's figures per model — requests, errors, req/s, output tok/s, TTFT/ITL/TPOT/e2e "
    "p50 and p99, queue and gateway overhead p50, goodput, cost, score — and per load level when it has "
    "several.\n\n"
    "Example:\n  gatehouse bench results bench_0193f2c4a1b2c3d4e5f6a7b8 --full\n\n"
    "--full adds every request. --json prints the run list, or for RUN_ID "
    '{"id", "status", "models": {NAME: AGGREGATE}, "levels": {NAME: {LEVEL: AGGREGATE}}} (each *_ms is '
    '{"mean", "p50", "p90", "p95", "p99"}). --csv prints one row per request of RUN_ID (or one per run).')


@bench_app.command("results", help=RESULTS_HELP)
def results(
    run_id: Annotated[str | None, typer.Argument(help="Benchmark run id (bench_…); none lists the runs.",
                                                 show_default=False)] = None,
    full: Annotated[bool, typer.Option("--full", help="Also show every request of the run.")] = False,
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=100, help="Runs per page (the list).")] = 20,
    after: Annotated[str | None, typer.Option("--after", help="List the runs after this run id (the next "
                                              "page).")] = None,
    json_: JsonOpt = False, csv_: CsvOpt = False, config: ConfigOpt = None, url: BaseUrlOpt = None,
    key: ApiKeyOpt = None,
) -> None:
    if json_ and csv_:
        fail("--json and --csv both write to stdout: pick one", 2)
    if run_id is None and full:
        fail("--full needs a RUN_ID", 2)
    if run_id is not None and full and (json_ or csv_):
        fail("--full is for the table: --csv gives every request", 2)
    gw = Gateway.connect(config, url, key)
    if run_id is None:
        _list(gw, limit, after, json_, csv_)
        return
    if csv_:
        _write_csv(result_csv_rows(gw.results(run_id)))
        return
    run = gw.run(run_id)
    if json_:
        print_json(results_object(run))
        return
    for table in results_tables(run):
        out.print(table)
    if full:
        out.print(requests_table(list(gw.results(run_id))))


def _list(gw: Gateway, limit: int, after: str | None, json_: bool, csv_: bool) -> None:
    page = gw.runs(limit, after)
    runs = page.get("data") or []
    if json_:
        print_json(runs)
    elif csv_:
        _write_csv(run_csv_rows(runs))
    elif not runs:
        out.print("no benchmark runs" + (f" after {after}" if after else ""))
    else:
        out.print(runs_table(runs))
    if page.get("has_more") and not json_ and not csv_:
        err.print(f"more: gatehouse bench results --after {page.get('last_id')}", soft_wrap=True)


def _write_csv(rows: Any) -> None:
    writer = csv.writer(sys.stdout, lineterminator="\n")
    for row in rows:
        writer.writerow(row)
    sys.stdout.flush()


# ── compare, cancel, report ───────────────────────────────────────────────────────────────────────────
@bench_app.command("compare", help=(
    "Compare two runs model by model: each figure in A and B, the change, and whether B is better (green ▲) "
    "or worse (red ▼).\n\n"
    "Example:\n  gatehouse bench compare bench_0193f2c4a1b2c3d4e5f6a7b8 bench_0193f2d0aa11bb22cc33dd44\n\n"
    'Lower is better for latencies, errors and cost; higher for throughput, goodput and score. --json prints '
    '{"a", "b", "models": {NAME: {METRIC: {"a", "b", "change", "better"}}}}.'))
def compare(
    run_a: Annotated[str, typer.Argument(help="The baseline run id.", show_default=False)],
    run_b: Annotated[str, typer.Argument(help="The run compared with it.", show_default=False)],
    json_: JsonOpt = False, config: ConfigOpt = None, url: BaseUrlOpt = None, key: ApiKeyOpt = None,
) -> None:
    from core.benchstats import compare as compare_summaries

    gw = Gateway.connect(config, url, key)
    a, b = gw.run(run_a), gw.run(run_b)
    models = compare_summaries(a.get("models_summary") or {}, b.get("models_summary") or {})
    if json_:
        print_json({"a": a["id"], "b": b["id"], "models": models})
        return
    if not models:
        fail(f"{a['id']} and {b['id']} have no model with results in common", 1)
    for table in compare_tables(a, b, models):
        out.print(table)


@bench_app.command("cancel", help=(
    "Cancel a run that is queued or running.\n\n"
    "Example:\n  gatehouse bench cancel bench_0193f2c4a1b2c3d4e5f6a7b8\n\n"
    'The run turns "cancelling" at once and "cancelled" when the workers stop it; the requests that already '
    "finished keep their results. --json prints the run object."))
def cancel(run_id: RunId, json_: JsonOpt = False, config: ConfigOpt = None, url: BaseUrlOpt = None,
           key: ApiKeyOpt = None) -> None:
    run = Gateway.connect(config, url, key).cancel(run_id)
    if json_:
        print_json(run)
    else:
        out.print(f"{run['id']}: {status_markup(run['status'])} ({counts_text(run)})", soft_wrap=True)


@bench_app.command("report", help=(
    "Write one self-contained HTML report of a run: latency CDFs (TTFT, end-to-end), TTFT and output "
    "throughput per model, throughput against latency per load level (a sweep), score per model, the summary "
    "tables and the run's settings.\n\n"
    "Example:\n  gatehouse bench report bench_0193f2c4a1b2c3d4e5f6a7b8 -o report.html --png plots/\n\n"
    "The plots are PNG images embedded in the file (no external links: it opens anywhere, offline); --png DIR "
    "also writes each plot to DIR. --json prints {\"html\": PATH, \"png\": [PATH, …]}."))
def report(
    run_id: RunId,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="The HTML file to write. Default: "
                                                "<run id>.html.")] = None,
    png: Annotated[Path | None, typer.Option("--png", help="Also write each plot as a PNG file into this "
                                             "directory (created if needed).")] = None,
    json_: JsonOpt = False, config: ConfigOpt = None, url: BaseUrlOpt = None, key: ApiKeyOpt = None,
) -> None:
    gw = Gateway.connect(config, url, key)
    run = gw.run(run_id)
    rows = list(gw.results(run_id))
    from cli.bench_report import write_report

    html_path = output or Path(f"{run['id']}.html")
    written = write_report(run, rows, html_path, png)
    if json_:
        print_json({"html": str(html_path), "png": [str(p) for p in written]})
        return
    out.print(f"wrote {html_path} ({len(rows)} requests)" + (f" and {len(written)} PNG file(s) in {png}"
                                                             if png is not None else ""), soft_wrap=True)
