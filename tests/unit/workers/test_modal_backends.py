"""The Modal class-method backends, as far as they run without a Modal account: targets, credentials, wiring,
and the qgpt/classifier adapters against an in-process class with Modal's call surface
(``method.remote.aio`` / ``method.remote_gen.aio``), passed in as the target's resolver.

(The lookup through Modal's own client needs a deployed app and credentials; it is not exercised here.)"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.config import LiteLLMParams, ModelEntry
from core.queue import JobSpec, SamplingParams
from workers.backends import Classifies, Completions, Generates
from workers.backends.modal_classifier import ModalClassifierBackend
from workers.backends.modal_client import ModalTarget, adapter_of, modal_credentials, parse_target
from workers.backends.modal_qgpt import ModalQgptBackend
from workers.backends.registry import Backends


def entry(model: str, **extra: object) -> ModelEntry:
    return ModelEntry(model_name="m", litellm_params=LiteLLMParams(model=model, **extra))


def test_targets() -> None:
    assert parse_target("modal/gatehouse-qgpt/QuantumService.generate") == ("gatehouse-qgpt", "QuantumService",
                                                                          "generate")
    for bad in ("modal/app", "modal/app/Cls", "modal//Cls.m"):
        with pytest.raises(ValueError, match=r"expected modal/<app>/<Class>\.<method>"):
            parse_target(bad)


def test_dev_and_prod_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    assert modal_credentials() is None  # development: the `modal setup` login
    monkeypatch.setenv("MODAL_TOKEN_ID", "ak-1")
    with pytest.raises(ValueError, match="both MODAL_TOKEN_ID and MODAL_TOKEN_SECRET"):
        modal_credentials()
    monkeypatch.setenv("MODAL_TOKEN_SECRET", "as-2")
    assert modal_credentials() == ("ak-1", "as-2")  # production


def test_adapters_and_routing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODAL_TOKEN_ID", raising=False)
    monkeypatch.delenv("MODAL_TOKEN_SECRET", raising=False)
    qgpt = entry("modal/gatehouse-qgpt/QuantumService.generate", environment="prod")
    clf = entry("modal/gatehouse-classifier/ClassifierBatch.classify")
    assert qgpt.backend == clf.backend == "modal"
    b = ModalQgptBackend(qgpt)  # constructing it does not contact Modal
    t = b.target
    assert (t.app, t.cls_name, t.method, t.environment) == ("gatehouse-qgpt", "QuantumService", "generate", "prod")
    assert (adapter_of(qgpt), adapter_of(clf)) == ("qgpt", "classifier")
    assert b.capabilities == {"chat", "completion", "generate"}
    assert ModalClassifierBackend(clf).capabilities == {"classify"}
    with pytest.raises(ValueError, match="adapter must be"):
        adapter_of(entry("modal/a/B.c", adapter="other"))


class Method:
    """One method of the in-process class, with Modal's ``.remote.aio`` / ``.remote_gen.aio`` surface."""

    def __init__(self, fn: Any):
        self.remote = type("Remote", (), {"aio": staticmethod(fn)})
        self.remote_gen = self.remote


class QuantumService:
    """What gpu_apps/modal_apps/qgpt_app.py deploys, answering like the seed: records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []
        self.generate = Method(self._generate)
        self.stream = Method(self._stream)

    async def _generate(self, *args: Any) -> dict[str, Any]:
        self.calls.append(args)
        text = "x" * min(int(args[1]), 5)
        return {"generated_text": text, "tokens_generated": len(text), "quantum_profile": args[2],
                "quantum_diagnostics": {"modifications_applied": 3}, "generation_time": 0.01}

    async def _stream(self, *args: Any) -> AsyncIterator[Any]:
        self.calls.append(args)
        for piece in ("ab", "cd"):
            yield piece
        yield {"tokens_generated": 2, "quantum_diagnostics": {"modifications_applied": 1}}


def job(kind: str, **params: Any) -> JobSpec:
    body = {"messages": [{"role": "user", "content": "hi"}]} if kind == "chat" else {"prompt": "hi", "form": "qgpt"}
    return JobSpec(id="r1", kind=kind, model="q", body=body, stream=False,  # type: ignore[arg-type]
                   deadline=time.time() + 10, params=SamplingParams(**params))


async def test_qgpt_adapter_translates_chat_and_honours_max_completion_tokens() -> None:
    service = QuantumService()

    async def resolve(target: ModalTarget) -> QuantumService:
        return service

    b = ModalQgptBackend(entry("modal/gatehouse-qgpt/QuantumService.generate"), resolver=resolve)
    # the gateway resolves max_completion_tokens into params.max_tokens: every path uses it
    out = await b.complete(job("chat", max_tokens=3, temperature=0.2, quantum_profile="chaos"))
    assert service.calls[-1] == ("hi", 3, "chaos", 0.2, 1.0, None)
    assert out["choices"][0]["message"]["content"] == "xxx" and out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 0, "completion_tokens": 3, "total_tokens": 3}
    assert out["quantum_diagnostics"] == {"modifications_applied": 3}

    chunks = [c async for c in b.stream(job("chat", max_tokens=7))]
    assert service.calls[-1][1] == 7
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "ab"}
    assert chunks[1]["choices"][0]["delta"] == {"content": "cd"}
    assert chunks[2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[3]["usage"]["completion_tokens"] == 2 and chunks[3]["choices"] == []

    body = await b.generate(job("generate", max_tokens=4, quantum_profile="light"))
    assert service.calls[-1][1:3] == (4, "light") and body["generated_text"] == "xxxx"


async def test_classifier_adapter_calls_once_per_prompt() -> None:
    seen: list[str] = []

    from gpu_apps.classifier.heads import OUTPUT_KEYS

    async def classify(prompt: str) -> dict[str, Any]:
        seen.append(prompt)
        return {key: f"{key}:{prompt}" for key in OUTPUT_KEYS}  # the per-prompt dict the Modal class returns

    class ClassifierBatch:
        def __init__(self) -> None:
            self.classify = Method(classify)

    async def resolve(target: ModalTarget) -> ClassifierBatch:
        return ClassifierBatch()

    b = ModalClassifierBackend(entry("modal/gatehouse-classifier/ClassifierBatch.classify"), resolver=resolve)
    spec = JobSpec(id="r2", kind="classify", model="c", body={"prompts": ["a", "bb"]}, stream=False,
                   deadline=time.time() + 10)
    out = await b.classify(spec)
    assert sorted(seen) == ["a", "bb"]
    assert out["task_type_1"] == ["task_type_1:a", "task_type_1:bb"]  # one column per field, prompt order kept
    assert set(out) == set(OUTPUT_KEYS)


def test_capabilities_are_declared_by_the_classes_a_backend_implements() -> None:
    from core.config import Config

    backends = Backends(Config(model_list=[
        {"model_name": "clf", "litellm_params": {"model": "modal/app/ClassifierBatch.classify"}},
        {"model_name": "q", "litellm_params": {"model": "modal/app/QuantumService.generate"}}]))
    backends.build()
    clf, q = backends.get("clf"), backends.get("q")
    assert isinstance(clf, Classifies) and not isinstance(clf, Completions | Generates)
    assert isinstance(q, Completions) and isinstance(q, Generates) and not isinstance(q, Classifies)
