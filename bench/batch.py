"""The Batch API under load: batch throughput against interactive throughput, whether the batch lane keeps
interactive latency, fairness between tenants on the interactive lane, and memory during a big batch.

    python -m bench.batch --trace --out bench/results/batch.json  # the run in docs/benchmarks.md (~4 min)
    python -m bench.batch --quick --out /tmp/batch-quick.json     # a smoke check, under two minutes
    python -m bench.batch --only throughput,memory --memory-lines 20000

Starts one stack (bench/stack.py: embedded Valkey and PostgreSQL, the fixed fast fake upstream,
``gatehouse serve`` and ``--workers`` workers as separate processes, this working tree's code) with the
interactive lane's ``queue_max_depth`` raised above the fairness flood and ``files_max_lines`` above the
largest batch; every other setting is the default (batch lines per model in flight: ``batch_max_concurrent``
= 64, batch lines at most 75 % of a worker's slots). Then, in order:

  1. throughput: ``--rounds`` rounds, each an interactive round (``--interactive-requests`` non-streamed chat
     calls at ``--concurrency``, requests/s) followed by a batch of ``--batch-lines`` lines of the same
     request (lines/s from ``in_progress_at`` to ``completed_at``, and from ``created_at`` to
     ``completed_at``, read from PostgreSQL to the microsecond; also the "lines" phase alone, to the moment
     the last line's result was counted, seen by polling). Medians of the rounds; target: batch ≥ 80 % of
     interactive. The output file of each batch is downloaded and its lines counted.
  2. lane isolation: ``--rounds`` rounds of ``--isolation-requests`` interactive calls at concurrency 4 with
     the stack idle, then the same with a batch of ``--isolation-batch-lines`` lines running (measured from
     when the batch is in progress; the batch is cancelled after). p50/p99 per phase, medians of the rounds;
     target: loaded p50 ≤ 1.5× idle, loaded p99 ≤ 2× idle. Each round also runs half of
     ``--interactive-requests`` at ``--concurrency`` idle and beside the batch: how much of a saturating
     interactive load's throughput the batch takes, and how many lines/s the batch keeps meanwhile.
  3. fairness: two virtual keys (``POST /key/generate`` with the master key; a tenant is a key's team, else
     the key). B's client runs in a process of its own (as another tenant's would; from this process B's
     calls would wait for the load generator to open A's connections). B's ``--tenant-b`` concurrent calls
     alone (unloaded, 3 per round), then while A floods ``--flood`` concurrent calls: B's calls sent at the
     same moment as A's ("at once": B's calls then reach the gateway before most of A's), and B's calls sent
     once ``--backlog-share`` of A's calls are in the interactive queue ("into backlog": the test of fair
     queuing). B's time to its last answer, medians of ``--rounds``; target: loaded ≤ 2× unloaded. For scale,
     the time A's flood takes to drain (about what B would wait behind a first-come-first-served queue) and
     how many of A's calls were answered while B's were in flight.
  4. memory: a batch of ``--memory-lines`` lines (default 50,000) with the RSS of the gateway and each
     worker (psutil) and Valkey's ``used_memory`` sampled every second from before the upload until the
     output file is downloaded. Start (just before the batch is created), max, end, and the growth over the
     batch's in-progress phase; "flat" means the in-progress phase grows by less than 5 % of its start and
     the end is within 10 % of the start.

``--trace`` adds one round each of isolation and fairness with Valkey's keyspace notifications on (job key
set, in-progress lock set and deleted, received by a subscriber process of its own) and splits every traced
call into: in the gateway until its job is queued, queued until a worker claims it, running in the worker,
and from the end-of-job transaction to the client's answer; for fairness also what A's jobs were doing when
B's were queued. The notifications cost Valkey a little, so those rounds are reported apart.

Clients: aiohttp (as bench/overhead.py) for the interactive load, the official ``openai`` SDK for files and
batches. The load generator runs in this process and shares the machine's cores with the stack.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import importlib
import json
import os
import pathlib
import platform
import re
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import aiohttp
import asyncpg
import orjson
from arq.constants import in_progress_key_prefix, job_key_prefix
from openai import AsyncOpenAI
from redis.asyncio import Redis

from bench.common import log, med, verdict
from bench.overhead import BODY, GATEHOUSE_HEADERS, git_describe, pct
from bench.overhead import rss_mb as proc_rss_mb
from bench.stack import KEY, ROOT, Stack, running_stack
from core import queue as q

PARTS = ("throughput", "isolation", "fairness", "memory")
FINAL = ("completed", "failed", "expired", "cancelled")
TARGETS = {"throughput_pct": 80.0, "isolation_p50_x": 1.5, "isolation_p99_x": 2.0, "fairness_x": 2.0}


# ── interactive load ──────────────────────────────────────────────────────────────────────────────────
@dataclass
class Load:
    latencies: list[float]  # seconds, successful calls
    elapsed: float
    errors: int
    done_at: list[float] = field(default_factory=list)  # perf_counter at each successful answer
    calls: list[tuple[str | None, float, float]] = field(default_factory=list)  # (x-request-id, sent, answered):
    # wall-clock seconds, comparable with the keyspace subscriber's times (--trace)

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed > 0 else float("nan")

    def summary(self) -> dict[str, float]:
        lat = self.latencies or [float("nan")]
        return {"n": len(self.latencies), "errors": self.errors, "elapsed_s": self.elapsed, "rps": self.rps,
                "p50_ms": pct(lat, 0.5) * 1e3, "p99_ms": pct(lat, 0.99) * 1e3}


async def load(session: aiohttp.ClientSession, url: str, headers: dict[str, str], n: int,
               concurrency: int) -> Load:
    """``n`` calls by ``concurrency`` clients, each starting its next call when its last one is answered."""
    body = orjson.dumps(BODY)
    out = Load([], 0.0, 0)
    left = n

    async def client() -> None:
        nonlocal left
        while left > 0:
            left -= 1
            wall, t0 = time.time(), time.perf_counter()
            rid = None
            try:
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    ok = r.status == 200
                    rid = r.headers.get("x-request-id")
            except (aiohttp.ClientError, TimeoutError):
                ok = False
            t1 = time.perf_counter()
            if ok:
                out.latencies.append(t1 - t0)
                out.done_at.append(t1)
                out.calls.append((rid, wall, wall + (t1 - t0)))
            else:
                out.errors += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    out.elapsed = time.perf_counter() - t0
    return out


async def burst(session: aiohttp.ClientSession, url: str, headers: dict[str, str], n: int) -> Load:
    """``n`` calls sent at once (each its own connection)."""
    return await load(session, url, headers, n, n)


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                 timeout=aiohttp.ClientTimeout(total=600))


# ── where a call's time goes (Valkey keyspace notifications, --trace) ────────────────────────────────
KEYSPACE_EVENTS = "Kg$"  # keyspace channel; generic (del) and string (set) commands
KEYSPACE_PATTERNS = (f"__keyspace@0__:{job_key_prefix}*", f"__keyspace@0__:{in_progress_key_prefix}*")
KEYSPACE_EVENT = re.compile(b"__keyspace@0__:(" + re.escape(job_key_prefix.encode()) + b"|"
                            + re.escape(in_progress_key_prefix.encode()) + rb")([^\r*]+)\r\n\$\d+\r\n(\w+)")


@dataclass
class JobTimes:
    """When one job's keys changed (unix seconds, as the subscriber received the notifications)."""

    enqueued: float | None = None  # its job key set: the enqueue script
    claimed: float | None = None  # its in-progress lock set: the claim script
    finished: float | None = None  # its in-progress lock deleted: the end-of-job transaction
    # the same events' places in Valkey's own order (times come in reads: events of one read share a time)
    enqueued_at: int | None = None
    claimed_at: int | None = None
    finished_at: int | None = None


