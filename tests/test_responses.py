"""OpenAI's Responses API through Gatehouse, driven by the official SDK (sync and async) against the stack: the
translation to chat completions (local and upstream models), its event stream, a tool round trip with
``previous_response_id``, ``text.format``, stored responses and their owners, and the pass-through path to an
upstream that speaks the API (bench/fake_responses.py records what it received)."""

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest
from conftest import Stack, create_key
from pydantic import BaseModel

from bench.fake_responses import ARGUMENTS, CALL_ID
from bench.fake_upstream import CANNED

WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                          "required": ["location"]}}
SEQUENCE = ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]
CLOSING = ["response.output_text.done", "response.content_part.done", "response.output_item.done",
           "response.completed"]


def received(stack: Stack) -> dict[str, Any]:
    """The last body the fake upstream received."""
    return httpx.get(stack.upstream.base_url.removesuffix("/v1") + "/_last").json()["body"]  # type: ignore[no-any-return]


def sdk(stack: Stack, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0)


def raw_post(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(stack.base_url + "/v1/responses", json=body, timeout=30,
                      headers={"authorization": f"Bearer {stack.master_key}"})


# ── translated to chat completions ─────────────────────────────────────────────────────────────────
def test_text_input(client: openai.OpenAI, stack: Stack) -> None:
    r = client.responses.create(model="echo", input="ping pong", temperature=0.5, max_output_tokens=50,
                                metadata={"run": "1"})
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed" and r.model == "echo"
    assert r.output_text == "ping pong"
    assert r.output[0].type == "message" and r.output[0].role == "assistant" and r.output[0].id.startswith("msg_")
    assert r.usage is not None and (r.usage.input_tokens, r.usage.output_tokens, r.usage.total_tokens) == (7, 2, 9)
    assert r.metadata == {"run": "1"} and r.temperature == 0.5 and r.max_output_tokens == 50 and r.created_at > 0
    body = received(stack)
    assert body["messages"] == [{"role": "user", "content": "ping pong"}]
    assert (body["temperature"], body["max_tokens"]) == (0.5, 50) and "metadata" not in body and "input" not in body


def test_instructions_and_message_items(client: openai.OpenAI, stack: Stack) -> None:
    r = client.responses.create(model="echo", instructions="Answer briefly.", input=[
        {"role": "developer", "content": "Be kind."},
        {"role": "assistant", "content": [{"type": "output_text", "text": "Earlier answer."}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "hello there"}]}])
    assert r.output_text == "hello there" and r.instructions == "Answer briefly."
    assert received(stack)["messages"] == [
        {"role": "system", "content": "Answer briefly."}, {"role": "system", "content": "Be kind."},
        {"role": "assistant", "content": "Earlier answer."}, {"role": "user", "content": "hello there"}]


def test_local_model_cut_short(client: openai.OpenAI) -> None:
    r = client.responses.create(model="chargpt", input="To be", max_output_tokens=5)
    assert r.status == "incomplete" and r.incomplete_details is not None
    assert r.incomplete_details.reason == "max_output_tokens"
    assert len(r.output_text) == 5 and r.usage is not None and r.usage.output_tokens == 5


def test_litellm_provider(client: openai.OpenAI, stack: Stack) -> None:
    r = client.responses.create(model="claude", input="bonjour", instructions="Be terse.")
    assert r.output_text == "Claude heard: bonjour" and r.status == "completed"
    assert r.usage is not None and r.usage.input_tokens == 11 and r.usage.output_tokens == 3
    sent = received(stack)  # Anthropic's Messages API, as LiteLLM sends it
    assert "Be terse." in str(sent["system"]) and sent["messages"][-1]["content"][0]["text"] == "bonjour"


async def test_async_client(aclient: openai.AsyncOpenAI) -> None:
    r = await aclient.responses.create(model="fake", input="anything", store=False)
    assert r.output_text == CANNED and r.store is False


