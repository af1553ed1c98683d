"""The official OpenAI SDK (sync and async) against gateway + worker + real Valkey/PostgreSQL + upstream."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

from bench.fake_upstream import CANNED


def test_models_list_and_get(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert {"chargpt", "fake", "echo"} <= set(ids)
    m = client.models.retrieve("fake")
    assert m.id == "fake" and m.object == "model"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model")
    assert e.value.body["code"] == "model_not_found"


def test_chat_non_streaming(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "ping pong"}])
    assert r.object == "chat.completion"
    assert r.id.startswith("chatcmpl-")
    assert r.model == "echo"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == "ping pong"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage is not None and r.usage.completion_tokens == 2


def test_chat_streaming_shape(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True))
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == CANNED


def test_stream_include_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.total_tokens == last.usage.prompt_tokens + last.usage.completion_tokens
    assert chunks[-2].choices[0].finish_reason == "stop"


def test_raw_sse_framing(stack) -> None:  # type: ignore[no-untyped-def]
    with httpx.stream("POST", stack.base_url + "/v1/chat/completions",
                      headers={"authorization": f"Bearer {stack.master_key}"},
                      json={"model": "fake", "messages": [{"role": "user", "content": "x"}], "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-request-id"]
        body = r.read().decode()
    events = body.split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])


def test_length_limits(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}], max_tokens=2)
    assert r.choices[0].finish_reason == "length"
    assert r.choices[0].message.content == "Hello from "
    r = client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}],
                                       max_completion_tokens=3)
    assert r.choices[0].finish_reason == "length"


def test_completions_endpoint(client: openai.OpenAI) -> None:
    r = client.completions.create(model="echo", prompt="one two three")
    assert r.object == "text_completion" and r.id.startswith("cmpl-")
    assert r.choices[0].text == "one two three"
    chunks = list(client.completions.create(model="echo", prompt="a b", stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "a b"
    assert chunks[-1].usage is not None


def test_extra_fields_and_params_reach_the_upstream(client: openai.OpenAI, stack) -> None:  # type: ignore[no-untyped-def]
    client.chat.completions.create(model="vllm-echo", messages=[{"role": "user", "content": "x"}], temperature=0.3,
                                   top_p=0.9, seed=7, stop=["\n"], user="u1", n=1,
                                   extra_body={"top_k": 20, "quantum_profile": "light"})
    last = httpx.get(stack.upstream.base_url.replace("/v1", "") + "/_last").json()
    body, headers = last["body"], last["headers"]
    assert body["model"] == "echo"  # the upstream's own name
    assert body["top_k"] == 20 and body["quantum_profile"] == "light"
    assert body["temperature"] == 0.3 and body["seed"] == 7 and body["stop"] == ["\n"] and body["user"] == "u1"
    assert headers["modal-key"] == "mk" and headers["modal-secret"] == "ms"


def test_vendor_fields_in_the_answer_pass_through(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="echo", messages=[{"role": "user", "content": "x"}],
                                       extra_body={"quantum_profile": "chaos"})
    assert r.model_extra["quantum_diagnostics"] == {"total_entropy_consumed": 4, "entropy_source": "qrng"}
    assert r.id.startswith("chatcmpl-") and r.model == "echo"  # the gateway's envelope, not the upstream's


def test_upstream_key_is_sent_and_never_leaks(client: openai.OpenAI, stack) -> None:  # type: ignore[no-untyped-def]
    client.chat.completions.create(model="fake", messages=[{"role": "user", "content": "x"}])
    last = httpx.get(stack.upstream.base_url.replace("/v1", "") + "/_last").json()
    assert last["headers"]["authorization"] == "Bearer sk-upstream-secret"
    r = httpx.get(stack.base_url + "/health")
    assert "sk-upstream-secret" not in r.text


def test_errors_map_to_sdk_exceptions(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "x"}]
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=str(client.base_url), api_key="wrong", max_retries=0).models.list()
    assert e.value.body["code"] == "invalid_api_key"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="missing", messages=msgs)
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="fake", messages=[])
    assert e.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as e:  # upstream's own 400 passes through
        client.chat.completions.create(model="status-400", messages=msgs)
    assert e.value.body["code"] == "fake_400"
    with pytest.raises(openai.RateLimitError):
        client.chat.completions.create(model="status-429", messages=msgs)
    with pytest.raises(openai.InternalServerError) as e:
        client.chat.completions.create(model="status-503", messages=msgs)
    assert e.value.status_code == 502


def test_retry_recovers_from_transient_upstream_failure(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="flaky-503", messages=[{"role": "user", "content": "retry me"}])
    assert r.choices[0].message.content == CANNED


def test_stream_that_fails_before_output_gets_an_http_status(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="status-400", messages=[{"role": "user", "content": "x"}], stream=True)
    assert e.value.body["code"] == "fake_400"


def test_stream_that_fails_midway_ends_with_one_error_event_then_done(stack) -> None:  # type: ignore[no-untyped-def]
    with httpx.stream("POST", stack.base_url + "/v1/chat/completions",
                      headers={"authorization": f"Bearer {stack.master_key}"},
                      json={"model": "broken-stream", "messages": [{"role": "user", "content": "x"}],
                            "stream": True}) as r:
        assert r.status_code == 200
        body = r.read().decode()
    events = [e for e in body.split("\n\n") if e]
    assert events[-1] == "data: [DONE]"
    assert '"error"' in events[-2] and "upstream broke mid-stream" in events[-2]
    assert '"Hello "' in body  # the output before the failure was delivered


async def test_async_client_and_20_concurrent_streams(aclient: openai.AsyncOpenAI) -> None:
    async def one(i: int) -> str:
        stream = await aclient.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": f"stream number {i}"}], stream=True)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    results = await asyncio.gather(*(one(i) for i in range(20)))
    assert results == [f"stream number {i}" for i in range(20)]
    r = await aclient.chat.completions.create(model="echo", messages=[{"role": "user", "content": "async"}])
    assert r.choices[0].message.content == "async"


def test_cold_start_waits_instead_of_failing(client: openai.OpenAI) -> None:
    """A scale-from-zero upstream answers 503 while it starts: the job waits (backoff) and then succeeds."""
    t0 = time.time()
    r = client.chat.completions.create(model="cold-1.5", messages=[{"role": "user", "content": "x"}])
    assert r.choices[0].message.content == CANNED
    assert time.time() - t0 >= 1.4  # it really waited for the upstream to come up


def test_cold_start_retries_end_at_the_deadline(stack) -> None:  # type: ignore[no-untyped-def]
    t0 = time.time()
    r = httpx.post(stack.base_url + "/v1/chat/completions",
                   headers={"authorization": f"Bearer {stack.master_key}", "x-stainless-read-timeout": "1.5"},
                   json={"model": "status-502", "messages": [{"role": "user", "content": "x"}]}, timeout=10)
    assert r.status_code in (502, 504) and time.time() - t0 < 3.5