def keyspace_log(host: str, port: int, path: pathlib.Path) -> None:
    """``--keyspace-log``: append Valkey's keyspace notifications for arq's job and in-progress keys to ``path``,
    each socket read as ``<unix time> <length>\\n<bytes>``, until killed. A process of its own, so the receive
    times do not wait for the load generator's event loop."""
    with socket.create_connection((host, port)) as s, path.open("wb") as out:
        s.sendall(b"PSUBSCRIBE " + " ".join(KEYSPACE_PATTERNS).encode() + b"\r\n")
        while data := s.recv(1 << 20):
            out.write(b"%.6f %d\n" % (time.time(), len(data)) + data)
            out.flush()


@asynccontextmanager
async def keyspace_traced(stack: Stack) -> AsyncIterator[pathlib.Path]:
    """Keyspace notifications of job keys into a file while the block runs. They cost Valkey one publish per
    key change, far less than MONITOR (which copies every command with its arguments), so the traced run keeps
    the shape of an untraced one."""
    redis = Redis.from_url(stack.redis_url)
    before = next(iter((await redis.config_get("notify-keyspace-events")).values()), "")
    await redis.config_set("notify-keyspace-events", KEYSPACE_EVENTS)
    url = urlparse(stack.redis_url)
    path = (stack.tmp or pathlib.Path(tempfile.gettempdir())) / f"keyspace-{time.time_ns()}.log"
    sub = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.batch", "--keyspace-log",
                                               url.hostname or "127.0.0.1", str(url.port), str(path), cwd=ROOT)
    try:
        deadline = time.time() + 10
        while not (path.exists() and b"psubscribe" in path.read_bytes()):
            if time.time() > deadline:
                raise TimeoutError("the keyspace subscriber did not start")
            await asyncio.sleep(0.05)
        yield path
        await asyncio.sleep(0.3)
    finally:
        sub.terminate()
        await sub.wait()
        await redis.config_set("notify-keyspace-events", before)
        await redis.aclose()


def job_times(path: pathlib.Path) -> dict[str, JobTimes]:
    """Each job's instants from a ``keyspace_log`` file (a message split across reads gets its last read's time)."""
    raw = path.read_bytes()
    chunks: list[bytes] = []
    ends: list[int] = []  # where each read ends in the joined stream
    stamps: list[float] = []
    i = size = 0
    while i < len(raw):
        j = raw.index(b"\n", i)
        stamp, length = raw[i:j].split(b" ")
        chunks.append(raw[j + 1:j + 1 + int(length)])
        size += len(chunks[-1])
        ends.append(size)
        stamps.append(float(stamp))
        i = j + 1 + int(length)
    jobs: dict[str, JobTimes] = {}
    for seq, m in enumerate(KEYSPACE_EVENT.finditer(b"".join(chunks))):
        kind, job_id, event = m.group(1), m.group(2).decode(), m.group(3)
        t = stamps[min(len(stamps) - 1, bisect.bisect_left(ends, m.end()))]
        jt = jobs.setdefault(job_id, JobTimes())
        if kind == job_key_prefix.encode() and event == b"set" and jt.enqueued is None:
            jt.enqueued, jt.enqueued_at = t, seq
        elif kind == in_progress_key_prefix.encode() and event == b"set" and jt.claimed is None:
            jt.claimed, jt.claimed_at = t, seq
        elif kind == in_progress_key_prefix.encode() and event == b"del" and jt.finished is None:
            jt.finished, jt.finished_at = t, seq
    return jobs


STEPS = ("send → enqueued", "enqueued → claimed", "claimed → finished", "finished → answered")


def steps(calls: list[tuple[str | None, float, float]], jobs: dict[str, JobTimes]) -> dict[str, list[float]]:
    """Per step, the seconds each traced call spent in it: in the gateway until its job was queued, queued until a
    worker claimed it, running in the worker, and from the end-of-job transaction to the client's answer."""
    out: dict[str, list[float]] = {k: [] for k in STEPS}
    for rid, sent, answered in calls:
        j = jobs.get(rid or "")
        if j is None or j.enqueued is None or j.claimed is None or j.finished is None:
            continue
        for k, v in zip(STEPS, (j.enqueued - sent, j.claimed - j.enqueued, j.finished - j.claimed,
                                answered - j.finished), strict=True):
            out[k].append(v)
    return out


