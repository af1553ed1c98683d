"""Relay: read a request's output stream (XREAD BLOCK from the start) and turn it into OpenAI responses.

Readers start at ``0-0``, so a reader that arrives after the worker has finished still gets every event.
There is no polling: each read blocks in Redis until the worker writes, or until the request's deadline.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from core import queue as q
from core import schemas as p
from gateway.draining import Drain, shutting_down
from gateway.enqueue import Entries, entries_of
from gateway.errors import GatewayError, GatewayTimeout, ServiceUnavailable, from_event, render, sse_error
from observability.calls import has_token

DONE = b"data: [DONE]\n\n"
READ_BLOCK_MS = 1_000  # one blocking read waits at most this long: between reads the relay checks the drain
READ_GRACE_S = 2.0  # a read not answered this long after its block ended: Redis has stalled
SSE_HEADERS = {"cache-control": "no-cache", "x-accel-buffering": "no"}


class SSEResponse(StreamingResponse):
    """A server-sent event stream whose last event, ``data: [DONE]``, goes out with the end of the body in one
    write. With Starlette's own StreamingResponse the end of the chunked body followed in a later write, after
    the request's accounting: a client that stops reading at ``[DONE]`` (most do) then found the body unfinished
    and could not reuse the connection, so its next request paid a new TCP connection."""

    media_type = "text/event-stream"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Stream, and stop as soon as the client disconnects (its job is then cancelled by the body's own
        clean-up). One watcher task instead of Starlette's anyio task group per stream."""
        streaming = asyncio.current_task()
        assert streaming is not None
        gone = False

        async def watch() -> None:
            nonlocal gone
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            streaming.cancel()

        watcher = asyncio.create_task(watch())
        try:
            await self.stream_response(send, scope, receive)
        except asyncio.CancelledError:
            if not gone:
                raise
            streaming.uncancel()  # our own cancellation: the client left, nothing more to do
        finally:
            watcher.cancel()

    async def stream_response(self, send: Send, scope: Scope | None = None, receive: Receive | None = None) -> None:
        """The response starts with its first piece: a stream that fails before any output (the body raises a
        GatewayError before its first piece: an upstream 429, a timeout in the queue) answers that error's own
        HTTP status and headers instead, as OpenAI does."""
        pieces = aiter(self.body_iterator)
        try:
            first: str | bytes | memoryview | None = await anext(pieces)
        except StopAsyncIteration:
            first = None
        except GatewayError as e:
            if scope is None or receive is None:
                raise
            await render(e)(scope, receive, send)
            return
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        finished = False
        async for piece in _chain(first, pieces):
            if finished:
                continue  # nothing follows [DONE]; the iterator runs on only to do its after-response work
            data = piece.encode() if isinstance(piece, str) else bytes(piece)
            finished = data.endswith(DONE)
            await send({"type": "http.response.body", "body": data, "more_body": not finished})
        if not finished:
            await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _chain(first: str | bytes | memoryview | None,
                 rest: AsyncIterator[str | bytes | memoryview]) -> AsyncIterator[str | bytes | memoryview]:
    if first is not None:
        yield first
    async for piece in rest:
        yield piece


_CHUNK_KEYS = ("choices", "usage", "system_fingerprint", "model")


async def read_batches(redis: Redis, request_id: str, deadline: float, first: Entries | None = None,
                       drain: Drain | None = None) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
    """The worker's events for ``request_id`` as they arrive, one batch per stream read, with whether the batch
    ends the request (it held ``end``); GatewayTimeout at ``deadline``, 503 ``shutting_down`` once the
    gateway's drain period is over, 503 ``queue_unavailable`` when Redis fails or stalls (each read is bounded).

    ``first`` holds entries already read (by the read pipelined with the enqueue)."""
    key = q.output_key(request_id)
    last: bytes = b"0-0"
    entries = first or []
    while True:
        batch: list[dict[str, Any]] = []
        for entry_id, fields in entries:
            last = entry_id
            for ev in q.unpack_events(fields[q.EVENT_FIELD]):
                if ev["k"] == "end":
                    yield batch, True
                    return
                batch.append(ev)
        if batch:
            yield batch, False
        block_ms = int((deadline - time.time()) * 1000)
        if block_ms <= 0:
            raise GatewayTimeout("The request timed out before the model finished.")
        if drain is not None and drain.expired:
            raise shutting_down()
        block_ms = min(block_ms, READ_BLOCK_MS)
        try:
            async with asyncio.timeout(block_ms / 1000 + READ_GRACE_S):
                entries = entries_of(await redis.xread({key: last}, count=1024, block=block_ms))
        except (*q.REDIS_DOWN, TimeoutError) as e:
            raise ServiceUnavailable("The gateway lost its queue (Redis) while waiting for the answer; retry.",
                                     code="queue_unavailable", headers={"retry-after": "1"}) from e


