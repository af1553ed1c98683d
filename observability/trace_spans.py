"""How one ``CallRecord`` becomes Langfuse's four spans: the attributes, encoded as the Langfuse SDK encodes
them, and the order and times the spans are started and ended in (see ``observability.tracing``)."""

from __future__ import annotations

import functools
import hashlib
import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

from core.settings import TracingSettings
from observability.calls import CallRecord

MAX_ID_CHARS = 200  # Langfuse's limit for user and session ids (longer ones are cut)


class TraceSpans:
    """The four spans of one CallRecord: names, times and attributes, all computed (and encoded) up front."""

    def __init__(self, call: CallRecord, settings: TracingSettings):
        a = attribute_names()
        ctx = call.context
        self.root_name = (ctx.route if ctx else None) or f"job {call.kind}"
        self.received = _ns(ctx.received_at if ctx else call.enqueued_at)
        self.enqueued, self.started = _ns(call.enqueued_at), _ns(call.started_at)
        self.finished = _ns(call.finished_at or time.time())
        self.failed = call.status != "ok"
        self.message = str((call.error or {}).get("message") or call.status) if self.failed else None
        self.generation_name = f"{call.operation} {call.model}"
        queue_wait_ms = round(call.queue_wait_s * 1000, 3)

        # trace attributes go on the root and the generation (Langfuse filters observations by them too);
        # environment and release are resource attributes, which Langfuse reads for every span
        common: dict[str, Any] = {a.TRACE_NAME: self.root_name,
                                  a.TRACE_TAGS: [f"model:{call.model}", f"backend:{call.backend}", f"lane:{call.lane}"],
                                  a.TRACE_USER_ID: ctx and ctx.user_id and ctx.user_id[:MAX_ID_CHARS],
                                  a.TRACE_SESSION_ID: ctx and ctx.session_id and ctx.session_id[:MAX_ID_CHARS]}
        common = {k: v for k, v in common.items() if v}
        io = {a.OBSERVATION_INPUT: _io(_mask(call.input, settings.masking)),  # encoded once, used twice
              a.OBSERVATION_OUTPUT: _io(_mask(call.output, settings.masking))}
        io = {k: v for k, v in io.items() if v is not None}
        level = {a.OBSERVATION_LEVEL: "ERROR", a.OBSERVATION_STATUS_MESSAGE: self.message} if self.failed else {}

        trace_meta: dict[str, Any] = {**call.metadata, "request_id": call.request_id, "queue_wait_ms": queue_wait_ms,
                                      "worker_id": call.worker_id, "retries": call.retries,
                                      "cold_start": call.cold_start, "key_alias": (ctx and ctx.key_alias) or None,
                                      "team_id": (ctx and ctx.team_id) or None}
        if self.failed:
            trace_meta |= {"status": call.status, "error": call.error}
        self.root = {**common, a.OBSERVATION_TYPE: "span", **_metadata(a.TRACE_METADATA, trace_meta), **io, **level}
        if legacy_sdk():  # servers before 4.59 read a trace's input/output from attributes of their own
            self.root |= {LEGACY_TRACE_IO[k]: v for k, v in io.items()}
        self.queue = {a.OBSERVATION_TYPE: "span",
                      **_metadata(a.OBSERVATION_METADATA, {"lane": call.lane, "queue_wait_ms": queue_wait_ms})}
        self.upstream = {a.OBSERVATION_TYPE: "span", **_metadata(
            a.OBSERVATION_METADATA, {"backend": call.backend, "retries": call.retries, "cold_start": call.cold_start})}
        gen: dict[str, Any] = {
            **common, a.OBSERVATION_TYPE: "generation", a.OBSERVATION_MODEL: call.model,
            "gen_ai.operation.name": call.operation, "gen_ai.request.model": call.model, **io, **level,
            a.OBSERVATION_MODEL_PARAMETERS: _json(call.model_parameters) if call.model_parameters else None,
            a.OBSERVATION_USAGE_DETAILS: _json(call.usage) if call.usage else None,
            a.OBSERVATION_COST_DETAILS: _json(call.cost) if call.cost else None,
            a.OBSERVATION_COMPLETION_START_TIME: _json(_iso(call.first_token_at)) if call.first_token_at else None,
            **_metadata(a.OBSERVATION_METADATA, {"error": call.error if self.failed else None})}
        self.generation = {k: v for k, v in gen.items() if v is not None}

    def emit(self, tracer: Any, ids: Any, trace_id: int) -> Iterator[None]:
        """Start and end the spans (``ids`` makes the root take ``trace_id``); yields once per span handed to
        the processor."""
        end = max(self.finished, self.started, self.received)
        with ids.next_trace(trace_id):
            root = tracer.start_span(self.root_name, kind=SpanKind.SERVER, attributes=self.root,
                                     start_time=self.received)
        in_root = set_span_in_context(root)
        queue = tracer.start_span("queue wait", in_root, attributes=self.queue, start_time=self.enqueued)
        upstream = tracer.start_span("upstream call", in_root, attributes=self.upstream, start_time=self.started)
        generation = tracer.start_span(self.generation_name, set_span_in_context(upstream), kind=SpanKind.CLIENT,
                                       attributes=self.generation, start_time=self.started)
        if self.failed:
            for span in (generation, root):
                span.set_status(Status(StatusCode.ERROR, self.message))
        for span, finished_at in ((queue, max(self.started, self.enqueued)), (generation, end), (upstream, end),
                                  (root, end)):
            span.end(end_time=finished_at)
            yield


# ── encoding, as the Langfuse SDK does it ──────────────────────────────────────────────────────────────
@functools.cache
def legacy_sdk() -> bool:
    """True with the Langfuse SDK 4.x, the one for self-hosted servers older than 4.59."""
    import langfuse

    return int(langfuse.__version__.split(".", 1)[0]) < 5


LEGACY_TRACE_IO = {"langfuse.observation.input": "langfuse.trace.input",
                   "langfuse.observation.output": "langfuse.trace.output"}


@functools.cache
def attribute_names() -> Any:
    """``LangfuseOtelSpanAttributes`` (imported on first use: the SDK takes ~0.5 s to import)."""
    from langfuse import LangfuseOtelSpanAttributes

    return LangfuseOtelSpanAttributes


def _json(value: Any, sort_keys: bool = False) -> str:
    option = orjson.OPT_NON_STR_KEYS | (orjson.OPT_SORT_KEYS if sort_keys else 0)
    try:
        return orjson.dumps(value, default=str, option=option).decode()
    except TypeError:  # e.g. an int past 64 bits: the slower encoder takes everything
        return json.dumps(value, default=str, sort_keys=sort_keys, ensure_ascii=False)


def _io(value: Any) -> str | None:
    """Input/output: None stays unset, a string goes as it is, anything else as JSON."""
    return value if value is None or isinstance(value, str) else _json(value)


def _metadata(prefix: str, metadata: dict[str, Any]) -> dict[str, str]:
    """One attribute per key, each value JSON-encoded (strings too); None values are left out."""
    return {f"{prefix}.{k}": _json(v) for k, v in metadata.items() if v is not None}


def _mask(value: Any, masking: str) -> Any:
    if value is None or masking == "off":
        return value
    if masking == "drop":
        return None
    return "sha256:" + hashlib.sha256(_json(value, sort_keys=True).encode()).hexdigest()


def _iso(unix_s: float) -> str:
    return datetime.fromtimestamp(unix_s, tz=UTC).isoformat().replace("+00:00", "Z")


def _ns(unix_s: float) -> int:
    return int(unix_s * 1_000_000_000)