def step_summary(calls: list[tuple[str | None, float, float]], jobs: dict[str, JobTimes]) -> dict[str, Any]:
    per = steps(calls, jobs)
    return {"traced": len(per[STEPS[0]]), "calls": len(calls),
            **{k: {"p50_ms": pct(v, 0.5) * 1e3, "p99_ms": pct(v, 0.99) * 1e3, "max_ms": max(v) * 1e3}
               for k, v in per.items() if v}}


# ── batches ───────────────────────────────────────────────────────────────────────────────────────────
def batch_file(lines: int) -> bytes:
    return b"".join(orjson.dumps({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions",
                                  "body": BODY}) + b"\n" for i in range(lines))


@dataclass
class BatchRun:
    id: str
    status: str
    total: int
    completed: int
    failed: int
    stamps: dict[str, float | None]  # from PostgreSQL, unix seconds with microseconds
    created_client: float  # time.time() just before batches.create
    lines_done_client: float | None  # time.time() of the first poll that saw every line counted
    final_client: float | None  # time.time() of the first poll that saw the final status
    output_lines: int | None = None
    progress: list[tuple[float, str, int]] = field(default_factory=list)  # (time.time(), status, lines done)

    def rates(self) -> dict[str, float]:
        s = self.stamps
        n = self.completed + self.failed

        def rate(a: float | None, b: float | None) -> float:
            return n / (b - a) if a is not None and b is not None and b > a else float("nan")

        return {"lines": n, "in_progress_to_completed_lps": rate(s["in_progress_at"], s["completed_at"]),
                "created_to_completed_lps": rate(s["created_at"], s["completed_at"]),
                "in_progress_to_lines_done_lps": rate(s["in_progress_at"], self.lines_done_client),
                "validating_s": _diff(s["created_at"], s["in_progress_at"]),
                "lines_s": _diff(s["in_progress_at"], self.lines_done_client),
                "finalizing_s": _diff(self.lines_done_client, s["completed_at"]),
                "in_progress_to_completed_s": _diff(s["in_progress_at"], s["completed_at"]),
                "created_to_completed_s": _diff(s["created_at"], s["completed_at"])}


def _diff(a: float | None, b: float | None) -> float:
    return b - a if a is not None and b is not None else float("nan")


class Batches:
    """Files and batches through the official SDK; exact timestamps from PostgreSQL."""

    def __init__(self, stack: Stack, pg: asyncpg.Pool):
        self.client = AsyncOpenAI(base_url=stack.gateway + "/v1", api_key=KEY, max_retries=0, timeout=600)
        self.pg = pg

    async def upload(self, lines: int) -> str:
        f = await self.client.files.create(file=("bench.jsonl", batch_file(lines)), purpose="batch")
        return f.id

    async def create(self, file_id: str) -> tuple[str, float]:
        t = time.time()
        b = await self.client.batches.create(input_file_id=file_id, endpoint="/v1/chat/completions",
                                             completion_window="24h")
        return b.id, t

    async def stamps(self, batch_id: str) -> dict[str, float | None]:
        row = await self.pg.fetchrow("SELECT created_at, in_progress_at, finalizing_at, completed_at, cancelled_at "
                                     "FROM batches WHERE id = $1", batch_id)
        assert row is not None
        return {k: (v.timestamp() if v is not None else None) for k, v in dict(row).items()}

    async def wait(self, batch_id: str, created: float, *, until: tuple[str, ...] = FINAL, every: float = 0.25,
                   on_status: Callable[[str], None] | None = None) -> BatchRun:
        """Poll until the batch's status is in ``until``."""
        progress: list[tuple[float, str, int]] = []
        lines_done = final = None
        while True:
            b = await self.client.batches.retrieve(batch_id)
            now = time.time()
            counts = b.request_counts
            done = (counts.completed + counts.failed) if counts else 0
            progress.append((now, b.status, done))
            if lines_done is None and counts and counts.total and done >= counts.total:
                lines_done = now
            if b.status in FINAL and final is None:
                final = now
            if on_status is not None:
                on_status(b.status)
            if b.status in until:
                break
            await asyncio.sleep(every)
        return BatchRun(b.id, b.status, counts.total if counts else 0, counts.completed if counts else 0,
                        counts.failed if counts else 0, await self.stamps(batch_id), created, lines_done, final,
                        progress=progress)

    async def output_lines(self, run: BatchRun) -> int:
        b = await self.client.batches.retrieve(run.id)
        if b.output_file_id is None:
            return 0
        content = await self.client.files.content(b.output_file_id)
        return sum(1 for ln in content.content.splitlines() if ln.strip())

    async def run(self, file_id: str, *, check_output: bool = True) -> BatchRun:
        batch_id, created = await self.create(file_id)
        run = await self.wait(batch_id, created)
        if run.status != "completed":
            raise RuntimeError(f"batch {batch_id} ended {run.status}")
        if check_output:
            run.output_lines = await self.output_lines(run)
        return run

    async def cancel(self, batch_id: str) -> None:
        await self.client.batches.cancel(batch_id)
        await self.wait(batch_id, time.time(), every=0.2)


