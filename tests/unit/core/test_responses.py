"""core.responses and core.responsestream: the Responses API over chat completions, without a stack."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from core.responses import (
    Invalid,
    ResponsesRequest,
    chat_body,
    chat_usage,
    from_chat,
    output_text,
    responses_param,
    skeleton,
    usage_of,
)
from core.responsestream import StreamTranslator, sse
from gateway.responses_relay import chat_payloads, replay

TOOL = {"type": "function", "name": "f", "description": "d", "parameters": {"type": "object"}, "strict": True}


def translate(**fields: Any) -> dict[str, Any]:
    raw = {"model": "m", **fields}
    req = ResponsesRequest.model_validate(raw)
    return chat_body(req, raw, [], req.items())


def test_request_translation() -> None:
    body = translate(input=[{"role": "user", "content": [{"type": "input_text", "text": "a"},
                                                         {"type": "input_image", "image_url": "data:x"}]}],
                     instructions="sys", tools=[TOOL], tool_choice={"type": "function", "name": "f"},
                     parallel_tool_calls=False, text={"format": {"type": "json_schema", "name": "n",
                                                                 "schema": {"type": "object"}}},
                     max_output_tokens=9, top_p=0.5, reasoning={"effort": "low"}, top_k=3, stream=True,
                     store=False, metadata={"a": "b"}, truncation="disabled")
    assert body == {
        "model": "m", "top_k": 3, "stream": True, "stream_options": {"include_usage": True},
        "messages": [{"role": "system", "content": "sys"},
                     {"role": "user", "content": [{"type": "text", "text": "a"},
                                                  {"type": "image_url", "image_url": {"url": "data:x",
                                                                                      "detail": "auto"}}]}],
        "max_tokens": 9, "top_p": 0.5, "parallel_tool_calls": False,
        "tools": [{"type": "function", "function": {"name": "f", "description": "d", "parameters": {"type": "object"},
                                                    "strict": True}}],
        "tool_choice": {"type": "function", "function": {"name": "f"}},
        "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}},
        "reasoning_effort": "low"}


def test_calls_and_outputs_become_one_assistant_turn_and_tool_messages() -> None:
    body = translate(input=[
        {"role": "user", "content": "q"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "let me look"}]},
        {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
        {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
        {"type": "reasoning", "id": "rs_1", "summary": []},
        {"type": "function_call_output", "call_id": "c1", "output": "one"},
        {"type": "function_call_output", "call_id": "c2", "output": [{"type": "input_text", "text": "two"}]}])
    assert body["messages"] == [
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "let me look", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "c2", "type": "function", "function": {"name": "g", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "one"},
        {"role": "tool", "tool_call_id": "c2", "content": "two"}]


def test_history_skips_what_chat_cannot_take() -> None:
    req = ResponsesRequest.model_validate({"model": "m", "input": "next"})
    history = [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "first"}]},
               {"type": "web_search_call", "id": "ws_1", "status": "completed"}]
    body = chat_body(req, {"model": "m", "input": "next"}, history, req.items())
    assert body["messages"] == [{"role": "user", "content": "first"}, {"role": "user", "content": "next"}]


@pytest.mark.parametrize(("fields", "param"), [
    ({"input": [{"type": "function_call", "call_id": 5, "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": {"x": 1}}]}, "input[0].output"),
    ({"input": [{"role": "user", "content": None}]}, "input[0].content"),
    ({"input": "x", "reasoning": {"effort": "low", "summary": "auto"}}, "reasoning"),
    ({"input": "x", "text": {"verbosity": "low"}}, "text.verbosity"),
    ({"input": "x", "truncation": "auto"}, "truncation"),
    ({"input": "x", "top_logprobs": 2}, "top_logprobs"),
    ({"input": "x", "conversation": "conv_1"}, "conversation"),
])
def test_refusals_name_the_param(fields: dict[str, Any], param: str) -> None:
    with pytest.raises(Invalid) as e:
        translate(**fields)
    assert e.value.param == param


def test_chat_params_named_as_sent() -> None:
    assert [responses_param(p) for p in ("messages[2].content", "response_format.type", "max_tokens",
                                         "tools[0].function.name", "tool_choice", None)] == [
        "input", "text.format", "max_output_tokens", "tools[0].name", "tool_choice", None]


def test_answer_translation() -> None:
    req = ResponsesRequest.model_validate({"model": "m", "input": "x", "tools": [TOOL]})
    chat = {"model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                                    "prompt_tokens_details": {"cached_tokens": 1}},
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": "calling", "refusal": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}}]}
    r = from_chat(skeleton(req, "resp_1", store=True), chat)
    assert r["status"] == "completed" and r["incomplete_details"] is None and output_text(r) == "calling"
    assert [i["type"] for i in r["output"]] == ["message", "function_call"]
    assert r["output"][1]["call_id"] == "c1" and r["output"][1]["id"].startswith("fc_")
    assert r["usage"] == {"input_tokens": 3, "input_tokens_details": {"cached_tokens": 1}, "output_tokens": 4,
                          "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 7}
    assert chat_usage(usage_of(chat["usage"])) == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}
    cut = from_chat(skeleton(req, "resp_2", store=False), {"choices": [
        {"finish_reason": "length", "message": {"role": "assistant", "content": "ab"}}]})
    assert cut["status"] == "incomplete" and cut["incomplete_details"] == {"reason": "max_output_tokens"}
    assert cut["output"][0]["status"] == "incomplete" and cut["usage"] is None


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"model": "m", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def test_stream_translation_text_then_calls() -> None:
    req = ResponsesRequest.model_validate({"model": "m", "input": "x"})
    tr = StreamTranslator(skeleton(req, "resp_1", store=False))
    events = tr.opening()
    for c in (chunk({"role": "assistant", "content": ""}), chunk({"content": "Hel"}), chunk({"content": "lo"}),
              chunk({"tool_calls": [{"index": 0, "id": "c1", "function": {"name": "f", "arguments": ""}}]}),
              chunk({"tool_calls": [{"index": 1, "id": "c2", "function": {"name": "g", "arguments": "{}"}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"a"'}}]}),
              chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
              chunk({}, "tool_calls"), {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}):
        events += tr.chunk(c)
    events += tr.closing()
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert [e["type"] for e in events] == [
        "response.created", "response.in_progress", "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta", "response.output_text.done",
        "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.output_item.added", "response.function_call_arguments.delta",
        "response.function_call_arguments.delta", "response.function_call_arguments.delta",
        "response.function_call_arguments.done", "response.output_item.done",
        "response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    final = events[-1]["response"]
    assert output_text(final) == "Hello" and final["usage"]["output_tokens"] == 2
    assert [(i.get("call_id"), i.get("arguments")) for i in final["output"][1:]] == [("c1", '{"a": 1}'),
                                                                                     ("c2", "{}")]
    assert events[0]["response"]["output"] == [] and events[0]["response"]["status"] == "in_progress"


def test_stream_translation_of_a_replayed_answer_and_a_cut_one() -> None:
    req = ResponsesRequest.model_validate({"model": "m", "input": "x"})
    tr = StreamTranslator(skeleton(req, "resp_1", store=False))
    tr.opening()
    # a whole answer replayed as chunks: tool calls may come without an index
    tr.chunk(chunk({"content": None, "tool_calls": [{"id": "c1", "type": "function",
                                                     "function": {"name": "f", "arguments": "{}"}}]}))
    tr.chunk(chunk({}, "tool_calls"))
    assert [i["type"] for i in tr.closing()[-1]["response"]["output"]] == ["function_call"]
    empty = StreamTranslator(skeleton(req, "resp_2", store=False))
    empty.opening()
    empty.chunk(chunk({}, "length"))
    last = empty.closing()[-1]
    assert last["type"] == "response.incomplete" and output_text(last["response"]) == ""


def test_stream_failure() -> None:
    req = ResponsesRequest.model_validate({"model": "m", "input": "x"})
    tr = StreamTranslator(skeleton(req, "resp_1", store=False))
    tr.opening()
    tr.chunk(chunk({"content": "partial"}))
    error, failed = tr.failed({"message": "boom", "type": "upstream_error", "code": "upstream_stream_interrupted"})
    assert error == {"type": "error", "sequence_number": 5, "code": "upstream_stream_interrupted",
                     "message": "boom", "param": None}
    assert failed["response"]["status"] == "failed" and failed["response"]["error"]["message"] == "boom"
    assert sse(error).startswith(b"event: error\ndata: {")


def test_relay_helpers() -> None:
    piece = b'data: {"a": 1}\n\ndata: {"error": {}}\n\ndata: [DONE]\n\n'
    assert chat_payloads(piece) == [b'{"a": 1}', b'{"error": {}}', b"[DONE]"]
    whole = {"id": "resp_x", "status": "completed", "output": [{"type": "message", "content": []}], "usage": {}}
    events = replay(whole)
    assert [e["type"] for e in events] == ["response.created", "response.in_progress", "response.output_item.added",
                                           "response.output_item.done", "response.completed"]
    assert events[0]["response"]["output"] == [] and orjson.dumps(events)


async def test_native_relay() -> None:
    from gateway.errors import GatewayError
    from gateway.relay import Outcome
    from gateway.responses_relay import NativeRelay

    kept: list[dict[str, Any]] = []

    async def keep(response: dict[str, Any]) -> None:
        kept.append(response)

    async def batches(*evs: dict[str, Any]) -> Any:
        yield list(evs), True

    failure = {"k": "error", "status": 429, "message": "slow down", "code": "rate_limit_exceeded"}
    relay = NativeRelay("public", keep)
    with pytest.raises(GatewayError) as e:  # nothing sent yet: the response answers the HTTP status
        [piece async for piece in relay.stream(batches(failure), Outcome())]
    assert e.value.status == 429
    created = {"type": "response.created", "sequence_number": 0, "response": {"id": "r", "model": "up"}}
    done = {"type": "response.completed", "sequence_number": 1, "response": {"id": "r", "model": "up"}}
    outcome = Outcome()
    pieces = [p async for p in NativeRelay("public", keep).stream(batches(
        {"k": "chunk", "d": {"event": created}}, {"k": "chunk", "d": {"event": done, "usage": {"prompt_tokens": 2}}}),
        outcome)]
    assert b'"model":"public"' in pieces[0] and outcome.usage == {"prompt_tokens": 2} and kept[-1]["id"] == "r"
    pieces = [p async for p in NativeRelay("public", keep).stream(batches(
        {"k": "chunk", "d": {"event": created}}, failure), Outcome())]
    assert pieces[-1].startswith(b"event: error\n") and b'"sequence_number":1' in pieces[-1]
