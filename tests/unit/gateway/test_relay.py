"""The stream relay's pieces without a server: the SSE response ends its body with ``[DONE]`` in one message,
and worker events become one SSE piece per batch read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from gateway.relay import DONE, Outcome, Shape, SSEResponse, sse_stream


async def test_done_goes_out_with_the_end_of_the_body() -> None:
    after_done: list[bool] = []

    async def body() -> AsyncIterator[bytes]:
        yield b"data: {}\n\n"
        yield b"data: {}\n\n" + DONE
        after_done.append(True)  # the request's accounting: still runs, after the client has everything

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await SSEResponse(body()).stream_response(send)
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert [m["more_body"] for m in bodies] == [True, False]  # no separate empty end-of-body message
    assert bodies[-1]["body"].endswith(DONE)
    assert after_done == [True]


async def batches(*items: tuple[list[dict[str, Any]], bool]) -> AsyncIterator[tuple[list[dict[str, Any]], bool]]:
    for item in items:
        yield item


def chunk(text: str, **extra: Any) -> dict[str, Any]:
    return {"k": "chunk", "d": {"choices": [{"index": 0, "delta": {"content": text}}], **extra}}


async def test_one_piece_per_batch_and_the_last_ends_with_done() -> None:
    outcome = Outcome()
    shape = Shape("chat", "chatcmpl-1", "m", 1)
    usage = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
    pieces = [p async for p in sse_stream(batches(([chunk("a"), chunk("b")], False),
                                                  ([{"k": "chunk", "d": {"choices": [], "usage": usage}}], True)),
                                          shape, True, outcome)]
    assert len(pieces) == 2
    assert pieces[0].count(b"data: ") == 2 and b'"content":"a"' in pieces[0]
    assert pieces[1].endswith(DONE) and b'"usage"' in pieces[1]
    assert outcome.usage == usage and outcome.first_token_at is not None


async def test_a_worker_error_ends_the_stream_with_done() -> None:
    outcome = Outcome()
    err = {"k": "error", "status": 502, "type": "upstream_error", "code": None, "message": "broke", "param": None}
    pieces = [p async for p in sse_stream(batches(([chunk("a"), err, chunk("never")], False)),
                                          Shape("chat", "c", "m", 1), False, outcome)]
    assert len(pieces) == 1
    assert b'"content":"a"' in pieces[0] and b'"message":"broke"' in pieces[0] and b"never" not in pieces[0]
    assert pieces[0].endswith(DONE)