async def read_events(redis: Redis, request_id: str, deadline: float, first: Entries | None = None,
                      drain: Drain | None = None) -> AsyncIterator[dict[str, Any]]:
    """The worker's events for ``request_id`` one by one, until ``end``."""
    async for batch, _ in read_batches(redis, request_id, deadline, first, drain):
        for ev in batch:
            yield ev


@dataclass(slots=True)
class Outcome:
    """What the relay learnt about a finished request (for limits and spend)."""

    usage: dict[str, Any] | None = None
    kind: str = "chat"
    started: float = 0.0  # perf_counter when the request arrived (streams: for time-to-first-token)
    first_token_at: float | None = None  # perf_counter when the first content chunk was handed to the client
    cut: bool = False  # the gateway ended the stream itself (deadline, drain, Redis lost): the job may still run

    def tokens(self) -> tuple[int, int]:
        u = self.usage or {}
        return int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + q.dumps(obj) + b"\n\n"


class Shape:
    """Per-endpoint response shapes (chat vs legacy completions)."""

    def __init__(self, kind: str, response_id: str, model: str, created: int):
        self.chat = kind == "chat"
        self.id, self.model, self.created = response_id, model, created

    def answered_by(self, d: dict[str, Any]) -> None:
        """A fallback model group answered: the worker names it in the event's data, and so does the response."""
        model = d.get("model")
        if model:
            self.model = str(model)

    def chunk(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None = None,
              fingerprint: str | None = None) -> dict[str, Any]:
        if self.chat:
            return p.chat_chunk(self.id, self.model, self.created, choices, usage, fingerprint)
        return p.text_chunk(self.id, self.model, self.created, choices, usage)

    def whole(self, choices: list[dict[str, Any]], usage: dict[str, Any] | None,
              fingerprint: str | None = None) -> dict[str, Any]:
        if self.chat:
            return p.chat_completion(self.id, self.model, self.created, choices, usage, fingerprint)
        return p.text_completion(self.id, self.model, self.created, choices, usage)

    def result_as_chunks(self, d: dict[str, Any]) -> list[dict[str, Any]]:
        """A non-streamed answer replayed as stream chunks: role; content (and reasoning, refusal...) with the
        choice's logprobs; tool calls, each with its ``index`` as stream deltas carry it; finish."""
        out = []
        fp = d.get("system_fingerprint")
        for c in d.get("choices", []):
            i = c.get("index", 0)
            if self.chat:
                msg = dict(c.get("message") or {})
                role = msg.pop("role", "assistant")
                calls = msg.pop("tool_calls", None)
                opening = p.delta_choice(i, "", chat=True, role=True)
                opening["delta"]["role"] = role
                out.append(self.chunk([opening], None, fp))
                if msg.get("content") or len(msg) > 1 or c.get("logprobs"):
                    out.append(self.chunk([{"index": i, "delta": msg, "logprobs": c.get("logprobs"),
                                            "finish_reason": None}], None, fp))
                if calls:
                    deltas = [{"index": n, **call} for n, call in enumerate(calls)]
                    out.append(self.chunk([{"index": i, "delta": {"tool_calls": deltas}, "logprobs": None,
                                            "finish_reason": None}], None, fp))
                out.append(self.chunk([p.finish_choice(i, c.get("finish_reason"), chat=True)], None, fp))
            else:
                choice = p.delta_choice(i, c.get("text", ""), chat=False, finish_reason=c.get("finish_reason"))
                choice["logprobs"] = c.get("logprobs")
                out.append(self.chunk([choice], None, fp))
        return out