def test_stream_events(client: openai.OpenAI) -> None:
    with client.responses.stream(model="fake", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert kinds == [*SEQUENCE, *["response.output_text.delta"] * len(deltas), *CLOSING]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(deltas) == CANNED == final.output_text
    assert final.status == "completed" and final.usage is not None and final.usage.output_tokens == 6
    assert events[0].response.status == "in_progress" and events[0].response.id == final.id  # type: ignore[union-attr]
    assert client.responses.retrieve(final.id).output_text == CANNED  # stored before it said completed


async def test_async_stream_and_wire_format(aclient: openai.AsyncOpenAI, stack: Stack) -> None:
    async with aclient.responses.stream(model="echo", input="one two three") as stream:
        texts = [e.delta async for e in stream if e.type == "response.output_text.delta"]
        final = await stream.get_final_response()
    assert "".join(texts) == final.output_text == "one two three"
    with httpx.stream("POST", stack.base_url + "/v1/responses", headers={"authorization": f"Bearer {stack.master_key}"},
                      json={"model": "fake", "input": "x", "stream": True, "store": False}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        blocks = [b for b in r.read().decode().split("\n\n") if b]
    assert all(b.startswith("event: ") and "\ndata: {" in b for b in blocks)  # as OpenAI sends them: no [DONE]
    assert blocks[0].startswith("event: response.created\n") and blocks[-1].startswith("event: response.completed\n")


def test_stream_failing_before_output_answers_its_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError), client.responses.stream(model="status-429", input="x") as stream:
        list(stream)


def test_stream_failure_is_an_event(client: openai.OpenAI) -> None:
    with client.responses.stream(model="broken-stream", input="x") as stream:
        events = list(stream)
        with pytest.raises(RuntimeError):
            stream.get_final_response()
    assert [e.type for e in events][-2:] == ["error", "response.failed"]
    assert events[-1].response.status == "failed"  # type: ignore[union-attr]


# ── tools ──────────────────────────────────────────────────────────────────────────────────────────
def test_tool_round_trip(client: openai.OpenAI, stack: Stack) -> None:
    first = client.responses.create(model="tool-caller", input="Weather in Paris?", tools=[WEATHER],
                                    tool_choice="auto")
    call = first.output[0]
    assert call.type == "function_call" and (call.name, call.arguments, call.call_id) == (
        "get_weather", ARGUMENTS, CALL_ID) and call.id and call.id.startswith("fc_")
    sent = received(stack)
    assert sent["tools"] == [{"type": "function", "function": {k: v for k, v in WEATHER.items() if k != "type"}}]
    assert sent["tool_choice"] == "auto"
    second = client.responses.create(model="tool-caller", previous_response_id=first.id, tools=[WEATHER], input=[
        {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 °C"}])
    assert second.output_text == "Sunny, 21 °C" and second.previous_response_id == first.id
    assert received(stack)["messages"] == [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": CALL_ID, "type": "function", "function": {"name": "get_weather", "arguments": ARGUMENTS}}]},
        {"role": "tool", "tool_call_id": CALL_ID, "content": "Sunny, 21 °C"}]


async def test_tool_round_trip_streamed(aclient: openai.AsyncOpenAI) -> None:
    async with aclient.responses.stream(model="tool-caller", input="Weather?", tools=[WEATHER],  # type: ignore[list-item]
                                        tool_choice={"type": "function", "name": "get_weather"}) as stream:
        events = [e async for e in stream]
        final = await stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:3] == SEQUENCE[:3] and kinds[-3:] == ["response.function_call_arguments.done",
                                                        "response.output_item.done", "response.completed"]
    assert "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta") == ARGUMENTS
    call = final.output[0]
    assert call.type == "function_call" and call.arguments == ARGUMENTS and call.status == "completed"
    # the whole conversation, sent again without previous_response_id, continues the same way
    again = await aclient.responses.create(model="tool-caller", tools=[WEATHER], input=[  # type: ignore[list-item]
        {"role": "user", "content": "Weather?"},
        {"type": "function_call", "call_id": call.call_id, "name": call.name, "arguments": call.arguments},
        {"type": "function_call_output", "call_id": call.call_id, "output": "Rain"}])
    assert again.output_text == "Rain"


def test_tool_output_without_its_call(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tool-caller", input=[
            {"type": "function_call_output", "call_id": "call_nowhere", "output": "x"}])
    assert e.value.body["param"] == "input"  # type: ignore[index]


# ── text.format ────────────────────────────────────────────────────────────────────────────────────
class City(BaseModel):
    city: str


def test_json_schema_reaches_upstream(client: openai.OpenAI, stack: Stack) -> None:
    r = client.responses.parse(model="echo", input='{"city": "Paris"}', text_format=City)
    assert r.output_parsed == City(city="Paris")
    fmt = received(stack)["response_format"]
    assert fmt["type"] == "json_schema" and fmt["json_schema"]["name"] == "City"
    assert fmt["json_schema"]["strict"] is True and fmt["json_schema"]["schema"]["properties"]["city"]
    client.responses.create(model="echo", input="{}", text={"format": {"type": "json_object"}})
    assert received(stack)["response_format"] == {"type": "json_object"}


# ── stored responses ───────────────────────────────────────────────────────────────────────────────
def test_store_get_delete(client: openai.OpenAI) -> None:
    r = client.responses.create(model="echo", input="keep me")
    got = client.responses.retrieve(r.id)
    assert got.id == r.id and got.output_text == "keep me" and got.store is True
    items = client.responses.input_items.list(r.id)
    assert [i.type for i in items.data] == ["message"] and items.data[0].content[0].text == "keep me"  # type: ignore[union-attr]
    client.responses.delete(r.id)
    for call in (client.responses.retrieve, client.responses.delete):
        with pytest.raises(openai.NotFoundError):
            call(r.id)


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    r = client.responses.create(model="echo", input="forget me", store=False)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(r.id)
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="echo", input="again", previous_response_id=r.id)
    assert e.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_previous_response_brings_the_conversation(client: openai.OpenAI, stack: Stack) -> None:
    first = client.responses.create(model="echo", input="first words", instructions="Not carried over.")
    second = client.responses.create(model="echo", input="second words", previous_response_id=first.id)
    assert second.output_text == "second words"
    assert received(stack)["messages"] == [{"role": "user", "content": "first words"},
                                           {"role": "assistant", "content": "first words"},
                                           {"role": "user", "content": "second words"}]
    third = client.responses.create(model="echo", input="third", previous_response_id=second.id)
    assert len(received(stack)["messages"]) == 5 and third.previous_response_id == second.id


