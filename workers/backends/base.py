"""The Backend interface: every model a worker can run sits behind these three calls.

A backend is bound to one deployment (one ``model_list`` entry). ``complete`` returns a whole OpenAI-shaped
answer (``{"choices": [...], "usage": {...}}``); ``stream`` yields OpenAI-shaped chunks (``{"choices": [...]}``,
and a final ``{"choices": [], "usage": {...}}``). ``job.kind`` says which endpoint shape: "chat" or "completion".
Failures are raised as :class:`BackendError`, which knows its HTTP status and whether a retry may help.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from typing import Any

from core.queue import JobSpec


class BackendError(Exception):
    def __init__(self, status: int, message: str, *, type_: str | None = None, code: str | None = None,
                 retryable: bool = False, param: str | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_ or ("invalid_request_error" if 400 <= status < 500 else "upstream_error")
        self.code = code
        self.retryable = retryable
        self.param = param


class WholeAnswer(dict[str, Any]):
    """Yielded by ``stream`` when the upstream answered in one piece although streaming was asked for;
    the gateway replays it as chunks."""


class Backend(ABC):
    name: str = "backend"

    @abstractmethod
    async def complete(self, job: JobSpec) -> dict[str, Any]:
        """The whole answer for a non-streaming request."""

    @abstractmethod
    def stream(self, job: JobSpec) -> AsyncIterator[dict[str, Any]]:
        """OpenAI-shaped chunks for a streaming request; usage in a last chunk with no choices."""

    async def generate(self, job: JobSpec) -> dict[str, Any]:
        """The char-GPT seed's /generate; only backends that run such a model implement it."""
        raise BackendError(400, f"Model `{job.model}` does not support /generate.", code="unsupported_endpoint")

    async def classify(self, job: JobSpec) -> dict[str, Any]:
        """The classifier seed's /classify; only classifier backends implement it."""
        raise BackendError(400, f"Model `{job.model}` is not a classifier.", code="unsupported_endpoint")

    async def aclose(self) -> None:  # noqa: B027 - optional hook
        """Release connections, threads or models."""
