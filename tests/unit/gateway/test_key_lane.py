"""gateway/serving.py: what a key's metadata decides for its calls — the lane (``lane: "batch"`` puts them on the
batch lane, anything else leaves them interactive) and the benchmark run (``bench_run``: carried in the job, and
the trace's session unless the client names one). Principals are built as gateway.auth builds them."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any, cast

import pytest
from starlette.requests import Request

from core import queue as q
from core.config import Config
from gateway.auth import MASTER, Principal
from gateway.context import STARTED_KEY
from gateway.services import Services
from gateway.serving import Generation
from observability.calls import TraceContext

INTERACTIVE, BATCH = object(), object()  # stand-ins for the two JobQueues


def key(metadata: dict[str, Any] | None = None) -> Principal:
    return Principal(id="k-1", kind="key", key_id="k-1", user_id="u-1", alias="bench-key", metadata=metadata or {})


def generation(principal: Principal) -> Generation:
    svc = SimpleNamespace(config=Config(), queue=INTERACTIVE, batch_queue=BATCH)
    return Generation(cast(Services, svc), principal)


def request(headers: dict[str, str] | None = None) -> Request:
    return Request({"type": "http", "method": "POST", "path": "/v1/chat/completions",
                    "headers": [(k.encode(), v.encode()) for k, v in (headers or {}).items()],
                    STARTED_KEY: (time.time(), time.perf_counter())})


def test_a_batch_lane_key_enqueues_on_the_batch_lane() -> None:
    assert generation(key({"lane": "batch"})).queue is BATCH


@pytest.mark.parametrize("principal", [MASTER, key(), key({"lane": "interactive"}), key({"lane": "BATCH"}),
                                       key({"lane": ["batch"]}), key({"lane": None}), key({"priority": 3})])
def test_any_other_key_stays_interactive(principal: Principal) -> None:
    gen = generation(principal)
    assert gen.queue is INTERACTIVE and gen.bench_run is None


LONGEST = "r" * q.BENCH_RUN_MAX


@pytest.mark.parametrize(("stored", "run"), [("bench_01J", "bench_01J"), (LONGEST, LONGEST), (LONGEST + "r", None),
                                             ("", None), (42, None), ({"id": "x"}, None)])
def test_a_keys_bench_run_is_a_short_string_or_nothing(stored: Any, run: str | None) -> None:
    assert generation(key({"bench_run": stored, "lane": "batch"})).bench_run == run


def test_a_bench_runs_trace_is_in_the_runs_session_unless_the_client_names_one() -> None:
    gen = generation(key({"bench_run": "bench_01J", "lane": "batch"}))
    ctx = TraceContext.from_dict(gen._trace_context(request()))
    assert ctx is not None and ctx.session_id == "bench_01J" and ctx.key_alias == "bench-key"
    ctx = TraceContext.from_dict(gen._trace_context(request({"x-session-id": "mine"})))
    assert ctx is not None and ctx.session_id == "mine"
    plain = TraceContext.from_dict(generation(key())._trace_context(request()))
    assert plain is not None and plain.session_id is None
