"""The fake upstream's agent-facing parts (bench/fake_upstream.py):

    tool-caller      (chat) given ``tools`` and no tool result yet: calls the first tool (or the one
                     ``tool_choice`` names) with ``{"location": "Paris"}``, finish_reason "tool_calls", streamed
                     as OpenAI streams tool calls; once a ``role: tool`` message is in, answers as echo (the tool's
                     result is the last message)
    POST /v1/responses  OpenAI's Responses API, minimally: the last user text (model ``echo``) or the canned
                     answer, as a Response object or its event stream; ``status-NNN`` answers HTTP NNN
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from bench.fake_upstream import FakeUpstream

CALL_ID = "call_fake_1"
ARGUMENTS = '{"location": "Paris"}'


async def tool_call(fake: FakeUpstream, request: web.Request) -> web.StreamResponse | None:
    """The tool-caller's answer to a chat request when it calls a tool (recorded as any request); else None."""
    raw = await request.read()  # aiohttp keeps the body: the ordinary answer reads it again
    body = orjson.loads(raw)
    messages = body.get("messages") or [{}]
    if body.get("model") != "tool-caller" or not body.get("tools") or messages[-1].get("role") == "tool":
        return None
    _record(fake, request, body)
    rid = "fake-" + hashlib.sha1(raw).hexdigest()[:12]
    choice = body.get("tool_choice")
    name = choice["function"]["name"] if isinstance(choice, dict) else body["tools"][0]["function"]["name"]
    call = {"id": CALL_ID, "type": "function", "function": {"name": name, "arguments": ARGUMENTS}}
    usage = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
    base = {"id": rid, "created": int(time.time()), "model": body.get("model")}
    if not body.get("stream"):
        return web.json_response({**base, "object": "chat.completion", "usage": usage, "choices": [
            {"index": 0, "finish_reason": "tool_calls", "logprobs": None,
             "message": {"role": "assistant", "content": None, "tool_calls": [call]}}]})
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)

    async def send(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> None:
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}] if delta or finish else []
        await resp.write(b"data: " + orjson.dumps({**base, "object": "chat.completion.chunk", "choices": choices,
                                                   **extra}) + b"\n\n")

    await send({"role": "assistant", "content": None})
    await send({"tool_calls": [{"index": 0, "id": CALL_ID, "type": "function",
                                "function": {"name": name, "arguments": ""}}]})
    half = len(ARGUMENTS) // 2
    for piece in (ARGUMENTS[:half], ARGUMENTS[half:]):
        await send({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]})
    await send({}, "tool_calls")
    if (body.get("stream_options") or {}).get("include_usage"):
        await send({}, usage=usage)
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


def _record(fake: FakeUpstream, request: web.Request, body: dict[str, Any]) -> str:
    fake.requests += 1
    fake.last, fake.last_headers = body, {k.lower(): v for k, v in request.headers.items()}
    model = str(body.get("model", ""))
    fake.by_model[model] = fake.by_model.get(model, 0) + 1
    return model


def _user_text(body: dict[str, Any]) -> str:
    given = body.get("input")
    if isinstance(given, str):
        return given
    for item in reversed(given or []):
        if item.get("role") == "user":
            content = item.get("content")
            return content if isinstance(content, str) else " ".join(c.get("text", "") for c in content)
    return ""


async def responses(fake: FakeUpstream, request: web.Request) -> web.StreamResponse:
    """``POST /v1/responses``: records the body (``GET /_last``) and answers a Response or its events."""
    from bench.fake_upstream import CANNED

    raw = await request.read()
    body = orjson.loads(raw)
    model = _record(fake, request, body)
    if model.startswith("status-"):
        status = int(model.split("-", 1)[1])
        return web.json_response({"error": {"message": f"fake upstream says {status}", "type": "upstream_test",
                                            "param": None, "code": f"fake_{status}"}}, status=status)
    text = _user_text(body) if model == "echo" else CANNED
    words = [w + " " for w in text.split(" ")]
    words[-1] = words[-1][:-1]
    rid = "resp_fake" + hashlib.sha1(raw).hexdigest()[:24]
    message = {"type": "message", "id": "msg_fake" + rid[9:], "status": "completed", "role": "assistant",
               "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}
    response = {"id": rid, "object": "response", "created_at": int(time.time()), "status": "completed",
                "model": model, "output": [message], "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                "previous_response_id": body.get("previous_response_id"), "store": body.get("store", True),
                "usage": {"input_tokens": 5, "output_tokens": len(words), "total_tokens": 5 + len(words),
                          "input_tokens_details": {"cached_tokens": 0},
                          "output_tokens_details": {"reasoning_tokens": 0}}}
    if not body.get("stream"):
        return web.json_response(response)
    resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
    await resp.prepare(request)
    seq = 0

    async def event(kind: str, **fields: Any) -> None:
        nonlocal seq
        data = orjson.dumps({"type": kind, "sequence_number": seq, **fields})
        seq += 1
        await resp.write(f"event: {kind}\n".encode() + b"data: " + data + b"\n\n")

    started = {**response, "status": "in_progress", "output": [], "usage": None}
    await event("response.created", response=started)
    await event("response.in_progress", response=started)
    opened = {**message, "status": "in_progress", "content": []}
    where = {"item_id": message["id"], "output_index": 0, "content_index": 0}
    await event("response.output_item.added", output_index=0, item=opened)
    await event("response.content_part.added", **where, part={"type": "output_text", "text": "", "annotations": []})
    for w in words:
        await event("response.output_text.delta", **where, delta=w, logprobs=[])
    await event("response.output_text.done", **where, text=text, logprobs=[])
    await event("response.content_part.done", **where, part=message["content"][0])
    await event("response.output_item.done", output_index=0, item=message)
    await event("response.completed", response=response)
    await resp.write_eof()
    return resp
