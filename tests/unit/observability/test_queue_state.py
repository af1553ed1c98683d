"""observability.queue_state: the collector turning a read of the queue into gauges."""

from __future__ import annotations

from core.lanes import LaneTenants, TenantDepth
from observability.queue_state import QueueState, QueueStateCollector


def test_queue_state_gauges() -> None:
    state = QueueState(queued={"interactive": 7}, running={"interactive": 3}, workers_live=2, heartbeat_age_s=1.5)
    fams = {f.name: f for f in QueueStateCollector(state).collect()}
    assert fams["gatehouse_queue_depth"].samples[0].value == 4  # waiting = queued - running
    assert fams["gatehouse_inflight_jobs"].samples[0].value == 3
    assert fams["gatehouse_workers_live"].samples[0].value == 2
    down = {f.name: f for f in QueueStateCollector(QueueState(up=False)).collect()}
    assert list(down) == ["gatehouse_queue_up"] and down["gatehouse_queue_up"].samples[0].value == 0


def test_tenant_gauges_only_with_tenant_labels() -> None:
    tenants = LaneTenants({"interactive": {"team:a": TenantDepth(4, 1), "key:b": TenantDepth(0, 2)},
                           "batch": {"key:b": TenantDepth(9, 0)}})
    state = QueueState(queued={"interactive": 7, "batch": 9}, tenants=tenants)
    plain = {f.name: f for f in QueueStateCollector(state).collect()}
    assert "gatehouse_queue_tenant_depth" not in plain  # tenant names are ids: shown only when asked for
    assert {s.labels["lane"]: s.value for s in plain["gatehouse_queue_tenants"].samples} == {"interactive": 1,
                                                                                           "batch": 1}
    named = {f.name: f for f in QueueStateCollector(state, tenant_labels=True).collect()}
    assert {(s.labels["lane"], s.labels["tenant"]): s.value
            for s in named["gatehouse_queue_tenant_depth"].samples} == {
        ("interactive", "team:a"): 4, ("interactive", "key:b"): 0, ("batch", "key:b"): 9}
