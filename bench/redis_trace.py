"""Which Redis commands one request costs, from which process, in what order, and when (Valkey's MONITOR).

    python -m bench.redis_trace                        # this working tree
    python -m bench.redis_trace --ref 69407e5          # the Gatehouse of a commit (git worktree in /tmp)
    python -m bench.redis_trace --samples 300 --json /tmp/trace.json
    python -m bench.redis_trace --profile /tmp/prof     # cProfile of the gateway and the worker instead

Starts a Gatehouse stack (bench/stack.py), warms it up, then, on an idle system at concurrency 1:

1. prints every command Valkey receives for ONE non-streamed and ONE streamed request — issuing process
   (gateway, worker, or ``lua`` for commands run by a script), connection, server timestamp relative to the
   moment the client sent the request — interleaved with what the client saw (headers, each SSE line);
2. times the critical-path steps over ``--samples`` requests of each kind (medians of server timestamps
   relative to the client's send, same clock): enqueue, claim, arq's job fetch, each output write, each gateway
   read, the client's first content token;
3. counts commands per request with ``INFO commandstats`` deltas over ``--count`` requests of each kind
   without MONITOR attached (background commands — heartbeats, idle BLMPOP timeouts — are included).

MONITOR costs Valkey a little per command, so absolute gaps are slightly inflated; the order is exact. The
MONITOR reader runs in its own process so that it does not take the load generator's GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import pathlib
import re
import statistics
import time
from collections import Counter
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from bench.overhead import BODY, GATEHOUSE_HEADERS
from bench.redis_monitor import Cmd, issuers, monitor_to_file, monitoring, parse_monitor
from bench.stack import git_worktree, running_stack


# ── the client side ───────────────────────────────────────────────────────────────────────────────────
@dataclass
class Sample:
    stream: bool
    sent: float  # unix seconds, just before the request was written
    rid: str = ""
    events: list[tuple[float, str]] = field(default_factory=list)  # (unix seconds, what the client saw)
    first_content: float | None = None
    done: float | None = None


async def request(session: aiohttp.ClientSession, url: str, stream: bool) -> Sample:
    body = orjson.dumps({**BODY, "stream": True} if stream else BODY)
    smp = Sample(stream, time.time())
    async with session.post(url, data=body, headers=GATEHOUSE_HEADERS) as r:
        smp.rid = r.headers.get("x-request-id", "")
        smp.events.append((time.time(), f"client: response headers (HTTP {r.status})"))
        if not stream:
            await r.read()
            smp.done = smp.first_content = time.time()
            smp.events.append((smp.done, "client: whole body read"))
            return smp
        async for line in r.content:
            now = time.time()
            if not line.strip():
                continue
            if smp.first_content is None and b'"content":"' in line and b'"content":""' not in line:
                smp.first_content = now
                smp.events.append((now, "client: FIRST CONTENT TOKEN " + _short(line)))
            else:
                smp.events.append((now, "client: " + _short(line)))
            if line.startswith(b"data: [DONE]"):
                smp.done = now
                break
    return smp


def _short(line: bytes) -> str:
    s = line.strip().decode()
    m = re.search(r'"(delta|choices)":(.{0,60})', s)
    return (s[:20] + "…" + m.group(0)[:70]) if m and len(s) > 90 else s[:90]


# ── analysis ──────────────────────────────────────────────────────────────────────────────────────────
def window(cmds: list[Cmd], smp: Sample, until: float) -> list[Cmd]:
    return [c for c in cmds if smp.sent <= c.t < until]  # one clock: Valkey's and this process's time()


def show(cmds: list[Cmd], smp: Sample) -> list[str]:
    rows = [(c.t, f"{c.who:<7} {c.conn:>5}  {c.text()}") for c in cmds]
    rows += [(t, f"{'':<7} {'':>5}  ── {what}") for t, what in smp.events]
    rows.sort(key=lambda r: r[0])
    out, prev = [], smp.sent
    for t, text in rows:
        out.append(f"{(t - smp.sent) * 1e3:8.3f} ms  (+{(t - prev) * 1e3:6.3f})  {text}")
        prev = t
    return out


def _step(c: Cmd, rid: str, n_reads: int, n_xadds: int, in_tx: bool) -> str | None:
    """The critical-path step command ``c`` is for request ``rid``, if it is one."""
    key, job = "gatehouse:out:" + rid, "arq:job:" + rid
    steps = {
        ("gateway", "EVAL"): (job, "gateway: enqueue EVAL"),
        ("gateway", "XREAD"): (key, f"gateway: XREAD #{n_reads + 1}"),
        ("worker", "GET"): (job, "worker: run_job GET arq:job (MULTI/EXEC)"),
        ("lua", "GET"): (job, "lua: GET arq:job (the job fetched inside the claim script)"),
        ("worker", "XADD"): (key, f"worker: XADD #{n_xadds + 1} "
                                  f"({'in a MULTI/EXEC' if in_tx else 'EventWriter pipeline, no MULTI'})"),
        ("worker", "DEL"): ("arq:in-progress:" + rid, "worker: finish_job DEL in-progress (end-of-job tx)"),
    }
    match = steps.get((c.who, c.name))
    return match[1] if match and match[0] in c.args else None


def steps(cmds: list[Cmd], smp: Sample) -> dict[str, float]:
    """Milliseconds from the client's send to each critical-path step of one request."""
    at: dict[str, float] = {}
    reads = xadds = 0
    in_tx = False
    for c in cmds:
        if c.who == "worker" and c.name in ("MULTI", "EXEC"):
            in_tx = c.name == "MULTI"
        elif c.who == "worker" and c.name == "EVALSHA" and "gateway: enqueue EVAL" in at:
            at.setdefault("worker: CLAIM EVALSHA (after the BLMPOP wake)", (c.t - smp.sent) * 1e3)
        elif (name := _step(c, smp.rid, reads, xadds, in_tx)) is not None:
            reads += c.name == "XREAD"
            xadds += c.name == "XADD"
            at.setdefault(name, (c.t - smp.sent) * 1e3)
    if smp.first_content is not None:
        at["client: first content token" if smp.stream else "client: whole body"] = (
            (smp.first_content - smp.sent) * 1e3)
    if smp.done is not None and smp.stream:
        at["client: [DONE]"] = (smp.done - smp.sent) * 1e3
    return at


