"""The gateway's honest refusals (``Generation.fit``, ADR 0019) without a server: a model's features come from its
configured deployments; what it lacks is a 400 naming the parameter, or dropped with drop_params (the request's,
else litellm_settings.drop_params)."""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any, cast

import pytest

from core import capabilities
from core import schemas as p
from core.config import Config
from gateway.errors import InvalidRequest
from gateway.services import Services
from gateway.serving import Generation

TOOLS = [{"type": "function", "function": {"name": "f"}}]
MODELS = [{"model_name": "chargpt", "litellm_params": {"model": "local/chargpt"}},
          {"model_name": "vllm", "litellm_params": {"model": "hosted_vllm/m", "api_base": "http://x"}}]


def generation(drop_params: bool | None = None) -> Generation:
    config = Config(model_list=MODELS, litellm_settings={} if drop_params is None else {"drop_params": drop_params})
    svc = SimpleNamespace(config=config, queue=None, batch_queue=None, features=capabilities.by_model(config))
    return Generation(cast(Services, svc))


def fit(gen: Generation, **body: Any) -> tuple[dict[str, Any], p.ChatCompletionRequest]:
    raw = {"model": "chargpt", "messages": [{"role": "user", "content": "x"}], **body}
    return gen.fit(p.ChatCompletionRequest.model_validate(raw), raw)


def test_what_the_model_cannot_do_is_refused_naming_it() -> None:
    with pytest.raises(InvalidRequest) as e:
        fit(generation(), tools=TOOLS, tool_choice="required")
    assert (e.value.status, e.value.param, e.value.code) == (400, "tools", "unsupported_parameter")
    with pytest.raises(InvalidRequest) as e:
        fit(generation(), response_format={"type": "json_object"})
    assert (e.value.param, e.value.code) == ("response_format", "unsupported_value")


def test_an_upstream_model_gets_everything_and_a_capable_request_is_untouched() -> None:
    raw = {"model": "vllm", "messages": [{"role": "user", "content": "x"}], "tools": TOOLS, "logprobs": True}
    req = p.ChatCompletionRequest.model_validate(raw)
    assert generation().fit(req, raw) == (raw, req)
    body, req2 = fit(generation(), n=2, stop=["\n"])
    assert req2.n == 2 and body["stop"] == ["\n"]


def test_litellm_settings_drop_params_drops_and_the_request_decides_first(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="gatehouse.gateway")
    body, req = fit(generation(drop_params=True), tools=TOOLS, logprobs=True, top_logprobs=2, temperature=0.5)
    assert "tools" not in body and "logprobs" not in body and "top_logprobs" not in body
    assert req.tools is None and req.logprobs is None and req.temperature == 0.5
    assert "does not support tools, logprobs: dropped (drop_params)" in caplog.text
    body, req = fit(generation(), n=2, tools=TOOLS, drop_params=True)  # the request's own drop_params
    assert "tools" not in body and body["n"] == 2
    with pytest.raises(InvalidRequest):  # the request says no, whatever the config says
        fit(generation(drop_params=True), tools=TOOLS, drop_params=False)
