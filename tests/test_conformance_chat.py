"""Chat completions conformance, driven by the official OpenAI SDK (sync and async, streamed and not) against the
stack and the recording fake upstream (bench/fake_upstream.py, bench/fake_agent.py). For every case: what the
upstream received (``GET /_last``) and what the client got.

- Pass-through: tools, tool_choice, streamed tool-call deltas, ``role: tool`` turns, response_format, logprobs,
  ``n`` and usage details reach the upstream and come back as it sent them, through the native client and LiteLLM.
- Honest refusals (ADR 0019): a model that cannot do what is asked answers 400 naming the parameter (never a
  silent 200), unless ``drop_params``; malformed tools / tool_choice / logprobs are 400s as at OpenAI.
- Faithful relay: an upstream 429 keeps its ``retry-after``; a 500 is a 502 ``upstream_error`` with its message
  (logged as 500); a stream cut midway or ending unfinished is an error event, not a success; an upstream that
  ignores ``stream: true`` is replayed as chunks the SDK's stream helper accepts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

MSGS: list[Any] = [{"role": "user", "content": "weather in Paris"}]
TOOLS: list[Any] = [
    {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                      "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                                                     "required": ["q"]}}},
    {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}]
ARGS = json.dumps({"q": "weather in Paris"}, separators=(",", ":"))


def upstream_got(stack: Any) -> dict[str, Any]:
    """The last request body the fake upstream received."""
    body: dict[str, Any] = httpx.get(stack.upstream.base_url.removesuffix("/v1") + "/_last").json()["body"]
    return body


def upstream_calls(stack: Any, model: str) -> int:
    stats = httpx.get(stack.upstream.base_url.removesuffix("/v1") + "/_stats").json()
    return int(stats["models"].get(model, 0))


class LogTail:
    """What the worker logged from now on."""

    def __init__(self, stack: Any):
        self.path = Path(stack.logs) / "worker0.log"
        self.start = self.path.stat().st_size

    def text(self, wait_for: str | None = None, timeout: float = 5.0) -> str:
        deadline = time.time() + timeout
        while True:
            with self.path.open("rb") as f:
                f.seek(self.start)
                out = f.read().decode(errors="replace")
            if wait_for is None or wait_for in out or time.time() > deadline:
                return out
            time.sleep(0.05)


# ── pass-through ─────────────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("model", ["agent", "agent-litellm"])
def test_tool_calls_pass_through(client: openai.OpenAI, stack: Any, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=MSGS, tools=TOOLS, tool_choice="auto",
                                       parallel_tool_calls=True)
    sent = upstream_got(stack)
    assert sent["tools"] == TOOLS and sent["tool_choice"] == "auto" and sent["parallel_tool_calls"] is True
    assert sent["messages"] == MSGS
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls or []
    assert [(c.type, c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        ("function", "get_weather", ARGS), ("function", "get_time", ARGS)]
    assert all(c.id.startswith("call_") for c in calls)


@pytest.mark.parametrize("model", ["agent", "agent-litellm"])
def test_streamed_tool_call_deltas_keep_their_index(client: openai.OpenAI, stack: Any, model: str) -> None:
    chunks = list(client.chat.completions.create(model=model, messages=MSGS, tools=TOOLS, stream=True,
                                                 tool_choice={"type": "function",
                                                              "function": {"name": "get_time"}}))
    assert upstream_got(stack)["tool_choice"] == {"type": "function", "function": {"name": "get_time"}}
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert deltas and all(d.index == 0 for d in deltas)
    assert deltas[0].id and deltas[0].function.name == "get_time"  # type: ignore[union-attr]
    assert "".join(d.function.arguments or "" for d in deltas) == ARGS  # type: ignore[union-attr]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]


def test_the_sdk_stream_helper_and_a_tool_round_trip(client: openai.OpenAI, stack: Any) -> None:
    with client.chat.completions.stream(model="agent", messages=MSGS, tools=TOOLS) as stream:
        kinds = {event.type for event in stream}
        first = stream.get_final_completion()
    assert "tool_calls.function.arguments.done" in kinds
    calls = first.choices[0].message.tool_calls or []
    assert [c.function.name for c in calls] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    turns: list[Any] = [*MSGS, first.choices[0].message.model_dump(exclude_none=True, exclude={"parsed"}),
                        {"role": "tool", "tool_call_id": calls[0].id, "content": "sunny, 21 C"},
                        {"role": "tool", "tool_call_id": calls[1].id, "content": "noon"}]
    r = client.chat.completions.create(model="agent", messages=turns, tools=TOOLS)
    sent = upstream_got(stack)
    assert sent["messages"][2:] == turns[2:]  # the tool turns, exactly as sent
    assert sent["messages"][1]["tool_calls"][1]["id"] == calls[1].id
    assert r.choices[0].message.content == "tool said: noon" and r.choices[0].finish_reason == "stop"


async def test_async_stream_helper_strict_tools_and_parallel_tool_calls_off(aclient: openai.AsyncOpenAI,
                                                                            stack: Any) -> None:
    strict: list[Any] = [{"type": "function", "function": {
        "name": "get_weather", "strict": True, "parameters": {
            "type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"],
            "additionalProperties": False}}}]
    async with aclient.chat.completions.stream(model="agent", messages=MSGS, tools=strict,
                                               parallel_tool_calls=False) as stream:
        async for _ in stream:
            pass
        final = await stream.get_final_completion()
    sent = upstream_got(stack)
    assert sent["parallel_tool_calls"] is False and sent["tools"] == strict
    calls = final.choices[0].message.tool_calls or []
    assert [(c.function.name, c.function.parsed_arguments) for c in calls] == [  # type: ignore[union-attr]
        ("get_weather", {"q": "weather in Paris"})]


class Answer(BaseModel):
    answer: str


@pytest.mark.parametrize("model", ["agent", "agent-litellm"])
def test_response_format_json_schema(client: openai.OpenAI, stack: Any, model: str) -> None:
    r = client.chat.completions.parse(model=model, messages=MSGS, response_format=Answer)
    sent = upstream_got(stack)["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "Answer"
    assert sent["json_schema"]["strict"] is True and "answer" in sent["json_schema"]["schema"]["properties"]
    assert r.choices[0].message.parsed == Answer(answer="you said: weather in Paris")
    r2 = client.chat.completions.create(model=model, messages=MSGS, response_format={"type": "json_object"})
    assert upstream_got(stack)["response_format"] == {"type": "json_object"}
    assert json.loads(r2.choices[0].message.content or "") == {"answer": "you said: weather in Paris"}


@pytest.mark.parametrize("model", ["agent", "agent-litellm"])
def test_logprobs_usage_details_and_reasoning(client: openai.OpenAI, stack: Any, model: str) -> None:
    r = client.chat.completions.create(model=model, messages=MSGS, logprobs=True, top_logprobs=2,
                                       reasoning_effort="low")
    sent = upstream_got(stack)
    assert sent["logprobs"] is True and sent["top_logprobs"] == 2 and sent["reasoning_effort"] == "low"
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None
    assert [t.token for t in lp.content] == ["you ", "said: ", "weather ", "in ", "Paris"]
    assert all(len(t.top_logprobs) == 2 and t.top_logprobs[0].token == t.token for t in lp.content)
    assert lp.content[0].logprob == -0.125 and lp.content[0].bytes == list(b"you ")
    assert (r.choices[0].message.model_extra or {}).get("reasoning_content") == "Thinking about: weather in Paris"
    u = r.usage
    assert u is not None and u.prompt_tokens_details is not None and u.completion_tokens_details is not None
    assert u.prompt_tokens_details.cached_tokens == 2 and u.completion_tokens_details.reasoning_tokens == 5
    assert (u.prompt_tokens, u.completion_tokens, u.total_tokens) == (9, 10, 19)


@pytest.mark.parametrize("model", ["agent", "agent-litellm"])
def test_streamed_logprobs_usage_details_and_reasoning(client: openai.OpenAI, stack: Any, model: str) -> None:
    chunks = list(client.chat.completions.create(model=model, messages=MSGS, logprobs=True, top_logprobs=1,
                                                 reasoning_effort="low", stream=True,
                                                 stream_options={"include_usage": True}))
    assert upstream_got(stack)["stream"] is True
    tokens = [t for c in chunks if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or ()]
    assert [t.token for t in tokens] == ["you ", "said: ", "weather ", "in ", "Paris"]
    assert all(len(t.top_logprobs) == 1 for t in tokens)
    reasoning = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content") or ""
                        for c in chunks if c.choices)
    assert reasoning == "Thinking about: weather in Paris"
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert usage.prompt_tokens_details is not None and usage.prompt_tokens_details.cached_tokens == 2
    assert usage.completion_tokens_details is not None and usage.completion_tokens_details.reasoning_tokens == 5


async def test_n_choices_async(aclient: openai.AsyncOpenAI, stack: Any) -> None:
    r = await aclient.chat.completions.create(model="agent", messages=MSGS, n=2)
    assert upstream_got(stack)["n"] == 2
    assert [c.index for c in r.choices] == [0, 1]
    assert {c.message.content for c in r.choices} == {"you said: weather in Paris"}
    stream = await aclient.chat.completions.create(model="agent", messages=MSGS, n=2, stream=True)
    texts: dict[int, str] = {}
    async for c in stream:
        for ch in c.choices:
            texts[ch.index] = texts.get(ch.index, "") + (ch.delta.content or "")
    assert texts == {0: "you said: weather in Paris", 1: "you said: weather in Paris"}


# ── an upstream that ignores stream: true ─────────────────────────────────────────────────────────────────────
def test_an_answer_to_a_stream_in_one_piece_is_replayed_as_chunks(client: openai.OpenAI, stack: Any) -> None:
    chunks = list(client.chat.completions.create(model="ignore-stream", messages=MSGS, tools=TOOLS, stream=True,
                                                 logprobs=True, top_logprobs=1))
    assert upstream_got(stack)["stream"] is True  # asked for, and ignored
    deltas = [tc for c in chunks if c.choices for tc in c.choices[0].delta.tool_calls or ()]
    assert [(d.index, d.function.name) for d in deltas] == [(0, "get_weather"), (1, "get_time")]  # type: ignore[union-attr]
    assert len({c.id for c in chunks}) == 1 and chunks[0].choices[0].delta.role == "assistant"
    with client.chat.completions.stream(model="ignore-stream", messages=MSGS, tools=TOOLS) as stream:
        final = stream.get_final_completion()  # the SDK's helper accumulates the deltas by index
    calls = final.choices[0].message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls] == [  # type: ignore[union-attr]
        ("get_weather", ARGS), ("get_time", ARGS)]
    assert final.choices[0].finish_reason == "tool_calls"


async def test_an_answer_in_one_piece_keeps_its_logprobs_async(aclient: openai.AsyncOpenAI) -> None:
    async with aclient.chat.completions.stream(model="ignore-stream", messages=MSGS, logprobs=True,
                                               top_logprobs=2, stream_options={"include_usage": True}) as stream:
        final = await stream.get_final_completion()
    lp = final.choices[0].logprobs
    assert final.choices[0].message.content == "you said: weather in Paris"
    assert lp is not None and [t.token for t in lp.content or ()] == ["you ", "said: ", "weather ", "in ", "Paris"]
    assert final.usage is not None and final.usage.completion_tokens == 5


# ── honest refusals ──────────────────────────────────────────────────────────────────────────────────────────
REFUSED = [
    ({"tools": TOOLS}, "tools", "unsupported_parameter"),
    ({"tools": TOOLS, "tool_choice": "required"}, "tools", "unsupported_parameter"),
    ({"response_format": {"type": "json_object"}}, "response_format", "unsupported_value"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": {"type": "object"}}}},
     "response_format", "unsupported_value"),
    ({"logprobs": True, "top_logprobs": 3}, "logprobs", "unsupported_parameter"),
    ({"logit_bias": {"5": 10}}, "logit_bias", "unsupported_parameter"),
]


@pytest.mark.parametrize("extra, param, code", REFUSED)
@pytest.mark.parametrize("stream", [False, True])
def test_chargpt_refuses_what_it_cannot_do(client: openai.OpenAI, extra: dict[str, Any], param: str, code: str,
                                           stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chargpt", messages=MSGS, max_tokens=4, stream=stream, **extra)
    body: Any = e.value.body
    assert e.value.status_code == 400 and body["param"] == param and body["code"] == code, body
    assert "chargpt" in body["message"] and "drop_params" in body["message"]


async def test_refusals_async_and_qgpt(aclient: openai.AsyncOpenAI) -> None:
    for model in ("chargpt", "qgpt"):
        with pytest.raises(openai.BadRequestError) as e:
            await aclient.chat.completions.create(model=model, messages=MSGS, tools=TOOLS, stream=True)
        assert e.value.body["param"] == "tools"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e:
        await aclient.completions.create(model="chargpt", prompt="The ", logprobs=2, max_tokens=4)
    assert e.value.body["param"] == "logprobs"  # type: ignore[index]


def test_what_chargpt_can_do_and_drop_params(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="chargpt", messages=MSGS, max_tokens=4, n=2, stop=["\n"], seed=3)
    assert len(r.choices) == 2
    # tools offered but not to be called: the answer is text, which is what was asked
    r = client.chat.completions.create(model="chargpt", messages=MSGS, max_tokens=4, tools=TOOLS, tool_choice="none")
    assert r.choices[0].message.tool_calls is None and r.choices[0].finish_reason in ("stop", "length")
    # LiteLLM's drop_params: the parameters chargpt cannot take are dropped, not refused
    r = client.chat.completions.create(model="chargpt", messages=MSGS, max_tokens=4, tools=TOOLS, logprobs=True,
                                       response_format={"type": "json_object"}, extra_body={"drop_params": True})
    assert r.choices[0].message.content and r.choices[0].logprobs is None
    chunks = list(client.chat.completions.create(model="chargpt", messages=MSGS, max_tokens=4, tools=TOOLS,
                                                 stream=True, extra_body={"drop_params": True}))
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_drop_params_never_reaches_an_openai_compatible_upstream(client: openai.OpenAI, stack: Any) -> None:
    client.chat.completions.create(model="agent", messages=MSGS, tools=TOOLS, extra_body={"drop_params": True})
    sent = upstream_got(stack)
    assert "drop_params" not in sent and sent["tools"] == TOOLS  # the upstream supports tools: nothing dropped


MALFORMED = [
    ({"tool_choice": "auto"}, "tool_choice", "invalid_value"),
    ({"tool_choice": "none"}, "tool_choice", "invalid_value"),
    ({"tools": TOOLS, "tool_choice": "sometimes"}, "tool_choice", "invalid_value"),
    ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice",
     "invalid_value"),
    ({"logprobs": "yes"}, "logprobs", "invalid_type"),
    ({"logprobs": True, "top_logprobs": 21}, "top_logprobs", "invalid_value"),
    ({"logprobs": True, "top_logprobs": -1}, "top_logprobs", "invalid_value"),
    ({"tools": {"type": "function"}}, "tools", "invalid_type"),
    ({"tools": []}, "tools", "invalid_value"),
    ({"tools": [{"type": "function"}]}, "tools[0]", "invalid_value"),
    ({"tools": [{"type": "function", "function": {"description": "x"}}]}, "tools[0].function.name",
     "missing_required_parameter"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools[0].function.name", "invalid_value"),
    ({"tools": [{"type": "retrieval"}]}, "tools[0].type", "invalid_value"),
    ({"response_format": {"type": "json_schema"}}, "response_format", "invalid_value"),
    ({"response_format": "json"}, "response_format", "invalid_type"),
    ({"n": 0}, "n", "invalid_value"),
    ({"drop_params": "yes"}, "drop_params", "invalid_type"),
]


@pytest.mark.parametrize("extra, param, code", MALFORMED)
def test_malformed_requests_are_400s_before_the_upstream(stack: Any, extra: dict[str, Any], param: str,
                                                         code: str) -> None:
    before = upstream_calls(stack, "agent")
    r = httpx.post(stack.base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {stack.master_key}"},
                   json={"model": "agent", "messages": MSGS, **extra})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == param and err["code"] == code, err
    assert err["type"] == "invalid_request_error"
    assert upstream_calls(stack, "agent") == before  # refused by the gateway: the upstream never saw it


# ── faithful relay of upstream faults ────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("stream", [False, True])
def test_upstream_429_keeps_its_retry_after(client: openai.OpenAI, stack: Any, stream: bool) -> None:
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="status-429", messages=MSGS, stream=stream,
                                       extra_body={"retry_after": "7"})
    assert upstream_got(stack)["retry_after"] == "7"
    assert e.value.status_code == 429 and e.value.response.headers["retry-after"] == "7"
    assert e.value.body["code"] == "fake_429" and e.value.body["message"] == "fake upstream says 429"  # type: ignore[index]
    with pytest.raises(openai.RateLimitError) as e:  # through LiteLLM too
        client.chat.completions.create(model="status-429-litellm", messages=MSGS, stream=stream,
                                       extra_body={"retry_after": "6"})
    assert e.value.response.headers["retry-after"] == "6" and "fake upstream says 429" in e.value.message


def test_a_stream_refused_after_the_first_read_still_gets_its_status(client: openai.OpenAI) -> None:
    """The upstream's 429 arrives after the gateway's first read of the job's output (0.4 s): the stream's response
    had not started, so it is still an HTTP 429 with retry-after, not a 200 with an error event."""
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="status-429", messages=MSGS, stream=True,
                                       extra_body={"retry_after": "5", "delay": 0.8})
    assert e.value.response.headers["retry-after"] == "5"


async def test_upstream_429_async(aclient: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as e:
        await aclient.chat.completions.create(model="status-429", messages=MSGS, extra_body={"retry_after": "3"})
    assert e.value.response.headers["retry-after"] == "3"


@pytest.mark.parametrize("stream", [False, True])
def test_upstream_500_is_a_502_with_its_message_logged_as_500(client: openai.OpenAI, stack: Any,
                                                              stream: bool) -> None:
    log = LogTail(stack)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="status-500", messages=MSGS, stream=stream)
    body: Any = e.value.body
    assert e.value.status_code == 502 and body["code"] == "upstream_error" and body["type"] == "upstream_error"
    assert "fake upstream says 500" in body["message"] and "HTTP 500" in body["message"]
    rid = e.value.response.headers["x-request-id"]
    line = next((ln for ln in log.text(wait_for=rid).splitlines() if rid in ln), "")
    assert "upstream_error" in line and "HTTP 500: fake upstream says 500" in line, line
    with pytest.raises(openai.InternalServerError) as e:  # through LiteLLM too
        client.chat.completions.create(model="status-500-litellm", messages=MSGS, stream=stream)
    body = e.value.body
    assert e.value.status_code == 502 and body["code"] == "upstream_error"
    assert "fake upstream says 500" in body["message"]
    rid = e.value.response.headers["x-request-id"]
    line = next((ln for ln in log.text(wait_for=rid).splitlines() if rid in ln), "")
    assert "upstream answered HTTP 500" in line, line


@pytest.mark.parametrize("model, code, delivered", [
    ("cut-after-3", "upstream_stream_interrupted", "Hello from the "),
    ("cut-after-3-litellm", "upstream_stream_interrupted", "Hello from the "),
    ("no-done", "upstream_stream_incomplete", "Hello from the fake upstream, friend."),
])
def test_a_stream_that_does_not_finish_is_an_error(client: openai.OpenAI, stack: Any, model: str, code: str,
                                                   delivered: str) -> None:
    log = LogTail(stack)
    text = ""
    with client.chat.completions.create(model=model, messages=MSGS, stream=True,
                                        stream_options={"include_usage": True}) as stream:
        rid = stream.response.headers["x-request-id"]
        with pytest.raises(openai.APIError) as e:
            for c in stream:
                assert c.usage is None and not (c.choices and c.choices[0].finish_reason)  # no false success
                text += "".join(ch.delta.content or "" for ch in c.choices)
    assert text == delivered  # what the upstream sent before it stopped
    assert e.value.body["code"] == code, e.value.body  # type: ignore[index]
    assert upstream_got(stack)["stream"] is True
    logged = log.text(wait_for=rid)
    assert code in logged and "Traceback" not in logged


def test_a_cut_stream_as_raw_sse(stack: Any) -> None:
    with httpx.stream("POST", stack.base_url + "/v1/chat/completions",
                      headers={"authorization": f"Bearer {stack.master_key}"},
                      json={"model": "cut-after-3", "messages": MSGS, "stream": True}) as r:
        assert r.status_code == 200
        events = [e for e in r.read().decode().split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    errors = [json.loads(e[6:])["error"] for e in events if '"error"' in e]
    assert len(errors) == 1 and errors[0]["code"] == "upstream_stream_interrupted"  # one error event
    assert errors[0]["type"] == "upstream_error"


async def test_a_stream_that_does_not_finish_async(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(model="no-done", messages=MSGS, stream=True)
    with pytest.raises(openai.APIError) as e:
        async for _ in stream:
            pass
    assert e.value.body["code"] == "upstream_stream_incomplete"  # type: ignore[index]
