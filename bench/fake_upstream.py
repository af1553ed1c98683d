"""A fixed OpenAI-compatible upstream for tests and benchmarks (aiohttp.web).

It speaks the real protocol — JSON answers, SSE streams with usage, OpenAI error bodies — so the
production client code talks to it unchanged. Behaviour is chosen by the request's ``model``:

    any name        canned answer "Hello from the fake upstream, friend." (words are stream chunks)
    echo            the last message's text (or the prompt) as the answer
    status-NNN      always answers HTTP NNN with an OpenAI error body (and ``retry-after``: the body's
                    ``retry_after`` field, default 0), after the body's ``delay`` seconds (default 0)
    flaky-NNN       answers HTTP NNN to the first attempt of each distinct body, then succeeds
    slow            waits ``delay`` seconds (body field, default 0.2) before each chunk
    broken-stream   streams two chunks, then an error event (as OpenAI does when a stream fails midway)
    cut             streams two chunks, then closes the TCP connection: no error event, no [DONE], no end of
                    the chunked body (a crashed server or a dropped connection); not streamed: as any name
    cut-after-N     streams N content chunks, then resets the TCP connection (RST): a stream cut midway;
                    not streamed: as any name
    no-done         streams its content chunks, then ends the body cleanly with no finish_reason, no usage and
                    no [DONE] (a server that stopped early); not streamed: as any name
    agent           an OpenAI-compatible tool-calling model: tool calls, role: tool turns, response_format,
                    logprobs, n, reasoning_content, usage details (bench/fake_agent.py)
    ignore-stream   the agent, answering plain JSON even when ``stream: true`` is asked (bench/fake_agent.py)
    hang            accepts the request and answers nothing (not even headers) for ``delay`` seconds (body
                    field, default 60), then answers as any name (an upstream that stopped responding)
    cold-S          answers 503 for S seconds after its first request (a scale-from-zero app starting up)
    ttft-MS         waits MS milliseconds before its first chunk (streamed) or its answer (a prefill that takes
                    that long), then answers as any name at full speed (benchmark TTFT checks)
    pace-T-I        a paced stream (benchmark TTFT/ITL cross-checks): the first chunk after T ms, then one
                    word-sized chunk every I ms; the answer is ``max_tokens`` words (16 when not given: the
                    canned answer's words over and over); not streamed: answers after T + (words − 1) × I ms
    context-window  answers 400 ``context_length_exceeded``, as OpenAI does for a prompt longer than the model's
    tool-caller     calls a tool when given tools, echoes once a tool result is in (bench/fake_responses.py, which
                    also answers ``POST /v1/responses``)

``max_tokens`` cuts the answer (finish_reason "length"). ``POST /v1/embeddings`` answers every model name with
deterministic vectors (:func:`fake_embedding`: ``dimensions`` long, else ``EMBED_DIMS``; base64 when asked), its
usage counting one token per word or token id (status-NNN, flaky-NNN, cold-S and hang behave as above).
``GET /_last`` returns the last request body;
``GET /_stats`` counts requests (``requests``: all of them; ``models``: by request model name).
Run alone: ``python -m bench.fake_upstream --port 9100``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import itertools
import math
import socket
import struct
import time
from typing import Any

import orjson
from aiohttp import web

from bench import fake_agent, fake_responses
from bench.app_thread import AppThread

CANNED = "Hello from the fake upstream, friend."
EMBED_DIMS = 8  # the fake upstream's vectors, unless the request asks for ``dimensions``


class FakeUpstream:
    def __init__(self) -> None:
        self.last: dict[str, Any] | None = None
        self.last_headers: dict[str, str] = {}
        self.requests = 0
        self.by_model: dict[str, int] = {}  # requests per request model name (GET /_stats)
        self.failed_once: set[str] = set()
        self.first_seen: dict[str, float] = {}
        self.app = web.Application(client_max_size=16 * 1024 * 1024)
        self.app.router.add_post("/v1/chat/completions", self.chat)
        self.app.router.add_post("/v1/completions", self.completions)
        self.app.router.add_post("/v1/embeddings", self.embeddings)
        self.app.router.add_get("/v1/models", self.models)
        self.app.router.add_post("/v1/messages", self.anthropic_messages)
        self.app.router.add_post("/v1/responses", lambda request: fake_responses.responses(self, request))
        self.jwks: dict[str, Any] = {"keys": []}  # an identity provider's signing keys, for JWT tests
        self.app.router.add_get("/.well-known/jwks.json", self.jwks_document)
        self.qrng_requests = 0  # Quantum Blockchains' QRNG API, for the qgpt tests
        self.app.router.add_get("/{api_key}/qbck/block/hex", self.qrng_block)
        self.app.router.add_get("/_last", self.last_body)
        self.app.router.add_get("/_stats", self.stats)

    async def models(self, _: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": "fake", "object": "model", "created": 0,
                                                              "owned_by": "fake"}]})

    async def qrng_block(self, request: web.Request) -> web.Response:
        """``GET /{API_KEY}/qbck/block/hex?size=N&length=L`` -> N hex strings of L random bytes each."""
        import secrets

        self.qrng_requests += 1
        if request.match_info["api_key"] != "qrng-test-key":
            return web.json_response({"data": None, "error": "invalid api key"})  # errors come with HTTP 200
        size, length = int(request.query.get("size", "1")), int(request.query.get("length", "256"))
        return web.json_response({"data": {"result": [secrets.token_hex(length) for _ in range(size)]}, "error": "OK"})

    async def jwks_document(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps(self.jwks), content_type="application/json")

    async def last_body(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"body": self.last, "headers": self.last_headers}),
                            content_type="application/json")

    async def stats(self, _: web.Request) -> web.Response:
        return web.Response(body=orjson.dumps({"requests": self.requests, "models": self.by_model}),
                            content_type="application/json")

    async def chat(self, request: web.Request) -> web.StreamResponse:
        agent = await fake_agent.answer(self, request)  # the conformance models' answer, for those
        if agent is not None:
            return agent
        called = await fake_responses.tool_call(self, request)  # the tool-caller's call, when it makes one
        return called if called is not None else await self._answer(request, chat=True)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._answer(request, chat=False)

    async def _answer(self, request: web.Request, chat: bool) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw)
        self.requests += 1
        self.last = body
        self.last_headers = {k.lower(): v for k, v in request.headers.items()}
        model = str(body.get("model", ""))
        await self._arrived(model, body)
        failure = self._failure(model, raw)
        if failure:
            return web.Response(status=failure, content_type="application/json",
                                headers={"retry-after": str(body.get("retry_after", 0))},
                                body=orjson.dumps({"error": {"message": f"fake upstream says {failure}",
                                                             "type": "upstream_test", "param": None,
                                                             "code": _error_code(model, failure)}}))
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        text = _text_of(body, chat) if model in ("echo", "tool-caller") else _canned(model, limit)
        words = [w + " " for w in text.split(" ")]
        words[-1] = words[-1][:-1]
        finish = "stop"
        if limit is not None and limit < len(words):
            words, finish = words[: int(limit)], "length"
        delay = float(body.get("delay", 0.2)) if model == "slow" else 0.0
        first_delay, gap = _pace(model) or (_first_token_delay(model), 0.0)  # gap: between content chunks
        usage = {"prompt_tokens": 7, "completion_tokens": len(words), "total_tokens": 7 + len(words)}
        rid = "fake-" + hashlib.sha1(raw).hexdigest()[:12]
        if not body.get("stream"):
            if delay or first_delay or gap:
                await asyncio.sleep(delay + first_delay + gap * (len(words) - 1))
            return _whole(body, rid, chat, "".join(words), finish, usage)
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "cache-control": "no-cache"})
        await resp.prepare(request)
        base = {"id": rid, "object": "chat.completion.chunk" if chat else "text_completion",
                "created": int(time.time()), "model": model}

        async def send(choices: list[dict[str, Any]], **extra: Any) -> None:
            await resp.write(b"data: " + orjson.dumps({**base, "choices": choices, **extra}) + b"\n\n")

        if first_delay:
            await asyncio.sleep(first_delay)
        if chat:
            await send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        for i, w in enumerate(words):
            if delay or (gap and i):
                await asyncio.sleep(delay + (gap if i else 0.0))
            if i == _cut_at(model):
                await self._break(request, resp, model)
                return resp
            piece = {"delta": {"content": w}} if chat else {"text": w}
            await send([{"index": 0, **piece, "finish_reason": None}])
        if model == "no-done":
            await resp.write_eof()  # a clean end of the body, but not of the answer
            return resp
        await send([{"index": 0, **({"delta": {}} if chat else {"text": ""}), "finish_reason": finish}])
        if (body.get("stream_options") or {}).get("include_usage"):
            await send([], usage=usage)
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def embeddings(self, request: web.Request) -> web.Response:
        """OpenAI's embeddings: one deterministic unit vector per input item (a string or a token array)."""
        raw = await request.read()
        body = orjson.loads(raw)
        self.requests += 1
        self.last, self.last_headers = body, {k.lower(): v for k, v in request.headers.items()}
        model = str(body.get("model", ""))
        await self._arrived(model, body)
        failure = self._failure(model, raw)
        if failure:
            return _error(failure, f"fake upstream says {failure}", _error_code(model, failure))
        value, dims = body.get("input"), body.get("dimensions") or EMBED_DIMS
        items = [value] if isinstance(value, str) or (value and all(isinstance(t, int) for t in value)) else value
        if not isinstance(items, list) or not items or not isinstance(dims, int) or not 0 < dims <= 4096:
            return _error(400, "input must be a string, token array or list of them; dimensions 1..4096", None)
        data = []
        for i, item in enumerate(items):
            vec = fake_embedding(item, dims)
            data.append({"object": "embedding", "index": i, "embedding": vec if body.get("encoding_format") != "base64"
                         else base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode()})
        tokens = sum(len(x.split()) if isinstance(x, str) else len(x) if isinstance(x, list) else 1 for x in items)
        return web.Response(body=orjson.dumps({"object": "list", "data": data, "model": model,
                                               "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
                            content_type="application/json")

    async def anthropic_messages(self, request: web.Request) -> web.StreamResponse:
        """Anthropic's Messages API (what LiteLLM translates OpenAI requests into for ``anthropic/`` models)."""
        raw = await request.read()
        body = orjson.loads(raw)
        self.requests += 1
        self.last, self.last_headers = body, {k.lower(): v for k, v in request.headers.items()}
        if request.headers.get("x-api-key") != "sk-ant-test":
            return web.Response(status=401, content_type="application/json", body=orjson.dumps(
                {"type": "error", "error": {"type": "authentication_error", "message": "invalid x-api-key"}}))
        content = body["messages"][-1]["content"]
        text = content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
        answer = f"Claude heard: {text}"
        usage = {"input_tokens": 11, "output_tokens": len(answer.split())}
        if not body.get("stream"):
            return web.Response(content_type="application/json", body=orjson.dumps({
                "id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"],
                "content": [{"type": "text", "text": answer}], "stop_reason": "end_turn", "stop_sequence": None,
                "usage": usage}))
        resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await resp.prepare(request)

        async def event(name: str, data: dict[str, Any]) -> None:
            await resp.write(f"event: {name}\ndata: ".encode() + orjson.dumps({"type": name, **data}) + b"\n\n")

        await event("message_start", {"message": {"id": "msg_fake", "type": "message", "role": "assistant",
                                                   "model": body["model"], "content": [], "stop_reason": None,
                                                   "stop_sequence": None,
                                                   "usage": {"input_tokens": 11, "output_tokens": 0}}})
        await event("content_block_start", {"index": 0, "content_block": {"type": "text", "text": ""}})
        for i, word in enumerate(answer.split(" ")):
            piece = word if i == 0 else " " + word
            await event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": piece}})
        await event("content_block_stop", {"index": 0})
        await event("message_delta", {"delta": {"stop_reason": "end_turn", "stop_sequence": None},
                                      "usage": {"output_tokens": usage["output_tokens"]}})
        await event("message_stop", {})
        await resp.write_eof()
        return resp

    async def _arrived(self, model: str, body: dict[str, Any]) -> None:
        """Count the request; a "hang" request then waits before anything is answered (a status-NNN one too, when
        its body asks for a ``delay``)."""
        self.by_model[model] = self.by_model.get(model, 0) + 1
        if model == "hang":
            await asyncio.sleep(float(body.get("delay", 60)))
        elif model.startswith("status-") and body.get("delay"):
            await asyncio.sleep(float(body["delay"]))

    @staticmethod
    async def _break(request: web.Request, resp: web.StreamResponse, model: str) -> None:
        """End a stream midway: with an error event (broken-stream), or by closing the connection (cut; cut-after-N
        resets it)."""
        if model.startswith("cut"):
            assert request.transport is not None
            if model != "cut":
                sock = request.transport.get_extra_info("socket")
                if sock is not None:  # SO_LINGER 0: the close is a reset (RST), not an orderly end (FIN)
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.close()  # after the chunks already written: no error event, no end of the body
            return
        await resp.write(b'data: {"error": {"message": "upstream broke mid-stream", "type": "server_error"}}\n\n')
        await resp.write_eof()

    def _failure(self, model: str, raw: bytes) -> int | None:
        if model == "context-window":
            return 400
        if model.startswith("status-"):
            return int(model.split("-", 1)[1])
        if model.startswith("cold-"):
            first = self.first_seen.setdefault(model, time.monotonic())
            return 503 if time.monotonic() - first < float(model.split("-", 1)[1]) else None
        if model.startswith("flaky-"):
            key = hashlib.sha1(raw).hexdigest()
            if key not in self.failed_once:
                self.failed_once.add(key)
                return int(model.split("-", 1)[1])
        return None


def _whole(body: dict[str, Any], rid: str, chat: bool, text: str, finish: str, usage: dict[str, int]) -> web.Response:
    """A whole (not streamed) answer."""
    choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
    if chat:
        choice["message"] = {"role": "assistant", "content": text}
    else:
        choice["text"] = text
    return web.Response(body=orjson.dumps({
        "id": rid, "object": "chat.completion" if chat else "text_completion", "created": int(time.time()),
        "model": body.get("model", ""), "choices": [choice], "usage": usage, "system_fingerprint": "fp_fake",
        **({"quantum_diagnostics": {"total_entropy_consumed": 4, "entropy_source": "qrng"}}
           if "quantum_profile" in body else {})}),
        content_type="application/json")


def _cut_at(model: str) -> int | None:
    """The content chunk before which a breaking model ends its stream: broken-stream and cut after two,
    cut-after-N after N; None for any other name."""
    if model in ("broken-stream", "cut"):
        return 2
    head, _, n = model.rpartition("-")
    return int(n) if head == "cut-after" and n.isdigit() else None


def _first_token_delay(model: str) -> float:
    """Seconds before the first chunk: ``ttft-50`` waits 50 ms; 0 for any other name."""
    head, _, ms = model.partition("-")
    if head == "ttft":
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            return 0.0
    return 0.0


def _pace(model: str) -> tuple[float, float] | None:
    """``pace-T-I``: (seconds before the first chunk, seconds between chunks); None for any other name."""
    head, _, rest = model.partition("-")
    ttft, _, itl = rest.partition("-")
    if head != "pace":
        return None
    try:
        return max(0.0, float(ttft) / 1000), max(0.0, float(itl) / 1000)
    except ValueError:
        return None


def _canned(model: str, limit: Any) -> str:
    """The answer of a model that does not echo: the canned one; a pace-T-I model's is ``max_tokens`` words (16
    when not given), the canned answer's words over and over."""
    if _pace(model) is None:
        return CANNED
    return " ".join(itertools.islice(itertools.cycle(CANNED.split(" ")), int(limit or 16)))


def fake_embedding(item: object, dims: int = EMBED_DIMS) -> list[float]:
    """The fake upstream's vector for one input item: a unit vector drawn from the item's SHA-256 (float32 values,
    so a base64 round trip gives the same numbers)."""
    seed = hashlib.sha256(orjson.dumps(item)).digest()
    raw = [((seed[i % 32] + 31 * i) % 255) / 127.0 - 1.0 for i in range(dims)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return list(struct.unpack(f"<{dims}f", struct.pack(f"<{dims}f", *(x / norm for x in raw))))


def _error(status: int, message: str, code: str | None) -> web.Response:
    return web.Response(status=status, content_type="application/json", headers={"retry-after": "0"},
                        body=orjson.dumps({"error": {"message": message, "type": "upstream_test", "param": None,
                                                     "code": code}}))


def _error_code(model: str, status: int) -> str:
    return "context_length_exceeded" if model == "context-window" else f"fake_{status}"


def _text_of(body: dict[str, Any], chat: bool) -> str:
    if chat:
        content = (body.get("messages") or [{}])[-1].get("content") or ""
        return content if isinstance(content, str) else " ".join(p.get("text", "") for p in content)
    prompt = body.get("prompt", "")
    return prompt if isinstance(prompt, str) else str(prompt[0])


class UpstreamThread(AppThread):
    """A FakeUpstream on 127.0.0.1:port in a background thread (for tests); ``fake`` is its state."""

    name = "upstream"

    def __init__(self, port: int = 0):
        self.fake = FakeUpstream()
        super().__init__(self.fake.app, port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=9100)
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(FakeUpstream().app, host="127.0.0.1", port=args.port, access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()
