"""Queue and worker state read from Redis when ``/metrics`` is scraped.

Queue depth, in-flight jobs and live workers are facts about shared state, not about one process, so they are
read at scrape time (one pipelined round trip) instead of being counted by each process.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from redis.asyncio import Redis

from core import lanes as lanes_module
from core import queue as q


@dataclass
class QueueState:
    queued: dict[str, int] = field(default_factory=dict)  # lane -> jobs in the queue, running ones included
    running: dict[str, int] = field(default_factory=dict)  # lane -> jobs live workers report running
    workers_live: int = 0
    heartbeat_age_s: float = 0.0  # the stalest live worker's heartbeat age
    up: bool = True
    tenants: lanes_module.LaneTenants = field(default_factory=lanes_module.LaneTenants)  # per tenant
    runner_work: dict[str, int] | None = None  # kind -> unfinished batches / benchmark runs (None: unknown)

    def waiting(self, lane: str) -> int:
        return max(0, self.queued.get(lane, 0) - self.running.get(lane, 0))


async def read_state(redis: Redis, lanes: dict[str, str] = q.LANES) -> QueueState:
    now = time.time()
    async with redis.pipeline(transaction=False) as pipe:
        for queue in lanes.values():
            pipe.zcard(queue)
        pipe.zrangebyscore(q.WORKERS_KEY, now - q.HEARTBEAT_FRESH_S, "+inf", withscores=True)
        for lane in lanes:
            pipe.hgetall(q.busy_key(lane))
        lanes_module.queue_tenant_depths(pipe, lanes)
        replies = await pipe.execute()
    n = len(lanes)
    state = QueueState(tenants=lanes_module.parse(replies[-1], lanes))
    live = {(w.decode() if isinstance(w, bytes) else w): ts for w, ts in replies[n]}
    state.workers_live = len(live)
    state.heartbeat_age_s = max((now - ts for ts in live.values()), default=0.0)
    for i, lane in enumerate(lanes):
        state.queued[lane] = int(replies[i])
        busy = replies[n + 1 + i]
        state.running[lane] = sum(int(v) for w, v in busy.items()
                                  if (w.decode() if isinstance(w, bytes) else w) in live)
    return state


class QueueStateCollector(Collector):
    """Renders one ``QueueState`` snapshot as gauges; the per-tenant depth only with ``tenant_labels`` (tenant
    names are team and key ids: an operator's choice to expose, as for spend)."""

    def __init__(self, state: QueueState, *, tenant_labels: bool = False):
        self.state = state
        self.tenant_labels = tenant_labels

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self.state
        up = GaugeMetricFamily("gatehouse_queue_up", "1 if the gateway could read the queue's state from Redis.")
        up.add_metric([], 1.0 if s.up else 0.0)
        yield up
        if not s.up:
            return
        depth = GaugeMetricFamily("gatehouse_queue_depth", "Jobs waiting in each lane (not yet taken by a worker).",
                                  labels=["lane"])
        inflight = GaugeMetricFamily("gatehouse_inflight_jobs", "Jobs workers are running, per lane.",
                                     labels=["lane"])
        for lane in s.queued:
            depth.add_metric([lane], float(s.waiting(lane)))
            inflight.add_metric([lane], float(s.running.get(lane, 0)))
        yield depth
        yield inflight
        tenants = GaugeMetricFamily("gatehouse_queue_tenants", "Tenants (teams, else keys) with jobs waiting, "
                                    "per lane.", labels=["lane"])
        for lane, by_tenant in s.tenants.lanes.items():
            tenants.add_metric([lane], float(sum(1 for d in by_tenant.values() if d.waiting)))
        yield tenants
        if self.tenant_labels:
            per = GaugeMetricFamily("gatehouse_queue_tenant_depth", "Jobs waiting in each lane, per tenant.",
                                    labels=["lane", "tenant"])
            for lane, by_tenant in s.tenants.lanes.items():
                for tenant, d in by_tenant.items():
                    per.add_metric([lane, tenant], float(d.waiting))
            yield per
        live = GaugeMetricFamily("gatehouse_workers_live", "Workers whose heartbeat is fresh.")
        live.add_metric([], float(s.workers_live))
        yield live
        age = GaugeMetricFamily("gatehouse_worker_heartbeat_age_seconds",
                                "Age of the stalest live worker's last heartbeat.")
        age.add_metric([], s.heartbeat_age_s)
        yield age
        if s.runner_work is not None:
            work = GaugeMetricFamily("gatehouse_runner_work",
                                     "Unfinished batches and benchmark runs, by kind: a worker's runner moves them "
                                     "on (with no worker they wait in PostgreSQL, not in the queue).",
                                     labels=["kind"])
            for kind, n in s.runner_work.items():
                work.add_metric([kind], float(n))
            yield work
