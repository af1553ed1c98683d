"""One agent task of a benchmark run (a suite item with a ``command``), on one model, as seed 003 runs them: the
command runs in the run's sandbox with ``OPENAI_BASE_URL`` (the gateway's ``/v1``) and ``OPENAI_API_KEY`` (a key
for this task alone, on this model alone, revoked the moment the task ends), so every call it makes goes through
the gateway and is counted for the task: from the spend log rows of its key (the gateway writes them in batches
about every second, so they are read until their count holds still, for at most ``SPEND_WAIT_S``).

A task whose command ran is an ``ok`` result (its exit code and score say whether it passed); one that timed out
or could not be started is an ``error``. Scoring is the caller's (load.py): exit 0 → 1.0 unless a scorer reads
stdout."""

from __future__ import annotations

import asyncio
import logging
import time

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
SPEND_SQL = ("SELECT count(*) AS calls, coalesce(sum(prompt_tokens), 0) AS input_tokens, "
             "coalesce(sum(completion_tokens), 0) AS output_tokens, coalesce(sum(cost), 0) AS cost "
             "FROM spend_log WHERE key_id = $1")


async def run_task(*, keys: RunKeys, sandbox: Sandbox, db: Database, gateway_url: str, model: str,
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
    calls, input_tokens, output_tokens, cost = await spend_of(db, minted.key_id)
    if outcome is not None and outcome.timed_out:
        error = {"status": None, "code": "task_timeout",
                 "message": f"The task did not finish within {item.timeout_s:g} s; it was killed."}
    stdout = outcome.stdout if outcome is not None else ""
    task = {"exit_code": outcome.exit_code if outcome is not None else None,
            "wall_ms": round(outcome.wall_ms, 3) if outcome is not None else None,
            "calls": calls, "input_tokens": input_tokens, "output_tokens": output_tokens, "cost": cost,
            "stdout_tail": stdout[-TAIL_CHARS:], "stderr_tail": outcome.stderr[-TAIL_CHARS:] if outcome else ""}
    result: Result = {
        "model": model, "level": level, "item_id": item.id, "repeat": rep,
        "status": "ok" if error is None else "error", "error": error, "started_at": round(started_at, 6),
        "ttft_ms": None, "itl_ms": None, "tpot_ms": None, "e2e_ms": None,
        "input_tokens": input_tokens, "output_tokens": output_tokens, "output_tokens_per_s": None,
        "queue_ms": None, "upstream_ms": None, "overhead_ms": None, "cold_start": None, "cost": cost,
        "score": None, "output": stdout[:OUTPUT_CHARS], "request_id": None, "task": task,
    }
    return result, stdout


async def spend_of(db: Database, key_id: str) -> tuple[int, int, int, float]:
    """(calls, input tokens, output tokens, cost) of the key's spend log rows, once their count holds still for
    ``SPEND_STABLE_S`` (at most ``SPEND_WAIT_S``)."""
    deadline = time.monotonic() + SPEND_WAIT_S
    last: tuple[int, int, int, float] | None = None
    since = time.monotonic()
    while True:
        row = await db.fetchrow(SPEND_SQL, key_id)
        assert row is not None
        now = time.monotonic()
        seen = (int(row["calls"]), int(row["input_tokens"]), int(row["output_tokens"]), float(row["cost"]))
        if seen != last:
            last, since = seen, now
        elif now - since >= SPEND_STABLE_S or now >= deadline:
            return seen
        if now >= deadline:
            return seen
        await asyncio.sleep(SPEND_POLL_S)
