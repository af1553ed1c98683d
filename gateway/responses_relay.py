"""How a ``POST /v1/responses`` answer reaches the client (ADR 0020).

Translated: the chat answer ``Generation.run`` made (JSON, or the chat SSE stream with its usage chunk and
``[DONE]``) becomes a Response or the Responses event stream (core.responsestream). Passed through
(``NativeRelay``): the upstream's Response or events, relayed as they are but for ``model`` (the public name, as
chat answers say it) and a failure the gateway saw itself (an ``error`` event).

``Keep`` stores the finished Response (store: true) before the client sees it finish, so a ``GET`` or a
``previous_response_id`` right after finds it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from typing import Any

import orjson

from core.responsestream import StreamTranslator, sse
from gateway.errors import GatewayError, from_event
from gateway.relay import Outcome

log = logging.getLogger("gatehouse.gateway")
Keep = Callable[[dict[str, Any]], Awaitable[None]]
DONE = b"[DONE]"
WITH_RESPONSE = {"response.created", "response.in_progress", "response.completed", "response.incomplete",
                 "response.failed", "response.queued"}
FINAL = {"response.completed", "response.incomplete", "response.failed"}


def chat_payloads(piece: bytes) -> list[bytes]:
    """The ``data:`` payloads of a piece of the gateway's own chat SSE stream (whole events, never split)."""
    return [event[6:] if event.startswith(b"data: ") else event for event in piece.split(b"\n\n") if event]


async def translated_stream(chat: AsyncIterable[Any], tr: StreamTranslator, keep: Keep) -> AsyncIterator[bytes]:
    """The chat stream's chunks as Responses events, ``response.created`` with the first of them: a failure
    before any output is raised by the chat stream before its first piece, and the response answers its HTTP
    status (gateway.relay.SSEResponse). The chat stream is read to its end whatever happens: its last step
    settles the request (limits, spend, the job's output)."""
    ended = False
    out: list[dict[str, Any]] = tr.opening()
    async for piece in chat:
        if ended:
            continue
        for data in chat_payloads(piece.encode() if isinstance(piece, str) else bytes(piece)):
            if data == DONE:
                out.extend(tr.closing())
                ended = True
                await keep(tr.response)
                break
            chunk = orjson.loads(data)
            if chunk.get("error"):
                out.extend(tr.failed(chunk["error"]))
                ended = True
                break
            out.extend(tr.chunk(chunk))
        if out:
            yield b"".join(sse(e) for e in out)
            out = []
    if not ended:  # the chat relay always ends with [DONE]; should it not, the client still gets an ending
        yield b"".join(sse(e) for e in tr.failed({"code": "stream_ended", "message": "The answer ended early."}))


class NativeRelay:
    """``Generation.run``'s relay for a model whose upstream speaks the Responses API: the worker's chunks each
    carry one upstream event (``{"event": {...}}``, the last one also ``usage`` in chat terms); a whole answer
    is ``{"response": {...}, "usage": {...}}``."""

    def __init__(self, model: str, keep: Keep):
        self.model = model
        self.keep = keep
        self.seq = -1  # the last sequence number relayed (a failure the gateway adds follows it)
        self.final: dict[str, Any] | None = None

    def _named(self, response: dict[str, Any], answered_by: Any = None) -> dict[str, Any]:
        response["model"] = str(answered_by or self.model)
        return response

    async def collect(self, events: AsyncIterator[dict[str, Any]], outcome: Outcome) -> dict[str, Any]:
        async for ev in events:
            if ev["k"] == "result":
                d = ev["d"]
                outcome.usage = d.get("usage")
                self.final = self._named(d.get("response") or {}, d.get("model"))
                await self.keep(self.final)
                return self.final
            if ev["k"] == "error":
                raise from_event(ev)
        raise GatewayError("The worker finished without a result.")

    async def stream(self, batches: AsyncIterator[tuple[list[dict[str, Any]], bool]],
                     outcome: Outcome) -> AsyncIterator[bytes]:
        """The events; a failure before any is raised (the response then answers its HTTP status), after some
        it is an ``error`` event."""
        started = False
        try:
            async for batch, last in batches:
                out: list[bytes] = []
                for ev in batch:
                    if ev["k"] == "chunk":
                        out.append(await self._event(ev["d"], outcome))
                    elif ev["k"] == "result":
                        out.extend([await self._event({**ev["d"], "event": e}, outcome)
                                    for e in replay(ev["d"].get("response") or {})])
                    elif ev["k"] == "error":
                        if out:  # what came before the failure goes out first
                            started = True
                            yield b"".join(out)
                        raise from_event(ev)
                if out:
                    started = True
                    yield b"".join(out)
                if last:
                    return
        except GatewayError as e:  # the upstream failed; or the deadline, the drain, Redis lost
            outcome.cut = True
            if not started:
                raise
            yield self._error(e)

    async def _event(self, d: dict[str, Any], outcome: Outcome) -> bytes:
        event: dict[str, Any] = d.get("event") or {}
        kind = str(event.get("type", ""))
        self.seq = int(event.get("sequence_number", self.seq + 1))
        if kind.endswith(".delta") and outcome.first_token_at is None:
            outcome.first_token_at = time.perf_counter()
        if kind in WITH_RESPONSE and isinstance(event.get("response"), dict):
            self._named(event["response"], d.get("model"))
        if kind in FINAL:
            outcome.usage = d.get("usage") or outcome.usage
            self.final = event.get("response")
            if self.final is not None:
                await self.keep(self.final)
        return sse(event)

    def _error(self, err: GatewayError) -> bytes:
        self.seq += 1
        return sse({"type": "error", "sequence_number": self.seq, "code": err.code, "message": err.message,
                    "param": err.param})


def replay(response: dict[str, Any]) -> list[dict[str, Any]]:
    """A whole Response (an upstream that ignored ``stream: true``) as a minimal event stream."""
    started = {**response, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [{"type": "response.created", "response": started},
              {"type": "response.in_progress", "response": dict(started)}]
    for i, item in enumerate(response.get("output") or ()):
        events.append({"type": "response.output_item.added", "output_index": i, "item": item})
        events.append({"type": "response.output_item.done", "output_index": i, "item": item})
    final = "response.incomplete" if response.get("status") == "incomplete" else "response.completed"
    events.append({"type": final, "response": response})
    return [{**e, "sequence_number": n} for n, e in enumerate(events)]
