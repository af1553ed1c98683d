"""What the arq job function and ``GatehouseWorker`` share, typed: arq hands job functions a ``ctx`` dict; the
worker keeps one ``WorkerState`` in it under ``STATE_KEY`` and both sides reach it through ``state_of``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, cast

from arq.connections import ArqRedis

from observability.calls import CallRecord
from observability.jobs import JobObserver
from workers.backends import Backends

STATE_KEY = "gatehouse"


@dataclass
class WorkerState:
    redis: ArqRedis
    backends: Backends
    observer: JobObserver
    # job id -> its last output events, written by GatehouseWorker.finish_job with arq's end-of-job bookkeeping
    final_events: dict[str, list[bytes]] = field(default_factory=dict)
    # job id -> its CallRecord, traced by GatehouseWorker.finish_job once the answer is out
    finished_calls: dict[str, CallRecord] = field(default_factory=dict)
    # job id -> its benchmark timing record (JobSpec.bench_run), written by GatehouseWorker.finish_job with its events
    bench_timings: dict[str, bytes] = field(default_factory=dict)
    # job id -> its failure for the recent-errors list (core.recent), written by GatehouseWorker.finish_job too
    failures: dict[str, bytes] = field(default_factory=dict)


def state_of(ctx: dict[str, Any]) -> WorkerState:
    return cast(WorkerState, ctx[STATE_KEY])