# ── the four measurements ─────────────────────────────────────────────────────────────────────────────
async def throughput(stack: Stack, bs: Batches, args: argparse.Namespace) -> dict[str, Any]:
    url = stack.gateway + "/v1/chat/completions"
    file_id = await bs.upload(args.batch_lines)
    rounds: list[dict[str, Any]] = []
    async with new_session() as s:
        log("throughput: warm-up (interactive and a small batch)")
        await load(s, url, GATEHOUSE_HEADERS, 500, args.concurrency)
        await bs.run(await bs.upload(200), check_output=False)
        for r in range(args.rounds):
            log(f"throughput round {r + 1}/{args.rounds}: {args.interactive_requests} interactive calls at "
                f"c={args.concurrency}")
            inter = (await load(s, url, GATEHOUSE_HEADERS, args.interactive_requests, args.concurrency)).summary()
            log(f"  {inter['rps']:,.0f} req/s (errors {inter['errors']}); now a {args.batch_lines}-line batch")
            run = await bs.run(file_id)
            rates = run.rates()
            log(f"  batch: {rates['in_progress_to_completed_lps']:,.0f} lines/s in progress → completed, "
                f"{rates['created_to_completed_lps']:,.0f} from create; output lines {run.output_lines}")
            rounds.append({"interactive": inter, "batch": {"id": run.id, **rates, "completed": run.completed,
                                                            "failed": run.failed, "output_lines": run.output_lines}})
    inter_rps = med([x["interactive"]["rps"] for x in rounds])
    b_ip = med([x["batch"]["in_progress_to_completed_lps"] for x in rounds])
    b_cr = med([x["batch"]["created_to_completed_lps"] for x in rounds])
    b_lines = med([x["batch"]["in_progress_to_lines_done_lps"] for x in rounds])
    return {"rounds": rounds, "interactive_rps": inter_rps, "batch_in_progress_lps": b_ip,
            "batch_created_lps": b_cr, "batch_lines_phase_lps": b_lines,
            "validating_s": med([x["batch"]["validating_s"] for x in rounds]),
            "finalizing_s": med([x["batch"]["finalizing_s"] for x in rounds]),
            "pct_in_progress": b_ip / inter_rps * 100, "pct_created": b_cr / inter_rps * 100,
            "pct_lines_phase": b_lines / inter_rps * 100,
            "output_ok": all(x["batch"]["output_lines"] == args.batch_lines for x in rounds)}


async def isolation(stack: Stack, bs: Batches, args: argparse.Namespace) -> dict[str, Any]:
    url = stack.gateway + "/v1/chat/completions"
    file_id = await bs.upload(args.isolation_batch_lines)
    rounds: list[dict[str, Any]] = []
    traced: dict[str, Any] = {}
    n_sat = args.interactive_requests // 2
    async with new_session() as s:
        await load(s, url, GATEHOUSE_HEADERS, 200, 4)  # warm-up
        for r in range(args.rounds + (1 if args.trace else 0)):
            trace = r == args.rounds
            n = args.isolation_requests // 2 if trace else args.isolation_requests
            log(f"isolation {'traced round' if trace else f'round {r + 1}/{args.rounds}'}: idle, {n} calls at c=4"
                + ("" if trace else f", then {n_sat} at c={args.concurrency}"))
            if trace:
                async with keyspace_traced(stack) as path:
                    idle = await load(s, url, GATEHOUSE_HEADERS, n, 4)
                traced["idle"] = step_summary(idle.calls, job_times(path))
            else:
                idle = await load(s, url, GATEHOUSE_HEADERS, n, 4)
                idle_sat = await load(s, url, GATEHOUSE_HEADERS, n_sat, args.concurrency)
            batch_id, created = await bs.create(file_id)
            await bs.wait(batch_id, created, until=("in_progress", *FINAL), every=0.1)
            await asyncio.sleep(1.0)  # the runner has fed its first lines
            counts = [await bs.client.batches.retrieve(batch_id)]
            marks = [time.time()]
            log(f"  batch {batch_id} in progress; the same beside it")
            if trace:
                async with keyspace_traced(stack) as path:
                    loaded = await load(s, url, GATEHOUSE_HEADERS, n, 4)
                traced["loaded"] = step_summary(loaded.calls, job_times(path))
            else:
                loaded = await load(s, url, GATEHOUSE_HEADERS, n, 4)
            counts.append(await bs.client.batches.retrieve(batch_id))
            marks.append(time.time())
            if not trace:
                loaded_sat = await load(s, url, GATEHOUSE_HEADERS, n_sat, args.concurrency)
                counts.append(await bs.client.batches.retrieve(batch_id))
                marks.append(time.time())
            done = [c.request_counts.completed if c.request_counts else 0 for c in counts]
            lps = [(done[k + 1] - done[k]) / (marks[k + 1] - marks[k]) for k in range(len(done) - 1)]
            last = counts[-1]
            ran_throughout = last.status == "in_progress" and (last.request_counts is None or
                                                               done[-1] < last.request_counts.total)
            await bs.cancel(batch_id)
            await asyncio.sleep(1.0)  # the cancelled batch's last lines leave the workers
            i, lo = idle.summary(), loaded.summary()
            log(f"  c=4 idle p50/p99 {i['p50_ms']:.2f}/{i['p99_ms']:.2f} ms, with the batch "
                f"{lo['p50_ms']:.2f}/{lo['p99_ms']:.2f} ms; batch ran {lps[0]:,.0f} lines/s meanwhile"
                f"{'' if ran_throughout else ' (it did NOT run throughout)'}")
            if not trace:
                si, sl = idle_sat.summary(), loaded_sat.summary()
                log(f"  c={args.concurrency} idle {si['rps']:,.0f} req/s, with the batch {sl['rps']:,.0f} req/s; batch "
                    f"ran {lps[1]:,.0f} lines/s meanwhile")
                rounds.append({"idle": i, "loaded": lo, "batch_lps_during": lps[0], "saturated_idle": si,
                               "saturated_loaded": sl, "batch_lps_during_saturated": lps[1],
                               "batch_ran_throughout": ran_throughout})
    out: dict[str, Any] = {"rounds": rounds}
    for phase in ("idle", "loaded", "saturated_idle", "saturated_loaded"):
        out[phase] = {m: med([x[phase][m] for x in rounds]) for m in ("p50_ms", "p99_ms", "rps")}
        out[phase]["errors"] = sum(x[phase]["errors"] for x in rounds)
    out["p50_x"] = out["loaded"]["p50_ms"] / out["idle"]["p50_ms"]
    out["p99_x"] = out["loaded"]["p99_ms"] / out["idle"]["p99_ms"]
    out["saturated_rps_pct"] = out["saturated_loaded"]["rps"] / out["saturated_idle"]["rps"] * 100
    out["batch_lps_during"] = med([x["batch_lps_during"] for x in rounds])
    out["batch_lps_during_saturated"] = med([x["batch_lps_during_saturated"] for x in rounds])
    out["batch_ran_throughout"] = all(x["batch_ran_throughout"] for x in rounds)
    if traced:
        out["trace"] = traced
    return out


