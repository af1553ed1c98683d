"""Request handling for the generation endpoints, as a pipeline of small steps:

    read body → parse & validate → check model → build job → enqueue → relay (SSE or whole reply)

Each step raises a GatewayError the router renders; nothing here knows about routing.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from core import capabilities
from core import queue as q
from core import schemas as p
from core.queue import JobKind
from gateway.auth import MASTER, Principal
from gateway.context import STARTED_KEY, request_id
from gateway.enqueue import Entries
from gateway.errors import (
    GatewayError,
    InvalidRequest,
    ModelNotFound,
    PayloadTooLarge,
    PermissionDenied,
    from_event,
    from_validation_error,
)
from gateway.limits import Admission
from gateway.priority import priority_for, tenant_of
from gateway.relay import SSE_HEADERS, Outcome, Shape, SSEResponse, collect, read_batches, read_events, sse_stream
from gateway.services import Services, services
from observability.calls import TraceContext
from observability.http import count_usage, observe_stream, route_of

log = logging.getLogger("gatehouse.gateway")
M = TypeVar("M", bound=BaseModel)
T = TypeVar("T", bound=p.JobRequest)
S = TypeVar("S", bound=p.SamplingRequest)


async def read_json(request: Request, limit: int) -> dict[str, Any]:
    """The body as a JSON object; 413 past ``limit`` bytes, 400 for anything that is not a JSON object."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw:
        raise InvalidRequest("The request body is empty; expected a JSON object.", code="invalid_json")
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidRequest("We could not parse the JSON body of your request. (HINT: This likely means you "
                             "aren't using your HTTP library correctly. The OpenAI API expects a JSON payload, "
                             "but what was sent was not valid JSON.)", code="invalid_json") from None
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.", code="invalid_json")
    return body


def parse(model_cls: type[M], body: dict[str, Any]) -> M:
    try:
        return model_cls.model_validate(body)
    except ValidationError as e:
        raise from_validation_error(e) from None


def deadline_for(request: Request, default_s: float, stream: bool) -> float:
    """When the request must be done. The OpenAI SDKs announce their read timeout (``x-stainless-read-timeout``):
    for a non-streaming call that is how long the client will wait for the whole answer, so working past it
    is wasted. (For a stream it bounds the gap between chunks, not the total, so it is not used.)"""
    timeout = default_s
    hinted = None if stream else request.headers.get("x-stainless-read-timeout")
    if hinted:
        try:
            timeout = min(timeout, max(0.1, float(hinted)))
        except ValueError:
            pass
    return time.time() + timeout


class Relay(Protocol):
    """How a job's output reaches the client when it is not a chat/completions answer (``Generation.run``'s
    ``relay``: POST /v1/responses passed through, gateway.routes.responses)."""

    def stream(self, batches: AsyncIterator[tuple[list[dict[str, Any]], bool]],
               outcome: Outcome) -> AsyncIterator[bytes]: ...

    async def collect(self, events: AsyncIterator[dict[str, Any]], outcome: Outcome) -> dict[str, Any]: ...


