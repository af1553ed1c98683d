"""The measuring client of a benchmark run: one streaming chat completion through the gateway's HTTP API, timed
on the bytes the gateway sends back, as ``vllm bench serve`` and guidellm time them (docs/benchmarks.md):

  * TTFT: the request sent → the first SSE chunk carrying output (content, a tool call or reasoning);
  * ITL: every gap between chunks carrying output;
  * e2e: the request sent → ``data: [DONE]``;
  * output tokens: the stream's ``usage`` (``stream_options.include_usage``), else the chunks carrying output;
  * TPOT: (e2e − TTFT) / (output tokens − 1); output tokens/s: output tokens / e2e.

What only the worker knows (queue wait, upstream time, cold start, cost) is read afterwards from Redis by the
response's ``x-request-id`` (``fill_timing``, in batches, off the measured path). Errors are results too: an HTTP
status ≥ 400 with its OpenAI error body, an ``error`` event mid-stream, a timeout or a connection error.

Cheap on purpose (the harness must not be the bottleneck): one pooled HTTP/1.1 client (aiohttp) per run, whole
network reads split on blank lines, one ``orjson.loads`` per event, the body drained to its end so the connection
is kept.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from redis.asyncio import Redis

from core import queue as q
from observability.calls import has_token

OUTPUT_CHARS = 2000  # of an answer kept in its result
DONE = b"[DONE]"
Result = dict[str, Any]


@dataclass(slots=True)
class Streamed:
    """What one streamed call gave: its timings (seconds from the send, perf_counter), text and usage."""

    started_at: float  # wall clock (unix seconds) of the send
    request_id: str | None = None
    ttft: float | None = None
    token_times: list[float] = field(default_factory=list)
    end: float | None = None
    pieces: list[str] = field(default_factory=list)
    usage: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    @property
    def output(self) -> str:
        return "".join(self.pieces)


class BenchClient:
    """The run's HTTP client: every call goes to ``{gateway_url}/v1/chat/completions``. aiohttp, as the workers'
    upstream calls (workers/backends): httpx's connection pool costs ~2 ms of CPU a request under concurrency
    against ~0.2 ms here, which would make the harness the bottleneck."""

    def __init__(self, gateway_url: str, timeout_s: float = 600.0):
        self.url = gateway_url.rstrip("/") + "/v1/chat/completions"
        self.timeout = aiohttp.ClientTimeout(total=None, sock_connect=30.0, sock_read=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._session is None:  # made inside the running loop
            connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30.0)
            self._session = aiohttp.ClientSession(connector=connector, timeout=self.timeout, auto_decompress=False)
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def stream(self, bearer: str, model: str, messages: list[dict[str, Any]],
                     max_tokens: int | None) -> Streamed:
        body: dict[str, Any] = {"model": model, "messages": messages, "stream": True,
                                "stream_options": {"include_usage": True}}
        if max_tokens is not None:
            body["max_tokens"] = max_tokens
        content = orjson.dumps(body)
        headers = {"authorization": "Bearer " + bearer, "content-type": "application/json"}
        s = Streamed(started_at=time.time())
        t0 = time.perf_counter()
        try:
            async with self.http.post(self.url, data=content, headers=headers) as resp:
                s.request_id = resp.headers.get("x-request-id")
                if resp.status >= 400:
                    s.error = http_error(resp.status, await resp.read())
                    s.end = time.perf_counter() - t0
                    return s
                await _read_sse(resp.content, s, t0)
        except TimeoutError as e:  # aiohttp's read and connect timeouts are TimeoutErrors too
            s.error = {"status": None, "code": "timeout", "message": f"no answer in time ({type(e).__name__})"}
        except (aiohttp.ClientError, OSError) as e:
            s.error = {"status": None, "code": "connection_error", "message": f"{type(e).__name__}: {e}"[:500]}
        if s.end is None:
            s.end = time.perf_counter() - t0
        return s

    async def complete(self, bearer: str, model: str, messages: list[dict[str, Any]]) -> str | None:
        """A non-streamed call's answer text (the judge's); None when it failed."""
        headers = {"authorization": "Bearer " + bearer, "content-type": "application/json"}
        try:
            async with self.http.post(self.url, data=orjson.dumps({"model": model, "messages": messages}),
                                      headers=headers) as resp:
                raw = await resp.read()
                if resp.status >= 400:
                    return None
            text = orjson.loads(raw)["choices"][0]["message"]["content"]
        except (TimeoutError, aiohttp.ClientError, OSError, orjson.JSONDecodeError, KeyError, IndexError,
                TypeError):
            return None
        return text if isinstance(text, str) else None


async def _read_sse(body: aiohttp.StreamReader, s: Streamed, t0: float) -> None:
    """Parse the SSE body into ``s``; read on past ``[DONE]`` to the body's end (the connection is reused)."""
    buf = b""
    done = False
    async for data in body.iter_any():
        if done:
            continue
        now = time.perf_counter() - t0
        if buf:
            data = buf + data
        if b"\r" in data:
            data = data.replace(b"\r\n", b"\n")
        events = data.split(b"\n\n")
        buf = events.pop()
        for event in events:
            payload = _data_of(event)
            if payload is None:
                continue
            if payload == DONE:
                s.end, done = now, True
                break
            _chunk(s, payload, now)
    if not done and s.error is None:
        s.error = {"status": None, "code": "incomplete_stream", "message": "The stream ended before [DONE]."}


