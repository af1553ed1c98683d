"""core.pricing: a model's price per token from its config, and what a call costs."""

from __future__ import annotations

from typing import Any

import pytest

from core.config import LiteLLMParams, ModelEntry
from core.pricing import FREE, Price, price_list, price_of


def entry(name: str = "m", model_info: dict[str, Any] | None = None, **params: Any) -> ModelEntry:
    return ModelEntry(model_name=name, litellm_params=LiteLLMParams(model="openai/m", **params),
                      model_info=model_info or {})


def test_price_from_litellm_params() -> None:
    assert price_of(entry(input_cost_per_token=0.001, output_cost_per_token=0.002)) == Price(0.001, 0.002)


def test_price_from_model_info() -> None:
    info = {"input_cost_per_token": 3e-6, "output_cost_per_token": "1.5e-5", "max_tokens": 4096}
    assert price_of(entry(model_info=info)) == Price(3e-6, 1.5e-5)  # strings (YAML) are read as numbers


def test_litellm_params_beat_model_info_field_by_field() -> None:
    e = entry(model_info={"input_cost_per_token": 9.0, "output_cost_per_token": 8.0}, input_cost_per_token=0.5)
    assert price_of(e) == Price(0.5, 8.0)
    explicit_none = entry(model_info={"input_cost_per_token": 9.0}, input_cost_per_token=None)
    assert price_of(explicit_none) == Price(9.0, 0.0)  # None is "not set": the next source is read
    assert price_of(entry(input_cost_per_token=0)) == Price(0.0, 0.0)  # an explicit 0 is a price


def test_no_price_is_free() -> None:
    assert price_of(entry()) == FREE == Price(0.0, 0.0)
    assert FREE.cost(1_000_000, 1_000_000) == 0.0


def test_cost() -> None:
    price = Price(input=0.001, output=0.002)
    assert price.cost(7, 6) == pytest.approx(0.019)
    assert price.cost(0, 0) == 0.0
    assert Price(output=1e-6).cost(1_000, 2_000) == pytest.approx(0.002)


def test_price_list() -> None:
    models = {"a": entry("a", input_cost_per_token=1e-6), "b": entry("b")}
    assert price_list(models) == {"a": Price(1e-6, 0.0), "b": FREE}
    assert price_list({}) == {}