def test_another_owner_sees_nothing(stack: Stack) -> None:
    alice, bob = sdk(stack, create_key(stack)["key"]), sdk(stack, create_key(stack)["key"])
    mine = alice.responses.create(model="echo", input="alice's")
    for call in (bob.responses.retrieve, bob.responses.delete, bob.responses.input_items.list):
        with pytest.raises(openai.NotFoundError):
            call(mine.id)
    with pytest.raises(openai.NotFoundError):
        bob.responses.create(model="echo", input="hijack", previous_response_id=mine.id)
    assert alice.responses.retrieve(mine.id).output_text == "alice's"
    assert stack.client().responses.retrieve(mine.id).id == mine.id  # the master key sees every response


# ── refusals ───────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize(("body", "param"), [
    ({"model": "echo"}, "input"),
    ({"model": "echo", "input": 5}, "input"),
    ({"model": "echo", "input": [{"type": "item_reference", "id": "x"}]}, "input[0].type"),
    ({"model": "echo", "input": [{"role": "user", "content": [{"type": "input_file", "file_id": "f"}]}]},
     "input[0].content[0].type"),
    ({"model": "echo", "input": [{"role": "robot", "content": "x"}]}, "input[0].role"),
    ({"model": "echo", "input": "x", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"model": "echo", "input": "x", "tools": [{"type": "function"}]}, "tools[0].name"),
    ({"model": "echo", "input": "x", "tool_choice": {"type": "file_search"}}, "tool_choice"),
    ({"model": "echo", "input": "x", "background": True}, "background"),
    ({"model": "echo", "input": "x", "include": ["file_search_call.results"]}, "include"),
    ({"model": "echo", "input": "x", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ({"model": "echo", "input": "x", "text": {"format": {"type": "json_schema", "name": "a"}}}, "text.format.schema"),
    ({"model": "echo", "input": "x", "temperature": "hot"}, "temperature"),
    ({"model": "echo", "input": "x", "stream": "yes"}, "stream"),
    ({"model": "echo", "input": "x", "max_output_tokens": 10**6}, "max_output_tokens"),
    ({"model": "echo", "input": "x", "metadata": {"k": 1}}, "metadata.k"),
])
def test_bad_input_names_the_param(stack: Stack, body: dict[str, Any], param: str) -> None:
    r = raw_post(stack, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(("fields", "param"), [
    ({"tools": [WEATHER]}, "tools"),
    ({"text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"}}}}, "text.format"),
])
def test_what_a_model_cannot_do_is_refused(stack: Stack, fields: dict[str, Any], param: str) -> None:
    r = raw_post(stack, {"model": "chargpt", "input": "x", "max_output_tokens": 3, **fields})
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    dropped = raw_post(stack, {"model": "chargpt", "input": "x", "max_output_tokens": 3, "drop_params": True,
                               "store": False, **fields})
    assert dropped.status_code == 200 and len(dropped.json()["output"][0]["content"][0]["text"]) == 3


