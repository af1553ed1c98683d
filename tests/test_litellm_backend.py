"""Providers that need translation go through LiteLLM: an Anthropic-protocol server behind model `claude`."""

from __future__ import annotations

import httpx
import openai


def test_claude_non_streaming(client: openai.OpenAI, stack) -> None:  # type: ignore[no-untyped-def]
    r = client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hello there"}])
    assert r.choices[0].message.content == "Claude heard: hello there"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 11 and r.usage.completion_tokens == 4 and r.usage.total_tokens == 15
    last = httpx.get(stack.upstream.base_url.replace("/v1", "") + "/_last").json()
    # LiteLLM translated the OpenAI request into Anthropic's Messages API
    assert last["body"]["model"] == "claude-3-5-sonnet-20240620" and last["body"]["max_tokens"] == 256
    assert last["headers"]["x-api-key"] == "sk-ant-test"


def test_claude_streaming_with_usage(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="claude", messages=[{"role": "user", "content": "hi you"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Claude heard: hi you"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["stop"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == 15