async def make_key(session: aiohttp.ClientSession, gateway: str, alias: str) -> str:
    async with session.post(gateway + "/key/generate", json={"key_alias": f"{alias}-{os.getpid()}"},
                            headers={"authorization": f"Bearer {KEY}"}) as r:
        if r.status != 200:
            raise RuntimeError(f"/key/generate -> {r.status}: {await r.text()}")
        return str((await r.json())["key"])


class TenantB:
    """Tenant B's client in a process of its own (``--b-client``), as another tenant's would be: sent from this
    process, B's calls would wait for the load generator to open A's thousands of connections first."""

    def __init__(self, proc: asyncio.subprocess.Process):
        self.proc = proc

    @classmethod
    async def start(cls, url: str, key: str, n: int) -> TenantB:
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.batch", "--b-client", url, key,
                                                    str(n), cwd=ROOT, stdin=asyncio.subprocess.PIPE,
                                                    stdout=asyncio.subprocess.PIPE)
        assert proc.stdout is not None
        if (await proc.stdout.readline()).strip() != b"ready":
            raise RuntimeError("tenant B's client did not start")
        return cls(proc)

    async def fire(self) -> Load:
        """B's calls, all at once; returns when every one is answered."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        d = orjson.loads(await self.proc.stdout.readline())
        calls = [(c[0], c[1], c[2]) for c in d["calls"]]
        return Load([c[2] - c[1] for c in calls], d["elapsed"], d["errors"], calls=calls)

    async def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        await self.proc.wait()


async def b_client(url: str, key: str, n: int) -> None:
    """``--b-client``: warm up, say ``ready``; then for each ``go`` line on stdin, ``n`` calls at once and one line of
    JSON (elapsed seconds, errors, and per call [x-request-id, sent, answered] in wall-clock seconds)."""
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    loop = asyncio.get_running_loop()
    async with new_session() as s:
        for _ in range(3):
            await burst(s, url, headers, n)  # n keep-alive connections, the key in the gateway's cache
        print("ready", flush=True)
        while (await loop.run_in_executor(None, sys.stdin.readline)).strip() == "go":
            b = await burst(s, url, headers, n)
            print(orjson.dumps({"elapsed": b.elapsed, "errors": b.errors, "calls": b.calls}).decode(), flush=True)


async def fairness(stack: Stack, args: argparse.Namespace) -> dict[str, Any]:
    url = stack.gateway + "/v1/chat/completions"
    redis = Redis.from_url(stack.redis_url)
    async with new_session() as admin:
        ha = {"authorization": f"Bearer {await make_key(admin, stack.gateway, 'bench-tenant-a')}",
              "content-type": "application/json"}
        kb = await make_key(admin, stack.gateway, "bench-tenant-b")
    tb = await TenantB.start(url, kb, args.tenant_b)
    unloaded: list[float] = []
    loaded: dict[str, list[dict[str, float]]] = {"at_once": [], "into_backlog": []}
    traced: dict[str, Any] = {}
    try:
        async with new_session() as sa:
            await load(sa, url, ha, 200, 16)  # warm-up: the key cached, connections open
            for r in range(args.rounds):
                for _ in range(3):
                    unloaded.append((await tb.fire()).elapsed)
                log(f"fairness round {r + 1}/{args.rounds}: B alone {unloaded[-1] * 1e3:.0f} ms for "
                    f"{args.tenant_b} calls")
                for variant in loaded:
                    res, _, _ = await flood_and_b(sa, tb, url, ha, redis, args, variant)
                    loaded[variant].append(res)
                    log(f"  A floods {args.flood}, B sent {variant.replace('_', ' ')}: B done in "
                        f"{res['b_s'] * 1e3:.0f} ms, A drained in {res['a_s'] * 1e3:.0f} ms, "
                        f"{res['a_answered_while_b']:.0f} of A's answered meanwhile (errors A {res['a_errors']:.0f}, "
                        f"B {res['b_errors']:.0f})")
                    await asyncio.sleep(0.5)
            if args.trace:
                for variant in loaded:
                    log(f"fairness traced round: B sent {variant.replace('_', ' ')}")
                    async with keyspace_traced(stack) as path:
                        res, a, b = await flood_and_b(sa, tb, url, ha, redis, args, variant)
                    traced[variant] = {"b_ms": res["b_s"] * 1e3, **fair_trace(a, b, job_times(path))}
                    await asyncio.sleep(0.5)
    finally:
        await tb.stop()
        await redis.aclose()
    base = med(unloaded)
    out: dict[str, Any] = {"b_unloaded_ms": base * 1e3, "b_unloaded_runs_ms": [x * 1e3 for x in unloaded]}
    for variant, runs in loaded.items():
        b_s = med([x["b_s"] for x in runs])
        out[variant] = {"b_ms": b_s * 1e3, "x_unloaded": b_s / base,
                        "a_drain_ms": med([x["a_s"] for x in runs]) * 1e3,
                        "b_start_ms": med([x["b_start_s"] for x in runs]) * 1e3,
                        "queue_depth_at_b": med([x["queue_depth_at_b"] for x in runs]),
                        "a_answered_while_b": med([x["a_answered_while_b"] for x in runs]),
                        "a_errors": sum(x["a_errors"] for x in runs), "b_errors": sum(x["b_errors"] for x in runs),
                        "runs": runs}
    if traced:
        out["trace"] = traced
    return out


def fair_trace(a: Load, b: Load, jobs: dict[str, JobTimes]) -> dict[str, Any]:
    """B's calls step by step, and what A's jobs were doing while B's waited (counted in Valkey's order of
    events, not by time)."""
    bj = [jobs[rid] for rid, _, _ in b.calls if rid in jobs]
    aj = [jobs[rid] for rid, _, _ in a.calls if rid in jobs]
    enq = [j.enqueued_at for j in bj if j.enqueued_at is not None]
    claims = [j.claimed_at for j in bj if j.claimed_at is not None]
    if not enq or not claims:
        return {"b_steps": step_summary(b.calls, jobs)}
    first, last = min(enq), max(claims)
    never = 1 << 62
    return {"b_steps": step_summary(b.calls, jobs),
            "a_claimed_while_b_queued": sum(1 for j in aj if first <= (j.claimed_at or -1) <= last),
            "a_not_yet_queued_at_b": sum(1 for j in aj if j.enqueued_at is None or j.enqueued_at > first),
            "a_queued_at_b": sum(1 for j in aj if j.enqueued_at is not None and j.enqueued_at <= first
                                 and (j.claimed_at or never) > first),
            "a_running_at_b": sum(1 for j in aj if j.claimed_at is not None and j.claimed_at <= first
                                  and (j.finished_at or never) > first)}


async def flood_and_b(sa: aiohttp.ClientSession, tb: TenantB, url: str, ha: dict[str, str], redis: Redis,
                      args: argparse.Namespace, variant: str) -> tuple[dict[str, float], Load, Load]:
    """A's flood; B's calls at the same moment ("at_once") or once ``--backlog-share`` of A's calls are in the
    interactive queue ("into_backlog")."""
    t0 = time.time()
    a_task = asyncio.create_task(burst(sa, url, ha, args.flood))
    depth = 0
    if variant == "into_backlog":
        deadline = t0 + 30
        while time.time() < deadline and not a_task.done():
            depth = int(await redis.zcard(q.INTERACTIVE_QUEUE))
            if depth >= args.flood * args.backlog_share:
                break
            await asyncio.sleep(0.002)
    else:
        await asyncio.sleep(0)  # A's calls are started first, in this same instant
    b_sent = time.time()
    b = await tb.fire()
    b_end = max((c[2] for c in b.calls), default=b_sent)
    a = await a_task
    return ({"b_s": b.elapsed, "b_start_s": b_sent - t0, "a_s": a.elapsed, "queue_depth_at_b": depth,
             "a_answered_while_b": sum(1 for c in a.calls if b_sent <= c[2] <= b_end),
             "a_errors": a.errors, "b_errors": b.errors}, a, b)


try:
    _psutil: Any = importlib.import_module("psutil")  # not a dependency of the project: /proc without it
except ImportError:
    _psutil = None


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` in MiB: psutil where installed, else /proc/<pid>/status."""
    if _psutil is None:
        return proc_rss_mb(pid)
    try:
        return float(_psutil.Process(pid).memory_info().rss) / 2**20
    except _psutil.Error:
        return float("nan")


