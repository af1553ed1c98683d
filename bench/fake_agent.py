"""The fake upstream's conformance models (bench/fake_upstream.py), for tests/test_conformance_chat.py: an
OpenAI-compatible chat model that does what agent harnesses ask of one, and upstreams that fail the protocol in
the ways real servers do.

    agent           a chat model that calls tools: given ``tools`` (and ``tool_choice`` not "none") it calls the
                    named tool, else the first two (one with ``parallel_tool_calls: false``), arguments
                    ``{"q": <last message's text>}``, finish_reason "tool_calls"; after a ``role: tool`` turn it
                    answers "tool said: <that turn's text>", else "you said: <text>". ``response_format``
                    json_object / json_schema: the answer is ``{"answer": <text>}``. ``logprobs: true``: every token
                    has a logprob and ``top_logprobs`` alternatives; ``n``: that many choices; ``reasoning_effort``:
                    a ``reasoning_content`` before the answer. Usage carries ``prompt_tokens_details`` and
                    ``completion_tokens_details``. Streamed: role, reasoning, one content chunk per word, each tool
                    call as deltas (``index``, id and name first, then the arguments in two pieces), finish, usage
                    when asked, ``[DONE]``.
    ignore-stream   the agent, answering plain JSON even when ``stream: true`` is asked (a server ignoring it)
"""

from __future__ import annotations

import hashlib
import time
from typing import TYPE_CHECKING, Any

import orjson
from aiohttp import web

if TYPE_CHECKING:
    from bench.fake_upstream import FakeUpstream

MODELS = ("agent", "ignore-stream")
PROMPT_TOKENS = 9


async def answer(fake: FakeUpstream, request: web.Request) -> web.StreamResponse | None:
    """The agent's answer to a chat request (recorded as any request), or None for other models."""
    raw = await request.read()  # aiohttp keeps the body: the ordinary answer reads it again
    body = orjson.loads(raw)
    model = body.get("model")
    if model not in MODELS:
        return None
    fake.requests += 1
    fake.last, fake.last_headers = body, {k.lower(): v for k, v in request.headers.items()}
    fake.by_model[str(model)] = fake.by_model.get(str(model), 0) + 1
    rid = "fake-" + hashlib.sha1(raw).hexdigest()[:12]
    turn = Turn(body, rid)
    base = {"id": rid, "created": int(time.time()), "model": model, "system_fingerprint": "fp_agent"}
    if not body.get("stream") or model == "ignore-stream":
        return web.json_response({**base, "object": "chat.completion", "choices": turn.choices(),
                                  "usage": turn.usage()})
    resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
    await resp.prepare(request)
    for chunk in turn.chunks():
        await resp.write(b"data: " + orjson.dumps({**base, "object": "chat.completion.chunk", **chunk}) + b"\n\n")
    if (body.get("stream_options") or {}).get("include_usage"):
        await resp.write(b"data: " + orjson.dumps({**base, "object": "chat.completion.chunk", "choices": [],
                                                   "usage": turn.usage()}) + b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


class Turn:
    """What the agent answers to one request."""

    def __init__(self, body: dict[str, Any], rid: str):
        messages = body.get("messages") or [{}]
        last = messages[-1]
        text = _text(last.get("content"))
        tools = [t for t in body.get("tools") or () if t.get("type") == "function"]
        choice = body.get("tool_choice", "auto")
        self.calls: list[dict[str, Any]] = []
        if tools and choice != "none" and last.get("role") != "tool":
            if isinstance(choice, dict):
                tools = [t for t in tools if t["function"]["name"] == choice["function"]["name"]]
            for k, t in enumerate(tools[: 1 if body.get("parallel_tool_calls") is False else 2]):
                self.calls.append({"id": f"call_{rid[-8:]}_{k}", "type": "function",
                                   "function": {"name": t["function"]["name"],
                                                "arguments": orjson.dumps({"q": text}).decode()}})
        said = f"tool said: {text}" if last.get("role") == "tool" else f"you said: {text}"
        fmt = (body.get("response_format") or {}).get("type")
        self.content = None if self.calls else (
            orjson.dumps({"answer": said}).decode() if fmt in ("json_object", "json_schema") else said)
        self.words = _words(self.content or "")
        self.finish = "tool_calls" if self.calls else "stop"
        self.reasoning = f"Thinking about: {text}" if body.get("reasoning_effort") else None
        self.n = int(body.get("n") or 1)
        self.logprobs = body.get("logprobs") is True
        self.top = int(body.get("top_logprobs") or 0)

    def _logprob(self, k: int, word: str) -> dict[str, Any]:
        lp = -0.125 * (k + 1)
        alternatives = [{"token": word, "logprob": lp, "bytes": list(word.encode())},
                        *({"token": f"alt{j}", "logprob": lp - j - 1, "bytes": list(f"alt{j}".encode())}
                          for j in range(max(0, self.top - 1)))]
        return {"token": word, "logprob": lp, "bytes": list(word.encode()), "top_logprobs": alternatives[: self.top]}

    def choices(self) -> list[dict[str, Any]]:
        out = []
        for i in range(self.n):
            message: dict[str, Any] = {"role": "assistant", "content": self.content, "refusal": None}
            if self.calls:
                message["tool_calls"] = self.calls
            if self.reasoning:
                message["reasoning_content"] = self.reasoning
            logprobs = {"content": [self._logprob(k, w) for k, w in enumerate(self.words)], "refusal": None} \
                if self.logprobs else None
            out.append({"index": i, "message": message, "logprobs": logprobs, "finish_reason": self.finish})
        return out

    def chunks(self) -> list[dict[str, Any]]:
        """The streamed answer's chunks (without the envelope)."""
        out: list[dict[str, Any]] = []

        def add(i: int, delta: dict[str, Any], finish: str | None = None, logprobs: Any = None) -> None:
            out.append({"choices": [{"index": i, "delta": delta, "logprobs": logprobs, "finish_reason": finish}]})

        for i in range(self.n):
            add(i, {"role": "assistant", "content": ""})
            if self.reasoning:
                add(i, {"reasoning_content": self.reasoning})
            for k, w in enumerate(self.words):
                add(i, {"content": w},
                    logprobs={"content": [self._logprob(k, w)], "refusal": None} if self.logprobs else None)
            for j, call in enumerate(self.calls):
                args = call["function"]["arguments"]
                add(i, {"tool_calls": [{"index": j, "id": call["id"], "type": "function",
                                        "function": {"name": call["function"]["name"], "arguments": ""}}]})
                for piece in (args[: len(args) // 2], args[len(args) // 2:]):
                    add(i, {"tool_calls": [{"index": j, "function": {"arguments": piece}}]})
            add(i, {}, self.finish)
        return out

    def usage(self) -> dict[str, Any]:
        completion = self.n * (len(self.words) + 4 * len(self.calls) + (5 if self.reasoning else 0))
        return {"prompt_tokens": PROMPT_TOKENS, "completion_tokens": completion,
                "total_tokens": PROMPT_TOKENS + completion,
                "prompt_tokens_details": {"cached_tokens": 2, "audio_tokens": 0},
                "completion_tokens_details": {"reasoning_tokens": self.n * 5 if self.reasoning else 0,
                                              "audio_tokens": 0, "accepted_prediction_tokens": 0,
                                              "rejected_prediction_tokens": 0}}


def _text(content: Any) -> str:
    if isinstance(content, list):
        return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return str(content or "")


def _words(text: str) -> list[str]:
    """The answer's tokens: words, each but the last with its trailing space."""
    if not text:
        return []
    words = [w + " " for w in text.split(" ")]
    words[-1] = words[-1][:-1]
    return words
