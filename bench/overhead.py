"""Gateway overhead: the same fixed upstream called directly and through Gatehouse's full queue path.

    python bench/overhead.py                     # defaults used for docs/benchmarks.md
    python bench/overhead.py --requests 1000 --duration 5 --workers 1

Starts (all on 127.0.0.1): the fake OpenAI-compatible upstream (its own process), an embedded Valkey, the
gateway and one worker (``gatehouse serve`` / ``gatehouse worker``, as in production). Then, in one run,
with direct and gateway measurements interleaved block by block so machine noise hits both alike:

  * latency at concurrency 1 (non-streaming): p50 / p99, and the difference = added latency;
  * throughput at concurrency 64 for a fixed duration: requests/s, p50 / p99;
  * streaming at concurrency 1: time to first content token and to ``[DONE]``;
  * the gateway's and the worker's resident memory after the load.

The load generator is an aiohttp client in this process; it shares the 2 cores with everything else, so
absolute numbers are lower than on a dedicated load machine — compare the two columns, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import platform
import statistics
import sys
import time

import aiohttp
import orjson

from bench.stack import KEY, running_stack

BODY = {"model": "bench", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def one(session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes) -> float:
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url} -> {r.status}")
    return time.perf_counter() - t0


async def one_stream(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                     body: bytes) -> tuple[float, float]:
    t0 = time.perf_counter()
    first = None
    async with session.post(url, data=body, headers=headers) as r:
        async for line in r.content:
            if first is None and b'"content":"' in line and b'"content":""' not in line:
                first = time.perf_counter() - t0
            if line.startswith(b"data: [DONE]"):
                break
    return first or float("nan"), time.perf_counter() - t0


async def sequential(targets: dict[str, tuple[str, dict[str, str]]], n: int, block: int,
                     stream: bool = False) -> dict[str, list]:
    body = orjson.dumps({**BODY, "stream": True} if stream else BODY)
    out: dict[str, list] = {k: [] for k in targets}
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        for url, h in targets.values():  # warm-up
            for _ in range(50):
                await (one_stream if stream else one)(s, url, h, body)
        done = 0
        while done < n:
            for name, (url, h) in targets.items():
                for _ in range(block):
                    out[name].append(await (one_stream if stream else one)(s, url, h, body))
            done += block
    return out


async def saturate(url: str, headers: dict[str, str], concurrency: int, duration: float) -> dict[str, float]:
    body = orjson.dumps(BODY)
    lat: list[float] = []
    errors = 0
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        stop_at = time.perf_counter() + duration

        async def loop() -> None:
            nonlocal errors
            while time.perf_counter() < stop_at:
                try:
                    lat.append(await one(s, url, headers, body))
                except RuntimeError:
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    return {"rps": len(lat) / elapsed, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
            "errors": errors, "n": len(lat)}


async def run(args: argparse.Namespace) -> dict:
    async with running_stack(workers=args.workers) as st:
        targets = {
            "direct": (st.upstream + "/chat/completions",
                       {"authorization": "Bearer sk-up", "content-type": "application/json"}),
            "gatehouse": (st.gateway + "/v1/chat/completions",
                          {"authorization": f"Bearer {KEY}", "content-type": "application/json"}),
        }
        res: dict = {"machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
                     "workers": args.workers}
        print("latency at c=1 …", file=sys.stderr)
        seq = await sequential(targets, args.requests, args.block)
        res["c1"] = {k: {"p50_ms": pct(v, 0.5) * 1e3, "p99_ms": pct(v, 0.99) * 1e3} for k, v in seq.items()}
        res["c1"]["added_p50_ms"] = res["c1"]["gatehouse"]["p50_ms"] - res["c1"]["direct"]["p50_ms"]
        print("streaming at c=1 …", file=sys.stderr)
        st_ = await sequential(targets, args.requests // 2, args.block, stream=True)
        res["stream"] = {k: {"ttft_p50_ms": statistics.median(x[0] for x in v) * 1e3,
                             "done_p50_ms": statistics.median(x[1] for x in v) * 1e3} for k, v in st_.items()}
        res["stream"]["added_ttft_p50_ms"] = (res["stream"]["gatehouse"]["ttft_p50_ms"]
                                              - res["stream"]["direct"]["ttft_p50_ms"])
        rounds: dict[str, list[dict[str, float]]] = {}
        for rnd in range(args.rounds):
            for name, (url, h) in targets.items():
                print(f"throughput at c={args.concurrency}: {name} (round {rnd + 1}) …", file=sys.stderr)
                rounds.setdefault(name, []).append(await saturate(url, h, args.concurrency, args.duration))
        res["c64"] = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in rounds.items()}
        res["rss_mb"] = {"gateway": rss_mb(st.gateway_pid), "worker": rss_mb(st.worker_pids[0])}
        return res


def report(res: dict) -> str:
    c1, st, c64 = res["c1"], res["stream"], res["c64"]
    return "\n".join([
        f"Machine: {res['machine']}; workers: {res['workers']}",
        "",
        "| measure | direct upstream | through Gatehouse | added |",
        "|---|---|---|---|",
        f"| c=1 p50 latency | {c1['direct']['p50_ms']:.2f} ms | {c1['gatehouse']['p50_ms']:.2f} ms | "
        f"{c1['added_p50_ms']:.2f} ms |",
        f"| c=1 p99 latency | {c1['direct']['p99_ms']:.2f} ms | {c1['gatehouse']['p99_ms']:.2f} ms | "
        f"{c1['gatehouse']['p99_ms'] - c1['direct']['p99_ms']:.2f} ms |",
        f"| stream: time to first token p50 | {st['direct']['ttft_p50_ms']:.2f} ms | "
        f"{st['gatehouse']['ttft_p50_ms']:.2f} ms | {st['added_ttft_p50_ms']:.2f} ms |",
        f"| stream: time to [DONE] p50 | {st['direct']['done_p50_ms']:.2f} ms | {st['gatehouse']['done_p50_ms']:.2f} ms"
        f" | {st['gatehouse']['done_p50_ms'] - st['direct']['done_p50_ms']:.2f} ms |",
        f"| c=64 throughput | {c64['direct']['rps']:.0f} req/s | {c64['gatehouse']['rps']:.0f} req/s | |",
        f"| c=64 p50 / p99 | {c64['direct']['p50_ms']:.1f} / {c64['direct']['p99_ms']:.1f} ms | "
        f"{c64['gatehouse']['p50_ms']:.1f} / {c64['gatehouse']['p99_ms']:.1f} ms | |",
        f"| c=64 errors | {c64['direct']['errors']} | {c64['gatehouse']['errors']} | |",
        f"| RSS after load | | gateway {res['rss_mb']['gateway']:.0f} MB, worker {res['rss_mb']['worker']:.0f} MB | |",
    ])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000, help="requests per side at c=1 (default 2000)")
    p.add_argument("--block", type=int, default=100, help="interleaving block size (default 100)")
    p.add_argument("--concurrency", type=int, default=64, help="clients for the throughput test (default 64)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per throughput round (default 8)")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds per side; medians reported (default 3)")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--json", type=pathlib.Path, help="also write the raw results here")
    args = p.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(run(args))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2))
    print(report(res))


if __name__ == "__main__":
    main()
