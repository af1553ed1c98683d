"""The fault suite's clients: raw httpx, so a test can tell an SSE error event followed by ``[DONE]`` from a cut
connection (the SDK raises alike for both); and small waiting helpers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson


@dataclass
class StreamRecord:
    """How one streamed chat completion went, filled in as it arrives."""

    status: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None  # a non-200 answer's JSON body
    events: list[dict[str, Any]] = field(default_factory=list)  # every data event but [DONE], in order
    done: bool = False  # saw data: [DONE]
    after_done: int = 0  # data events after [DONE] (there must be none)
    cut: str | None = None  # the transport error that ended it, "hung" when it did not end in time
    started: float = field(default_factory=time.monotonic)
    first_content_at: float | None = None
    ended_at: float | None = None

    @property
    def error(self) -> dict[str, Any] | None:
        return next((e["error"] for e in self.events if "error" in e), None)

    @property
    def error_code(self) -> str | None:
        return (self.error or {}).get("code")

    @property
    def finished(self) -> bool:
        """A choice reached its finish_reason (the answer completed)."""
        return any(c.get("finish_reason") for e in self.events for c in e.get("choices") or ())

    @property
    def content(self) -> str:
        return "".join((c.get("delta") or {}).get("content") or "" for e in self.events for c in e.get("choices") or ())

    @property
    def ended_cleanly(self) -> bool:
        """Ended with a final event: a completed answer or an error event, then [DONE]; never a bare cut."""
        return (self.status == 200 and self.cut is None and self.done and self.after_done == 0
                and (self.finished or self.error is not None))

    def describe(self) -> str:
        return (f"status={self.status} done={self.done} cut={self.cut} error={self.error} "
                f"finished={self.finished} content={self.content!r} body={self.body}")


async def stream_chat(client: httpx.AsyncClient, base_url: str, key: str, model: str, rec: StreamRecord,
                      limit_s: float = 60, **extra: Any) -> StreamRecord:
    """POST a streamed chat completion; ``rec`` is filled in as events arrive (other tasks may watch it)."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hello"}], **extra}
    rec.started = time.monotonic()

    async def run() -> None:
        async with client.stream("POST", base_url + "/v1/chat/completions", json=body,
                                 headers={"authorization": f"Bearer {key}"}) as resp:
            rec.status, rec.headers = resp.status_code, dict(resp.headers)
            if resp.status_code != 200:
                raw = await resp.aread()
                try:
                    rec.body = orjson.loads(raw)
                except orjson.JSONDecodeError:
                    rec.body = raw.decode(errors="replace")
                return
            async for line in resp.aiter_lines():
                if not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if rec.done:
                    rec.after_done += 1
                elif data == "[DONE]":
                    rec.done = True
                else:
                    event = orjson.loads(data)
                    rec.events.append(event)
                    if rec.first_content_at is None and any((c.get("delta") or {}).get("content")
                                                            for c in event.get("choices") or ()):
                        rec.first_content_at = time.monotonic()

    try:
        await asyncio.wait_for(run(), limit_s)
    except TimeoutError:
        rec.cut = "hung"
    except httpx.TransportError as e:
        rec.cut = type(e).__name__
    rec.ended_at = time.monotonic()
    return rec


@dataclass
class Answer:
    status: int  # 0: no HTTP answer (connection refused, reset, or it hung)
    body: Any
    headers: dict[str, str]
    elapsed: float
    failure: str | None = None  # the transport error when there was no HTTP answer

    @property
    def error(self) -> dict[str, Any]:
        return self.body["error"] if isinstance(self.body, dict) and isinstance(self.body.get("error"), dict) else {}


async def chat(client: httpx.AsyncClient, base_url: str, key: str, model: str, limit_s: float = 30,
               **extra: Any) -> Answer:
    """A non-streamed chat completion: status, JSON body, headers, seconds taken."""
    body = {"model": model, "messages": [{"role": "user", "content": "hello"}], **extra}
    t0 = time.monotonic()
    try:
        r = await client.post(base_url + "/v1/chat/completions", json=body, timeout=limit_s,
                              headers={"authorization": f"Bearer {key}"})
    except httpx.TransportError as e:
        return Answer(0, None, {}, time.monotonic() - t0, type(e).__name__)
    try:
        parsed = r.json()
    except ValueError:
        parsed = r.text
    return Answer(r.status_code, parsed, dict(r.headers), time.monotonic() - t0)


def is_openai_error(body: Any) -> bool:
    """``{"error": {"message", "type", "param", "code"}}`` with a non-empty message."""
    if not isinstance(body, dict) or not isinstance(body.get("error"), dict):
        return False
    err = body["error"]
    return {"message", "type", "param", "code"} <= set(err) and bool(err["message"])


async def until(condition: Callable[[], bool], within: float, interval: float = 0.05) -> bool:
    """Wait for ``condition``; whether it came true within ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(interval)
    return condition()
