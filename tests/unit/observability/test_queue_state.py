"""observability.queue_state: the collector turning a read of the queue into gauges."""

from __future__ import annotations

from observability.queue_state import QueueState, QueueStateCollector


def test_queue_state_gauges() -> None:
    state = QueueState(queued={"interactive": 7}, running={"interactive": 3}, workers_live=2, heartbeat_age_s=1.5)
    fams = {f.name: f for f in QueueStateCollector(state).collect()}
    assert fams["gatehouse_queue_depth"].samples[0].value == 4  # waiting = queued - running
    assert fams["gatehouse_inflight_jobs"].samples[0].value == 3
    assert fams["gatehouse_workers_live"].samples[0].value == 2
    down = {f.name: f for f in QueueStateCollector(QueueState(up=False)).collect()}
    assert list(down) == ["gatehouse_queue_up"] and down["gatehouse_queue_up"].samples[0].value == 0
