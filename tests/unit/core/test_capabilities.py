"""core.capabilities (ADR 0019): what a request asks for, what each backend kind supports, and dropping."""

from __future__ import annotations

from typing import Any

import pytest

from core import capabilities as cap
from core import queue as q
from core.config import Config

TOOLS = [{"type": "function", "function": {"name": "f"}}]


@pytest.mark.parametrize("body, features", [
    ({}, []),
    ({"tools": TOOLS}, ["tools"]),
    ({"tools": TOOLS, "tool_choice": "none"}, []),  # offered, not to be called: plain text is the right answer
    ({"functions": [{"name": "f"}]}, ["tools"]),
    ({"response_format": {"type": "text"}}, []),
    ({"response_format": {"type": "json_object"}}, ["response_format.json_object"]),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}, ["response_format.json_schema"]),
    ({"logprobs": False, "top_logprobs": 0}, []),
    ({"logprobs": True, "top_logprobs": 2}, ["logprobs"]),
    ({"n": 1, "stop": [], "logit_bias": {}, "presence_penalty": 0, "frequency_penalty": 0.0}, []),
    ({"n": 3, "stop": ["x"], "logit_bias": {"1": 5}, "presence_penalty": 0.5},
     ["n", "stop", "logit_bias", "presence_penalty"]),
])
def test_what_a_chat_request_asks_for(body: dict[str, Any], features: list[str]) -> None:
    assert [a.feature for a in cap.asked("chat", body)] == features


def test_what_a_completions_request_asks_for() -> None:
    body = {"prompt": "x", "logprobs": 0, "echo": True, "suffix": "!", "best_of": 2, "n": 2}
    assert [a.feature for a in cap.asked("completion", body)] == ["logprobs", "echo", "suffix", "best_of", "n"]
    assert cap.asked("completion", {"prompt": "x", "echo": False, "suffix": ""}) == []
    assert cap.asked("generate", {"tools": TOOLS}) == []  # only chat and completions are checked


def test_local_models_refuse_what_they_ignore_and_upstreams_take_everything() -> None:
    body = {"tools": TOOLS, "tool_choice": "required", "response_format": {"type": "json_object"},
            "logprobs": True, "top_logprobs": 1, "n": 2, "stop": "\n"}
    refused = cap.unsupported("chat", body, cap.LOCAL)
    assert [(a.param, a.code) for a in refused] == [("tools", "unsupported_parameter"),
                                                    ("response_format", "unsupported_value"),
                                                    ("logprobs", "unsupported_parameter")]
    assert "'tools' is not supported with the model `chargpt`" in refused[0].message("chargpt")
    assert "does not support 'json_object'" in refused[1].message("chargpt")
    assert [a.param for a in cap.unsupported("chat", body, cap.MODAL_QGPT)][-2:] == ["n", "stop"]
    assert cap.unsupported("chat", body, cap.EVERYTHING) == []
    assert cap.dropped(body, refused) == {"n": 2, "stop": "\n"}  # tools with their choice, logprobs with top_
    assert "tools" in body  # a copy: the body itself is untouched


def test_a_model_group_supports_what_all_its_deployments_do() -> None:
    assert cap.features_of(["openai", "litellm"]) == cap.EVERYTHING
    assert cap.features_of(["openai", "local"]) == cap.LOCAL
    assert cap.features_of(["some-future-kind"]) == cap.EVERYTHING  # the worker still checks its own backend
    config = Config(model_list=[
        {"model_name": "chargpt", "litellm_params": {"model": "local/chargpt"}},
        {"model_name": "gpt", "litellm_params": {"model": "openai/gpt-4o", "api_key": "k"}},
        {"model_name": "mixed", "litellm_params": {"model": "openai/x", "api_base": "http://a"}},
        {"model_name": "mixed", "litellm_params": {"model": "local/chargpt"}},
        {"model_name": "claude", "litellm_params": {"model": "anthropic/claude-3"}}])
    assert cap.by_model(config) == {"chargpt": cap.LOCAL, "gpt": cap.EVERYTHING, "mixed": cap.LOCAL,
                                    "claude": cap.EVERYTHING}


def test_error_events_carry_headers_only_when_there_are_some() -> None:
    assert "headers" not in q.loads(q.error_event(502, "x", "upstream_error"))
    ev = q.loads(q.error_event(429, "slow down", "requests", "rate_limit", None, {"retry-after": "7"}))
    assert ev["headers"] == {"retry-after": "7"} and ev["status"] == 429