def test_unknown_ids_and_models(client: openai.OpenAI, stack: Stack) -> None:
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve("resp_nope")
    with pytest.raises(openai.NotFoundError) as e:
        client.responses.create(model="no-such-model", input="x")
    assert e.value.body["code"] == "model_not_found"  # type: ignore[index]
    r = raw_post(stack, {"model": "echo", "input": "x", "previous_response_id": "resp_" + "0" * 500})
    assert r.status_code == 400 and r.json()["error"]["param"] == "previous_response_id"
    with pytest.raises(openai.BadRequestError):
        client.responses.create(model="status-400", input="x")


# ── passed through ─────────────────────────────────────────────────────────────────────────────────
def test_passthrough(client: openai.OpenAI, stack: Stack) -> None:
    r = client.responses.create(model="responses-native", input="native hello", tools=[WEATHER],
                                reasoning={"effort": "low"})
    assert r.output_text == "native hello" and r.id.startswith("resp_fake") and r.model == "responses-native"
    body = received(stack)
    assert body["model"] == "echo" and body["input"] == "native hello" and body["store"] is True
    assert body["tools"] == [WEATHER] and body["reasoning"] == {"effort": "low"}  # as sent: the upstream speaks it
    assert client.responses.retrieve(r.id).output_text == "native hello"
    again = client.responses.create(model="responses-native", input="and again", previous_response_id=r.id)
    assert received(stack)["previous_response_id"] == r.id and again.output_text == "and again"


def test_passthrough_stream(client: openai.OpenAI) -> None:
    with client.responses.stream(model="responses-native", input="streamed natively") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.type for e in events][:4] == SEQUENCE and [e.type for e in events][-4:] == CLOSING
    assert final.output_text == "streamed natively" and final.model == "responses-native"
    assert client.responses.retrieve(final.id).output_text == "streamed natively"


def test_translated_history_continues_natively(client: openai.OpenAI, stack: Stack) -> None:
    first = client.responses.create(model="echo", input="said to echo")
    client.responses.create(model="responses-native", input="then native", previous_response_id=first.id)
    body = received(stack)
    assert "previous_response_id" not in body  # that upstream never saw the first response: it gets the history
    assert [(i.get("role"), i["content"][0]["text"]) for i in body["input"]] == [
        ("user", "said to echo"), ("assistant", "said to echo"), ("user", "then native")]
    assert all("id" not in i for i in body["input"])


def test_passthrough_forwards_what_translation_refuses(client: openai.OpenAI, stack: Stack) -> None:
    r = raw_post(stack, {"model": "responses-native", "input": "x", "background": True})
    assert r.status_code == 200  # refused only where Gatehouse translates; this upstream decides for itself
    assert received(stack)["background"] is True
