"""Capacity figures (issue #17, docs/scaling.md): what one gateway core, one worker and one Valkey carry on the
queue path, and what PostgreSQL sees per request.

    python -m bench.capacity --window-check --json bench/results/capacity.json   # docs/scaling.md's run (~4 min)
    python -m bench.capacity                                     # without the window check (~3 min)
    python -m bench.capacity --quick                             # a smoke check (~1 min)
    python -m bench.capacity --plain-key --slow-ms 0 --monitor 0 # a virtual key without limits, for comparison

Starts one stack (bench/stack.py: embedded Valkey and PostgreSQL, the fake upstream, ``gatehouse serve`` and one
``gatehouse worker`` as separate processes, this working tree, product defaults) and creates one virtual key with
every limit set (RPM, TPM, parallel requests, budget; all far above the load, so nothing is refused): each request
pays virtual-key auth, the limits' Lua call before it and the settle call after it, and a spend-log row — the
realistic path, not the master key's.

Workloads, each driven by ``--concurrency`` closed-loop aiohttp clients in this process for ``--duration`` s,
``--rounds`` rounds (the order rotating from round to round), medians of the rounds reported:

  fast    non-streamed chat completion on ``bench`` (the fake upstream's canned answer, ~0.2 ms)
  stream  the same streamed (9 content chunks, ``stream_options.include_usage``), each stream read to its end
  slow    non-streamed on ``ttft-MS`` (the upstream answers after ``--slow-ms`` ms) with ``--slow-concurrency``
          clients, more than the worker's ``worker_concurrency`` slots: the worker is concurrency-bound (Little's
          law: throughput = slots / latency) and jobs wait in the queue, as with a real LLM upstream

Per round and workload:

  * requests/s, errors, latency p50 / p99;
  * CPU time of every process (/proc/<pid>/stat: gateway, worker, Valkey, PostgreSQL, the fake upstream, this load
    generator, and ``others``: the machine's busy time none of them used) per request; hence requests per gateway
    CPU-second and per worker CPU-second (= requests/s per fully used core, if it scaled linearly);
  * Valkey, from INFO deltas: commands per request from ``commandstats``, which counts the commands a Lua script
    or a MULTI/EXEC runs as well as the EVAL/EXEC that carries them (checked on Valkey 9.1: an EVAL running three
    ``redis.call`` adds 4 calls; ``total_commands_processed`` counts the same 4); socket reads per request
    (``total_reads_processed``: one per client round trip, a pipeline read at once counting once); network bytes
    per request; CPU per request (``used_cpu_user + used_cpu_sys`` of the process, and of its main thread, which
    runs every command and script), from which one core ÷ CPU per request is the single-thread ceiling
    (computed, not measured); time inside commands (commandstats ``usec`` of the calls only clients send: a
    script's or a transaction's inner commands are inside its EVAL/EXEC; wall time, so it includes any time the
    thread was descheduled);
  * every 0.5 s while the load runs: jobs running (the workers' running hashes) and queued (the queue's sorted
    set, which holds running jobs too, less those), Valkey's clients, the gateway's and the worker's connections
    to Valkey (/proc); running ÷ requests/s is the time per job (Little's law);
  * PostgreSQL, from pg_stat_database deltas read ``--settle`` s after the load (backends report their counters
    when idle, within a second): transactions, rows written (inserted + updated + deleted) and WAL bytes per
    request.

Once, after the rounds: each workload again with Valkey's MONITOR attached for ``--monitor`` s, to split the
commands by issuer (gateway, worker, Lua script; the ports of each process's connections from /proc); the keys of
the queue path and their MEMORY USAGE, sampled mid-load in the first round; the keys left after the load; the
gateway's and worker's connections after each warm-up (pools keep their high-water mark); spend_log's size per
row; and the background rates of Valkey commands, PostgreSQL transactions and CPU while the stack is idle.

``--window-check`` adds two small stacks with the same slots in total (6 workers × 24 and 2 × 72, master key,
``--window-clients`` clients on the slow upstream): a worker's claim reads only the first ``queue_read_limit``
entries of the queue (arq's default: 5 × worker_concurrency, at least 100), where running jobs stay until they
end, so does a queue run more jobs at once than that window, however many workers? The report ends with a plan
for 1,000 / 10,000 / 50,000 req/s computed from the medians (``--headroom``: the target utilisation of a core).

The load generator shares the machine with the stack (on the 2-core development machine everything runs on two
shared cores): CPU and Redis commands per request are the figures that carry over to other machines; requests/s
is this machine's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import platform
import re
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

import aiohttp
import asyncpg
import orjson
from redis.asyncio import Redis

from bench.bench_runs import cpu_by_role, cpu_per_request
from bench.common import log, med, run_main
from bench.overhead import BODY, GATEHOUSE_HEADERS, git_describe, one, one_stream, pct
from bench.redis_monitor import issuers, monitoring, parse_monitor, socket_inodes, tcp_rows
from bench.stack import ROOT, Stack, running_stack
from core.config import GatehouseSettings
from core.queue import INTERACTIVE_QUEUE, WORKERS_KEY, running_key

STREAM_BODY = {**BODY, "stream": True, "stream_options": {"include_usage": True}}
# commands no script or MULTI/EXEC of the stack issues (bench/redis_trace's MONITOR output): their usec is the
# main thread's time inside commands (the gateway's ZREM of the parallel limit, ~1 call a request, is left out:
# ZREM is also called inside scripts)
TOP_LEVEL = ("eval", "evalsha", "exec", "multi", "xread", "blmpop", "mget", "unlink", "time", "zrangebyscore")
ROLES = ("gateway", "worker", "valkey", "postgres", "upstream", "bench", "others")
LIMITED_KEY = {"rpm_limit": 2_000_000_000, "tpm_limit": 2_000_000_000,
               "max_parallel_requests": 1_000_000, "max_budget": 1e9}
_ID = re.compile(r"[0-9a-f]{32}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d{6,}")


@dataclass(frozen=True)
class Workload:
    name: str
    model: str
    stream: bool
    concurrency: int

    def body(self) -> bytes:
        return orjson.dumps({**(STREAM_BODY if self.stream else BODY), "model": self.model})


# ── load ──────────────────────────────────────────────────────────────────────────────────────────────
async def drive(url: str, headers: dict[str, str], w: Workload, duration: float) -> dict[str, Any]:
    """``w.concurrency`` closed-loop clients for ``duration`` s: requests/s, latency, errors."""
    body = w.body()
    lat: list[float] = []
    errors: Counter[str] = Counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as s:
        stop_at = time.perf_counter() + duration

        async def client() -> None:
            while time.perf_counter() < stop_at:
                try:
                    if w.stream:
                        lat.append((await one_stream(s, url, headers, body, drain=True))[1])
                    else:
                        lat.append(await one(s, url, headers, body))
                except (RuntimeError, aiohttp.ClientError, TimeoutError) as e:
                    errors[str(e)[:120] or type(e).__name__] += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(w.concurrency)))
        elapsed = time.perf_counter() - t0
    return {"n": len(lat), "elapsed_s": elapsed, "rps": len(lat) / elapsed, "errors": sum(errors.values()),
            "error_kinds": dict(errors.most_common(3)),
            "p50_ms": pct(lat, 0.5) * 1e3 if lat else float("nan"),
            "p99_ms": pct(lat, 0.99) * 1e3 if lat else float("nan")}


# ── counters ──────────────────────────────────────────────────────────────────────────────────────────
class Probe:
    """This script's Redis client. It counts the commands it sends, so that they come off Valkey's counters: every
    command it sends is one round trip, and none of them is one the stack sends."""

    def __init__(self, redis: Redis):
        self.redis = redis
        self.sent: Counter[str] = Counter()

    async def info(self, section: str = "everything") -> tuple[dict[str, Any], Counter[str]]:
        """INFO, and what this client had sent before it (INFO's counters include those, not the INFO itself)."""
        before = Counter(self.sent)
        info = await self.redis.info(section)
        self.sent["info"] += 1
        return info, before

    async def scan(self, match: str | None = None) -> list[bytes]:
        keys: list[bytes] = []
        cursor = 0
        while True:
            cursor, batch = await self.redis.scan(cursor, match=match, count=1000)
            self.sent["scan"] += 1
            keys += batch
            if cursor == 0:
                return keys

    async def memory_usage(self, key: bytes) -> int | None:
        self.sent["memory|usage"] += 1
        size = await self.redis.memory_usage(key, samples=0)
        return None if size is None else int(size)

    async def zcard(self, key: str) -> int:
        self.sent["zcard"] += 1
        return int(await self.redis.zcard(key))

    async def hlen(self, key: str) -> int:
        self.sent["hlen"] += 1
        return int(await self.redis.hlen(key))  # type: ignore[misc]


async def redis_counters(probe: Probe) -> dict[str, Any]:
    """Valkey's counters from one ``INFO everything``, less this script's own commands."""
    info, own = await probe.info()
    cmds = {k.removeprefix("cmdstat_"): int(v["calls"]) - own.get(k.removeprefix("cmdstat_"), 0)
            for k, v in info.items() if k.startswith("cmdstat_")}
    usec = {k.removeprefix("cmdstat_"): int(v["usec"]) for k, v in info.items() if k.startswith("cmdstat_")}
    total = sum(own.values())
    return {"cmds": cmds, "usec": usec, "commands": int(info["total_commands_processed"]) - total,
            "reads": int(info["total_reads_processed"]) - total - 1,  # the INFO's own read is in its counters
            "net_in": int(info["total_net_input_bytes"]), "net_out": int(info["total_net_output_bytes"]),
            "cpu": float(info["used_cpu_user"]) + float(info["used_cpu_sys"]),
            "cpu_main": float(info.get("used_cpu_user_main_thread", "nan"))
            + float(info.get("used_cpu_sys_main_thread", "nan")),
            "clients": int(info["connected_clients"]), "blocked": int(info["blocked_clients"]),
            "used_memory": int(info["used_memory"]), "mem_clients": int(info.get("mem_clients_normal", 0))}


def redis_delta(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = {k: b[k] - a[k] for k in ("commands", "reads", "net_in", "net_out", "cpu", "cpu_main")}
    out["cmds"] = {k: v - a["cmds"].get(k, 0) for k, v in b["cmds"].items() if v - a["cmds"].get(k, 0)}
    out["usec"] = {k: v - a["usec"].get(k, 0) for k, v in b["usec"].items() if v - a["usec"].get(k, 0)}
    return out


def conns_to(pid: int, port: int) -> int:
    """Established TCP connections of process ``pid`` to ``port`` on this machine (/proc)."""
    inodes = socket_inodes(pid)
    return sum(1 for cols in tcp_rows()
               if cols[9] in inodes and cols[3] == "01" and int(cols[2].rsplit(":", 1)[1], 16) == port)


async def pg_counters(pg: asyncpg.Connection) -> dict[str, int]:
    """pg_stat_database for the stack's database, and the WAL position. The read is a transaction of its own,
    which shows up in the next read's counters: ``pg_delta`` takes it off."""
    row = await pg.fetchrow("SELECT xact_commit, xact_rollback, tup_inserted, tup_updated, tup_deleted, "
                            "pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint AS wal "
                            "FROM pg_stat_database WHERE datname = current_database()")
    assert row is not None
    return {"xacts": int(row["xact_commit"]) + int(row["xact_rollback"]),
            "rows": int(row["tup_inserted"]) + int(row["tup_updated"]) + int(row["tup_deleted"]),
            "inserted": int(row["tup_inserted"]), "wal": int(row["wal"])}


def pg_delta(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    out = {k: b[k] - a[k] for k in a}
    out["xacts"] = max(0, out["xacts"] - 1)  # the earlier read's own transaction
    return out


def per_request(delta: dict[str, Any], n: int) -> dict[str, Any]:
    """The counters of one round, per request."""
    r, p, n = delta["redis"], delta["pg"], max(1, n)
    cpu = delta["cpu"]
    out: dict[str, Any] = {
        "cpu_ms": {role: cpu.get(role, {}).get("ms_per_request", 0.0) for role in ROLES},
        "cores": {role: cpu.get(role, {}).get("cores", 0.0) for role in ROLES},
        "redis_commands": r["commands"] / n, "redis_reads": r["reads"] / n,
        "redis_net_in_bytes": r["net_in"] / n, "redis_net_out_bytes": r["net_out"] / n,
        "redis_cpu_us": r["cpu"] / n * 1e6, "redis_cpu_main_us": r["cpu_main"] / n * 1e6,
        "redis_by_command": {k: v / n for k, v in sorted(r["cmds"].items(), key=lambda kv: -kv[1])},
        "pg_xacts": p["xacts"] / n, "pg_rows": p["rows"] / n, "pg_inserted": p["inserted"] / n,
        "pg_wal_bytes": p["wal"] / n,
        "redis_usec_by_command": {k: v / n for k, v in sorted(r["usec"].items(), key=lambda kv: -kv[1])},
    }
    # time inside commands that only clients send here (a script's or a transaction's inner commands are inside
    # their EVAL/EVALSHA/EXEC): what the main thread must do however many I/O threads read and write
    out["redis_exec_us"] = sum(v for k, v in out["redis_usec_by_command"].items() if k in TOP_LEVEL)
    out["redis_script_us"] = sum(out["redis_usec_by_command"].get(k, 0.0) for k in ("eval", "evalsha"))
    out["req_per_gateway_cpu_s"] = 1e3 / out["cpu_ms"]["gateway"] if out["cpu_ms"]["gateway"] else float("nan")
    out["req_per_worker_cpu_s"] = 1e3 / out["cpu_ms"]["worker"] if out["cpu_ms"]["worker"] else float("nan")
    out["redis_ceiling_rps"] = 1e6 / out["redis_cpu_us"] if out["redis_cpu_us"] else float("nan")
    out["redis_ceiling_main_rps"] = 1e6 / out["redis_cpu_main_us"] if out["redis_cpu_main_us"] else float("nan")
    return out


# ── keys and their memory ─────────────────────────────────────────────────────────────────────────────
def key_group(key: bytes) -> str:
    return _ID.sub("<id>", key.decode(errors="replace"))


async def census(probe: Probe, sample: int = 20) -> dict[str, dict[str, float]]:
    """Every key, grouped by name with the ids taken out: how many, and the mean MEMORY USAGE of a sample."""
    groups: dict[str, list[bytes]] = {}
    for key in await probe.scan():
        groups.setdefault(key_group(key), []).append(key)
    out = {}
    for name, keys in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        sizes = [s for k in keys[:sample] if (s := await probe.memory_usage(k)) is not None]
        out[name] = {"count": len(keys), "mean_bytes": sum(sizes) / len(sizes) if sizes else float("nan")}
    return out


# ── one round ─────────────────────────────────────────────────────────────────────────────────────────
@dataclass
class Ctx:
    stack: Stack
    probe: Probe
    pg: asyncpg.Connection
    url: str
    headers: dict[str, str]
    args: argparse.Namespace
    running_keys: list[str]  # the workers' running hashes (job id -> score while the job runs)

    async def snapshot(self) -> dict[str, Any]:
        return {"redis": await redis_counters(self.probe), "pg": await pg_counters(self.pg),
                "cpu": cpu_by_role(str(self.stack.tmp)), "t": time.perf_counter()}

    def valkey_port(self) -> int:
        return int(self.stack.redis_url.removeprefix("redis://").split("/")[0].rsplit(":", 1)[1])

    def connections(self) -> dict[str, int]:
        """The gateway's and the worker's open connections to Valkey."""
        port = self.valkey_port()
        return {"gateway": conns_to(self.stack.gateway_pid, port),
                "worker": sum(conns_to(pid, port) for pid in self.stack.worker_pids)}


async def idle(ctx: Ctx, seconds: float) -> dict[str, float]:
    """Background rates per second while nothing is sent."""
    a = await ctx.snapshot()
    await asyncio.sleep(seconds)
    b = await ctx.snapshot()
    dt = b["t"] - a["t"]
    d = redis_delta(a["redis"], b["redis"])
    cores = cpu_per_request(a["cpu"], b["cpu"], 1, dt)
    return {"redis_commands_per_s": d["commands"] / dt, "redis_reads_per_s": d["reads"] / dt,
            "pg_xacts_per_s": pg_delta(a["pg"], b["pg"])["xacts"] / dt, "redis_clients": b["redis"]["clients"],
            **{f"{role}_cores": cores.get(role, {}).get("cores", 0.0) for role in ("gateway", "worker", "valkey",
                                                                                  "postgres")}}


async def in_flight(ctx: Ctx, stop: asyncio.Event, every_s: float = 0.5) -> dict[str, float]:
    """Sampled while the load runs: jobs running (the workers' running hashes) and in the queue's sorted set (queued
    + running: arq removes a job at its end), Valkey's clients, the gateway's and worker's connections; means."""
    samples: list[dict[str, float]] = []
    while not stop.is_set():
        try:
            await asyncio.wait_for(stop.wait(), every_s)
        except TimeoutError:
            pass
        if stop.is_set():
            break
        running = sum([await ctx.probe.hlen(k) for k in ctx.running_keys])
        zset = await ctx.probe.zcard(INTERACTIVE_QUEUE)
        info, _ = await ctx.probe.info("clients")
        conns = ctx.connections()
        samples.append({"running": running, "queued": max(0, zset - running), "clients": info["connected_clients"],
                        "blocked": info["blocked_clients"], "gateway_conns": conns["gateway"],
                        "worker_conns": conns["worker"]})
    return {k: sum(x[k] for x in samples) / len(samples) for k in samples[0]} if samples else {}


async def measured(ctx: Ctx, w: Workload, duration: float, keys: bool) -> dict[str, Any]:
    """One round of ``w``: its load figures, and its counters per request."""
    a = await ctx.snapshot()
    mid: dict[str, Any] = {}

    async def sample_mid() -> None:
        await asyncio.sleep(duration / 2)
        info = await redis_counters(ctx.probe)
        mid.update(used_memory=info["used_memory"], mem_clients=info["mem_clients"], clients=info["clients"])
        if keys:
            mid["keys"] = await census(ctx.probe)

    stop = asyncio.Event()
    sampler, flight = asyncio.create_task(sample_mid()), asyncio.create_task(in_flight(ctx, stop))
    load = await drive(ctx.url, ctx.headers, w, duration)
    stop.set()
    await sampler
    mid["in_flight"] = await flight
    end_cpu, end_redis = cpu_by_role(str(ctx.stack.tmp)), await redis_counters(ctx.probe)
    await asyncio.sleep(ctx.args.settle)  # PostgreSQL's backends report when idle; batched UNLINKs run
    b = await ctx.snapshot()
    redis = redis_delta(a["redis"], b["redis"])
    redis["cpu"] = end_redis["cpu"] - a["redis"]["cpu"]  # CPU over the load only, not the settling
    redis["cpu_main"] = end_redis["cpu_main"] - a["redis"]["cpu_main"]
    delta = {"redis": redis, "pg": pg_delta(a["pg"], b["pg"]),
             "cpu": cpu_per_request(a["cpu"], end_cpu, load["n"], load["elapsed_s"])}
    out = {**load, **per_request(delta, load["n"]), "mid": mid}
    running = mid["in_flight"].get("running", float("nan"))
    out["running_mean"] = running
    out["queued_mean"] = mid["in_flight"].get("queued", float("nan"))
    out["job_time_s"] = running / load["rps"] if load["rps"] else float("nan")  # Little's law: L = λW
    return out


# ── MONITOR: who sends what ───────────────────────────────────────────────────────────────────────────
async def monitored(ctx: Ctx, w: Workload, seconds: float) -> dict[str, Any]:
    """``w`` for ``seconds`` with MONITOR attached: commands per request by issuer (gateway, worker, lua)."""
    st = ctx.stack
    mon_file = (st.tmp or pathlib.Path("/tmp")) / f"monitor-{w.name}.log"
    async with monitoring(st.redis_url, mon_file, cwd=ROOT):
        load = await drive(ctx.url, ctx.headers, w, seconds)
        who = issuers(st.gateway_pid, st.worker_pids)
        await asyncio.sleep(0.3)
    cmds = parse_monitor(mon_file, who)
    mon_file.unlink(missing_ok=True)
    n = max(1, load["n"])
    by_who = Counter(c.who for c in cmds)
    by_cmd = Counter(f"{c.who} {c.name}" for c in cmds)
    return {"n": load["n"], "rps_with_monitor": load["rps"],
            "per_request_by_issuer": {k: v / n for k, v in by_who.most_common()},
            "per_request_by_issuer_command": {k: v / n for k, v in by_cmd.most_common(40)}}


# ── the claim window ──────────────────────────────────────────────────────────────────────────────────
WINDOW_SHAPES = ((6, 24), (2, 72))  # (workers, worker_concurrency): the same 144 slots
QUEUE_MAX_DEPTH = 2_000  # the default; workers.assemble reads max(5 × worker_concurrency, queue_max_depth)


async def count_running(redis: Redis, hashes: list[str], samples: list[int], stop: asyncio.Event) -> None:
    """Jobs running on all workers (their running hashes), every 0.25 s until ``stop``."""
    while not stop.is_set():
        await asyncio.sleep(0.25)
        samples.append(sum([int(await redis.hlen(h)) for h in hashes]))  # type: ignore[misc]


async def window_check(slow_ms: int, clients: int, duration: float) -> list[dict[str, Any]]:
    """A worker's claim looks at the first ``queue_read_limit`` entries of the queue's sorted set (since this check
    was written: max(5 × worker_concurrency, queue_max_depth), the whole bounded queue; arq's default was
    5 × worker_concurrency), and running jobs stay there until they end: do all the slots fill? Two stacks with
    the same slots in total, master key, ``clients`` clients on a
    ``slow_ms`` upstream: jobs running (sampled every 0.25 s) and requests/s."""
    out = []
    model = f"ttft-{slow_ms}"
    for workers, slots in WINDOW_SHAPES:
        async with running_stack(workers=workers, gatehouse={"worker_concurrency": slots}, models=[model]) as st:
            redis = Redis.from_url(st.redis_url)
            try:
                await asyncio.sleep(1.5)  # every worker has registered
                hashes = [running_key(w.decode()) for w in await redis.zrange(WORKERS_KEY, 0, -1)]
                samples: list[int] = []
                stop = asyncio.Event()
                w = Workload("window", model, False, clients)
                await drive(st.gateway + "/v1/chat/completions", GATEHOUSE_HEADERS, w, 2.0)  # warm-up
                task = asyncio.create_task(count_running(redis, hashes, samples, stop))
                load = await drive(st.gateway + "/v1/chat/completions", GATEHOUSE_HEADERS, w, duration)
                stop.set()
                await task
            finally:
                await redis.aclose()
        steady = samples[2:-2] or samples
        out.append({"workers": workers, "worker_concurrency": slots, "slots": workers * slots,
                    "read_window": max(5 * slots, QUEUE_MAX_DEPTH), "registered_workers": len(hashes),
                    "clients": clients,
                    "rps": load["rps"], "errors": load["errors"], "running_max": max(steady, default=0),
                    "running_mean": sum(steady) / len(steady) if steady else float("nan")})
        log(f"window check: {workers} workers × {slots} slots: {load['rps']:.0f} req/s, running max "
            f"{out[-1]['running_max']}, mean {out[-1]['running_mean']:.0f}")
    return out


# ── the run ───────────────────────────────────────────────────────────────────────────────────────────
async def virtual_key(gateway: str, limits: bool) -> str:
    async with aiohttp.ClientSession() as http, \
            http.post(gateway + "/key/generate", headers=GATEHOUSE_HEADERS,
                      json={"key_alias": f"capacity-{time.time_ns()}", **(LIMITED_KEY if limits else {})}) as r:
        if r.status != 200:
            raise RuntimeError(f"POST /key/generate -> {r.status}: {await r.text()}")
        return str((await r.json())["key"])


def workloads(args: argparse.Namespace) -> list[Workload]:
    ws = [Workload("fast", "bench", False, args.concurrency), Workload("stream", "bench", True, args.concurrency)]
    if args.slow_ms > 0:
        ws.append(Workload("slow", f"ttft-{args.slow_ms}", False, args.slow_concurrency))
    return ws


def summarise(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians of the rounds (dicts of numbers key by key, a missing key counting 0); errors summed; the mid-load
    sample of the first round."""
    first = rounds[0]
    out: dict[str, Any] = {}
    for k, v in first.items():
        if isinstance(v, dict) and k not in ("error_kinds", "mid"):
            names = sorted(set().union(*(r[k] for r in rounds)), key=lambda kk: -float(v.get(kk, 0.0)))
            out[k] = {kk: med([float(r[k].get(kk, 0.0)) for r in rounds]) for kk in names}
        elif isinstance(v, int | float):
            out[k] = med([float(r[k]) for r in rounds])
    out["errors"] = sum(r["errors"] for r in rounds)
    out["error_kinds"] = dict(sum((Counter(r["error_kinds"]) for r in rounds), Counter()))
    out["mid"] = first["mid"]
    return out


async def run(args: argparse.Namespace) -> dict[str, Any]:
    ws = workloads(args)
    started = time.time()
    slow_models = [w.model for w in ws if w.model != "bench"]
    async with running_stack(postgres=True, models=slow_models) as st:
        assert st.database_url is not None
        key = await virtual_key(st.gateway, not args.plain_key)
        redis = Redis.from_url(st.redis_url)
        probe = Probe(redis)
        pg = await asyncpg.connect(st.database_url)
        try:
            workers = await redis.zrange(WORKERS_KEY, 0, -1)
            ctx = Ctx(st, probe, pg, st.gateway + "/v1/chat/completions",
                      {**GATEHOUSE_HEADERS, "authorization": f"Bearer {key}"}, args,
                      [running_key(w.decode()) for w in workers])
            res: dict[str, Any] = {"idle": [], "rounds": {w.name: [] for w in ws}, "connections_after_warmup": {}}
            for w in ws:  # in order of concurrency: the pools grow to each workload's high-water mark
                log(f"warm-up: {w.name} for {args.warmup:g} s")
                await drive(ctx.url, ctx.headers, w, args.warmup)
                res["connections_after_warmup"][w.name] = ctx.connections()
            for rnd in range(args.rounds):
                await asyncio.sleep(args.settle)
                res["idle"].append(await idle(ctx, args.idle))
                turn = rnd % len(ws)
                for w in ws[turn:] + ws[:turn]:
                    log(f"round {rnd + 1}/{args.rounds}: {w.name} (c={w.concurrency}, {args.duration:g} s)")
                    r = await measured(ctx, w, args.duration, keys=rnd == 0)
                    log(f"  {r['rps']:,.0f} req/s, {r['errors']} errors; gateway {r['cpu_ms']['gateway']:.3f} ms, "
                        f"worker {r['cpu_ms']['worker']:.3f} ms, Valkey {r['redis_cpu_us']:.0f} µs CPU/request; "
                        f"{r['redis_commands']:.1f} commands, {r['redis_reads']:.1f} reads/request")
                    res["rounds"][w.name].append(r)
            await asyncio.sleep(args.settle)
            res["after_load_keys"] = await census(probe)
            res["monitor"] = {}
            if args.monitor > 0:
                for w in ws:
                    log(f"MONITOR attached: {w.name} for {args.monitor:g} s")
                    res["monitor"][w.name] = await monitored(ctx, w, args.monitor)
                    await asyncio.sleep(args.settle)
            res["spend_log"] = dict(await pg.fetchrow(
                "SELECT count(*) AS rows, pg_total_relation_size('spend_log') AS bytes FROM spend_log") or {})
            res["server"] = {"valkey": (await redis.info("server")).get("valkey_version"),
                             "postgres": await pg.fetchval("SHOW server_version"),
                             "io_threads": (await redis.config_get("io-threads")).get("io-threads"),
                             "maxclients": (await redis.config_get("maxclients")).get("maxclients")}
        finally:
            await pg.close()
            await redis.aclose()
    res["summary"] = {name: summarise(rs) for name, rs in res["rounds"].items()}
    res["idle_summary"] = {k: med([x[k] for x in res["idle"]]) for k in res["idle"][0]}
    defaults = {k: f.default for k, f in GatehouseSettings.model_fields.items()}
    res["meta"] = {
        "date_utc": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(started)), "wall_s": time.time() - started,
        "commit": git_describe(ROOT), "cores": os.cpu_count(), "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {_cpu_model()}",
        "key": "plain virtual key" if args.plain_key else "virtual key with RPM, TPM, parallel and budget limits",
        "worker_concurrency": defaults["worker_concurrency"], "queue_max_depth": defaults["queue_max_depth"],
        "workloads": {w.name: {"model": w.model, "stream": w.stream, "concurrency": w.concurrency} for w in ws},
        "settings": {k: getattr(args, k) for k in ("rounds", "duration", "warmup", "idle", "settle", "monitor",
                                                    "concurrency", "slow_ms", "slow_concurrency", "headroom",
                                                    "plain_key", "window_check", "window_clients")}}
    res["plan"] = plan(res, args.headroom)
    if args.window_check:
        res["window"] = await window_check(args.slow_ms or 1000, args.window_clients, args.duration)
    return res


def _cpu_model() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


# ── computed: the plan ────────────────────────────────────────────────────────────────────────────────
TARGETS = (1_000, 10_000, 50_000)
LATENCIES_S = (1.0, 10.0)


def plan(res: dict[str, Any], headroom: float) -> dict[str, Any]:
    """Computed from the measured medians, not measured: per target rate and workload (fast, stream), the cores
    at ``headroom`` utilisation, workers by CPU and by slots (Little's law: in flight = rate × upstream latency),
    Valkey cores, shards at ``headroom`` of one core, Valkey connections (the gateway's, per request in flight, as
    measured under the slow workload), PostgreSQL rows and WAL."""
    out: dict[str, Any] = {}
    slots = res["meta"]["worker_concurrency"]
    slow = res["summary"].get("slow")
    conns_per_flight = (slow["mid"]["in_flight"].get("gateway_conns", float("nan"))
                        / res["meta"]["workloads"]["slow"]["concurrency"]) if slow else float("nan")
    for name in ("fast", "stream"):
        s = res["summary"].get(name)
        if s is None:
            continue
        rows = []
        for rate in TARGETS:
            row = {"rate": rate, "gateway_cores": rate / (s["req_per_gateway_cpu_s"] * headroom),
                   "worker_cores": rate / (s["req_per_worker_cpu_s"] * headroom),
                   "valkey_cores": rate * s["redis_cpu_us"] / 1e6,
                   "valkey_shards": rate / (s["redis_ceiling_rps"] * headroom),
                   "valkey_commands_per_s": rate * s["redis_commands"],
                   "valkey_net_mbit_s": rate * (s["redis_net_in_bytes"] + s["redis_net_out_bytes"]) * 8 / 1e6,
                   "pg_rows_per_s": rate * s["pg_rows"], "pg_wal_mb_s": rate * s["pg_wal_bytes"] / 1e6}
            for lat in LATENCIES_S:
                row[f"in_flight_{lat:g}s"] = rate * lat
                row[f"workers_by_slots_{lat:g}s"] = rate * lat / slots
                row[f"valkey_connections_{lat:g}s"] = rate * lat * conns_per_flight
            rows.append(row)
        out[name] = rows
    out["gateway_connections_per_request_in_flight"] = conns_per_flight
    return out


# ── report ────────────────────────────────────────────────────────────────────────────────────────────
def _f(v: float, digits: int = 0) -> str:
    return "—" if v != v else f"{v:,.{digits}f}"


def report(res: dict[str, Any]) -> str:
    m, s = res["meta"], res["summary"]
    names = list(s)
    lines = [
        f"{m['date_utc']}; {m['commit']}; {m['machine']}, Python {m['python']}; Valkey {res['server']['valkey']} "
        f"(io-threads {res['server']['io_threads']}), PostgreSQL {res['server']['postgres']}; {m['key']}; "
        f"one gateway, one worker (worker_concurrency {m['worker_concurrency']}); "
        f"{m['settings']['rounds']} rounds × {m['settings']['duration']:g} s per workload, medians; "
        f"the load generator on the same cores; wall time {m['wall_s']:.0f} s",
        "",
        "| measured | " + " | ".join(f"{n} (c={m['workloads'][n]['concurrency']}, {m['workloads'][n]['model']}"
                                     f"{', streamed' if m['workloads'][n]['stream'] else ''})" for n in names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]

    def row(label: str, cell: Any) -> None:
        lines.append(f"| {label} | " + " | ".join(cell(s[n]) for n in names) + " |")

    row("requests/s (errors, all rounds)", lambda x: f"**{_f(x['rps'])}** ({x['errors']})")
    row("latency p50 / p99", lambda x: f"{_f(x['p50_ms'], 1)} / {_f(x['p99_ms'], 1)} ms")
    for role in ROLES:
        row(f"CPU per request: {role}", lambda x, r=role: f"{x['cpu_ms'][r]:.3f} ms ({x['cores'][r]:.2f} cores)")
    row("requests per gateway CPU-second", lambda x: f"**{_f(x['req_per_gateway_cpu_s'])}**")
    row("requests per worker CPU-second", lambda x: f"**{_f(x['req_per_worker_cpu_s'])}**")
    row("Valkey commands per request (commandstats, incl. inside Lua/EXEC)", lambda x: f"{x['redis_commands']:.1f}")
    row("Valkey socket reads per request (≈ client round trips)", lambda x: f"{x['redis_reads']:.1f}")
    row("Valkey CPU per request: process / main thread",
        lambda x: f"{x['redis_cpu_us']:.0f} / {x['redis_cpu_main_us']:.0f} µs")
    row("Valkey network in / out per request", lambda x: f"{_f(x['redis_net_in_bytes'])} / "
                                                         f"{_f(x['redis_net_out_bytes'])} B")
    row("→ one Valkey core saturates at (computed)", lambda x: f"{_f(x['redis_ceiling_rps'])} req/s")
    row("Valkey time inside commands per request: all top-level / scripts (commandstats usec)",
        lambda x: f"{x['redis_exec_us']:.0f} / {x['redis_script_us']:.0f} µs")
    row("jobs running / queued (means of samples every 0.5 s)",
        lambda x: f"{x['running_mean']:.0f} / {x['queued_mean']:.0f}")
    row("→ time per job, Little's law (running ÷ req/s)", lambda x: f"{x['job_time_s'] * 1e3:,.1f} ms")
    row("Valkey connections: gateway / worker (means); Valkey clients",
        lambda x: f"{x['mid']['in_flight'].get('gateway_conns', 0):.0f} / "
                  f"{x['mid']['in_flight'].get('worker_conns', 0):.0f}; {x['mid']['in_flight'].get('clients', 0):.0f}")
    row("PostgreSQL transactions per request", lambda x: f"{x['pg_xacts']:.4f}")
    row("PostgreSQL rows written per request", lambda x: f"{x['pg_rows']:.3f}")
    row("PostgreSQL WAL per request", lambda x: f"{_f(x['pg_wal_bytes'])} B")
    lines += ["", "Valkey commands per request, by command (commandstats):", ""]
    for n in names:
        lines.append(f"- {n}: " + ", ".join(f"{k} {v:.2f}" for k, v in s[n]["redis_by_command"].items() if v >= 0.01))
    lines += ["", "Valkey µs inside commands per request, by command (commandstats usec; a script's or a "
                  "transaction's inner commands are counted in it too):", ""]
    for n in names:
        lines.append(f"- {n}: " + ", ".join(f"{k} {v:.1f}" for k, v in list(s[n]["redis_usec_by_command"].items())[:8]))
    if res["monitor"]:
        lines += ["", "With MONITOR attached: commands per request by issuer (lua = run inside a script):", ""]
        for n, mon in res["monitor"].items():
            lines.append(f"- {n} ({mon['n']} requests): " + ", ".join(
                f"{k} {v:.2f}" for k, v in mon["per_request_by_issuer"].items()))
            lines.append("  - " + ", ".join(f"{k} {v:.2f}" for k, v in mon["per_request_by_issuer_command"].items()
                                            if v >= 0.05))
    lines += ["", "Keys mid-load (round 1): count, mean MEMORY USAGE:", ""]
    for n in names:
        keys = s[n]["mid"].get("keys", {})
        lines.append(f"- {n}: " + "; ".join(f"`{k}` {v['count']} × {_f(v['mean_bytes'])} B" for k, v in keys.items())
                     + f"; used_memory {s[n]['mid'].get('used_memory', 0) / 1e6:.1f} MB, clients' memory "
                       f"{s[n]['mid'].get('mem_clients', 0) / 1e6:.1f} MB")
    lines += ["", "Connections to Valkey after each warm-up (pools keep their high-water mark): " + "; ".join(
        f"{n} gateway {c['gateway']}, worker {c['worker']}" for n, c in res["connections_after_warmup"].items())]
    sl = res.get("spend_log") or {}
    if sl.get("rows"):
        lines += ["", f"spend_log after the run: {sl['rows']:,} rows, {sl['bytes'] / 1e6:.1f} MB with its indexes "
                      f"({sl['bytes'] / sl['rows']:.0f} B a row)"]
    lines += ["", "Keys left after the load: " + "; ".join(
        f"`{k}` {v['count']}" for k, v in res["after_load_keys"].items())]
    i = res["idle_summary"]
    lines += ["", "Idle background (medians): " + ", ".join(f"{k} {v:.2f}" for k, v in i.items())]
    if res.get("window"):
        lines += ["", "Claim window (master key, 1 s upstream): workers × worker_concurrency → slots, read window: "
                  "req/s, jobs running max / mean:", ""]
        lines += [f"- {x['workers']} × {x['worker_concurrency']} → {x['slots']} slots, window {x['read_window']}: "
                  f"{x['rps']:.0f} req/s ({x['errors']} errors), running {x['running_max']} / {x['running_mean']:.0f}"
                  for x in res["window"]]
    pl = res["plan"]
    per_flight = pl["gateway_connections_per_request_in_flight"]
    lines += ["", f"Computed from the medians above (not measured): {res['meta']['settings']['headroom']:.0%} target "
                  f"utilisation of a core, {per_flight:.1f} gateway connections to Valkey per request in flight (the "
                  "slow workload's)", "",
              "| workload | req/s | gateway cores | worker cores (CPU) | workers by slots, 1 s / 10 s upstream | "
              "Valkey cores | Valkey shards | Valkey commands/s | Valkey connections, 1 s / 10 s | PostgreSQL rows/s, "
              "WAL |", "|---" * 10 + "|"]
    for name in ("fast", "stream"):
        lines += [f"| {name} | {r['rate']:,} | {r['gateway_cores']:.1f} | {r['worker_cores']:.1f} | "
                  f"{r['workers_by_slots_1s']:.0f} / {r['workers_by_slots_10s']:,.0f} | {r['valkey_cores']:.1f} | "
                  f"{r['valkey_shards']:.1f} | {r['valkey_commands_per_s'] / 1e3:,.0f}k | "
                  f"{_f(r['valkey_connections_1s'])} / {_f(r['valkey_connections_10s'])} | "
                  f"{r['pg_rows_per_s']:,.0f}, {r['pg_wal_mb_s']:.1f} MB/s |" for r in pl.get(name, [])]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds per workload; medians reported (default 3)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per workload per round (default 10)")
    p.add_argument("--concurrency", type=int, default=64, help="clients for fast and stream (default 64)")
    p.add_argument("--slow-ms", type=int, default=1000,
                   help="the slow workload's upstream latency in ms; 0 leaves it out (default 1000)")
    p.add_argument("--slow-concurrency", type=int, default=512,
                   help="clients for the slow workload: above worker_concurrency, so jobs queue (default 512)")
    p.add_argument("--warmup", type=float, default=3.0, help="warm-up seconds per workload (default 3)")
    p.add_argument("--idle", type=float, default=2.0, help="idle seconds per round for background rates (default 2)")
    p.add_argument("--settle", type=float, default=2.0,
                   help="seconds after the load before PostgreSQL's counters are read (default 2)")
    p.add_argument("--monitor", type=float, default=3.0,
                   help="seconds per workload with MONITOR attached; 0: skip (default 3)")
    p.add_argument("--headroom", type=float, default=0.6,
                   help="target utilisation for the computed plan (default 0.6: 60 %% of a core)")
    p.add_argument("--window-check", action="store_true",
                   help="also: does a 6th worker on one queue add running jobs? (two more stacks, ~40 s)")
    p.add_argument("--window-clients", type=int, default=200, help="clients for --window-check (default 200)")
    p.add_argument("--plain-key", action="store_true", help="a virtual key without limits (no limit Lua calls)")
    p.add_argument("--quick", action="store_true", help="a smoke check: 1 round of 4 s, short warm-up and MONITOR")
    p.add_argument("--json", type=pathlib.Path, help="also write the raw results here")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.duration, args.warmup, args.idle, args.monitor = 1, 4.0, 1.0, 1.0, 1.5
    res = run_main(run, args)
    print(report(res))


if __name__ == "__main__":
    main()
