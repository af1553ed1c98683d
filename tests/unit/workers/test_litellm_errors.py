"""How the LiteLLM backend reports a provider's failures (ADR 0019): as the native client does."""

from __future__ import annotations

from typing import Any

from workers.backends.litellm_backend import _map_error, _usage


def failure(name: str, status: int | None, message: str, headers: dict[str, str] | None = None) -> Exception:
    cls = type(name, (Exception,), {})
    e: Any = cls(message)
    e.status_code, e.message, e.litellm_response_headers = status, message, headers
    return e  # type: ignore[no-any-return]


def test_a_provider_429_keeps_its_retry_after() -> None:
    err = _map_error(failure("RateLimitError", 429, "slow down", {"retry-after": "7", "x-other": "1"}))
    assert (err.status, err.upstream_status, err.headers, err.retryable) == (429, 429, {"retry-after": "7"}, True)


def test_a_provider_5xx_is_a_502_upstream_error_naming_its_status() -> None:
    err = _map_error(failure("InternalServerError", 500, "boom", {}))
    assert (err.status, err.code, err.type, err.upstream_status) == (502, "upstream_error", "upstream_error", 500)
    unreachable = _map_error(failure("InternalServerError", 500, "Connection error.", None))
    assert unreachable.status == 502 and unreachable.upstream_status is None  # nobody answered a 500


def test_litellm_s_own_refusal_names_the_parameter() -> None:
    err = _map_error(failure("UnsupportedParamsError", 400, "custom_openai does not support parameters: "
                             "['reasoning_effort'], for model=agent."))
    assert (err.status, err.code, err.param) == (400, "unsupported_parameter", "reasoning_effort")


def test_usage_keeps_the_token_details() -> None:
    u = _usage({"prompt_tokens": 3, "completion_tokens": 4, "prompt_tokens_details": {"cached_tokens": 2},
                "completion_tokens_details": {"reasoning_tokens": 1}, "completion_tokens_details_x": None})
    assert u == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7,
                 "prompt_tokens_details": {"cached_tokens": 2}, "completion_tokens_details": {"reasoning_tokens": 1}}
