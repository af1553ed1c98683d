"""The stream relay's pieces without a server: the SSE response ends its body with ``[DONE]`` in one message,
and worker events become one SSE piece per batch read."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson

from gateway.errors import from_event
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


async def test_a_stream_that_fails_before_any_output_answers_the_error_s_own_status() -> None:
    """The upstream refused (429 with retry-after) after the gateway's first read: the response has not started,
    so the client gets HTTP 429 and the header, not a 200 with an error event (issue 15)."""
    outcome = Outcome()
    err = {"k": "error", "status": 429, "type": "requests", "code": "rate_limit_exceeded", "message": "slow down",
           "param": None, "headers": {"retry-after": "7"}}
    body = sse_stream(batches(([], False), ([err], False)), Shape("chat", "c", "m", 1), False, outcome)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope: dict[str, Any] = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": []}
    await SSEResponse(body).stream_response(send, scope, receive)
    start = sent[0]
    assert start["status"] == 429 and (b"retry-after", b"7") in start["headers"]
    assert (b"content-type", b"application/json") in start["headers"]
    assert orjson.loads(sent[1]["body"])["error"]["code"] == "rate_limit_exceeded"
    assert outcome.cut  # the job is cancelled, not taken as delivered


def test_a_whole_answer_replayed_as_chunks_keeps_tool_call_indexes_and_logprobs() -> None:
    calls = [{"id": "call_a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
             {"id": "call_b", "type": "function", "function": {"name": "g", "arguments": "{\"x\":1}"}}]
    logprobs = {"content": [{"token": "hi", "logprob": -0.5, "bytes": [104, 105], "top_logprobs": []}],
                "refusal": None}
    answer = {"choices": [{"index": 0, "finish_reason": "tool_calls", "logprobs": logprobs,
                           "message": {"role": "assistant", "content": "hi", "tool_calls": calls,
                                       "reasoning_content": "r"}}], "system_fingerprint": "fp"}
    chunks = Shape("chat", "c", "m", 1).result_as_chunks(answer)
    choices = [c["choices"][0] for c in chunks]
    assert choices[0]["delta"] == {"role": "assistant", "content": ""}
    assert choices[1]["delta"] == {"content": "hi", "reasoning_content": "r"} and choices[1]["logprobs"] == logprobs
    assert choices[2]["delta"]["tool_calls"] == [{"index": 0, **calls[0]}, {"index": 1, **calls[1]}]
    assert choices[3]["finish_reason"] == "tool_calls" and choices[3]["delta"] == {}
    assert all(c["system_fingerprint"] == "fp" and c["object"] == "chat.completion.chunk" for c in chunks)
    text = Shape("completion", "c", "m", 1).result_as_chunks(
        {"choices": [{"index": 0, "text": "hi", "finish_reason": "stop", "logprobs": {"tokens": ["hi"]}}]})
    assert text[0]["choices"][0]["logprobs"] == {"tokens": ["hi"]}


def test_a_worker_error_names_its_headers() -> None:
    err = from_event({"k": "error", "status": 429, "type": "requests", "code": None, "message": "slow",
                      "param": None, "headers": {"retry-after": "3"}})
    assert err.status == 429 and err.headers == {"retry-after": "3"}
    assert from_event({"k": "error", "status": 502, "message": "x"}).headers == {}
