"""What a call costs: usage × the model's price per token, in USD.

Prices come from the model's ``litellm_params`` or ``model_info`` (``input_cost_per_token`` /
``output_cost_per_token``, LiteLLM's names); a model without them costs nothing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from core.config import ModelEntry


class Price(NamedTuple):
    """USD per prompt token and per completion token."""

    input: float = 0.0
    output: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return prompt_tokens * self.input + completion_tokens * self.output


FREE = Price()


def price_of(entry: ModelEntry) -> Price:
    """The configured price of a model; ``FREE`` when none is configured."""
    sources: list[dict[str, Any]] = [entry.litellm_params.extra_params(), entry.model_info]

    def pick(name: str) -> float:
        for src in sources:
            if src.get(name) is not None:
                return float(src[name])
        return 0.0

    return Price(pick("input_cost_per_token"), pick("output_cost_per_token"))


def price_list(models: Mapping[str, ModelEntry]) -> dict[str, Price]:
    """Model name -> price, for every configured model."""
    return {name: price_of(entry) for name, entry in models.items()}
