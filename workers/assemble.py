"""``build_worker``: a GatehouseWorker assembled from the config — its backends, metrics, tracer and the
start-up and shutdown hooks arq calls (``gatehouse worker`` runs it)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from core import queue as q
from core.config import Config
from core.database import Database, database_dsn
from core.pricing import price_list
from core.redis_client import arq_settings
from core.redis_client import target as redis_target
from observability import metrics
from observability.jobs import JobObserver
from workers.backends import Backends
from workers.batches.runner import BatchRunner
from workers.benchmarks.runner import BenchRunner
from workers.runner import run_request
from workers.state import STATE_KEY, WorkerState
from workers.worker import GatehouseWorker

if TYPE_CHECKING:
    from observability.tracing import Tracer

log = logging.getLogger("gatehouse.worker")
BATCH_DB_TIMEOUT_S = 10.0  # the batch runner's statements write thousands of lines at once


def build_worker(config: Config, *, burst: bool = False) -> GatehouseWorker:
    s = config.settings
    target = redis_target(s)  # RedisConfigError (one line naming the setting) when it cannot be used
    dsn = database_dsn(s.database_url, s.database_ssl_root_cert) if s.database_url else None
    backends = Backends(config)
    lane = q.lane_of(q.INTERACTIVE_QUEUE)
    tracer: Tracer | None = None
    batch_task: asyncio.Task[None] | None = None
    batch_runner: BatchRunner | None = None
    bench_task: asyncio.Task[None] | None = None
    bench_runner: BenchRunner | None = None

    async def on_startup(ctx: dict[str, Any]) -> None:
        nonlocal tracer
        backends.build()
        models = config.models()
        metrics.prime(list(q.LANES), models)
        if s.metrics.worker_port:
            try:
                metrics.serve(s.metrics.worker_port, s.metrics.worker_host)
            except OSError as e:  # e.g. the port is taken: serve requests anyway, say so once
                log.error("cannot serve metrics on %s:%d (%s); this worker's metrics are not exposed",
                          s.metrics.worker_host, s.metrics.worker_port, e.strerror or e)
        if s.tracing.enabled:
            from observability.tracing import build_tracer

            tracer = build_tracer(s.tracing)
        observer = JobObserver(worker_id=worker.worker_id, lane=lane, tracer=tracer,
                               backend_kinds={name: e.backend for name, e in models.items()},
                               prices=price_list(models))
        ctx[STATE_KEY] = WorkerState(redis=worker.pool, backends=backends, observer=observer)
        if dsn:  # the Batch API keeps batches in PostgreSQL: without one there are none to run
            nonlocal batch_task, batch_runner
            batch_runner = BatchRunner(worker.pool, Database(dsn, timeout_s=BATCH_DB_TIMEOUT_S), config,
                                       worker.worker_id)
            batch_task = asyncio.get_running_loop().create_task(batch_runner.run())
            # benchmark runs (ADR 0018): driven through the gateway's HTTP API by one worker at a time
            nonlocal bench_task, bench_runner
            bench_runner = BenchRunner(worker.pool, Database(dsn, timeout_s=BATCH_DB_TIMEOUT_S), config,
                                       worker.worker_id)
            bench_task = asyncio.get_running_loop().create_task(bench_runner.run())

    async def on_shutdown(ctx: dict[str, Any]) -> None:
        if bench_task is not None and bench_runner is not None:
            bench_task.cancel()
            await asyncio.gather(bench_task, return_exceptions=True)
            await bench_runner.aclose()
        if batch_task is not None and batch_runner is not None:
            batch_task.cancel()
            await asyncio.gather(batch_task, return_exceptions=True)
            await batch_runner.aclose()
        await backends.aclose()
        if tracer is not None:
            await asyncio.to_thread(tracer.shutdown)  # flush what is queued, bounded by its shutdown timeout
        try:
            await asyncio.wait_for(worker.hand_back(), 5)
        except (*q.REDIS_DOWN, TimeoutError) as e:
            log.warning("could not hand back unfinished jobs (%s); the other workers will reap them",
                        type(e).__name__)

    settings = arq_settings(target, max_connections=s.worker_concurrency + 16)
    worker = GatehouseWorker(
        functions=[run_request],
        queue_name=q.INTERACTIVE_QUEUE,
        redis_settings=settings,
        on_startup=on_startup,
        on_shutdown=on_shutdown,
        burst=burst,
        max_jobs=s.worker_concurrency,
        # the claim's window: the whole interactive queue (queue_max_depth counts its running jobs too), so every
        # queued job is in reach however many workers run; arq's 5 x max_jobs capped a queue at 1,280 running jobs
        queue_read_limit=max(5 * s.worker_concurrency, s.queue_max_depth),
        job_timeout=s.request_timeout_s + 5,
        keep_result=0,
        max_tries=q.MAX_TRIES,
        retry_jobs=False,
        poll_delay=0.5,
        job_completion_wait=int(s.shutdown_grace_s),
        health_check_interval=10,
        job_serializer=q.dumps,
        job_deserializer=q.loads,
        log_results=False,
    )
    worker.batch_share = s.batch_worker_share
    worker.batch_busy_slots = s.batch_busy_slots
    return worker