class Generation:
    """Submits a validated request as a job and relays the worker's output."""

    def __init__(self, svc: Services, principal: Principal = MASTER):
        self.svc = svc
        self.settings = svc.config.settings
        self.principal = principal
        self.queue = svc.queue  # the lane the job goes to
        self.bench_run: str | None = None  # the benchmark run the key belongs to (ADR 0018)
        md = principal.metadata
        if md:  # a key's metadata may put its calls on the batch lane and in a benchmark run
            if md.get("lane") == "batch":
                self.queue = svc.batch_queue
            self.bench_run = q.bench_run_of(md.get("bench_run"))

    @classmethod
    async def accept(
        cls, request: Request, model_cls: type[T] | Callable[[dict[str, Any]], type[T]]
    ) -> tuple[Generation, dict[str, Any], T]:
        """The steps before enqueue: authenticate, read and parse the body (``model_cls`` may choose the model
        from the raw body, for routes that take two seeds' formats), check the model and limits."""
        svc = services(request)
        principal = await svc.auth.authenticate(request)
        gen = cls(svc, principal)
        body = await read_json(request, gen.settings.max_body_bytes)
        chosen: type[T] = model_cls if isinstance(model_cls, type) else model_cls(body)
        req = parse(chosen, body)
        gen.check_model(req.model, principal)
        if isinstance(req, p.SamplingRequest):
            body, req = gen.prepare(req, body)
        return gen, body, req

    def prepare(self, req: S, body: dict[str, Any]) -> tuple[dict[str, Any], S]:
        """The checks every sampling request passes before enqueue, wherever it was parsed (``accept``, or a
        route that builds the request itself, as /v1/responses does): its limits, then what the model can do."""
        self.check_limits(req)
        return self.fit(req, body)

    def check_model(self, name: str, principal: Principal) -> None:
        if name not in self.svc.models:
            raise ModelNotFound(name)
        if not principal.may_use(name):
            raise PermissionDenied(f"This API key is not allowed to use the model `{name}`.", param="model",
                                   code="model_not_allowed")

    def fit(self, req: S, body: dict[str, Any]) -> tuple[dict[str, Any], S]:
        """Honest refusals (ADR 0019): what the request asks for that the model's backends cannot do (tools for
        chargpt, ...) is a 400 naming the parameter; with ``drop_params`` (the request's, else
        ``litellm_settings.drop_params``) it is removed instead, and said in one log line."""
        supports = self.svc.features.get(req.model)
        refused = capabilities.unsupported(req.kind, body, supports) if supports is not None else []
        if not refused:
            return body, req
        drop = req.drop_params if req.drop_params is not None else self.svc.config.drop_params()
        if not drop:
            first = refused[0]
            raise InvalidRequest(first.message(req.model), param=first.param, code=first.code)
        log.info("model %s does not support %s: dropped (drop_params)", req.model,
                 ", ".join(a.param for a in refused))
        body = capabilities.dropped(body, refused)
        return body, parse(type(req), body)

    def check_limits(self, req: p.SamplingRequest) -> None:
        limit = req.token_limit()
        if limit is not None and limit > self.settings.max_tokens_limit:
            param = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) else "max_tokens"
            raise InvalidRequest(f"{param} is too large: {limit}. This gateway allows at most "
                                 f"{self.settings.max_tokens_limit} tokens per completion.", param=param,
                                 code="invalid_value")

    async def run(self, request: Request, req: p.JobRequest, body: dict[str, Any], *, id_prefix: str,
                  relay: Relay | None = None) -> Response:
        """Enqueue ``req`` (``body``: the client's raw body) and answer with the worker's output (as chat or
        completions, or as ``relay`` makes it)."""
        rid = request_id(request.scope)
        kind, model, stream = req.kind, req.model, req.streams()
        # LiteLLM's `priority` is the gateway's to honour, not the model's (vLLM refuses one it is not set up for)
        priority = priority_for(self.principal, body.pop("priority", None), self.settings.default_priority)
        admission = await self.svc.limiter.admit(rid, self.svc.scopes(self.principal))  # 429 here
        headers = admission.headers if admission else {}
        outcome = Outcome(kind=kind)
        try:
            spec = req.to_job(body, request_id=rid, deadline=deadline_for(request, self.settings.request_timeout_s,
                                                                          stream),
                              trace=self._trace_context(request) if self.svc.tracing else None)
            spec.origin = self.svc.reaper.gateway_id  # if this gateway dies, nobody waits for the answer
            spec.tenant, spec.priority, spec.bench_run = tenant_of(self.principal), priority, self.bench_run
            first = await self.queue.submit(spec)
            shape = Shape(kind, f"{id_prefix}{rid}", model, p.now())
            if stream:
                if first and (ev := q.unpack_events(first[0][1][q.EVENT_FIELD])[0])["k"] == "error":
                    raise from_event(ev)  # failed before any output: a real HTTP status, as OpenAI does
                outcome.started = request.scope[STARTED_KEY][1]
                batches = read_batches(self.svc.streams, rid, spec.deadline, first, self.svc.drain)
                sse = relay.stream(batches, outcome) if relay is not None else sse_stream(batches, shape,
                                                                                          req.include_usage(), outcome)
                body_iter = self._guarded_stream(rid, sse, admission, model, outcome)
                return SSEResponse(body_iter, headers={**SSE_HEADERS, **headers})
        except BaseException:
            self._account(admission, model, rid, outcome)
            raise
        events = read_events(self.svc.streams, rid, spec.deadline, first, self.svc.drain)
        result = await self._collect_or_cancel(request, rid, events, shape, kind, admission, model, outcome,
                                               watch=not _has_end(first), relay=relay)
        return Response(orjson.dumps(result), media_type="application/json", headers=headers)

    async def _collect_or_cancel(self, request: Request, rid: str, events: AsyncIterator[dict[str, Any]],
                                 shape: Shape, kind: JobKind, admission: Admission | None, model: str,
                                 outcome: Outcome, *, watch: bool, relay: Relay | None = None) -> dict[str, Any]:
        """Wait for the whole answer; if the client disconnects or time runs out, cancel the job. (``watch``
        False: the whole answer is already here, so there is nothing to wait for and no disconnect to watch.)"""
        watcher = asyncio.create_task(_wait_disconnect(request)) if watch else None
        if watcher is not None:
            current = asyncio.current_task()
            assert current is not None
            watcher.add_done_callback(lambda t: current.cancel() if not t.cancelled() and not t.exception() else None)
        done = False
        try:
            if relay is not None:
                result = await relay.collect(events, outcome)
            elif kind in ("generate", "classify"):
                result = await _first_result(events)
            else:
                result = await collect(events, shape, outcome)
            done = True
            return result
        finally:
            if watcher is not None:
                watcher.cancel()
            self._settle(rid, done)
            self._account(admission, model, rid, outcome)

    async def _guarded_stream(self, rid: str, body: AsyncIterator[bytes], admission: Admission | None, model: str,
                              outcome: Outcome) -> AsyncIterator[bytes]:
        finished = False
        try:
            async for piece in body:
                yield piece
            finished = True
            observe_stream(outcome.kind, model, outcome.started, outcome.first_token_at,
                           time.perf_counter(), outcome.tokens()[1])
        finally:
            # not finished: the client went away (Starlette cancels us) or a read failed
            self._settle(rid, finished and not outcome.cut)
            self._account(admission, model, rid, outcome)

    def _account(self, admission: Admission | None, model: str, rid: str, outcome: Outcome) -> None:
        """Usage into rate limits, budgets and the spend log; never delays the response."""
        prompt, completion = outcome.tokens()
        cost = self.svc.cost(model, prompt, completion)
        pr = self.principal
        if outcome.usage is not None and (pr.kind != "master" or pr.team_id or cost):
            self.svc.spend.record(rid, pr.key_id, pr.team_id, pr.user_id, model, prompt, completion, cost)
        if outcome.usage is not None:
            tenant = (pr.team_id or pr.alias or "") if self.settings.metrics.tenant_labels else ""
            count_usage(model, prompt, completion, cost, tenant)
        if admission is not None:
            self.svc.queue.run_soon(self.svc.limiter.settle(admission, prompt + completion, cost))

    def _trace_context(self, request: Request) -> dict[str, Any]:
        """Who asked, from where: carried in the job so the worker's trace names the route and the caller."""
        pr = self.principal
        return TraceContext(route=f"{request.method} {route_of(request.scope)}",
                            received_at=request.scope[STARTED_KEY][0], user_id=pr.user_id or pr.id,
                            session_id=request.headers.get("x-session-id") or self.bench_run, key_alias=pr.alias,
                            team_id=pr.team_id).to_dict()

    def _settle(self, rid: str, delivered: bool) -> None:
        """After the response: drop the consumed output, or cancel the job whose output nobody will read."""
        if delivered:
            self.svc.queue.consumed(rid)
        else:
            self.queue.cancel_soon(rid)


def _has_end(entries: Entries | None) -> bool:
    """Whether entries read so far hold the request's last event (its answer is complete)."""
    return entries is not None and len(entries) > 0 and q.ends_request(entries[-1][1].get(q.EVENT_FIELD, b""))


async def _wait_disconnect(request: Request) -> bool:
    """True once the client disconnects (the body has been read, so receive() only reports that)."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            log.info("client disconnected; cancelling request")
            return True


async def _first_result(events: AsyncIterator[dict[str, Any]]) -> dict[str, Any]:
    async for ev in events:
        if ev["k"] == "result":
            return ev["d"]  # type: ignore[no-any-return]
        if ev["k"] == "error":
            raise from_event(ev)
    raise GatewayError("The worker finished without a result.")
