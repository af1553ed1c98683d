"""The most recent failed jobs, kept in Redis for operators (``/health`` for admins, the console's queue page).

Workers record a job that ended in an error or a timeout (not a cancellation: the client left), and whoever
reaps a dead worker records the jobs that ended ``worker_lost``. The list is capped (``KEEP``) and each entry is
small; messages are cut to ``MESSAGE_CHARS``. It is a convenience view, not an audit log: Langfuse traces and the
Prometheus counters are the record. A failure to write it never affects the job.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable
from typing import Any, cast

from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core import queue as q

log = logging.getLogger("gatehouse.recent")

ERRORS_KEY = "gatehouse:errors"  # list, newest first: JSON records
KEEP = 200
MESSAGE_CHARS = 300


def error_record(*, request_id: str, model: str, lane: str | None, tenant: str, worker: str,
                 error: dict[str, Any], at: float | None = None) -> bytes:
    """One entry: when, which request, model, lane, tenant and worker, and the error as the client got it."""
    message = str(error.get("message") or "")
    return q.dumps({"at": round(time.time() if at is None else at, 3), "request_id": request_id, "model": model,
                    "lane": lane or "", "tenant": tenant, "worker": worker, "status": error.get("status"),
                    "type": error.get("type"), "code": error.get("code"),
                    "message": message[:MESSAGE_CHARS] + ("…" if len(message) > MESSAGE_CHARS else "")})


def reaped_record(description: str, reaper: str) -> bytes:
    """A reap that ended jobs ``worker_lost`` (core.leases): one entry naming the counts, not one per job."""
    return error_record(request_id="", model="", lane=None, tenant="", worker=reaper,
                        error={"status": 502, "type": "server_error", "code": "worker_lost", "message": description})


def push(pipe: Pipeline, *records: bytes) -> None:
    """Add the push of ``records`` (newest last), keeping the newest ``KEEP``, to ``pipe`` (e.g. a worker's
    end-of-job transaction)."""
    pipe.lpush(ERRORS_KEY, *records)
    pipe.ltrim(ERRORS_KEY, 0, KEEP - 1)


async def note(redis: Redis, *records: bytes) -> None:
    """``push`` on its own; best effort: a failure is one log line."""
    if not records:
        return
    try:
        async with redis.pipeline(transaction=True) as tr:
            push(tr, *records)
            await tr.execute()
    except Exception as e:  # noqa: BLE001 - bookkeeping for operators; the job's answer is already settled
        log.warning("could not record %d recent error(s): %s", len(records), type(e).__name__)


async def read(redis: Redis, limit: int = 50) -> list[dict[str, Any]]:
    """The newest ``limit`` entries, newest first."""
    # redis-py types its sync and asyncio clients alike; the asyncio client's lrange is awaitable
    raw = await cast("Awaitable[list[bytes]]", redis.lrange(ERRORS_KEY, 0, max(0, limit - 1)))
    out: list[dict[str, Any]] = []
    for item in raw:
        try:
            record = q.loads(item)
        except ValueError:
            continue  # not ours: skip rather than fail the page
        if isinstance(record, dict):
            out.append(record)
    return out
