"""The worker's seam to observability: one ``JobObserver`` per worker process, called at a job's start, for each
streamed chunk, and at its end. It fills the job's ``CallRecord`` and turns it into metrics and (when tracing is
on) a Langfuse trace. Nothing here does I/O on the job's path; the tracer exports from its own thread.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from core.batches import LINE_JOB_PREFIX
from core.embeddings import summary as embedding_summary
from core.queue import BATCH_LANE
from observability import calls, metrics
from observability.calls import CallRecord, Status, TraceContext, has_token

MAX_TRACED_TEXT = 64_000  # characters of streamed output kept for a trace; the rest is elided
VENDOR_FIELDS = ("quantum_diagnostics",)  # answer fields worth putting in a trace's metadata
SAMPLING_PARAMS = ("temperature", "top_p", "max_tokens", "max_completion_tokens", "seed", "stop", "n",
                   "presence_penalty", "frequency_penalty", "quantum_profile", "num_chars")


class JobObserver:
    def __init__(self, *, worker_id: str, lane: str, backend_kinds: dict[str, str],
                 prices: Mapping[str, tuple[float, float]], tracer: Any = None):
        self.worker_id = worker_id
        self.lane = lane  # the interactive lane's name: a job's lane unless the worker says otherwise (``start``)
        self.backend_kinds = backend_kinds  # model name -> backend kind (openai, local, litellm, ...)
        self.prices = prices
        self.tracer = tracer  # observability.tracing.Tracer, or None
        self._pool_served_os = 0
        self._cache: dict[tuple[str, str, str, str, str], tuple[Any, Any, Any, Any]] = {}
        self._queue_wait = {lane: metrics.QUEUE_WAIT.labels(lane), BATCH_LANE: metrics.QUEUE_WAIT.labels(BATCH_LANE)}

    def lane_of(self, job_id: str) -> str:
        """A job's lane when the worker did not say which it came from: batch lines (ids batch_…) are on the batch
        lane, anything else on the interactive one."""
        return BATCH_LANE if job_id.startswith(LINE_JOB_PREFIX) else self.lane

    # ── job lifecycle ─────────────────────────────────────────────────────────────────────────────────
    def start(self, spec: Any, lane: str | None = None) -> CallRecord:
        """A worker took ``spec`` (a core.queue.JobSpec) from ``lane`` (a core.queue.LANES name; None: guessed
        from its id): start its record and make it current."""
        now = time.time()
        context = TraceContext.from_dict(spec.trace) if self.tracer is not None and spec.trace else None
        call = CallRecord(request_id=spec.id, kind=spec.kind, model=spec.model,
                          backend=self.backend_kinds.get(spec.model, "unknown"), lane=lane or self.lane_of(spec.id),
                          worker_id=self.worker_id, enqueued_at=spec.enqueued_at, started_at=now, context=context)
        if context is not None:  # only a traced job keeps its input and output
            call.input = _input_of(spec.kind, spec.body)
            call.model_parameters = {k: spec.body[k] for k in SAMPLING_PARAMS if spec.body.get(k) is not None}
            call.output = []  # streamed text pieces, joined at the end
        wait = self._queue_wait.get(call.lane)
        if wait is None:
            wait = self._queue_wait[call.lane] = metrics.QUEUE_WAIT.labels(call.lane)
        wait.observe(call.queue_wait_s)
        calls.current.set(call)
        return call

    @staticmethod
    def chunk(call: CallRecord, chunk: dict[str, Any]) -> None:
        """A streamed chunk from the backend (OpenAI-shaped)."""
        choices = chunk.get("choices")
        if choices:
            if call.first_token_at is None and has_token(choices):
                call.first_token_at = time.time()
            if isinstance(call.output, list):
                for c in choices:
                    piece = (c.get("delta") or {}).get("content") or c.get("text")
                    if piece:
                        call.output.append(piece)
        if chunk.get("usage"):
            call.usage = _usage_of(chunk["usage"])
        for name in VENDOR_FIELDS:
            if name in chunk:
                call.metadata[name] = chunk[name]

    @staticmethod
    def result(call: CallRecord, data: dict[str, Any]) -> None:
        """A whole answer: chat/completion result, /generate or /classify body."""
        if data.get("usage"):
            call.usage = _usage_of(data["usage"])
        for name in VENDOR_FIELDS:
            if name in data:
                call.metadata[name] = data[name]
        if call.kind == "classify":
            call.metadata["classifier"] = data
            metrics.CLASSIFIED.labels(call.model).inc(_count_prompts(data))
        if isinstance(call.output, list) and call.kind == "embed":
            call.output = embedding_summary(data)  # the vectors are no trace's business: how many, how long
        elif isinstance(call.output, list):
            choices = data.get("choices")
            if choices:
                first = choices[0]
                call.output = (first.get("message") or {}).get("content") if "message" in first \
                    else first.get("text")
            else:
                call.output = {k: v for k, v in data.items() if k not in VENDOR_FIELDS}

    def finish(self, call: CallRecord, status: Status, error: dict[str, Any] | None = None) -> None:
        """The job ended: close the record and count it. (``trace`` hands it to the tracer: the worker calls
        that once the answer is written, so building the trace never delays it.)"""
        call.finished_at = time.time()
        call.status, call.error = status, error
        if isinstance(call.output, list):
            text = "".join(call.output)
            call.output = text if len(text) <= MAX_TRACED_TEXT else text[:MAX_TRACED_TEXT] + "…"
        calls.current.set(None)
        model, err_type = call.model, call.error_type
        jobs, duration, tokens_in, tokens_out = self._children(call.lane, call.operation, model, status, err_type)
        jobs.inc()
        if status != "cancelled":  # a cancelled call measures the client, not the model
            duration.observe(call.finished_at - call.started_at)
        if status == "error" and error is not None:
            metrics.BACKEND_ERRORS.labels(call.backend, err_type).inc()
        if call.usage:
            tokens_in.observe(call.usage.get("input", 0))
            tokens_out.observe(call.usage.get("output", 0))
            p_in, p_out = self.prices.get(model, (0.0, 0.0))
            if p_in or p_out:
                c_in, c_out = call.usage.get("input", 0) * p_in, call.usage.get("output", 0) * p_out
                call.cost = {"input": c_in, "output": c_out, "total": c_in + c_out}

    def _children(self, lane: str, op: str, model: str, status: str, err_type: str) -> tuple[Any, Any, Any, Any]:
        """The labelled metric children of one (operation, model, outcome): looked up once, then reused (a
        ``labels()`` lookup costs about as much as the observation itself). Bounded: models come from the
        config, outcomes and error types from fixed vocabularies."""
        key = (lane, op, model, status, err_type)
        children = self._cache.get(key)
        if children is None:
            children = self._cache[key] = (
                metrics.JOBS.labels(lane, status), metrics.OPERATION_DURATION.labels(op, model, err_type),
                metrics.TOKEN_USAGE.labels(op, model, "input"), metrics.TOKEN_USAGE.labels(op, model, "output"))
        return children

    def traced(self, call: CallRecord) -> bool:
        return self.tracer is not None and call.context is not None

    def trace(self, call: CallRecord) -> None:
        """Build and queue the job's trace (~0.2 ms of CPU, no I/O; the export runs in the tracer's thread)."""
        if self.traced(call):
            self.tracer.record(call)

    # ── periodic ──────────────────────────────────────────────────────────────────────────────────────
    def sample_pool(self, pool: Any) -> None:
        """Entropy pool gauges (called on each heartbeat). A fallback is OS entropy served while a QRNG is
        configured; with no QRNG configured the OS CSPRNG is the chosen source, not a fallback."""
        if pool is None:
            return
        st = pool.stats()
        metrics.QRNG_POOL.set(st["level_bytes"])
        served_os = int(st["bytes_served"].get("os_csprng", 0))
        if st["qrng_configured"]:
            fresh = served_os - self._pool_served_os
            if fresh > 0:
                metrics.QRNG_FALLBACKS.inc(fresh)
            metrics.QRNG_FALLBACK_ACTIVE.set(1 if fresh > 0 or st["circuit_breaker"] == "open" else 0)
        else:
            metrics.QRNG_FALLBACK_ACTIVE.set(0)
        self._pool_served_os = served_os


def _input_of(kind: str, body: dict[str, Any]) -> Any:
    if kind == "chat":
        return body.get("messages")
    if kind == "classify":
        return body.get("prompts")
    if kind in ("embed", "responses"):
        return body.get("input")
    return body.get("prompt")


def _usage_of(u: dict[str, Any]) -> dict[str, int]:
    i, o = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    return {"input": i, "output": o, "total": int(u.get("total_tokens") or i + o)}


def _count_prompts(data: dict[str, Any]) -> int:
    for v in data.values():
        if isinstance(v, list):
            return len(v)
    return 1