def _data_of(event: bytes) -> bytes | None:
    """An SSE event's data (``data: ...`` lines joined); None for comments and events without data."""
    if event.startswith(b"data: ") and b"\n" not in event:
        return event[6:]
    lines = [ln[5:].lstrip(b" ") for ln in event.split(b"\n") if ln.startswith(b"data:")]
    return b"\n".join(lines) if lines else None


def _chunk(s: Streamed, payload: bytes, now: float) -> None:
    try:
        d = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return
    if not isinstance(d, dict):
        return
    if "error" in d:
        s.error = stream_error(d["error"])
        return
    choices = d.get("choices")
    if choices and has_token(choices):
        if s.ttft is None:
            s.ttft = now
        s.token_times.append(now)
        delta = choices[0].get("delta") or {}
        piece = delta.get("content") or choices[0].get("text")
        if piece:
            s.pieces.append(piece)
    if d.get("usage"):
        s.usage = d["usage"]


def http_error(status: int, body: bytes) -> dict[str, Any]:
    """``{status, code, message}`` of an error answer (an OpenAI error body where there is one)."""
    try:
        err = orjson.loads(body).get("error")
    except (orjson.JSONDecodeError, AttributeError):
        err = None
    if isinstance(err, dict):
        return {"status": status, "code": err.get("code") or err.get("type"), "message": str(err.get("message"))}
    return {"status": status, "code": None, "message": body[:500].decode(errors="replace")}


def stream_error(err: Any) -> dict[str, Any]:
    """``{status, code, message}`` of an ``error`` event mid-stream: the HTTP status was already 200, so the
    status is the one the error's kind maps to (a timeout 504, a client's mistake 400, anything else 502)."""
    if not isinstance(err, dict):
        return {"status": 502, "code": None, "message": str(err)[:500]}
    code, kind = err.get("code"), err.get("type")
    status = 504 if code == "timeout" else 429 if kind in ("rate_limit_exceeded", "insufficient_quota") \
        else 400 if kind == "invalid_request_error" else 502
    return {"status": status, "code": code or kind, "message": str(err.get("message"))}


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def result_of(s: Streamed, model: str, level: str, item_id: str, rep: int) -> Result:
    """The contract's RESULT for a streamed call (timing fields from the worker filled later by
    ``fill_timing``; score by the caller)."""
    usage = s.usage or {}
    out_tokens = usage.get("completion_tokens")
    if not isinstance(out_tokens, int):
        out_tokens = len(s.token_times) if s.error is None else None
    e2e = _ms(s.end)
    ttft = _ms(s.ttft)
    times = s.token_times
    ok = s.error is None
    tpot = (round((e2e - ttft) / (out_tokens - 1), 3) if ok and e2e is not None and ttft is not None
            and out_tokens and out_tokens > 1 else None)
    return {
        "model": model, "level": level, "item_id": item_id, "repeat": rep, "status": "ok" if ok else "error",
        "error": s.error, "started_at": round(s.started_at, 6),
        "ttft_ms": ttft, "itl_ms": [round((b - a) * 1000, 3) for a, b in itertools.pairwise(times)],
        "tpot_ms": tpot, "e2e_ms": e2e,
        "input_tokens": usage.get("prompt_tokens"), "output_tokens": out_tokens,
        "output_tokens_per_s": round(out_tokens / (e2e / 1000), 3) if ok and out_tokens and e2e else None,
        "queue_ms": None, "upstream_ms": None, "overhead_ms": None, "cold_start": None, "cost": None,
        "score": None, "output": s.output[:OUTPUT_CHARS], "request_id": s.request_id, "task": None,
    }


async def fill_timing(redis: Redis, results: list[Result]) -> None:
    """Each result's worker-side figures from ``gatehouse:bench:timing:<request id>`` (read and deleted, one
    round trip for all): ``queue_ms``, ``upstream_ms``, ``cold_start``, ``cost``, and ``overhead_ms`` = e2e −
    upstream."""
    wanted = [r for r in results if r.get("request_id") and r.get("task") is None]
    if not wanted:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for r in wanted:
            pipe.getdel(q.bench_timing_key(r["request_id"]))
        raw = await pipe.execute()
    for r, value in zip(wanted, raw, strict=True):
        if not value:
            continue
        try:
            t = orjson.loads(value)
        except orjson.JSONDecodeError:
            continue
        r["queue_ms"], r["upstream_ms"] = t.get("queue_ms"), t.get("upstream_ms")
        r["cold_start"] = t.get("cold_start")
        if t.get("cost") is not None:
            r["cost"] = t["cost"]
        if r["upstream_ms"] is not None and r["e2e_ms"] is not None:
            r["overhead_ms"] = round(r["e2e_ms"] - r["upstream_ms"], 3)
