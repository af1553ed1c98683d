"""What each kind of backend can do with a chat or completions request, and the one check of a request against
it (ADR 0019). The gateway makes it before enqueue, on the model's configured deployments, so a model that
cannot do what is asked answers 400 naming the parameter instead of a silent 200; the worker makes it again on
the backend that actually runs the job (a fallback group, a Batch API line).

A *feature* is something a request may ask for that a backend either does or ignores:

    tools                          ``tools`` / ``functions`` (unless ``tool_choice`` is "none")
    response_format.json_object    ``response_format: {"type": "json_object"}``
    response_format.json_schema    ``response_format: {"type": "json_schema", ...}``
    response_format.structural_tag vLLM's ``{"type": "structural_tag"}``
    logprobs                       chat ``logprobs: true``; completions ``logprobs: N``
    n                              ``n`` > 1 (several choices)
    best_of                        completions ``best_of`` > 1
    stop                           ``stop`` sequences
    logit_bias                     a non-empty ``logit_bias``
    presence_penalty / frequency_penalty   a non-zero penalty
    echo / suffix                  completions ``echo: true`` / a non-empty ``suffix``

OpenAI-compatible upstreams (vLLM, OpenAI, ...) get everything: the upstream itself answers for what it does
not support. So does LiteLLM, which checks each provider's parameters itself (and drops them with
``drop_params``). The local char-GPT (chargpt, qgpt) and the qgpt Modal class take none of the above but the
few they implement. With ``drop_params`` (``litellm_settings.drop_params``, or ``drop_params: true`` in the
request, which wins) an unsupported parameter is removed instead of refused, as LiteLLM does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from core.config import Config

Features = frozenset[str]

EVERYTHING: Features = frozenset({
    "tools", "response_format.json_object", "response_format.json_schema", "response_format.structural_tag",
    "logprobs", "n", "best_of", "stop", "logit_bias", "presence_penalty", "frequency_penalty", "echo", "suffix"})
LOCAL: Features = frozenset({"n", "stop"})  # workers/backends/local.py: several choices, stop sequences
MODAL_QGPT: Features = frozenset()  # workers/backends/modal_qgpt.py: one choice, no stop sequences
NOTHING: Features = frozenset()

# by backend kind: ``core.config.ModelEntry.backend`` in the gateway, ``Backend.kind`` in the worker
BY_BACKEND: dict[str, Features] = {"openai": EVERYTHING, "litellm": EVERYTHING, "local": LOCAL,
                                   "modal": MODAL_QGPT, "classifier": NOTHING}
TOOL_KEYS = ("tools", "tool_choice", "parallel_tool_calls", "functions", "function_call")


@dataclass(frozen=True, slots=True)
class Asked:
    """One feature a request asks for: the parameter to name in a refusal, and the body keys dropping removes."""

    feature: str
    param: str
    drop: tuple[str, ...]
    value: str | None = None  # the unsupported value, when the parameter itself is fine (response_format.type)

    def message(self, model: str) -> str:
        hint = " Set `drop_params: true` (in the request or litellm_settings) to drop it instead."
        if self.value is not None:
            return (f"Unsupported value: '{self.param}' does not support {self.value} with the model `{model}`."
                    + hint)
        return f"Unsupported parameter: '{self.param}' is not supported with the model `{model}`." + hint

    @property
    def code(self) -> str:
        return "unsupported_value" if self.value is not None else "unsupported_parameter"


def by_model(config: Config) -> dict[str, Features]:
    """Each configured model name's features (``features_of`` its deployments' backends)."""
    return {name: features_of([d.entry.backend for d in deps]) for name, deps in config.deployments().items()}


def features_of(backends: list[str]) -> Features:
    """What a model group supports: what every one of its deployments' backends does (a request may go to
    any of them). An unknown kind supports everything: the worker's own check still applies."""
    out = EVERYTHING
    for kind in backends:
        out = out & BY_BACKEND.get(kind, EVERYTHING)
    return out


def asked(kind: str, body: dict[str, Any]) -> list[Asked]:
    """The features a chat (``kind`` "chat") or completions request body asks for, in the order a refusal
    names them. The body has been validated (core.schemas), so types are right."""
    if kind == "chat":
        out = _chat_asks(body)
    elif kind == "completion":
        out = _completion_asks(body)
    else:
        return []
    if _number(body.get("n")) > 1:
        out.append(Asked("n", "n", ("n",), "n greater than 1"))
    if body.get("stop"):
        out.append(Asked("stop", "stop", ("stop",)))
    if body.get("logit_bias"):
        out.append(Asked("logit_bias", "logit_bias", ("logit_bias",)))
    for penalty in ("presence_penalty", "frequency_penalty"):
        if _number(body.get(penalty)) != 0:
            out.append(Asked(penalty, penalty, (penalty,)))
    return out


def _chat_asks(body: dict[str, Any]) -> list[Asked]:
    out = []
    tools = body.get("tools") or body.get("functions")
    if tools and body.get("tool_choice") != "none" and body.get("function_call") != "none":
        out.append(Asked("tools", "tools" if body.get("tools") else "functions", TOOL_KEYS))
    fmt = body.get("response_format")
    fmt_type = fmt.get("type") if isinstance(fmt, dict) else None
    if fmt_type in ("json_object", "json_schema", "structural_tag"):
        out.append(Asked(f"response_format.{fmt_type}", "response_format", ("response_format",), f"'{fmt_type}'"))
    if body.get("logprobs") is True:
        out.append(Asked("logprobs", "logprobs", ("logprobs", "top_logprobs")))
    return out


def _completion_asks(body: dict[str, Any]) -> list[Asked]:
    out = []
    if body.get("logprobs") is not None:
        out.append(Asked("logprobs", "logprobs", ("logprobs",)))
    if body.get("echo"):
        out.append(Asked("echo", "echo", ("echo",)))
    if body.get("suffix"):
        out.append(Asked("suffix", "suffix", ("suffix",)))
    if _number(body.get("best_of")) > 1:
        out.append(Asked("best_of", "best_of", ("best_of",), "best_of greater than 1"))
    return out


def unsupported(kind: str, body: dict[str, Any], supports: Features) -> list[Asked]:
    """What the request asks for that ``supports`` lacks (empty: the request can run as it is)."""
    if supports == EVERYTHING:
        return []
    return [a for a in asked(kind, body) if a.feature not in supports]


def dropped(body: dict[str, Any], refused: list[Asked]) -> dict[str, Any]:
    """``body`` without the parameters of ``refused`` (a copy; the body itself is left as it is)."""
    keys = {k for a in refused for k in a.drop}
    return {k: v for k, v in body.items() if k not in keys}


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0