def median_steps(per: list[dict[str, float]]) -> list[tuple[str, float, int]]:
    names: dict[str, list[float]] = {}
    for d in per:
        for k, v in d.items():
            names.setdefault(k, []).append(v)
    rows = [(k, statistics.median(v), len(v)) for k, v in names.items()]
    return sorted(rows, key=lambda r: r[1])


def cpu_s(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used (/proc/<pid>/stat)."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_by_cmdline(*needles: str) -> list[int]:
    out = []
    for d in pathlib.Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if all(n in cmd for n in needles):
                out.append(int(d.name))
    return out


async def commandstats(redis: Redis) -> Counter[str]:
    info = await redis.info("commandstats")
    return Counter({k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in info.items()})


# ── the run ───────────────────────────────────────────────────────────────────────────────────────────
async def profile(args: argparse.Namespace) -> str:
    """The gateway and the worker under cProfile while they serve ``--count`` requests of each kind at c=1;
    the functions with the most own time and the most cumulative time, per process."""
    import pstats

    args.profile.mkdir(parents=True, exist_ok=True)
    async with AsyncExitStack() as es:
        src = es.enter_context(git_worktree(args.ref)) if args.ref else None
        st = await es.enter_async_context(running_stack(src=src, profile_dir=args.profile))
        url = st.gateway + "/v1/chat/completions"
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            for _ in range(args.count):
                await request(s, url, False)
                await request(s, url, True)
    out = []
    for name in ("gateway", "worker0"):
        for order in ("tottime", "cumulative"):
            buf = io.StringIO()
            stats = pstats.Stats(str(args.profile / f"{name}.prof"), stream=buf)
            stats.strip_dirs().sort_stats(order).print_stats(args.top)
            out += [f"## {name}: top {args.top} by {order} ({2 * args.count} requests, half streamed)",
                    buf.getvalue().split("\n\n", 1)[-1]]
    return "\n".join(out)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    async with AsyncExitStack() as es:
        src = es.enter_context(git_worktree(args.ref)) if args.ref else None
        st = await es.enter_async_context(running_stack(src=src))
        url = st.gateway + "/v1/chat/completions"
        redis = Redis.from_url(st.redis_url)
        es.push_async_callback(redis.aclose)
        res: dict[str, Any] = {"src": str(st.src)}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
            for _ in range(args.warmup):
                await request(s, url, False)
                await request(s, url, True)
            await asyncio.sleep(0.3)
            # commands per request, no MONITOR attached
            res["commandstats_per_request"], res["client_ms_without_monitor"], res["cpu_ms_per_request"] = {}, {}, {}
            valkey_port = st.redis_url.rsplit(":", 1)[1].split("/")[0]
            procs = {"gateway": st.gateway_pid, "worker": st.worker_pids[0],
                     "valkey": pids_by_cmdline("valkey-server", f":{valkey_port}")[0],
                     "upstream": pids_by_cmdline("bench.fake_upstream",
                                                 "--port " + st.upstream.rsplit(":", 1)[1].split("/")[0])[0],
                     "client (this process)": os.getpid()}
            rtt = []
            for _ in range(2000):
                t0 = time.perf_counter()
                await redis.ping()
                rtt.append(time.perf_counter() - t0)
            res["ping_rtt_us"] = {"p50": statistics.median(rtt) * 1e6, "p90": sorted(rtt)[1800] * 1e6}
            for stream in (False, True):
                await asyncio.sleep(0.3)
                before = await commandstats(redis)
                cpu0 = {name: cpu_s(pid) for name, pid in procs.items()}
                plain = [await request(s, url, stream) for _ in range(args.count)]
                cpu1 = {name: cpu_s(pid) for name, pid in procs.items()}
                await asyncio.sleep(0.3)  # the batched UNLINK of consumed streams
                delta = await commandstats(redis) - before
                res["cpu_ms_per_request"]["stream" if stream else "non-stream"] = {
                    name: round((cpu1[name] - cpu0[name]) / args.count * 1e3, 3) for name in procs}
                delta["info"] -= 1
                kind = "stream" if stream else "non-stream"
                res["commandstats_per_request"][kind] = {
                    k: round(v / args.count, 3) for k, v in sorted(delta.items(), key=lambda kv: -kv[1]) if v > 0}
                res["client_ms_without_monitor"][kind] = client_medians(plain)
            who = issuers(st.gateway_pid, st.worker_pids)
            mon_file = (st.tmp or pathlib.Path("/tmp")) / "monitor.log"
            async with monitoring(st.redis_url, mon_file):
                await asyncio.sleep(0.5)
                detailed = []
                for stream in (False, True):
                    detailed.append(await request(s, url, stream))
                    await asyncio.sleep(0.4)  # past the gateway's batched UNLINK (0.2 s)
                samples = []
                for i in range(args.samples * 2):
                    samples.append(await request(s, url, stream=bool(i % 2)))
                    if args.gap_ms:
                        await asyncio.sleep(args.gap_ms / 1000)
                await asyncio.sleep(0.3)
        cmds = parse_monitor(mon_file, who)
        all_smp = detailed + samples
        ends = [x.sent for x in all_smp[1:]] + [all_smp[-1].sent + 0.3]
        res["detailed"] = {}
        for smp, end in zip(detailed, ends[: len(detailed)], strict=True):
            kind = "stream" if smp.stream else "non-stream"
            res["detailed"][kind] = {"request_id": smp.rid, "lines": show(window(cmds, smp, end), smp)}
        per: dict[str, list[dict[str, float]]] = {"non-stream": [], "stream": []}
        for smp, end in zip(samples, ends[len(detailed):], strict=True):
            per["stream" if smp.stream else "non-stream"].append(steps(window(cmds, smp, end), smp))
        res["steps_median_ms"] = {k: median_steps(v) for k, v in per.items()}
        res["client_ms_with_monitor"] = {kind: client_medians([x for x in samples if x.stream == (kind == "stream")])
                                         for kind in ("non-stream", "stream")}
        return res


def client_medians(samples: list[Sample]) -> dict[str, float]:
    """Median ms from send to the first content token / the whole answer, as the client saw it."""
    out = {"first_content_ms": statistics.median((x.first_content or x.sent) - x.sent for x in samples) * 1e3}
    out["done_ms"] = statistics.median((x.done or x.sent) - x.sent for x in samples) * 1e3
    return out


def report(res: dict[str, Any]) -> str:
    lines = [f"Gatehouse from {res['src']}", ""]
    for kind, d in res["detailed"].items():
        lines += [f"## One {kind} request ({d['request_id']}): every command Valkey received, in order",
                  "ms after the client's send (+ gap to the previous line); who; connection (client port); command",
                  "", *d["lines"], ""]
    for kind, rows in res["steps_median_ms"].items():
        lines += [f"## {kind}: critical-path steps, median over the samples (ms after the client's send)", "",
                  "| step | median ms | gap to previous | n |", "|---|---|---|---|"]
        prev = 0.0
        for name, ms, n in rows:
            lines.append(f"| {name} | {ms:.3f} | +{ms - prev:.3f} | {n} |")
            prev = ms
        lines.append("")
    lines += ["## client-side medians (ms): MONITOR attached (the samples above) vs not (the commandstats run)", "",
              "| kind | first content, monitored | first content, plain | done, monitored | done, plain |",
              "|---|---|---|---|---|"]
    for kind, mon in res["client_ms_with_monitor"].items():
        plain = res["client_ms_without_monitor"][kind]
        lines.append(f"| {kind} | {mon['first_content_ms']:.3f} | {plain['first_content_ms']:.3f} | "
                     f"{mon['done_ms']:.3f} | {plain['done_ms']:.3f} |")
    lines.append("")
    lines += [f"Redis round trip from this process (redis-py asyncio on uvloop, PING, 2000 times): "
              f"p50 {res['ping_rtt_us']['p50']:.0f} µs, p90 {res['ping_rtt_us']['p90']:.0f} µs", ""]
    cpu = res["cpu_ms_per_request"]
    names = list(next(iter(cpu.values())))
    lines += ["## CPU per request at c=1 (ms of user+system time, /proc/<pid>/stat over the commandstats run; "
              "10 ms tick resolution)", "", "| kind | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {kind} | " + " | ".join(f"{v[n]:.3f}" for n in names) + " |" for kind, v in cpu.items()]
    lines.append("")
    for kind, stats in res["commandstats_per_request"].items():
        lines += [f"## {kind}: commands per request (INFO commandstats delta, no MONITOR; includes Lua-issued "
                  "commands and background ones)", "",
                  ", ".join(f"{k} {v:g}" for k, v in stats.items()), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ref", help="run the Gatehouse of this commit instead of the working tree")
    p.add_argument("--samples", type=int, default=200, help="timed requests of each kind (default 200)")
    p.add_argument("--count", type=int, default=500, help="requests of each kind for commandstats (default 500)")
    p.add_argument("--warmup", type=int, default=100, help="warm-up requests of each kind (default 100)")
    p.add_argument("--gap-ms", type=float, default=0.0,
                   help="pause between the timed requests (default 0: back to back, as bench/overhead.py sends them)")
    p.add_argument("--json", type=pathlib.Path, help="also write the results here")
    p.add_argument("--profile", type=pathlib.Path, metavar="DIR",
                   help="instead: profile the gateway and the worker (cProfile) over --count requests of each kind")
    p.add_argument("--top", type=int, default=40, help="with --profile: functions listed per table (default 40)")
    p.add_argument("--monitor", nargs=2, metavar=("HOST:PORT", "FILE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.monitor:
        host, port = args.monitor[0].rsplit(":", 1)
        monitor_to_file(host, int(port), pathlib.Path(args.monitor[1]))
        return
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    if args.profile:
        print(asyncio.run(profile(args)))
        return
    res = asyncio.run(run(args))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    print(report(res))


if __name__ == "__main__":
    main()
