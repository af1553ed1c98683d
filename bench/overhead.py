"""Gateway overhead: the same fixed upstream called directly, through the floor proxy and through Gatehouse.

    python -m bench.overhead                                   # defaults used for docs/benchmarks.md
    python -m bench.overhead --baseline 69407e5                # + the Gatehouse of an older commit, side by side
    python -m bench.overhead --baseline 69407e5 --requests 600 --duration 4 --rounds 2   # a quick look

Starts (all on 127.0.0.1): the fake OpenAI-compatible upstream (its own process), the floor proxy
(bench/floor_proxy.py: a bare aiohttp pass-through with no queue and no auth, the least a Python gateway
costs), and a Gatehouse stack — an embedded Valkey, ``gatehouse serve`` and the workers, as in production —
running this working tree. With ``--baseline REF`` a second complete stack (its own Valkey, gateway and
workers) runs the code of commit REF from a ``git worktree`` under /tmp, routed to the same upstream.
``--current REF`` runs the "current" side from a commit too (e.g. while the working tree is mid-edit).

Then, in one run, with all targets interleaved block by block (the order rotating from block to block) so
machine noise hits them alike:

  * latency at concurrency 1 (non-streaming): p50 / p99, and the difference to the direct call = added latency;
  * streaming at concurrency 1: time to the first content token and to ``[DONE]``, and how many streamed
    requests had to open a new connection (the client stops reading at ``[DONE]``, as the issue's numbers were
    measured; a server that ends the body in a later write loses the connection — ``--drain`` reads each
    stream to its end instead, as the OpenAI SDKs do);
  * throughput at concurrency 64 for a fixed duration, ``--rounds`` rounds per target, the targets taking
    turns; medians of the rounds (errors: the sum);
  * resident memory of each server process after the load.

Ratios the issue sets targets for: the current tree's added first-token time and added c=1 latency against
the baseline's (the cut, in %), its c=64 throughput as a share of the floor's, its c=64 p99 as a multiple of
the floor's.

The load generator is an aiohttp client in this process; it shares the 2 cores with everything else, so
absolute numbers are lower than on a dedicated load machine — compare the columns, not across machines.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import platform
import statistics
import subprocess
import sys
import time
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson

from bench.common import run_main
from bench.stack import KEY, ROOT, git_worktree, running_floor, running_stack

BODY = {"model": "bench", "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 16}
UPSTREAM_HEADERS = {"authorization": "Bearer sk-up", "content-type": "application/json"}
GATEHOUSE_HEADERS = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def rss_mb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


async def one(session: aiohttp.ClientSession, url: str, headers: dict[str, str], body: bytes) -> float:
    t0 = time.perf_counter()
    async with session.post(url, data=body, headers=headers) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"{url} -> {r.status}")
    return time.perf_counter() - t0


async def one_stream(session: aiohttp.ClientSession, url: str, headers: dict[str, str],
                     body: bytes, drain: bool = False) -> tuple[float, float]:
    """(time to the first non-empty content delta, time to ``data: [DONE]``) in seconds.

    The client stops reading at ``[DONE]``; if the body's end (the chunked terminator) has not arrived with it,
    aiohttp closes the connection and the next request opens a new one. ``drain`` reads on to the end first,
    as the OpenAI SDKs do, so the connection is kept."""
    t0 = time.perf_counter()
    first = done = None
    async with session.post(url, data=body, headers=headers) as r:
        if r.status != 200:
            raise RuntimeError(f"{url} -> {r.status}")
        async for line in r.content:
            if first is None and b'"content":"' in line and b'"content":""' not in line:
                first = time.perf_counter() - t0
            if line.startswith(b"data: [DONE]"):
                done = time.perf_counter() - t0
                break
        if drain:
            await r.read()
    return first or float("nan"), done if done is not None else time.perf_counter() - t0


async def sequential(targets: dict[str, tuple[str, dict[str, str]]], n: int, block: int,
                     stream: bool = False, *, drain: bool = False,
                     connections: dict[str, int] | None = None) -> dict[str, list[Any]]:
    """``n`` requests per target at concurrency 1, in blocks of ``block`` per target; the order of the targets
    rotates from one block to the next, so no target always follows the same one. ``connections``, when given,
    receives the number of TCP connections each target's requests opened (after the warm-up)."""
    body = orjson.dumps({**BODY, "stream": True} if stream else BODY)
    out: dict[str, list[Any]] = {k: [] for k in targets}
    names = list(targets)
    opened = dict.fromkeys(names, 0)
    current = names[0]

    async def count(*_: Any) -> None:
        opened[current] += 1

    async def call(s: aiohttp.ClientSession, url: str, h: dict[str, str]) -> Any:
        return await (one_stream(s, url, h, body, drain) if stream else one(s, url, h, body))

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(count)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), trace_configs=[trace]) as s:
        for url, h in targets.values():  # warm-up
            for _ in range(50):
                await call(s, url, h)
        opened = dict.fromkeys(names, 0)
        done = 0
        while done < n:
            turn = (done // block) % len(names)
            for current in names[turn:] + names[:turn]:
                url, h = targets[current]
                for _ in range(min(block, n - done)):
                    out[current].append(await call(s, url, h))
            done += block
    if connections is not None:
        connections.update(opened)
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
                except (RuntimeError, aiohttp.ClientError, TimeoutError):
                    errors += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(loop() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
    if not lat:
        return {"rps": 0.0, "p50_ms": float("nan"), "p99_ms": float("nan"), "errors": errors, "n": 0}
    return {"rps": len(lat) / elapsed, "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3,
            "errors": errors, "n": len(lat)}


@dataclass
class Target:
    label: str  # column heading
    url: str
    headers: dict[str, str]
    pids: dict[str, int] = field(default_factory=dict)  # process name -> pid, for RSS


def git_describe(src: pathlib.Path) -> str:
    """Short commit of ``src``, noting uncommitted changes to its tracked files outside bench/."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!bench"],
                               cwd=src, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "?"
    return head + (" + uncommitted changes" if dirty else "")


async def start_targets(args: argparse.Namespace, es: AsyncExitStack) -> dict[str, Target]:
    current_src = es.enter_context(git_worktree(args.current)) if args.current else ROOT
    current = await es.enter_async_context(running_stack(workers=args.workers, src=current_src))
    floor_url, floor_pid = await es.enter_async_context(running_floor(current.upstream))
    targets = {
        "direct": Target("direct upstream", current.upstream + "/chat/completions", UPSTREAM_HEADERS),
        "floor": Target("floor proxy", floor_url + "/chat/completions", UPSTREAM_HEADERS, {"proxy": floor_pid}),
    }
    if args.baseline:
        base_src = es.enter_context(git_worktree(args.baseline))
        base = await es.enter_async_context(running_stack(workers=args.workers, src=base_src,
                                                          upstream=current.upstream))
        targets["baseline"] = Target(f"baseline {git_describe(base_src)}", base.gateway + "/v1/chat/completions",
                                     GATEHOUSE_HEADERS, {"gateway": base.gateway_pid, "worker": base.worker_pids[0]})
    targets["gatehouse"] = Target(f"gatehouse {git_describe(current_src)}", current.gateway + "/v1/chat/completions",
                                  GATEHOUSE_HEADERS, {"gateway": current.gateway_pid,
                                                      "worker": current.worker_pids[0]})
    return targets


def _cut(before: float, after: float) -> float:
    return (1 - after / before) * 100 if before > 0 else float("nan")


def ratios(res: dict[str, Any]) -> dict[str, float]:
    c1, st, c64 = res["c1"], res["stream"], res["c64"]
    out = {"throughput_pct_of_floor": c64["gatehouse"]["rps"] / c64["floor"]["rps"] * 100,
           "p99_x_floor": c64["gatehouse"]["p99_ms"] / c64["floor"]["p99_ms"]}
    if "baseline" in c1:
        out["ttft_added_cut_pct"] = _cut(st["baseline"]["added_ttft_p50_ms"], st["gatehouse"]["added_ttft_p50_ms"])
        out["c1_added_cut_pct"] = _cut(c1["baseline"]["added_p50_ms"], c1["gatehouse"]["added_p50_ms"])
        out["throughput_vs_baseline_pct"] = (c64["gatehouse"]["rps"] / c64["baseline"]["rps"] - 1) * 100
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as es:
        targets = await start_targets(args, es)
        urls = {name: (t.url, t.headers) for name, t in targets.items()}
        res: dict[str, Any] = {
            "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
            "workers": args.workers, "labels": {name: t.label for name, t in targets.items()},
            "settings": {k: getattr(args, k) for k in ("requests", "block", "concurrency", "duration", "rounds",
                                                        "baseline", "current", "drain")}}
        print(f"latency at c=1 ({', '.join(urls)}) …", file=sys.stderr)
        seq = await sequential(urls, args.requests, args.block)
        res["c1"] = {k: {"p50_ms": pct(v, 0.5) * 1e3, "p99_ms": pct(v, 0.99) * 1e3} for k, v in seq.items()}
        print("streaming at c=1 …", file=sys.stderr)
        conns: dict[str, int] = {}
        streamed = await sequential(urls, args.requests // 2, args.block, stream=True, drain=args.drain,
                                    connections=conns)
        res["stream"] = {k: {"ttft_p50_ms": statistics.median(x[0] for x in v) * 1e3,
                             "ttft_p99_ms": pct([x[0] for x in v], 0.99) * 1e3,
                             "done_p50_ms": statistics.median(x[1] for x in v) * 1e3,
                             "new_connections_pct": conns[k] / len(v) * 100} for k, v in streamed.items()}
        for name in urls:
            res["c1"][name]["added_p50_ms"] = res["c1"][name]["p50_ms"] - res["c1"]["direct"]["p50_ms"]
            res["stream"][name]["added_ttft_p50_ms"] = (res["stream"][name]["ttft_p50_ms"]
                                                        - res["stream"]["direct"]["ttft_p50_ms"])
            res["stream"][name]["added_done_p50_ms"] = (res["stream"][name]["done_p50_ms"]
                                                        - res["stream"]["direct"]["done_p50_ms"])
        res["c1"]["added_p50_ms"] = res["c1"]["gatehouse"]["added_p50_ms"]  # the pre-floor report's keys
        res["stream"]["added_ttft_p50_ms"] = res["stream"]["gatehouse"]["added_ttft_p50_ms"]
        rounds: dict[str, list[dict[str, float]]] = {name: [] for name in urls}
        names = list(urls)
        for rnd in range(args.rounds):
            turn = rnd % len(names)
            for name in names[turn:] + names[:turn]:
                print(f"throughput at c={args.concurrency}: {name} (round {rnd + 1}) …", file=sys.stderr)
                rounds[name].append(await saturate(*urls[name], args.concurrency, args.duration))
        res["c64"] = {k: {m: statistics.median(x[m] for x in v) for m in v[0]} for k, v in rounds.items()}
        for name, v in rounds.items():
            res["c64"][name]["errors"] = sum(x["errors"] for x in v)
        res["c64_rounds"] = rounds
        res["rss_mb"] = {name: {proc: rss_mb(pid) for proc, pid in t.pids.items()} for name, t in targets.items()}
        res["ratios"] = ratios(res)
        return res


def report(res: dict[str, Any]) -> str:
    c1, st, c64, rss = res["c1"], res["stream"], res["c64"], res["rss_mb"]
    names = list(res["labels"])

    def row(measure: str, cell: Any, skip: tuple[str, ...] = ()) -> str:
        return f"| {measure} | " + " | ".join("—" if n in skip else cell(n) for n in names) + " |"

    def mem(n: str) -> str:
        return ", ".join(f"{proc} {mb:.0f} MB" for proc, mb in rss[n].items()) or "—"

    lines = [
        f"Machine: {res['machine']}; workers per Gatehouse: {res['workers']}; "
        f"{res['settings']['requests']} requests per target at c=1 ({res['settings']['requests'] // 2} streamed), "
        f"{res['settings']['rounds']} × {res['settings']['duration']:g} s per target at "
        f"c={res['settings']['concurrency']}; streams read "
        f"{'to their end' if res['settings']['drain'] else 'up to [DONE]'}",
        "",
        "| measure | " + " | ".join(res["labels"][n] for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
        row("c=1 p50 / p99", lambda n: f"{c1[n]['p50_ms']:.2f} / {c1[n]['p99_ms']:.2f} ms"),
        row("c=1 added p50 vs direct", lambda n: f"**{c1[n]['added_p50_ms']:.2f} ms**", ("direct",)),
        row("stream: first token p50 (p99)", lambda n: f"{st[n]['ttft_p50_ms']:.2f} ({st[n]['ttft_p99_ms']:.2f}) ms"),
        row("stream: first token added p50", lambda n: f"**{st[n]['added_ttft_p50_ms']:.2f} ms**", ("direct",)),
        row("stream: [DONE] p50 (added)",
            lambda n: f"{st[n]['done_p50_ms']:.2f} ms" + ("" if n == "direct" else
                                                         f" (+{st[n]['added_done_p50_ms']:.2f})")),
        row("stream: requests on a new connection", lambda n: f"{st[n]['new_connections_pct']:.0f} %"),
        row(f"c={res['settings']['concurrency']} throughput", lambda n: f"**{c64[n]['rps']:,.0f} req/s**"),
        row(f"c={res['settings']['concurrency']} p50 / p99", lambda n: f"{c64[n]['p50_ms']:.1f} / "
                                                                       f"{c64[n]['p99_ms']:.1f} ms"),
        row(f"c={res['settings']['concurrency']} errors (all rounds)", lambda n: f"{c64[n]['errors']}"),
        row("RSS after the load", mem),
    ]
    r = res["ratios"]
    lines += ["", "| ratio (current tree) | value | target |", "|---|---|---|"]
    if "ttft_added_cut_pct" in r:
        lines += [
            f"| first token added, cut vs baseline | {r['ttft_added_cut_pct']:.0f} % | ≥ 45 % "
            f"{'met' if r['ttft_added_cut_pct'] >= 45 else 'not met'} |",
            f"| c=1 added p50, cut vs baseline | {r['c1_added_cut_pct']:.0f} % | ≥ 15 % "
            f"{'met' if r['c1_added_cut_pct'] >= 15 else 'not met'} |",
            f"| c=64 throughput vs baseline | {r['throughput_vs_baseline_pct']:+.0f} % | |",
        ]
    lines += [
        f"| c=64 throughput, % of the floor's | {r['throughput_pct_of_floor']:.0f} % | ≥ 45 % "
        f"{'met' if r['throughput_pct_of_floor'] >= 45 else 'not met'} |",
        f"| c=64 p99, × the floor's | {r['p99_x_floor']:.2f}× | ≤ 1.5× "
        f"{'met' if r['p99_x_floor'] <= 1.5 else 'not met'} |",
    ]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=2000,
                   help="requests per target at c=1; half as many streamed (default 2000)")
    p.add_argument("--block", type=int, default=100, help="interleaving block size (default 100)")
    p.add_argument("--concurrency", type=int, default=64, help="clients for the throughput test (default 64)")
    p.add_argument("--duration", type=float, default=8.0, help="seconds per throughput round (default 8)")
    p.add_argument("--rounds", type=int, default=3, help="throughput rounds per target; medians reported (default 3)")
    p.add_argument("--workers", type=int, default=1, help="worker processes per Gatehouse (default 1)")
    p.add_argument("--baseline", metavar="REF", help="also run the Gatehouse of this commit (a git worktree in /tmp)")
    p.add_argument("--current", metavar="REF", help="run the current side from this commit, not the working tree")
    p.add_argument("--drain", action="store_true",
                   help="read each stream to its end after [DONE] (as the OpenAI SDKs do) so its connection is kept; "
                        "default: stop at [DONE], as before")
    p.add_argument("--json", type=pathlib.Path, help="also write the raw results here")
    args = p.parse_args()
    res = run_main(run, args)
    print(report(res))


if __name__ == "__main__":
    main()
