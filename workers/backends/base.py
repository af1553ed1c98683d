"""The Backend interface. A backend is bound to one deployment (one ``model_list`` entry) and declares what it can
do by the capability classes it implements — nothing is faked with methods that only raise:

    Backend (aclose; ``capabilities``: the job kinds it serves)
    ├── Completions   chat + completion: ``complete`` (a whole answer) and ``stream`` (chunks)
    ├── Generates     the seeds' ``/generate``: ``generate``
    ├── Classifies    the classifier seed's ``/classify``: ``classify``
    └── Embeds        ``/v1/embeddings``: ``embed``

Answers and chunks are OpenAI-shaped dicts built with ``core.schemas`` (``{"choices": [...], "usage": {...}}``;
a stream ends with ``{"choices": [], "usage": {...}}``). Failures are raised as :class:`BackendError`, which
knows its HTTP status, whether a retry may help, and the output event that reports it.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any, ClassVar

from core import capabilities
from core.capabilities import Features
from core.queue import JobKind, JobSpec, error_event

log = logging.getLogger("gatehouse.worker")
Answer = dict[str, Any]  # a whole OpenAI-shaped answer, or a seed endpoint's body
Chunk = dict[str, Any]  # one OpenAI-shaped stream chunk (no id/model/created: the relay adds them)


class BackendError(Exception):
    """A failure the client should see as an OpenAI-style error."""

    def __init__(self, status: int, message: str, *, type_: str | None = None, code: str | None = None,
                 retryable: bool = False, param: str | None = None, retry_after: float | None = None,
                 upstream_status: int | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or ("invalid_request_error" if 400 <= status < 500 else "upstream_error")
        self.code = code
        self.retryable = retryable
        self.param = param
        self.retry_after = retry_after  # seconds the upstream asked us to wait (retry-after), if it said
        self.upstream_status = upstream_status  # the HTTP status the upstream answered, when it answered one
        self.headers = headers or {}  # relayed to the client with the error (an upstream 429's retry-after)

    def event(self) -> bytes:
        """This error as the output event the gateway turns into the client's error."""
        return error_event(self.status, self.message, self.type, self.code, self.param, self.headers)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"status": self.status, "type": self.type, "code": self.code, "message": self.message,
                             "param": self.param}
        if self.upstream_status is not None:
            d["upstream_status"] = self.upstream_status
        return d

    def describe(self) -> str:
        """One log line's worth: what the client gets and, when it differs, what the upstream answered."""
        said = f"HTTP {self.upstream_status}"
        upstream = f" (upstream answered {said})" if self.upstream_status is not None and said not in self.message \
            else ""
        return f"{self.status} {self.code or self.type}{upstream}: {self.message}"


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
    """Chat completions and legacy completions (``job.kind`` says which shape). ``features``: what of a request
    the backend honours (core.capabilities; everything unless it says less); ``fitted`` refuses the rest, or
    drops it when ``drop_params`` (the request's, else this instance's: litellm_settings.drop_params)."""

    provides = frozenset({"chat", "completion"})
    features: ClassVar[Features] = capabilities.EVERYTHING
    drop_params: bool = False

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


class Embeds(Backend, ABC):
    """OpenAI's ``POST /v1/embeddings`` (core.embeddings)."""

    provides = frozenset({"embed"})

    @abstractmethod
    async def embed(self, job: JobSpec) -> Answer:
        """``{"data": [{"object": "embedding", "index", "embedding"}, ...], "usage": {...}}``, each vector in the
        request's ``encoding_format``."""


def fitted(job: JobSpec, backend: Completions) -> JobSpec:
    """``job`` as ``backend`` can run it (ADR 0019): unchanged when it asks for nothing the backend lacks; else a
    400 naming the parameter, or, with drop_params, the job without those parameters. The gateway checked the
    model's own deployments already: this catches a fallback group's backend and Batch API lines."""
    if job.kind not in ("chat", "completion"):
        return job
    refused = capabilities.unsupported(job.kind, job.body, backend.features)
    if not refused:
        return job
    drop = job.body.get("drop_params")
    if not (drop if isinstance(drop, bool) else backend.drop_params):
        first = refused[0]
        raise BackendError(400, first.message(job.model), code=first.code, param=first.param)
    gone = {a.feature for a in refused}
    params = dataclasses.replace(job.params, n=1 if "n" in gone else job.params.n,  # the typed ones too
                                 stop=() if "stop" in gone else job.params.stop)
    log.info("%s (%s backend) does not support %s: dropped (drop_params)", job.model, backend.kind,
             ", ".join(a.param for a in refused))
    return dataclasses.replace(job, body=capabilities.dropped(job.body, refused), params=params)


def unsupported(job: JobSpec, backend: Backend) -> BackendError:
    """The error for a job kind the model's backend does not serve (e.g. /classify on a chat model)."""
    serves = ", ".join(sorted(backend.capabilities)) or "nothing"
    hint = {"classify": " is not a classifier", "generate": " does not support /generate",
            "embed": " is not an embedding model"}.get(
        job.kind, f" does not serve {job.kind} requests (it serves: {serves})")
    if job.kind in ("chat", "completion") and backend.capabilities == {"classify"}:
        hint = " is a classifier: use POST /v1/classify"
    if job.kind != "embed" and backend.capabilities == {"embed"}:
        hint = " is an embedding model: use POST /v1/embeddings"
    return BackendError(400, f"Model `{job.model}`{hint}.", code="unsupported_endpoint", param="model")
