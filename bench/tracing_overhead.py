"""What Langfuse tracing costs a request, and what a Langfuse outage costs it: four stacks side by side.

    python bench/tracing_overhead.py                     # defaults: 1000 requests per stack at c=1, c=32 rounds
    python bench/tracing_overhead.py --requests 300 --rounds 1 --duration 3   # a quick look

Four Gatehouse stacks (gateway + worker + fake upstream + embedded Valkey each) run at once:

  off    tracing not configured
  ok     tracing to a local Langfuse (bench/fake_langfuse.py --mode discard, its own process) that answers at
         once without decoding: a real Langfuse's CPU is on another machine
  slow   tracing to a Langfuse that stalls every export for 5 s (past the 2 s export timeout)
  down   tracing to a port where nothing listens

Requests go to the four in interleaved blocks (c=1, latency p50/p99), then each is saturated at c=32 in turn
for a few rounds (medians reported). At the end, each stack's /metrics says how many spans it exported and
how many it dropped. Machine noise is large here (2 cores): compare the columns of one run, not runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import statistics
import subprocess
import sys
from contextlib import AsyncExitStack

import orjson

from bench.overhead import pct, saturate, sequential
from bench.stack import KEY, ROOT, free_port, running_stack, wait_ready

PK, SK = "pk-lf-bench", "sk-lf-bench"


FLUSH_AT = 64


def settings(base_url: str | None) -> dict:
    """Gatehouse settings: tracing to ``base_url`` (None: off), and the worker's own metrics port (the bench
    stacks run like separate hosts, without a shared metrics directory)."""
    out: dict = {"metrics": {"worker_port": free_port(), "worker_host": "127.0.0.1"}}
    if base_url:
        out["tracing"] = {"public_key": PK, "secret_key": SK, "base_url": base_url, "export_timeout_s": 2,
                          "flush_interval_s": 1.0, "flush_at": FLUSH_AT}
    return out


def langfuse(port: int, mode: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "bench.fake_langfuse", "--port", str(port), "--public-key", PK,
                             "--secret-key", SK, "--mode", mode, "--stall", "5"], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def tracing_counts(session_url: str) -> dict[str, float]:
    import aiohttp

    out = {"exported": 0.0, "dropped": 0.0}
    async with aiohttp.ClientSession() as s, s.get(session_url + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith("gatehouse_tracing_exported_spans_total"):
                out["exported"] += float(line.split()[-1])
            elif line.startswith("gatehouse_tracing_dropped_spans_total"):
                out["dropped"] += float(line.split()[-1])
    return out


async def run(args: argparse.Namespace) -> dict:
    ok_port, slow_port, down_port = free_port(), free_port(), free_port()
    servers = [langfuse(ok_port, "discard"), langfuse(slow_port, "slow")]
    try:
        for port in (ok_port, slow_port):
            await wait_ready(f"http://127.0.0.1:{port}/api/public/health")
        configs = {"off": settings(None), "ok": settings(f"http://127.0.0.1:{ok_port}"),
                   "slow": settings(f"http://127.0.0.1:{slow_port}"), "down": settings(f"http://127.0.0.1:{down_port}")}
        async with AsyncExitStack() as stacks:
            st = {name: await stacks.enter_async_context(running_stack(gatehouse=cfg))
                  for name, cfg in configs.items()}
            headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}
            targets = {name: (s.gateway + "/v1/chat/completions", headers) for name, s in st.items()}
            print("latency at c=1, interleaved …", file=sys.stderr)
            seq = await sequential(targets, args.requests, args.block)
            res: dict = {"c1": {k: {"p50_ms": pct(v, 0.5) * 1e3, "p99_ms": pct(v, 0.99) * 1e3} for k, v in seq.items()}}
            rounds: dict[str, list[dict[str, float]]] = {}
            for rnd in range(args.rounds):
                for name, (url, h) in targets.items():
                    print(f"throughput at c={args.concurrency}: {name} (round {rnd + 1}) …", file=sys.stderr)
                    rounds.setdefault(name, []).append(await saturate(url, h, args.concurrency, args.duration))
            res["c32"] = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in rounds.items()}
            await asyncio.sleep(3)  # let the exporters finish (or give up on) what is queued
            res["spans"] = {name: await tracing_counts(f"http://127.0.0.1:{configs[name]['metrics']['worker_port']}")
                            for name in st}
            return res
    finally:
        for p in servers:
            p.terminate()
            p.wait(10)


def report(res: dict) -> str:
    lines = ["| tracing | c=1 p50 ms | c=1 p99 ms | c=32 req/s | c=32 p99 ms | spans exported | spans dropped |",
             "|---|---|---|---|---|---|---|"]
    for name in res["c1"]:
        c1, c32, sp = res["c1"][name], res["c32"][name], res["spans"][name]
        lines.append(f"| {name} | {c1['p50_ms']:.2f} | {c1['p99_ms']:.2f} | {c32['rps']:.0f} | {c32['p99_ms']:.1f} "
                     f"| {sp['exported']:.0f} | {sp['dropped']:.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=1000, help="requests per stack at c=1 (default 1000)")
    p.add_argument("--block", type=int, default=50, help="interleaving block size (default 50)")
    p.add_argument("--concurrency", type=int, default=32, help="clients for the throughput test (default 32)")
    p.add_argument("--duration", type=float, default=5.0, help="seconds per throughput round (default 5)")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds per stack (default 3)")
    p.add_argument("--flush-at", type=int, default=64,
                   help="spans per export batch (default 64, the setting's default)")
    p.add_argument("--json", type=pathlib.Path, help="also write the raw results here")
    args = p.parse_args()
    global FLUSH_AT
    FLUSH_AT = args.flush_at
    os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    res = asyncio.run(run(args))
    if args.json:
        args.json.write_bytes(orjson.dumps(res, option=orjson.OPT_INDENT_2))
    print(report(res))


if __name__ == "__main__":
    main()
