"""Prometheus metrics: the catalogue, and how a process exposes it.

Names follow the OpenTelemetry GenAI semantic conventions mapped to Prometheus (dots become underscores, the
unit becomes a suffix) with the conventions' bucket boundaries; everything that is Gatehouse's own is
``gatehouse_*``. Who records what:

* **gateway** (the server its clients see): HTTP traffic, auth failures, rate-limit rejections, spend, and
  ``gen_ai_server_*`` — time to first token and time per output token as a client experiences them, queue
  wait included;
* **worker** (the client of the model backends): ``gen_ai_client_*`` around each backend call, queue wait,
  job outcomes, backend errors and retries, Modal cold starts, QRNG pool level and fallbacks, tracing drops;
* **scrape time**: queue depth, in-flight jobs and live workers are read from Redis when ``/metrics`` is
  scraped (``observability.queue_state``), so they are right however many processes there are.

Processes on one host share values through prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``,
set by ``gatehouse up`` before anything imports this module): the gateway's ``/metrics`` then shows every
worker too. Workers on other hosts serve their own port (``metrics_port``). See docs/adr/0009-metrics.md.

Labels are bounded: model names come from the config, routes from the app's route table, error types and
reasons from fixed vocabularies. No request id, key or user ever becomes a label; a tenant label (team or key
alias) appears only when ``metrics_tenant_labels`` is on.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import REGISTRY, Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
if os.environ.get(MULTIPROC_ENV):  # a set but missing directory would fail every metric write
    os.makedirs(os.environ[MULTIPROC_ENV], exist_ok=True)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# bucket boundaries from the OpenTelemetry GenAI semantic conventions
OPERATION_DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96,
                              81.92)
TOKEN_USAGE_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# ours: the gateway's own latency is sub-millisecond to minutes
HTTP_DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                         30.0, 60.0, 120.0)
QUEUE_WAIT_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                      5.0, 10.0, 30.0, 60.0)

GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_request_model")

# ── GenAI conventions ─────────────────────────────────────────────────────────────────────────────────
OPERATION_DURATION = Histogram(
    "gen_ai_client_operation_duration_seconds", "GenAI operation duration: one backend call made by a worker.",
    [*GENAI_LABELS, "error_type"], buckets=OPERATION_DURATION_BUCKETS)
TOKEN_USAGE = Histogram(
    "gen_ai_client_token_usage", "Number of input and output tokens used per backend call.",
    [*GENAI_LABELS, "gen_ai_token_type"], buckets=TOKEN_USAGE_BUCKETS)
TIME_TO_FIRST_TOKEN = Histogram(
    "gen_ai_server_time_to_first_token_seconds",
    "Time from the gateway receiving a streamed request to sending its first token (queue wait included).",
    list(GENAI_LABELS), buckets=TTFT_BUCKETS)
TIME_PER_OUTPUT_TOKEN = Histogram(
    "gen_ai_server_time_per_output_token_seconds",
    "Time per output token after the first, for successful streamed responses, as the gateway sent them.",
    list(GENAI_LABELS), buckets=TPOT_BUCKETS)

# ── gateway ───────────────────────────────────────────────────────────────────────────────────────────
HTTP_REQUESTS = Counter("gatehouse_http_requests", "HTTP requests answered, by route and status code.",
                        ["route", "code"])
HTTP_DURATION = Histogram("gatehouse_http_request_duration_seconds",
                          "Time from request to the end of the response (whole stream included).", ["route"],
                          buckets=HTTP_DURATION_BUCKETS)
AUTH_FAILURES = Counter("gatehouse_auth_failures", "Requests refused by authentication, by reason.", ["reason"])
RATE_LIMITED = Counter("gatehouse_rate_limit_rejections",
                       "Requests refused with 429, by the scope (key/team/user) and the limit that refused them.",
                       ["scope", "limit"])
QUEUE_REJECTIONS = Counter("gatehouse_queue_rejections", "Requests refused because the queue was full.", ["lane"])
SPEND = Counter("gatehouse_spend_usd", "Spend in USD by model (and tenant, when tenant labels are on).",
                ["model", "tenant"])
TOKENS = Counter("gatehouse_tokens", "Tokens billed by model, type (input/output) and tenant.",
                 ["model", "gen_ai_token_type", "tenant"])

# ── workers ───────────────────────────────────────────────────────────────────────────────────────────
QUEUE_WAIT = Histogram("gatehouse_queue_wait_seconds", "Time a job waited in its lane before a worker took it.",
                       ["lane"], buckets=QUEUE_WAIT_BUCKETS)
JOBS = Counter("gatehouse_jobs", "Jobs finished by workers, by lane and outcome (ok/error/timeout/cancelled).",
               ["lane", "outcome"])
BACKEND_ERRORS = Counter("gatehouse_backend_errors", "Backend calls that failed, by backend kind and error type.",
                         ["backend", "error_type"])
BACKEND_RETRIES = Counter("gatehouse_backend_retries", "Backend call attempts that were retried, by reason.",
                          ["backend", "reason"])
COLD_STARTS = Counter("gatehouse_modal_cold_starts",
                      "Requests that found a Modal app scaling from zero (503 or timeout, then retried).", ["model"])
CLASSIFIED = Counter("gatehouse_classifier_prompts", "Prompts classified, by model.", ["model"])
QRNG_POOL = Gauge("gatehouse_qrng_pool_bytes", "Quantum entropy bytes ready in the workers' pools.",
                  multiprocess_mode="livesum")
QRNG_FALLBACK_ACTIVE = Gauge("gatehouse_qrng_fallback_active",
                             "1 while a worker samples with OS entropy because the QRNG is unavailable.",
                             multiprocess_mode="livemax")
QRNG_FALLBACKS = Counter("gatehouse_qrng_fallback_bytes", "Entropy bytes drawn from the OS fallback, not the QRNG.")
TRACING_DROPPED = Counter("gatehouse_tracing_dropped_spans",
                          "Trace spans dropped instead of exported (queue full or Langfuse unreachable).", ["reason"])
BATCH_LINES = Counter("gatehouse_batch_lines", "Batch lines finished, by status (completed/failed/cancelled/expired).",
                      ["status"])
TRACING_EXPORTED = Counter("gatehouse_tracing_exported_spans", "Trace spans accepted by Langfuse.")

AUTH_REASONS = ("missing", "invalid", "expired", "jwt_invalid", "forbidden")
JOB_OUTCOMES = ("ok", "error", "timeout", "cancelled")
RATE_LIMIT_SCOPES = ("key", "jwt", "team")
RATE_LIMITS = ("rpm", "tpm", "parallel", "budget")
BATCH_LINE_STATUSES = ("completed", "failed", "cancelled", "expired")
RETRY_REASONS = ("server_error", "rate_limited", "unreachable", "cold_start")


def prime(lanes: Iterable[str], models: Iterable[str]) -> None:
    """Create the label sets dashboards and alerts expect, so a quiet system reports zeros rather than nothing:
    a rate over a series that appears with its first increment misses that increment, and a rate over an
    absent series is no data, not 0. Only bounded sets (config models, fixed vocabularies)."""
    for reason in AUTH_REASONS:
        AUTH_FAILURES.labels(reason)
    for scope in RATE_LIMIT_SCOPES:
        for limit in RATE_LIMITS:
            RATE_LIMITED.labels(scope, limit)
    for reason in RETRY_REASONS:
        BACKEND_RETRIES.labels("openai", reason)
    for lane in lanes:
        QUEUE_REJECTIONS.labels(lane)
        for outcome in JOB_OUTCOMES:
            JOBS.labels(lane, outcome)
    for model in models:
        COLD_STARTS.labels(model)
        SPEND.labels(model, "")
        for token_type in ("input", "output"):
            TOKENS.labels(model, token_type, "")
    for status in BATCH_LINE_STATUSES:
        BATCH_LINES.labels(status)
    for reason in ("queue_full", "export_failed"):
        TRACING_DROPPED.labels(reason)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def render(extra: Iterable[Collector] = ()) -> bytes:
    """The exposition for ``/metrics``: this process (or, in multiprocess mode, every process sharing the
    directory) plus ``extra`` collectors such as the Redis queue state."""
    registry = CollectorRegistry(auto_describe=False)
    if multiprocess_dir():
        _collect_all_processes(registry)
    else:
        registry.register(_Forward(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return generate_latest(registry)


def serve(port: int, host: str = "0.0.0.0") -> None:
    """Serve ``/metrics`` on a port of its own (a worker on a host without a gateway), from a thread."""
    registry = REGISTRY
    if multiprocess_dir():
        registry = CollectorRegistry(auto_describe=False)
        _collect_all_processes(registry)
    start_http_server(port, addr=host, registry=registry)


def mark_process_dead(pid: int, directory: str | None = None) -> None:
    """Drop a finished process's live gauges (its counters and histograms stay: they are totals)."""
    directory = directory or multiprocess_dir()
    if directory:
        # prometheus_client's multiprocess module has no annotations
        multiprocess.mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]


def _collect_all_processes(registry: CollectorRegistry) -> None:
    """Registers every process's values (the shared multiprocess directory) in ``registry``."""
    # prometheus_client's multiprocess module has no annotations
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]


class _Forward(Collector):
    """Exposes the default registry inside another registry (single-process mode)."""

    def __init__(self, source: CollectorRegistry):
        self.source = source

    def collect(self) -> Iterable[Metric]:
        return self.source.collect()
