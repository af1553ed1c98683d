"""observability.calls: the record of one finished job (its bounded error label)."""

from __future__ import annotations

import time

import pytest

from observability.calls import CallRecord


def record(**kw: object) -> CallRecord:
    now = time.time()
    return CallRecord(request_id="r", kind="chat", model="m", backend="openai", lane="interactive", worker_id="w",
                      enqueued_at=now, started_at=now, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("status, error, label", [
    ("ok", None, ""),
    ("timeout", {"status": 504, "code": "timeout"}, "timeout"),
    ("error", {"status": 502, "code": "upstream_unreachable"}, "upstream_unreachable"),
    ("error", {"status": 400, "code": "some-upstream-specific-code-8f3a"}, "400"),  # free text -> its status
    ("error", {"status": 503, "code": None, "type": "overloaded"}, "503"),
    ("cancelled", None, "cancelled"),
])
def test_error_type_label_is_bounded(status: str, error: dict | None, label: str) -> None:
    assert record(status=status, error=error).error_type == label
