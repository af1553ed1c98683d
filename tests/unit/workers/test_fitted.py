"""The worker's own check of a job against the backend that runs it (ADR 0019): a fallback group or a Batch API
line reaching a backend that cannot do what is asked gets a 400 naming the parameter, or, with drop_params, the
job without it; each backend kind declares the features core.capabilities gives that kind (the gateway's view)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from core import capabilities as cap
from core.queue import JobSpec, SamplingParams
from workers.backends import BackendError, Completions
from workers.backends.base import fitted
from workers.backends.litellm_backend import LiteLLMBackend
from workers.backends.local import LocalBackend
from workers.backends.modal_qgpt import ModalQgptBackend
from workers.backends.openai_compat import OpenAICompatibleBackend

TOOLS = [{"type": "function", "function": {"name": "f"}}]


def job(body: dict[str, Any], kind: str = "chat") -> JobSpec:
    return JobSpec(id="j", kind=kind, model="chargpt", body={"messages": [{"role": "user", "content": "x"}], **body},
                   stream=False, deadline=time.time() + 10,
                   params=SamplingParams(n=int(body.get("n") or 1), temperature=body.get("temperature")))


class Local(LocalBackend):
    def __init__(self, drop: bool = False):  # no engine: fitted only reads the class's features
        self.drop_params = drop


@pytest.mark.parametrize("cls", [OpenAICompatibleBackend, LiteLLMBackend, LocalBackend, ModalQgptBackend])
def test_each_backend_declares_what_the_gateway_expects_of_its_kind(cls: type[Completions]) -> None:
    assert cls.features == cap.BY_BACKEND[cls.kind]


def test_a_job_the_backend_can_run_is_left_as_it_is() -> None:
    j = job({"n": 2, "stop": ["\n"], "tools": TOOLS, "tool_choice": "none"})
    assert fitted(j, Local()) is j
    g = JobSpec(id="g", kind="generate", model="chargpt", body={"tools": TOOLS}, stream=False, deadline=0)
    assert fitted(g, Local()) is g  # only chat and completions are checked


def test_what_the_backend_cannot_do_is_a_400_naming_it() -> None:
    with pytest.raises(BackendError) as e:
        fitted(job({"response_format": {"type": "json_schema", "json_schema": {"name": "a"}}}), Local())
    assert (e.value.status, e.value.param, e.value.code) == (400, "response_format", "unsupported_value")
    with pytest.raises(BackendError) as e:
        fitted(job({"logprobs": 1, "prompt": "x"}, kind="completion"), Local())
    assert e.value.param == "logprobs"
    with pytest.raises(BackendError) as e:  # the request said no dropping, whatever the config says
        fitted(job({"tools": TOOLS, "drop_params": False}), Local(drop=True))
    assert e.value.param == "tools"


def test_drop_params_drops_them_from_the_body_and_the_sampling_parameters() -> None:
    j = job({"tools": TOOLS, "tool_choice": "auto", "logprobs": True, "top_logprobs": 2, "n": 3, "temperature": 0.5,
             "drop_params": True})
    out = fitted(j, ModalQgptBackend.__new__(ModalQgptBackend))  # one choice only: n goes too
    assert set(out.body) == {"messages", "temperature", "drop_params"}
    assert out.params.n == 1 and out.params.temperature == 0.5
    assert "tools" in j.body  # the original job is untouched
    out = fitted(job({"tools": TOOLS}), Local(drop=True))  # litellm_settings.drop_params
    assert "tools" not in out.body
