"""The supervisor's Redis bookkeeping: what ``gatehouse up`` knows before anyone else can.

It owns the embedded Valkey, so at start-up it can drop what an earlier run left (nobody else can be using it
yet); and it sees a worker die the instant it happens, so it settles that worker's jobs at once instead of
waiting for the lease to run out (core.leases: the others would do the same ≤ 4 s later).
"""

from __future__ import annotations

import logging
import socket
from typing import cast

import redis
from arq.constants import in_progress_key_prefix, job_key_prefix, retry_key_prefix

from core import leases
from core import queue as q
from core.redis_client import RedisTarget, sync_client

log = logging.getLogger("gatehouse.up")


def clear_interactive_jobs(target: RedisTarget) -> int:
    """Drop every interactive job left in Redis by an earlier run (their clients are gone), and the leases
    of that run's workers. Only for a Redis this process owns: nothing else can be using it yet."""
    with sync_client(target, socket_timeout=5) as r:
        ids = [i.decode() for i in cast("list[bytes]", r.zrange(q.INTERACTIVE_QUEUE, 0, -1))]
        stale = [*(p + i for i in ids for p in (job_key_prefix, in_progress_key_prefix, retry_key_prefix)),
                 *(k.decode() for k in r.scan_iter(match=q.RUNNING_KEY_PREFIX + "*", count=1000))]
        r.delete(q.INTERACTIVE_QUEUE, q.wake_key(q.INTERACTIVE_QUEUE), q.WORKERS_KEY,
                 q.busy_key(q.lane_of(q.INTERACTIVE_QUEUE)), *stale)
        if ids:
            log.info("dropped %d interactive job(s) left by an earlier run", len(ids))
        return len(ids)


def settle_dead_worker(target: RedisTarget, pid: int) -> leases.Reaped | None:
    """Settle the jobs of the worker process ``pid`` (on this host) that just died: re-queued if they had
    produced nothing, else ended with ``502 worker_lost``. None when Redis is not reachable (the lease does it)."""
    mark = f"{socket.gethostname()}:{pid}:"
    try:
        with sync_client(target, socket_timeout=2, socket_connect_timeout=2) as r:
            return _settle(r, mark)
    except q.REDIS_DOWN as e:
        log.debug("could not settle the dead worker's jobs: %s", type(e).__name__)
        return None


def _settle(r: redis.Redis, mark: str) -> leases.Reaped:
    ids = [w.decode() for w in cast("list[bytes]", r.zrange(q.WORKERS_KEY, 0, -1))]
    reap = r.register_script(leases.REAP_LUA)
    total = leases.Reaped()
    for worker_id in (w for w in ids if w.startswith(mark)):
        total += leases.reaped(cast("list[int]", reap(keys=leases.reap_keys(q.INTERACTIVE_QUEUE),
                                                      args=leases.reap_args(worker_id=worker_id))))
    return total
