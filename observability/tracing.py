"""Langfuse tracing: every finished job (a ``CallRecord``) becomes one Langfuse trace.

The trace's id is the request id (the ``x-request-id`` header), so an operator finds the trace of any answer.
Each trace is four spans, all with the record's own timestamps::

    POST /v1/chat/completions     received by the gateway -> job finished: trace name, user, session, tags,
    │                             metadata (request id, queue wait, worker, ...), input/output
    ├── queue wait                enqueued -> taken by a worker
    └── upstream call             taken -> finished: backend, retries, cold start
        └── chat gpt-4o-mini      generation: model, parameters, input/output, usage, cost, first token

Export goes through the Langfuse SDK (5.x): ``Langfuse(tracer_provider=…, span_exporter=…)`` adds its
``LangfuseSpanProcessor`` (a batching processor with its own thread) to our ``TracerProvider``; spans go out as
OTLP/HTTP protobuf to ``{base_url}/api/public/otel/v1/traces`` through our exporter, wrapped to count what
Langfuse accepted and what was lost. We start spans with the plain OpenTelemetry tracer because only it takes
explicit start times, and set Langfuse's documented attributes (``LangfuseOtelSpanAttributes``) ourselves,
encoded as the SDK encodes them (observability/trace_spans.py), so Langfuse reads them as it reads its own:

* input/output, model parameters, usage and cost details: JSON text (a plain string is sent as it is);
* metadata: one attribute per key (``langfuse.trace.metadata.<key>``), each value JSON-encoded, strings too;
* completion start time: a JSON string holding an ISO-8601 time in UTC (``"2025-01-02T03:04:05.123456Z"``);
* tags: a string array; user id, session id, trace name, level, status message: plain strings;
* environment and release: resource attributes (Langfuse falls back to them for every span).

Tracing never slows or breaks a request: ``record`` builds four spans in memory and appends them to the
processor's queue (a few hundred microseconds of CPU, mostly the OTel SDK's); it does no I/O and never raises.
The queue is bounded (``max_queue_spans``, counted here; whole traces are dropped past it) and every span lost
is counted in ``gatehouse_tracing_dropped_spans``.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON

from core.settings import TracingSettings
from observability.calls import CallRecord
from observability.metrics import TRACING_DROPPED, TRACING_EXPORTED
from observability.trace_spans import TraceSpans, attribute_names, legacy_sdk

log = logging.getLogger("gatehouse.tracing")

SCOPE = "gatehouse"  # our instrumentation scope: the only one this tracer exports
OTLP_TRACES_PATH = "/api/public/otel/v1/traces"
SPANS_PER_TRACE = 4
_HEX32 = re.compile(r"[0-9a-f]{32}")


def build_tracer(settings: TracingSettings) -> Tracer | None:
    """The tracer for this process, or None when tracing is off (no keys, disabled by the environment, or the
    exporter could not be set up: then the reason is logged and the worker runs untraced)."""
    if not settings.enabled:
        return None
    if os.environ.get("LANGFUSE_TRACING_ENABLED", "true").lower() == "false":
        log.info("tracing: LANGFUSE_TRACING_ENABLED=false, no traces are sent")
        return None
    if os.environ.get("OTEL_SDK_DISABLED", "false").lower() == "true":
        log.info("tracing: OTEL_SDK_DISABLED=true, no traces are sent")
        return None
    try:
        return Tracer(settings)
    except Exception:
        log.exception("tracing: could not set up the Langfuse exporter; running without traces")
        return None


def trace_id_for(request_id: str) -> str:
    """The Langfuse trace id of a request: the request id itself when it is 32 hex digits (ours are uuid4
    hex), else the first 32 hex digits of its sha256."""
    rid = request_id.strip().lower()
    if _HEX32.fullmatch(rid) and rid != "0" * 32:
        return rid
    return hashlib.sha256(request_id.encode()).hexdigest()[:32]


class Tracer:
    """Turns CallRecords into Langfuse traces. ``record`` is for the worker's event loop; ``flush`` and
    ``shutdown`` block (up to their timeout), so call them from a thread or at the end."""

    def __init__(self, settings: TracingSettings):
        import langfuse

        assert settings.public_key and settings.secret_key, "tracing needs both Langfuse keys"
        self.settings = settings
        self._public_key = settings.public_key
        self._lock = threading.Lock()
        self._pending = 0  # spans handed to the processor and not yet exported (or lost)
        self._abandoned = False  # shutdown gave up waiting: what is still pending was counted as lost
        self._closed = False
        self._warned_at: dict[str, float] = {}
        self._sample_below = min(2**64, int(settings.sample_rate * 2**64))
        self._ids = _RequestTraceIds()
        a = attribute_names()
        resource = {"service.name": "gatehouse", a.ENVIRONMENT: settings.environment, a.RELEASE: settings.release}
        self.provider = TracerProvider(resource=Resource.create({k: v for k, v in resource.items() if v}),
                                       sampler=ALWAYS_ON, id_generator=self._ids, shutdown_on_exit=False)
        base_url = settings.base_url.rstrip("/")
        secret = settings.secret_key.get_secret_value()
        exporter = OTLPSpanExporter(
            endpoint=base_url + OTLP_TRACES_PATH, timeout=settings.export_timeout_s, compression=Compression.Gzip,
            headers=langfuse_headers(settings.public_key, secret) | {
                # what the SDK sends: Langfuse decodes the attributes of SDK-encoded spans by these
                "x-langfuse-sdk-name": "python", "x-langfuse-sdk-version": langfuse.__version__,
                "x-langfuse-public-key": settings.public_key,
                # SDK 5.x sends this (servers >= 4.59); 4.x, for older self-hosted servers, does not
                **({} if legacy_sdk() else {"x-langfuse-ingestion-version": "4"})})
        _forget_langfuse_client(settings.public_key, None)  # the SDK keeps one client per key and process
        # BatchSpanProcessor reads its queue size only from this variable; ours is the bound that counts, the
        # processor's must not be smaller (it would drop spans silently)
        with _env("OTEL_BSP_MAX_QUEUE_SIZE", str(settings.max_queue_spans)):
            self.client = langfuse.Langfuse(
                public_key=settings.public_key, secret_key=secret, base_url=base_url,
                environment=settings.environment, release=settings.release,
                flush_at=min(settings.flush_at, settings.max_queue_spans), flush_interval=settings.flush_interval_s,
                timeout=max(1, math.ceil(settings.export_timeout_s)), tracer_provider=self.provider,
                span_exporter=_CountingExporter(exporter, self._exported), should_export_span=_ours)
        if getattr(getattr(self.client, "_resources", None), "tracer_provider", self.provider) is not self.provider:
            raise RuntimeError("the Langfuse SDK did not take our tracer provider")
        self._otel = self.provider.get_tracer(SCOPE)

    # ── the job's path ───────────────────────────────────────────────────────────────────────────────
    def record(self, call: CallRecord) -> None:
        """Queue the trace of one finished job. Cheap (no I/O), never raises, never blocks."""
        try:
            self._record(call)
        except Exception:  # noqa: BLE001 - a trace is never worth a failed job; logged below
            self._warn("record", "tracing: could not record the trace of request %s", call.request_id,
                       exc_info=True)

    def _record(self, call: CallRecord) -> None:
        if self._closed:
            return
        trace_id = trace_id_for(call.request_id)
        if int(trace_id[16:], 16) >= self._sample_below:  # the lower 64 bits, as OTel's ratio sampler
            return
        with self._lock:
            full = self._pending + SPANS_PER_TRACE > self.settings.max_queue_spans
            if not full:
                self._pending += SPANS_PER_TRACE
        if full:
            TRACING_DROPPED.labels("queue_full").inc(SPANS_PER_TRACE)
            self._warn("queue_full", "tracing: %d spans wait for Langfuse; dropping new traces",
                       self.settings.max_queue_spans)
            return
        ended, token = 0, None
        try:
            spans = TraceSpans(call, self.settings)  # all the encoding happens here, before any span starts
            token = otel_context.attach(otel_context.Context())  # nothing from the caller's context leaks in
            for _ in spans.emit(self._otel, self._ids, int(trace_id, 16)):
                ended += 1
        finally:
            if token is not None:
                otel_context.detach(token)
            if ended < SPANS_PER_TRACE:
                self._exported(SPANS_PER_TRACE - ended, None)  # never queued: give the room back

    # ── the exporter's thread ────────────────────────────────────────────────────────────────────────
    def _exported(self, n: int, ok: bool | None) -> None:
        """``n`` spans left the queue: accepted by Langfuse (True), lost (False), or never queued (None)."""
        with self._lock:
            if self._abandoned:
                return
            self._pending = max(0, self._pending - n)
        if ok:
            TRACING_EXPORTED.inc(n)
        elif ok is False:
            TRACING_DROPPED.labels("export_failed").inc(n)
            self._warn("export", "tracing: Langfuse at %s did not take %d spans; they are dropped",
                       self.settings.base_url, n)

    @property
    def pending(self) -> int:
        """Spans queued or being exported right now."""
        return self._pending

    # ── flush and shutdown ───────────────────────────────────────────────────────────────────────────
    def flush(self, timeout_s: float | None = None) -> bool:
        """Export everything queued now; wait at most ``timeout_s`` (default: the shutdown timeout).
        True when it all went out (accepted or counted as lost) in time."""
        timeout = self.settings.shutdown_timeout_s if timeout_s is None else timeout_s
        return _bounded(self.provider.force_flush, timeout, "gatehouse-trace-flush")

    def shutdown(self) -> None:
        """Flush and stop, within ``settings.shutdown_timeout_s``; spans still unsent then are counted as lost.
        Later ``record`` calls do nothing."""
        if self._closed:
            return
        self._closed = True

        def stop() -> None:
            self.client.shutdown()  # flushes, stops the SDK's threads and its atexit hook
            self.provider.shutdown()

        if not _bounded(stop, self.settings.shutdown_timeout_s, "gatehouse-trace-shutdown"):
            with self._lock:
                lost, self._pending, self._abandoned = self._pending, 0, True
            if lost:
                TRACING_DROPPED.labels("export_failed").inc(lost)
            log.warning("tracing: Langfuse did not take the last traces within %.1f s; %d spans dropped",
                        self.settings.shutdown_timeout_s, lost)
        _forget_langfuse_client(self._public_key, getattr(self.client, "_resources", None))

    def _warn(self, key: str, msg: str, *args: Any, exc_info: bool = False) -> None:
        """Log a warning at most once a minute per kind (a down Langfuse must not flood the logs)."""
        now = time.monotonic()
        if now - self._warned_at.get(key, -math.inf) >= 60:
            self._warned_at[key] = now
            log.warning(msg, *args, exc_info=exc_info)


# ── one trace ─────────────────────────────────────────────────────────────────────────────────────────
class _RequestTraceIds(RandomIdGenerator):
    """Span ids are random; a root span's trace id is the one set by ``next_trace`` (the request's)."""

    def __init__(self) -> None:
        self._local = threading.local()

    @contextlib.contextmanager
    def next_trace(self, trace_id: int) -> Iterator[None]:
        self._local.trace_id = trace_id
        try:
            yield
        finally:
            self._local.trace_id = None

    def generate_trace_id(self) -> int:
        trace_id = getattr(self._local, "trace_id", None)
        return trace_id if trace_id else super().generate_trace_id()


class _CountingExporter(SpanExporter):
    """Passes batches to the OTLP exporter and reports each batch's fate (it never raises)."""

    def __init__(self, inner: SpanExporter, report: Callable[[int, bool | None], None]):
        self.inner = inner
        self.report = report

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        ok = False
        try:
            ok = self.inner.export(spans) is SpanExportResult.SUCCESS
        except Exception:
            log.debug("tracing: export raised", exc_info=True)
        finally:
            self.report(len(spans), ok)
        return SpanExportResult.SUCCESS if ok else SpanExportResult.FAILURE

    def shutdown(self) -> None:
        self.inner.shutdown()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


