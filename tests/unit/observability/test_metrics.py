"""observability.metrics: rendering the registry together with extra collectors."""

from __future__ import annotations

from observability import metrics
from observability.queue_state import QueueState, QueueStateCollector


def test_render_includes_extra_collectors() -> None:
    text = metrics.render([QueueStateCollector(QueueState(queued={"interactive": 1}))]).decode()
    assert 'gatehouse_queue_depth{lane="interactive"} 1.0' in text and "gen_ai_client_operation_duration" in text
