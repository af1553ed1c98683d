"""The gateway's seam to metrics: what the HTTP layer, the error handler and the relay report.

Called from three places only — the request-context middleware (every response), the error handler (every
refusal) and the generation pipeline's after-response accounting — so handlers stay free of metrics code.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from observability import metrics
from observability.calls import OPERATION_NAMES

OTHER_ROUTE = "other"
ROUTE_KEY = "gatehouse.route"  # set by routes that are not FastAPI routes (gateway/routes/__init__.py)


def route_of(scope: Mapping[str, Any]) -> str:
    """The matched route's path template (bounded: the app's route table), else "other" (404s, probes of
    random paths) so a scanner cannot mint label values."""
    path = scope.get(ROUTE_KEY) or getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else OTHER_ROUTE


_http_children: dict[tuple[str, int], tuple[Any, Any]] = {}  # (route, status) -> label children: ~2 µs less


def observe_http(route: str, status: int, seconds: float) -> None:
    children = _http_children.get((route, status))
    if children is None:
        children = _http_children[(route, status)] = (metrics.HTTP_REQUESTS.labels(route, str(status)),
                                                       metrics.HTTP_DURATION.labels(route))
    children[0].inc()
    children[1].observe(seconds)


def count_refusal(err: Any) -> None:
    """A GatewayError on its way to the client: count the refusals operators watch."""
    status = err.status
    if status == 401:
        metrics.AUTH_FAILURES.labels(getattr(err, "reason", "invalid")).inc()
    elif status == 403:
        metrics.AUTH_FAILURES.labels("forbidden").inc()
    elif status == 429:
        metrics.RATE_LIMITED.labels(getattr(err, "scope_kind", "unknown"), getattr(err, "limit", "unknown")).inc()
    elif status == 503 and err.code == "queue_full":
        metrics.QUEUE_REJECTIONS.labels("interactive").inc()


def observe_stream(kind: str, model: str, started: float, first_token: float | None, finished: float,
                   completion_tokens: int) -> None:
    """Server-side GenAI latency of a streamed answer as the client received it (``time.perf_counter`` times):
    time to first token from the request's arrival, and time per output token after the first."""
    if first_token is None:
        return
    op = OPERATION_NAMES.get(kind, kind)
    metrics.TIME_TO_FIRST_TOKEN.labels(op, model).observe(first_token - started)
    if completion_tokens > 1:
        metrics.TIME_PER_OUTPUT_TOKEN.labels(op, model).observe((finished - first_token) / (completion_tokens - 1))


def count_usage(model: str, prompt_tokens: int, completion_tokens: int, cost: float, tenant: str) -> None:
    if prompt_tokens:
        metrics.TOKENS.labels(model, "input", tenant).inc(prompt_tokens)
    if completion_tokens:
        metrics.TOKENS.labels(model, "output", tenant).inc(completion_tokens)
    if cost:
        metrics.SPEND.labels(model, tenant).inc(cost)
