"""The Modal class-method backend, as far as it runs without a Modal account: targets, credentials, wiring.

(The remote call itself needs a deployed app and Modal credentials; it is not exercised here.)"""

from __future__ import annotations

import pytest

from core.config import LiteLLMParams, ModelEntry
from workers.backends.modal_cls import ModalClsBackend, modal_credentials, parse_target


def entry(model: str, **extra: object) -> ModelEntry:
    return ModelEntry(model_name="m", litellm_params=LiteLLMParams(model=model, **extra))


def test_targets() -> None:
    assert parse_target("modal/gatehouse-qgpt/QuantumService.generate") == ("gatehouse-qgpt", "QuantumService",
                                                                          "generate")
    for bad in ("modal/app", "modal/app/Cls", "modal//Cls.m"):
        with pytest.raises(ValueError, match="expected modal/<app>/<Class>.<method>"):
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
    b = ModalClsBackend(qgpt)  # constructing it does not contact Modal
    assert (b.app, b.cls_name, b.method, b.adapter, b.environment) == (
        "gatehouse-qgpt", "QuantumService", "generate", "qgpt", "prod")
    assert ModalClsBackend(clf).adapter == "classifier"
    with pytest.raises(ValueError, match="adapter must be"):
        ModalClsBackend(entry("modal/a/B.c", adapter="other"))
