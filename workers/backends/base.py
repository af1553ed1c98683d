"""The Backend interface. A backend is bound to one deployment (one ``model_list`` entry) and declares what it can
do by the capability classes it implements — nothing is faked with methods that only raise:

    Backend (aclose; ``capabilities``: the job kinds it serves)
    ├── Completions   chat + completion: ``complete`` (a whole answer) and ``stream`` (chunks)
    ├── Generates     the seeds' ``/generate``: ``generate``
    └── Classifies    the classifier seed's ``/classify``: ``classify``

Answers and chunks are OpenAI-shaped dicts built with ``core.schemas`` (``{"choices": [...], "usage": {...}}``;
a stream ends with ``{"choices": [], "usage": {...}}``). Failures are raised as :class:`BackendError`, which
knows its HTTP status, whether a retry may help, and the output event that reports it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from core.queue import JobKind, JobSpec, error_event

Answer = dict[str, Any]  # a whole OpenAI-shaped answer, or a seed endpoint's body
Chunk = dict[str, Any]  # one OpenAI-shaped stream chunk (no id/model/created: the relay adds them)


class BackendError(Exception):
    """A failure the client should see as an OpenAI-style error."""

    def __init__(self, status: int, message: str, *, type_: str | None = None, code: str | None = None,
                 retryable: bool = False, param: str | None = None, retry_after: float | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or ("invalid_request_error" if 400 <= status < 500 else "upstream_error")
        self.code = code
        self.retryable = retryable
        self.param = param
        self.retry_after = retry_after  # seconds the upstream asked us to wait (retry-after), if it said

    def event(self) -> bytes:
        """This error as the output event the gateway turns into the client's error."""
        return error_event(self.status, self.message, self.type, self.code, self.param)

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "type": self.type, "code": self.code, "message": self.message,
                "param": self.param}


class WholeAnswer(dict[str, Any]):
    """Yielded by ``stream`` when the upstream answered in one piece although streaming was asked for;
    the gateway replays it as chunks."""


class Backend:
    """What every backend has: a kind (a metric label), its capabilities, and a way to release resources."""

    kind: ClassVar[str] = "backend"
    capabilities: ClassVar[frozenset[JobKind]] = frozenset()
    provides: ClassVar[frozenset[JobKind]] = frozenset()  # set by each capability class

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.capabilities = frozenset().union(*(getattr(base, "provides", frozenset()) for base in cls.__mro__))

    async def aclose(self) -> None:
        """Release connections, threads or models."""


class Completions(Backend, ABC):
    """Chat completions and legacy completions (``job.kind`` says which shape)."""

    provides = frozenset({"chat", "completion"})

    @abstractmethod
    async def complete(self, job: JobSpec) -> Answer:
        """The whole answer for a non-streaming request."""

    @abstractmethod
    def stream(self, job: JobSpec) -> AsyncIterator[Chunk]:
        """OpenAI-shaped chunks for a streaming request; usage in a last chunk with no choices."""


class Generates(Backend, ABC):
    """The seeds' ``POST /generate`` (char-GPT and qgpt forms, ``job.body["form"]``)."""

    provides = frozenset({"generate"})

    @abstractmethod
    async def generate(self, job: JobSpec) -> Answer:
        """The body of the seed's answer."""


class Classifies(Backend, ABC):
    """The classifier seed's ``POST /classify``."""

    provides = frozenset({"classify"})

    @abstractmethod
    async def classify(self, job: JobSpec) -> Answer:
        """One list per field, one element per prompt."""


def unsupported(job: JobSpec, backend: Backend) -> BackendError:
    """The error for a job kind the model's backend does not serve (e.g. /classify on a chat model)."""
    serves = ", ".join(sorted(backend.capabilities)) or "nothing"
    hint = {"classify": " is not a classifier", "generate": " does not support /generate"}.get(
        job.kind, f" does not serve {job.kind} requests (it serves: {serves})")
    if job.kind in ("chat", "completion") and backend.capabilities == {"classify"}:
        hint = " is a classifier: use POST /v1/classify"
    return BackendError(400, f"Model `{job.model}`{hint}.", code="unsupported_endpoint", param="model")