async def memory(stack: Stack, bs: Batches, args: argparse.Namespace) -> dict[str, Any]:
    pids = {"gateway": stack.gateway_pid, **{f"worker{i}": p for i, p in enumerate(stack.worker_pids)}}
    redis = Redis.from_url(stack.redis_url)
    samples: list[dict[str, Any]] = []
    phase = "before upload"
    stop = asyncio.Event()

    async def sampler() -> None:
        while not stop.is_set():
            info = await redis.info("memory")
            samples.append({"t": time.time(), "phase": phase, **{n: rss_mb(p) for n, p in pids.items()},
                            "valkey_used_mb": int(info["used_memory"]) / 2**20,
                            "batch_lane": int(await redis.zcard(q.BATCH_QUEUE))})
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except TimeoutError:
                pass

    task = asyncio.create_task(sampler())
    try:
        await asyncio.sleep(1.5)
        log(f"memory: uploading a {args.memory_lines}-line file")
        phase = "upload"
        file_id = await bs.upload(args.memory_lines)
        await asyncio.sleep(1.5)
        phase = "batch"
        start_i = len(samples)

        def note(status: str) -> None:
            nonlocal phase
            phase = status

        log("memory: batch created; sampling every second")
        batch_id, created = await bs.create(file_id)
        run = await bs.wait(batch_id, created, every=1.0, on_status=note)
        if run.status != "completed":
            raise RuntimeError(f"batch {batch_id} ended {run.status}")
        phase = "download"
        run.output_lines = await bs.output_lines(run)
        phase = "after"
        await asyncio.sleep(2.5)
    finally:
        stop.set()
        await task
        await redis.aclose()
    out: dict[str, Any] = {"lines": args.memory_lines, "output_lines": run.output_lines, **run.rates(),
                           "samples": samples, "per_process": {}}
    start = samples[max(0, start_i - 1)]
    ip = [x for x in samples if x["phase"] == "in_progress"]
    for name in [*pids, "valkey_used_mb"]:
        values = [x[name] for x in samples]
        k = max(1, min(5, len(ip) // 4))
        growth = (med([x[name] for x in ip[-k:]]) - med([x[name] for x in ip[:k]])) if ip else float("nan")
        s, e, m = start[name], samples[-1][name], max(values)
        out["per_process"][name] = {
            "start_mb": s, "max_mb": m, "end_mb": e, "in_progress_growth_mb": growth,
            "max_phase": next(x["phase"] for x in samples if x[name] == m),
            "flat": bool(abs(growth) < 0.05 * s and abs(e - s) < 0.10 * s) if name != "valkey_used_mb" else None}
    out["batch_lane_max"] = max(x["batch_lane"] for x in samples)
    return out


# ── the run ───────────────────────────────────────────────────────────────────────────────────────────
async def run(args: argparse.Namespace) -> dict[str, Any]:
    parts = [p for p in PARTS if p in args.only]
    largest = max(args.batch_lines, args.isolation_batch_lines, args.memory_lines)
    gatehouse: dict[str, Any] = {"queue_max_depth": max(2_000, 4 * (args.flood + args.tenant_b)),
                                 "files_max_lines": max(50_000, largest)}
    if args.batch_max_concurrent:
        gatehouse["batch_max_concurrent"] = args.batch_max_concurrent
    if args.worker_concurrency:
        gatehouse["worker_concurrency"] = args.worker_concurrency
    if args.batch_busy_slots is not None:
        gatehouse["batch_busy_slots"] = args.batch_busy_slots
    res: dict[str, Any] = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                   f"load average before the run {os.getloadavg()[0]:.2f}",
        "code": git_describe(ROOT), "workers": args.workers, "config": gatehouse,
        "settings": {k: getattr(args, k) for k in ("quick", "rounds", "interactive_requests", "concurrency",
                                                    "batch_lines", "isolation_requests", "isolation_batch_lines",
                                                    "flood", "tenant_b", "backlog_share", "memory_lines", "only",
                                                    "trace", "worker_concurrency", "batch_max_concurrent",
                                                    "batch_busy_slots")},
        "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    t_start = time.perf_counter()
    async with running_stack(workers=args.workers, postgres=True, gatehouse=gatehouse) as stack:
        assert stack.database_url is not None
        log(f"stack up (logs in {stack.tmp})")
        pids = {"gateway": stack.gateway_pid, **{f"worker{i}": p for i, p in enumerate(stack.worker_pids)}}
        res["rss_mb_at_start"] = {n: rss_mb(p) for n, p in pids.items()}
        pg = await asyncpg.create_pool(stack.database_url, min_size=1, max_size=2)
        bs = Batches(stack, pg)
        try:
            if "throughput" in parts:
                res["throughput"] = await throughput(stack, bs, args)
            if "isolation" in parts:
                res["isolation"] = await isolation(stack, bs, args)
            if "fairness" in parts:
                res["fairness"] = await fairness(stack, args)
            if "memory" in parts:
                res["memory"] = await memory(stack, bs, args)
            res["rss_mb_at_end"] = {n: rss_mb(p) for n, p in pids.items()}
        finally:
            await bs.client.close()
            await pg.close()
    res["wall_s"] = time.perf_counter() - t_start
    return res


def report(res: dict[str, Any]) -> str:
    s = res["settings"]
    lines = [f"Machine: {res['machine']}; code {res['code']}; workers: {res['workers']}; "
             f"rounds: {s['rounds']}; config {json.dumps(res['config'])}; wall time {res['wall_s']:.0f} s", ""]
    rows = ["| measure | value | target |", "|---|---|---|"]
    if "throughput" in res:
        t = res["throughput"]
        rows += [
            f"| interactive throughput ({s['interactive_requests']:,} calls at c={s['concurrency']}) | "
            f"{t['interactive_rps']:,.0f} req/s | |",
            f"| batch of {s['batch_lines']:,} lines, in_progress → completed | "
            f"{t['batch_in_progress_lps']:,.0f} lines/s "
            f"(**{t['pct_in_progress']:.0f} %** of interactive) | ≥ 80 % — {verdict(t['pct_in_progress'] >= 80)} |",
            f"| same batch, created → completed | {t['batch_created_lps']:,.0f} lines/s "
            f"({t['pct_created']:.0f} %) | ≥ 80 % — {verdict(t['pct_created'] >= 80)} |",
            f"| same batch, lines phase only (in_progress → last line counted) | {t['batch_lines_phase_lps']:,.0f} "
            f"lines/s ({t['pct_lines_phase']:.0f} %) | |",
            f"| batch validation (created → in_progress) / finalizing | {t['validating_s']:.2f} s / "
            f"{t['finalizing_s']:.2f} s | |",
            f"| batch output files complete | {'yes' if t['output_ok'] else 'NO'} | |"]
    if "isolation" in res:
        i = res["isolation"]
        rows += [
            f"| c=4 p50 idle → with a batch running | {i['idle']['p50_ms']:.2f} → {i['loaded']['p50_ms']:.2f} ms "
            f"(**{i['p50_x']:.2f}×**) | ≤ 1.5× — {verdict(i['p50_x'] <= 1.5)} |",
            f"| c=4 p99 idle → with a batch running | {i['idle']['p99_ms']:.2f} → {i['loaded']['p99_ms']:.2f} ms "
            f"(**{i['p99_x']:.2f}×**) | ≤ 2× — {verdict(i['p99_x'] <= 2)} |",
            f"| c=4 throughput idle → with the batch; the batch meanwhile | {i['idle']['rps']:,.0f} → "
            f"{i['loaded']['rps']:,.0f} req/s; {i['batch_lps_during']:,.0f} lines/s"
            f"{'' if i['batch_ran_throughout'] else ' (batch did NOT run throughout)'} | |",
            f"| c={s['concurrency']} (saturating) idle → with the batch: req/s, p50 / p99 | "
            f"{i['saturated_idle']['rps']:,.0f} → {i['saturated_loaded']['rps']:,.0f} req/s "
            f"({i['saturated_rps_pct']:.0f} %), {i['saturated_idle']['p50_ms']:.1f} / "
            f"{i['saturated_idle']['p99_ms']:.1f} → {i['saturated_loaded']['p50_ms']:.1f} / "
            f"{i['saturated_loaded']['p99_ms']:.1f} ms; the batch meanwhile {i['batch_lps_during_saturated']:,.0f} "
            f"lines/s | |"]
    if "isolation" in res and "trace" in res["isolation"]:
        tr = res["isolation"]["trace"]
        rows += [f"| traced, c=4 {phase}: {step} p50 / p99 | {tr[phase][step]['p50_ms']:.2f} / "
                 f"{tr[phase][step]['p99_ms']:.2f} ms | |"
                 for step in STEPS for phase in ("idle", "loaded") if step in tr.get(phase, {})]
    if "fairness" in res:
        f = res["fairness"]
        rows.append(f"| B: {s['tenant_b']} calls alone | {f['b_unloaded_ms']:.0f} ms | |")
        into = f"once {s['backlog_share']:.0%} is queued of"
        for variant, label in (("at_once", "at the same moment as"), ("into_backlog", into)):
            v = f[variant]
            rows.append(f"| B: {s['tenant_b']} calls sent {label} A's flood of {s['flood']:,} | {v['b_ms']:.0f} ms "
                        f"(**{v['x_unloaded']:.1f}×**; A drains in {v['a_drain_ms']:.0f} ms; queue depth at B's "
                        f"start {v['queue_depth_at_b']:.0f}; {v['a_answered_while_b']:.0f} of A's answered "
                        f"meanwhile) | ≤ 2× — {verdict(v['x_unloaded'] <= 2)} |")
        for variant, tv in f.get("trace", {}).items():
            st = tv["b_steps"]
            parts = "; ".join(f"{k} {st[k]['p50_ms']:.0f} (max {st[k]['max_ms']:.0f})" for k in STEPS if k in st)
            rows.append(f"| traced, B sent {variant.replace('_', ' ')} ({tv['b_ms']:.0f} ms): B's steps p50 in ms | "
                        f"{parts} | |")
            if "a_claimed_while_b_queued" in tv:
                rows.append(f"| traced, B sent {variant.replace('_', ' ')}: A's jobs when B's first was queued | "
                            f"{tv['a_not_yet_queued_at_b']} not yet queued (still in the gateway), "
                            f"{tv['a_queued_at_b']} queued, {tv['a_running_at_b']} running; "
                            f"{tv['a_claimed_while_b_queued']} of A's claimed between B's first enqueue and B's "
                            f"last claim | |")
    if "rss_mb_at_start" in res:
        rows.append("| RSS when the stack was up → after every part | " + ", ".join(
            f"{n} {v:.0f} → {res.get('rss_mb_at_end', {}).get(n, float('nan')):.0f} MB"
            for n, v in res["rss_mb_at_start"].items()) + " | |")
    if "memory" in res:
        m = res["memory"]
        rows.append(f"| {m['lines']:,}-line batch: in_progress → completed | {m['in_progress_to_completed_s']:.0f} s "
                    f"({m['in_progress_to_completed_lps']:,.0f} lines/s); output lines {m['output_lines']:,} | |")
        for name, v in m["per_process"].items():
            if name == "valkey_used_mb":
                rows.append(f"| Valkey used_memory start / max / end | {v['start_mb']:.1f} / {v['max_mb']:.1f} / "
                            f"{v['end_mb']:.1f} MB (max during {v['max_phase']}; batch lane ≤ "
                            f"{m['batch_lane_max']} entries) | |")
            else:
                rows.append(f"| RSS {name} start / max / end | {v['start_mb']:.0f} / {v['max_mb']:.0f} "
                            f"(during {v['max_phase']}) / {v['end_mb']:.0f} MB; in-progress growth "
                            f"{v['in_progress_growth_mb']:+.1f} MB | flat — {verdict(bool(v['flat']))} |")
    return "\n".join(lines + rows)


QUICK = {"rounds": 1, "interactive_requests": 5_000, "batch_lines": 5_000, "isolation_requests": 1_000,
         "isolation_batch_lines": 15_000, "flood": 2_000, "tenant_b": 20, "memory_lines": 10_000}
DEFAULTS = {"rounds": 3, "interactive_requests": 10_000, "batch_lines": 10_000, "isolation_requests": 2_000,
            "isolation_batch_lines": 40_000, "flood": 2_000, "tenant_b": 20, "memory_lines": 50_000}


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.batch", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="a smoke check in about two minutes: one round, " + ", ".join(f"{k}={v}" for k, v in
                                                                                   QUICK.items()))
    p.add_argument("--only", default=",".join(PARTS),
                   help=f"which parts, comma-separated (default: all: {','.join(PARTS)})")
    p.add_argument("--rounds", type=int,
                   help=f"rounds of throughput, isolation and fairness; medians (default {DEFAULTS['rounds']})")
    p.add_argument("--interactive-requests", type=int,
                   help=f"interactive calls per throughput round (default {DEFAULTS['interactive_requests']:,})")
    p.add_argument("--concurrency", type=int, default=128,
                   help="clients for interactive throughput; one worker saturates at 64-128 here (default 128)")
    p.add_argument("--batch-lines", type=int,
                   help=f"lines of each throughput batch (default {DEFAULTS['batch_lines']:,})")
    p.add_argument("--isolation-requests", type=int,
                   help=f"c=4 calls per phase (idle, with a batch) per isolation round (default "
                        f"{DEFAULTS['isolation_requests']:,})")
    p.add_argument("--isolation-batch-lines", type=int,
                   help=f"lines of the batch run beside them; cancelled after (default "
                        f"{DEFAULTS['isolation_batch_lines']:,})")
    p.add_argument("--flood", type=int, help=f"tenant A's concurrent calls (default {DEFAULTS['flood']:,})")
    p.add_argument("--tenant-b", type=int, help=f"tenant B's concurrent calls (default {DEFAULTS['tenant_b']})")
    p.add_argument("--backlog-share", type=float, default=0.5,
                   help="fairness: B's calls go out once this share of A's flood is in the queue (default 0.5)")
    p.add_argument("--memory-lines", type=int, help=f"lines of the memory batch (default {DEFAULTS['memory_lines']:,}; "
                                                    f"--quick {QUICK['memory_lines']:,})")
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--batch-max-concurrent", type=int,
                   help="override the gateway's batch_max_concurrent (default: leave the product default, 64)")
    p.add_argument("--batch-busy-slots", type=int,
                   help="override batch_busy_slots, a worker's batch lines while it runs interactive calls "
                        "(default: the product's, 0)")
    p.add_argument("--worker-concurrency", type=int,
                   help="override worker_concurrency, the jobs one worker runs at once (default: the product's, 256)")
    p.add_argument("--trace", action="store_true",
                   help="after the measured rounds of isolation and fairness, one more round of each with Valkey's "
                        "keyspace notifications on, to split each call's time into: in the gateway until queued, "
                        "queued, running in the worker, and back to the client (not in the medians)")
    p.add_argument("--b-client", nargs=3, metavar=("URL", "KEY", "N"), help=argparse.SUPPRESS)
    p.add_argument("--keyspace-log", nargs=3, metavar=("HOST", "PORT", "FILE"), help=argparse.SUPPRESS)
    p.add_argument("--out", type=pathlib.Path, help="write the results (JSON, with every round and sample) here")
    args = p.parse_args()
    if args.keyspace_log:
        keyspace_log(args.keyspace_log[0], int(args.keyspace_log[1]), pathlib.Path(args.keyspace_log[2]))
        return
    if args.b_client:
        asyncio.run(b_client(args.b_client[0], args.b_client[1], int(args.b_client[2])))
        return
    preset = QUICK if args.quick else DEFAULTS
    for k, v in preset.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.only = [x.strip() for x in args.only.split(",") if x.strip()]
    unknown = set(args.only) - set(PARTS)
    if unknown:
        p.error(f"unknown part(s) {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
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
