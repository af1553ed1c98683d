"""One agent task of a benchmark run (a suite item with a ``command``), on one model, as seed 003 runs them: the
command runs in the run's sandbox with ``OPENAI_BASE_URL`` (the gateway's ``/v1``) and ``OPENAI_API_KEY`` (a key
for this task alone, on this model alone, revoked the moment the task ends), so every call it makes goes through
the gateway and is counted for the task: from the spend log rows of its key (the gateway writes them in batches
about every second, so they are read until their count holds still, for at most ``SPEND_WAIT_S``). The latencies of
each of those calls come from the timing record the worker wrote for it (the key's metadata names the run:
``gatehouse:bench:timing:<request id>``, read and deleted in one round trip) into ``task.calls_detail`` (the first
``MAX_DETAIL``) and ``task.upstream_ms`` (all); a call without one (its record expired, Redis failed) has null
figures. The task's ``key_id`` is the ``user_id`` of its calls' Langfuse traces (a minted key has no user of its
own), whose session id is the run id.

A task whose command ran is an ``ok`` result (its exit code and score say whether it passed); one that timed out
or could not be started is an ``error``. Scoring is the caller's (load.py): exit 0 → 1.0 unless a scorer reads
stdout."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from redis.asyncio import Redis

from core import queue as q
from core.benchsuite import SuiteItem
from core.database import Database
from workers.benchmarks.client import OUTPUT_CHARS, Result
from workers.benchmarks.keys import RunKeys
from workers.benchmarks.sandbox import Sandbox, TaskOutcome

log = logging.getLogger("gatehouse.benchmarks")
TAIL_CHARS = 2000
SPEND_WAIT_S = 3.0
SPEND_STABLE_S = 1.25  # longer than the gateway's spend flush interval (gateway/spend.py, 1 s)
SPEND_POLL_S = 0.25
SPEND_SQL = ("SELECT request_id, prompt_tokens, completion_tokens, cost FROM spend_log WHERE key_id = $1 "
             "ORDER BY created_at, request_id")
TIMING_FIELDS = ("queue_ms", "upstream_ms", "upstream_ttft_ms", "cold_start")  # of a call's timing record, kept
MAX_DETAIL = 1000  # calls of a task listed one by one in its result (a result row stays small)


@dataclass(frozen=True, slots=True)
class TaskSpend:
    """What a task's key was charged for, from the spend log: one row per answered call."""

    request_ids: tuple[str, ...]
    input_tokens: int
    output_tokens: int
    cost: float

    @property
    def calls(self) -> int:
        return len(self.request_ids)


async def run_task(*, keys: RunKeys, sandbox: Sandbox, db: Database, redis: Redis, gateway_url: str, model: str,
                   item: SuiteItem, level: str, rep: int) -> tuple[Result, str]:
    """The task's RESULT (score unset) and its whole stdout (what a scorer reads)."""
    started_at = time.time()
    minted = await keys.for_task(model, item.id, item.timeout_s)
    env = {"OPENAI_BASE_URL": gateway_url.rstrip("/") + "/v1", "OPENAI_API_KEY": minted.bearer,
           "GATEHOUSE_BENCH_RUN": keys.run.id, "GATEHOUSE_MODEL": model}
    outcome: TaskOutcome | None = None
    error: dict[str, object] | None = None
    try:
        outcome = await sandbox.run(item.argv(), env, item.timeout_s)
    except OSError as e:  # the command does not exist, is not executable, ...
        error = {"status": None, "code": "sandbox_error", "message": f"cannot start the command: {e}"[:500]}
    except Exception as e:  # a sandbox that failed (Modal unreachable, no credentials): the task's result says so
        log.exception("benchmark run %s: the sandbox of task %s failed", keys.run.id, item.id)
        error = {"status": None, "code": "sandbox_error", "message": f"{type(e).__name__}: {e}"[:500]}
    finally:
        await keys.revoke([minted.key_id])
    spend = await spend_of(db, minted.key_id)
    details = await calls_detail(redis, spend.request_ids)
    timed = [d["upstream_ms"] for d in details if isinstance(d["upstream_ms"], int | float)]
    if outcome is not None and outcome.timed_out:
        error = {"status": None, "code": "task_timeout",
                 "message": f"The task did not finish within {item.timeout_s:g} s; it was killed."}
    stdout = outcome.stdout if outcome is not None else ""
    task = {"exit_code": outcome.exit_code if outcome is not None else None,
            "wall_ms": round(outcome.wall_ms, 3) if outcome is not None else None,
            "calls": spend.calls, "input_tokens": spend.input_tokens, "output_tokens": spend.output_tokens,
            "cost": spend.cost, "key_id": minted.key_id,
            "upstream_ms": round(sum(timed), 3) if timed else None, "calls_detail": details[:MAX_DETAIL],
            "stdout_tail": stdout[-TAIL_CHARS:], "stderr_tail": outcome.stderr[-TAIL_CHARS:] if outcome else ""}
    result: Result = {
        "model": model, "level": level, "item_id": item.id, "repeat": rep,
        "status": "ok" if error is None else "error", "error": error, "started_at": round(started_at, 6),
        "ttft_ms": None, "itl_ms": None, "tpot_ms": None, "e2e_ms": None,
        "input_tokens": spend.input_tokens, "output_tokens": spend.output_tokens, "output_tokens_per_s": None,
        "queue_ms": None, "upstream_ms": None, "overhead_ms": None, "cold_start": None, "cost": spend.cost,
        "score": None, "output": stdout[:OUTPUT_CHARS], "request_id": None, "task": task,
    }
    return result, stdout


async def spend_of(db: Database, key_id: str) -> TaskSpend:
    """The key's spend log rows, once their count holds still for ``SPEND_STABLE_S`` (at most ``SPEND_WAIT_S``)."""
    deadline = time.monotonic() + SPEND_WAIT_S
    last: TaskSpend | None = None
    since = time.monotonic()
    while True:
        rows = await db.fetch(SPEND_SQL, key_id)
        now = time.monotonic()
        seen = TaskSpend(tuple(str(r["request_id"]) for r in rows), sum(int(r["prompt_tokens"]) for r in rows),
                         sum(int(r["completion_tokens"]) for r in rows),
                         float(sum((Decimal(r["cost"]) for r in rows), Decimal(0))))
        if seen != last:
            last, since = seen, now
        elif now - since >= SPEND_STABLE_S:
            return seen
        if now >= deadline:
            return seen
        await asyncio.sleep(SPEND_POLL_S)


async def calls_detail(redis: Redis, request_ids: tuple[str, ...]) -> list[dict[str, Any]]:
    """Each call's ``{request_id, queue_ms, upstream_ms, upstream_ttft_ms, cold_start}`` from the timing record the
    worker wrote for it (read and deleted, one round trip for all); nulls where there is none."""
    if not request_ids:
        return []
    try:
        async with redis.pipeline(transaction=False) as pipe:
            for rid in request_ids:
                pipe.getdel(q.bench_timing_key(rid))
            raw = await pipe.execute()
    except q.REDIS_DOWN as e:  # the task's figures stand without them
        log.warning("timing records of %d call(s) not read (%s)", len(request_ids), type(e).__name__)
        raw = [None] * len(request_ids)
    out = []
    for rid, value in zip(request_ids, raw, strict=True):
        timing: Any = None
        if value:
            try:
                timing = orjson.loads(value)
            except orjson.JSONDecodeError:
                pass
        if not isinstance(timing, dict):
            timing = {}
        out.append({"request_id": rid, **{f: timing.get(f) for f in TIMING_FIELDS}})
    return out