def _ours(span: ReadableSpan) -> bool:
    return span.instrumentation_scope is not None and span.instrumentation_scope.name == SCOPE


def langfuse_headers(public_key: str, secret_key: str) -> dict[str, str]:
    """Langfuse's Basic auth (public key as the user, secret key as the password)."""
    return {"Authorization": "Basic " + base64.b64encode(f"{public_key}:{secret_key}".encode()).decode()}


def _bounded(fn: Callable[[], object], timeout_s: float, name: str) -> bool:
    """Run ``fn`` on a daemon thread; True when it returned (not False) within ``timeout_s``."""
    result: list[object] = []

    def run() -> None:
        try:
            result.append(fn())
        except Exception:
            log.warning("tracing: %s failed", name, exc_info=True)
            result.append(False)

    thread = threading.Thread(target=run, name=name, daemon=True)
    thread.start()
    thread.join(max(0.0, timeout_s))
    return bool(result) and result[0] is not False


@contextlib.contextmanager
def _env(name: str, value: str) -> Iterator[None]:
    previous = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = previous


def _forget_langfuse_client(public_key: str, resources: object | None) -> None:
    """The SDK keeps one client per public key and process (``LangfuseResourceManager._instances``): a second
    ``Langfuse(...)`` with the same key gets the first one's tracer provider, and our spans would go nowhere.
    Before building ours we take any earlier registration out (the earlier client keeps working); on shutdown
    we take ours out, so a new Tracer (tests, a restarted worker loop) starts clean."""
    try:
        from langfuse._client.resource_manager import LangfuseResourceManager as Registry

        with Registry._lock:
            current = Registry._instances.get(public_key)
            if current is not None and (resources is None or current is resources):
                del Registry._instances[public_key]
                if resources is None:
                    log.info("tracing: replacing this process's earlier Langfuse client for the same key")
    except Exception:  # a later SDK may keep its clients elsewhere: then there is nothing to undo
        log.debug("tracing: could not reach the Langfuse client registry", exc_info=True)
