"""``POST /responses`` on an upstream that speaks OpenAI's Responses API (ADR 0020): the body as the client sent it
(its model swapped for the upstream's), the Response or its event stream relayed as they are. Each event rides as
a chunk ``{"event": {...}}``; the one that ends the response also carries its usage in chat terms, which limits,
spend, metrics and traces count."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import orjson

from core.responses import chat_usage
from workers.backends.base import Answer, BackendError, Chunk, WholeAnswer

# request defaults from litellm_params that mean the same in the Responses API (max_tokens, stop... do not)
RESPONSES_DEFAULTS = {"temperature", "top_p", "tool_choice", "parallel_tool_calls"}
FINAL_EVENTS = {"response.completed", "response.incomplete", "response.failed"}


def native_body(defaults: dict[str, Any], body: dict[str, Any], upstream_model: str, stream: bool) -> bytes:
    out = {**{k: v for k, v in defaults.items() if k in RESPONSES_DEFAULTS}, **body, "model": upstream_model}
    if "tools" not in out:
        out.pop("tool_choice", None)
    if stream:
        out["stream"] = True
    else:
        out.pop("stream", None)
    return orjson.dumps(out)


def native_answer(response: dict[str, Any]) -> Answer:
    """A whole Response, and its usage in chat terms."""
    return {"response": response, "usage": chat_usage(response.get("usage"))}


async def native_chunks(resp: aiohttp.ClientResponse,
                        sse_data: Callable[[aiohttp.StreamReader], AsyncIterator[bytes]]) -> AsyncIterator[Chunk]:
    """The upstream's events (``sse_data``: an event stream's ``data:`` payloads), one chunk each; an upstream
    that answered in one piece: one WholeAnswer."""
    if "text/event-stream" not in resp.headers.get("content-type", ""):
        try:
            yield WholeAnswer(native_answer(orjson.loads(await resp.read())))
        except orjson.JSONDecodeError as e:
            raise BackendError(502, "The upstream model returned a body that is not JSON.") from e
        return
    async for payload in sse_data(resp.content):
        if payload == b"[DONE]":
            return
        try:
            event = orjson.loads(payload)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(event, dict):
            continue
        if event.get("type") == "error" or ("error" in event and "type" not in event):
            err: dict[str, Any] = event["error"] if isinstance(event.get("error"), dict) else event
            raise BackendError(502, str(err.get("message") or "upstream stream error"), code=err.get("code"))
        chunk: Chunk = {"event": event}
        if event.get("type") in FINAL_EVENTS:
            chunk["usage"] = chat_usage((event.get("response") or {}).get("usage"))
        yield chunk
