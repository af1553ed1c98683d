"""The one arq job function, ``run_request``: run a request on its model's backend and write what comes out to
the request's output stream.

    JobSpec ─► backend (by capability) ─► chunks as they come (EventWriter) ─► last events + ``end``
                                                                   (handed to GatehouseWorker.finish_job)

A model with several deployments, limits or fallbacks goes through its ``workers.routing.Route``, which picks the
backend and may try others while nothing has been sent; every other model's backend is called directly.

Every failure becomes exactly one error event, built by ``BackendError.event`` (core.queue.error_event): a
backend's own error, the deadline, a cancellation, or a bug in the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any, Protocol

from core import queue as q
from core import recent
from core.queue import JobSpec
from observability.calls import CallRecord, Status
from observability.jobs import JobObserver
from observability.logs import request_id_var
from workers.backends import (
    Answer,
    Backend,
    BackendError,
    Chunk,
    Classifies,
    Completions,
    Embeds,
    Generates,
    WholeAnswer,
    unsupported,
)
from workers.backends.base import fitted
from workers.events import EventWriter
from workers.state import WorkerState, state_of

log = logging.getLogger("gatehouse.worker")

TIMED_OUT = BackendError(504, "The request timed out before the model finished.", type_="timeout_error",
                         code="timeout")
CANCELLED = BackendError(499, "The request was cancelled.", code="cancelled")
INTERNAL = BackendError(500, "The worker had an internal error running this request.", type_="server_error",
                        code="internal_error")


async def run_request(ctx: dict[str, Any], spec_dict: dict[str, Any], lane: str | None = None) -> None:
    """Run one request (``lane``: the one the worker claimed it from); its last events are left in
    ``state.final_events`` (and a benchmark call's timing record in ``state.bench_timings``) for the worker to
    write."""
    state = state_of(ctx)
    spec = JobSpec.from_dict(spec_dict)
    request_id_var.set(spec.id)  # this job's task only: every log line below carries the request id
    writer = EventWriter(state.redis, spec.id)
    call = state.observer.start(spec, lane)
    status: Status = "ok"
    failure: BackendError | None = None
    final: list[bytes] = []
    try:
        final = await routed_answer(state, spec, writer, call)
    except asyncio.CancelledError:
        await _end(state, spec, writer, call, "cancelled", CANCELLED, final)
        raise
    except BackendError as e:
        status, failure = "error", e
        if e.status >= 500 or e.upstream_status is not None:  # the upstream's failure, in one line: no traceback
            log.log(logging.WARNING if e.status >= 500 else logging.INFO, "request %s failed: %s", spec.id,
                    e.describe())
    except TimeoutError:
        status, failure = "timeout", TIMED_OUT
    except Exception:
        log.exception("request %s failed in the worker", spec.id)  # a bug must not leave the client waiting
        status, failure = "error", INTERNAL
    await _end(state, spec, writer, call, status, failure, final)


class Emitter(Protocol):
    def emit(self, event: bytes) -> None: ...


class RoutedJob:
    """A routed job's tries (``workers.routing.Attempts``): each runs ``answer``; output counts as sent once an
    event was emitted (a held opening chunk is not)."""

    def __init__(self, job: JobSpec, writer: EventWriter, observer: JobObserver, call: CallRecord):
        self.job, self.writer, self.observer, self.call = job, writer, observer, call
        self.emitted = 0

    def emit(self, event: bytes) -> None:
        self.emitted += 1
        self.writer.emit(event)

    async def run(self, backend: Backend, answered_by: str | None) -> list[bytes]:
        return await answer(backend, self.job, self, self.observer, self.call, answered_by)

    def sent(self) -> bool:
        return self.emitted > 0

    def tokens(self) -> int:
        return int((self.call.usage or {}).get("total") or 0)


async def routed_answer(state: WorkerState, job: JobSpec, writer: EventWriter, call: CallRecord) -> list[bytes]:
    """``answer`` on the job's model: straight on its backend, or through its route."""
    route = state.backends.route(job.model)
    if route is None:
        return await answer(state.backends.get(job.model), job, writer, state.observer, call)
    return await route.run(job, state.redis, RoutedJob(job, writer, state.observer, call))


async def answer(backend: Backend, job: JobSpec, writer: Emitter, observer: JobObserver, call: CallRecord,
                 answered_by: str | None = None) -> list[bytes]:
    """Run ``job`` on ``backend`` within the job's deadline. Streamed chunks go out through ``writer`` as they
    come; a whole answer is returned as the last events (they ride in the end-of-job transaction). A fallback
    model group's answer names it (``answered_by``) in its chunks or result."""
    remaining = job.remaining()
    if remaining <= 0:
        raise TimeoutError
    async with asyncio.timeout(remaining):
        result: Answer
        # "responses": POST /v1/responses passed through, on a backend whose upstream speaks it (ADR 0020)
        native = job.kind == "responses" and job.kind in backend.capabilities
        if (job.kind in Completions.provides or native) and isinstance(backend, Completions):
            job = fitted(job, backend)  # what this backend cannot do: a 400 naming it, or dropped (ADR 0019)
            if job.stream:
                chunks = backend.stream(job)
                await relay_chunks(chunks if answered_by is None else named(chunks, answered_by), writer, observer,
                                   call)
                return []
            result = await backend.complete(job)
            if answered_by is not None:
                result = {**result, "model": answered_by}
        elif job.kind == "generate" and isinstance(backend, Generates):
            result = await backend.generate(job)
        elif job.kind == "classify" and isinstance(backend, Classifies):
            result = await backend.classify(job)
        elif job.kind == "embed" and isinstance(backend, Embeds):
            result = await backend.embed(job)
            if answered_by is not None:
                result = {**result, "model": answered_by}
        else:
            raise unsupported(job, backend)
    observer.result(call, result)
    return [q.result_event(result)]


async def named(chunks: AsyncIterator[Chunk], model: str) -> AsyncIterator[Chunk]:
    """A fallback group's chunks, each naming the group."""
    async for chunk in chunks:
        yield WholeAnswer({**chunk, "model": model}) if isinstance(chunk, WholeAnswer) else {**chunk, "model": model}


async def relay_chunks(chunks: AsyncIterator[Chunk], writer: Emitter, observer: JobObserver,
                       call: CallRecord) -> None:
    """A backend's stream into output events. An opening chunk that only announces the assistant's role is
    held and sent with the first chunk that has content: the client's first token then needs one write and one
    read instead of two of each."""
    held: Chunk | None = None
    first = True
    async for chunk in chunks:
        if isinstance(chunk, WholeAnswer):
            observer.result(call, chunk)
            if held is not None:
                writer.emit(q.chunk_event(held))
                held = None
            writer.emit(q.result_event(chunk))
            continue
        observer.chunk(call, chunk)
        if first and opens_only(chunk):
            held, first = chunk, False
            continue
        first = False
        if held is not None:
            chunk, held = with_opening(held, chunk), None
        writer.emit(q.chunk_event(chunk))
    if held is not None:
        writer.emit(q.chunk_event(held))


def opens_only(chunk: Chunk) -> bool:
    """Whether a chunk carries nothing but the role of the message it opens (``{"role": "assistant",
    "content": ""}``, no finish reason, no usage)."""
    choices = chunk.get("choices")
    if not choices or chunk.get("usage"):
        return False
    for c in choices:
        delta = c.get("delta")
        if not delta or "role" not in delta or c.get("finish_reason") or c.get("logprobs"):
            return False
        if any(v for k, v in delta.items() if k != "role"):
            return False
    return True


def with_opening(opening: Chunk, chunk: Chunk) -> Chunk:
    """``chunk`` with the held opening's role put into the deltas of the choices it opened."""
    roles = {c.get("index", 0): c["delta"]["role"] for c in opening["choices"]}
    choices = []
    for c in chunk.get("choices") or ():
        role = roles.pop(c.get("index", 0), None)
        delta = c.get("delta")
        if role is not None and isinstance(delta, dict) and "role" not in delta:
            c = {**c, "delta": {"role": role, **delta}}
        choices.append(c)
    leftover = [c for c in opening["choices"] if c.get("index", 0) in roles]
    return {**chunk, "choices": [*leftover, *choices]}


async def _end(state: WorkerState, spec: JobSpec, writer: EventWriter, call: CallRecord, status: Status,
               failure: BackendError | None, final: list[bytes]) -> None:
    """Close the job's record and leave its last events (and, when traced, its record; for a benchmark call, its
    timing record) to the worker."""
    job_id = spec.id
    if failure is not None:
        final = [*final, failure.event()]
    state.observer.finish(call, status, failure.as_dict() if failure is not None else None)
    if failure is not None and status != "cancelled":
        state.failures[job_id] = recent.error_record(request_id=job_id, model=spec.model, lane=call.lane,
                                                     tenant=spec.tenant, worker=call.worker_id,
                                                     error=failure.as_dict())
    if status == "cancelled":
        state.observer.trace(call)  # nobody waits for this answer: trace it now
    elif state.observer.traced(call):
        state.finished_calls[job_id] = call  # traced by GatehouseWorker.finish_job, after the answer is out
    state.final_events[job_id] = [*await asyncio.shield(writer.settle()), *final, q.END_EVENT]
    if spec.bench_run is not None:
        state.bench_timings[job_id] = bench_timing(call, spec.bench_run)


def bench_timing(call: CallRecord, bench_run: str) -> bytes:
    """A benchmark call's timing record (core.queue.bench_timing_key; docs/benchmark-runs-contract.md): what only
    the worker knows. ``upstream_ms`` is the worker's time on the job, its backend call included;
    ``upstream_ttft_ms`` runs to the backend's first token (None when there was none)."""
    first = call.first_token_at
    return q.dumps({"queue_ms": round(call.queue_wait_s * 1000, 3),
                    "upstream_ms": round(max(0.0, call.finished_at - call.started_at) * 1000, 3),
                    "upstream_ttft_ms": None if first is None else round(max(0.0, first - call.started_at) * 1000, 3),
                    "cold_start": call.cold_start, "retries": call.retries,
                    "cost": float((call.cost or {}).get("total") or 0.0), "bench_run": bench_run})