class _StreamState:
    """What a stream's relay keeps between batches: the usage and vendor fields to send at the end."""

    def __init__(self, shape: Shape, outcome: Outcome):
        self.shape, self.outcome = shape, outcome
        self.usage: dict[str, Any] | None = None
        self.extra: dict[str, Any] = {}  # vendor fields of the last chunk (e.g. quantum_diagnostics)

    def render(self, batch: list[dict[str, Any]]) -> tuple[list[bytes], bool]:
        """The batch's SSE events, and whether the stream stops here (the worker reported an error)."""
        out: list[bytes] = []
        for ev in batch:
            k = ev["k"]
            if k == "chunk":
                self._chunk(ev["d"], out)
            elif k == "result":
                self.shape.answered_by(ev["d"])
                self.usage = ev["d"].get("usage") or self.usage
                self._first_token()
                out.extend(_sse(chunk) for chunk in self.shape.result_as_chunks(ev["d"]))
            elif k == "error":
                out.append(sse_error(from_event(ev)))
                return out, True
        return out, False

    def _chunk(self, d: dict[str, Any], out: list[bytes]) -> None:
        if "model" in d:
            self.shape.answered_by(d)
        if d.get("usage"):
            self.usage = d["usage"]
        self.extra.update({key: v for key, v in d.items() if key not in _CHUNK_KEYS})
        choices = d.get("choices")
        if choices:
            if has_token(choices):
                self._first_token()
            out.append(_sse(self.shape.chunk(choices, None, d.get("system_fingerprint"))))

    def _first_token(self) -> None:
        if self.outcome.first_token_at is None:
            self.outcome.first_token_at = time.perf_counter()

    def tail(self, include_usage: bool) -> bytes:
        """The optional usage chunk (with vendor fields) and ``[DONE]``."""
        self.outcome.usage = self.usage
        if include_usage and self.usage is not None:
            return _sse({**self.shape.chunk([], self.usage), **self.extra}) + DONE
        if self.extra:
            return _sse({**self.shape.chunk([]), **self.extra}) + DONE
        return DONE


async def sse_stream(batches: AsyncIterator[tuple[list[dict[str, Any]], bool]], shape: Shape, include_usage: bool,
                     outcome: Outcome) -> AsyncIterator[bytes]:
    """Worker events -> ``data: {chunk}`` lines, an optional usage chunk, ``data: [DONE]``: one piece (one
    write to the client) per batch the gateway read, the last one ending with ``[DONE]``."""
    state = _StreamState(shape, outcome)
    started = False  # nothing sent yet: a failure is raised, and the response answers its HTTP status (SSEResponse)
    try:
        async for batch, last in batches:
            if not started and batch and batch[0]["k"] == "error":
                raise from_event(batch[0])
            pieces, stopped = state.render(batch)
            if stopped or last:
                yield b"".join([*pieces, state.tail(include_usage)])
                return
            if pieces:
                started = True
                yield b"".join(pieces)
    except GatewayError as e:
        outcome.usage = state.usage
        outcome.cut = True
        if not started:
            raise
        yield sse_error(e) + DONE
        return
    yield state.tail(include_usage)


async def collect(events: AsyncIterator[dict[str, Any]], shape: Shape, outcome: Outcome) -> dict[str, Any]:
    """Worker events -> one whole response body. Raises the worker's error as a GatewayError."""
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    usage: dict[str, Any] | None = None
    fingerprint = None
    async for ev in events:
        k = ev["k"]
        if k == "result":
            d = ev["d"]
            shape.answered_by(d)
            outcome.usage = d.get("usage")
            whole = shape.whole(d.get("choices", []), d.get("usage"), d.get("system_fingerprint"))
            extra = {key: v for key, v in d.items() if key not in whole}  # vendor fields, e.g. quantum_diagnostics
            return {**whole, **extra} if extra else whole
        if k == "error":
            raise from_event(ev)
        d = ev["d"]
        if "model" in d:
            shape.answered_by(d)
        usage = d.get("usage") or usage
        fingerprint = d.get("system_fingerprint") or fingerprint
        for c in d.get("choices") or ():
            i = c.get("index", 0)
            piece = (c.get("delta") or {}).get("content") if shape.chat else c.get("text")
            if piece:
                texts.setdefault(i, []).append(piece)
            finish[i] = c.get("finish_reason") or finish.get(i)
    outcome.usage = usage
    choices = [p.answer_choice(i, "".join(texts.get(i, [])), finish.get(i) or "stop", chat=shape.chat)
               for i in sorted(set(texts) | set(finish))]
    return shape.whole(choices, usage, fingerprint)
