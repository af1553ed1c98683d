"""What one model call looked like, as the worker saw it: the record tracing and metrics are made from.

The gateway puts a ``TraceContext`` on the job (who asked, from which route, in which session); the worker fills
a ``CallRecord`` while it runs the job and hands it to ``observability`` when the job ends. Nothing in here
does I/O: it is data.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Literal

Status = Literal["ok", "error", "timeout", "cancelled"]

# error codes Gatehouse itself gives (workers and backends); an upstream's own codes are not label values
OWN_ERROR_CODES = frozenset({"timeout", "cancelled", "internal_error", "upstream_unreachable", "upstream_auth",
                             "model_not_found", "unsupported_endpoint", "invalid_value", "upstream_stream_interrupted",
                             "upstream_stream_incomplete", "unsupported_parameter", "unsupported_value"})

# the gen_ai.operation.name of each job kind (OpenTelemetry GenAI conventions; ours where none fits)
OPERATION_NAMES = {"chat": "chat", "completion": "text_completion", "generate": "generate_content",
                   "classify": "classify", "embed": "embeddings"}


@dataclass(slots=True)
class TraceContext:
    """Set by the gateway, carried in the job. Small on purpose: it rides in every job payload."""

    route: str  # e.g. "POST /v1/chat/completions": the trace's name
    received_at: float  # unix seconds, when the gateway accepted the request
    user_id: str | None = None  # the principal (key id, JWT subject, "master")
    session_id: str | None = None  # from the x-session-id header
    key_alias: str | None = None
    team_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"route": self.route, "received_at": self.received_at, "user_id": self.user_id,
                "session_id": self.session_id, "key_alias": self.key_alias, "team_id": self.team_id}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TraceContext | None:
        """Tolerant: fields it does not know (a newer gateway's) are ignored; an unusable context is None, so
        a job is never lost over its trace."""
        try:
            return cls(**{k: v for k, v in d.items() if k in cls.__slots__})
        except (TypeError, AttributeError):
            return None


@dataclass(slots=True)
class CallRecord:
    """One job, start to end, on the worker."""

    request_id: str
    kind: str  # chat | completion | generate | classify
    model: str
    backend: str  # backend kind: openai, litellm, local, modal, classifier, ...
    lane: str
    worker_id: str
    enqueued_at: float  # unix seconds
    started_at: float  # when this worker took the job
    context: TraceContext | None = None
    input: Any = None  # messages / prompt / texts, as the client sent them
    model_parameters: dict[str, Any] = field(default_factory=dict)
    output: Any = None  # the answer's text (chat, completion), or the result object (generate, classify)
    first_token_at: float | None = None  # streamed calls: when the backend's first content arrived
    finished_at: float = 0.0
    usage: dict[str, int] | None = None  # {"input": n, "output": n, "total": n}
    cost: dict[str, float] | None = None  # {"input": usd, "output": usd, "total": usd}
    retries: int = 0
    cold_start: bool = False
    status: Status = "ok"
    error: dict[str, Any] | None = None  # {"status", "type", "code", "message"}
    metadata: dict[str, Any] = field(default_factory=dict)  # quantum_diagnostics, classifier scores, ...

    @property
    def operation(self) -> str:
        return OPERATION_NAMES.get(self.kind, self.kind)

    @property
    def queue_wait_s(self) -> float:
        return max(0.0, self.started_at - self.enqueued_at)

    @property
    def error_type(self) -> str:
        """The ``error.type`` label: empty on success; Gatehouse's own error codes as they are; anything an
        upstream chose (its codes are free text) as the HTTP status it came with, so the label stays bounded."""
        if self.status == "ok":
            return ""
        err = self.error or {}
        if err.get("code") in OWN_ERROR_CODES:
            return str(err["code"])
        return str(err["status"]) if err.get("status") else self.status


def has_token(choices: list[dict[str, Any]]) -> bool:
    """Whether a streamed chunk carries generated output (not just the opening ``role`` delta): the moment
    that counts as the first token."""
    for c in choices:
        d = c.get("delta")
        if c.get("text") or (d and (d.get("content") or d.get("tool_calls") or d.get("reasoning_content"))):
            return True
    return False


# the record of the job running in this asyncio task (set by the worker), for backends to annotate
current: ContextVar[CallRecord | None] = ContextVar("gatehouse_call", default=None)


def note_retry(backend: str, reason: str) -> None:
    """A backend is about to retry: count it on the job's record and in the retry metric."""
    from observability import metrics

    metrics.BACKEND_RETRIES.labels(backend, reason).inc()
    call = current.get()
    if call is not None:
        call.retries += 1


def note_cold_start(model: str) -> None:
    """A backend found its Modal app scaling from zero (counted once per job)."""
    from observability import metrics

    call = current.get()
    if call is not None:
        if call.cold_start:
            return
        call.cold_start = True
    metrics.COLD_STARTS.labels(model).inc()
