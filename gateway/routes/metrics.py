"""GET /metrics: Prometheus exposition of the gateway, the workers sharing its host, and the queue's state.

Unauthenticated like the health probes (scrapers rarely carry credentials; no secret, key or request id is
ever a label); turn it off with ``gatehouse.metrics.enabled: false`` where the port is public.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.errors import NotFound
from gateway.services import Services, services
from observability import metrics
from observability.queue_state import QueueState, QueueStateCollector, read_state

router = APIRouter()


# What only a worker's runner moves on, counted in PostgreSQL: with the workers scaled to zero it waits there, not in
# the Redis queue, so the autoscaler must see it too (deploy/kubernetes: KEDA's query).
UNFINISHED = {
    "batch": "SELECT count(*) FROM batches WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')",
    "benchmark": "SELECT count(*) FROM benchmark_runs WHERE status IN ('queued', 'running', 'cancelling')",
}


async def _runner_work(svc: Services) -> dict[str, int] | None:
    db = await svc.database()
    if db is None:
        return None
    try:
        async with asyncio.timeout(2):
            return {kind: int(await db.fetchval(sql)) for kind, sql in UNFINISHED.items()}
    except Exception:  # noqa: BLE001 - PostgreSQL down: the gauge is left out, the rest is served
        return None


@router.get("/metrics", include_in_schema=False)
async def prometheus(request: Request) -> Response:
    svc = services(request)
    if not svc.config.settings.metrics.enabled:
        raise NotFound("Unknown route: GET /metrics (metrics are disabled in this gateway's config).")
    try:
        state = await asyncio.wait_for(read_state(svc.redis), 2)
    except Exception:  # noqa: BLE001 - Redis down: say so in gatehouse_queue_up, keep the rest
        state = QueueState(up=False)
    state.runner_work = await _runner_work(svc)
    # multiprocess mode reads one file per process: keep that off the event loop
    collector = QueueStateCollector(state, tenant_labels=svc.config.settings.metrics.tenant_labels)
    body = await asyncio.to_thread(metrics.render, [collector])
    return Response(body, media_type=metrics.CONTENT_TYPE)
