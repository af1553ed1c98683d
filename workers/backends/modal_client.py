"""Calling a deployed Modal class's methods: target names, credentials, the lazy lookup and the one place where
Modal's exceptions become BackendErrors. The adapters (modal_qgpt.py, modal_classifier.py) build on it.

A ``model_list`` entry ``modal/<app>/<Class>.<method>`` (e.g. ``modal/gatehouse-qgpt/QuantumService.generate``)
names the method; web-served apps (vLLM, the seeds' HTTP surfaces) are plain HTTP upstreams instead
(openai_compat.py, classifier.py).

Credentials (the seed's dev/prod split): ``MODAL_TOKEN_ID`` + ``MODAL_TOKEN_SECRET`` from the environment in
production; without them, the developer's ``modal setup`` login. Setting only one of the two is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

from core.config import ModelEntry
from core.queue import JobSpec
from workers.backends.base import BackendError

Instance = Any  # an instance of the remote class (modal.Cls()); its methods have .remote.aio / .remote_gen.aio
Resolver = Callable[["ModalTarget"], Awaitable[Instance]]


def modal_credentials() -> tuple[str, str] | None:
    """Production token (id, secret) from the environment, or None for the local ``modal setup`` login."""
    token_id, token_secret = os.environ.get("MODAL_TOKEN_ID"), os.environ.get("MODAL_TOKEN_SECRET")
    if bool(token_id) != bool(token_secret):
        raise ValueError("set both MODAL_TOKEN_ID and MODAL_TOKEN_SECRET (production), or neither (to use the "
                         "`modal setup` login)")
    return (token_id, token_secret) if token_id and token_secret else None


def parse_target(model: str) -> tuple[str, str, str]:
    """``modal/<app>/<Class>.<method>`` → (app, class, method)."""
    _, _, rest = model.partition("/")
    app, _, member = rest.partition("/")
    cls, _, method = member.partition(".")
    if not (app and cls and method):
        raise ValueError(f"{model!r}: expected modal/<app>/<Class>.<method>")
    return app, cls, method


def adapter_of(entry: ModelEntry) -> str:
    """Which adapter serves the entry: ``adapter`` in litellm_params, else from the method's name."""
    _, _, method = parse_target(entry.litellm_params.model)
    adapter = str(entry.litellm_params.extra_params().get("adapter") or
                  ("classifier" if method == "classify" else "qgpt"))
    if adapter not in ("qgpt", "classifier"):
        raise ValueError(f"model_list entry {entry.model_name!r}: adapter must be qgpt or classifier")
    return adapter


async def modal_resolver(target: ModalTarget) -> Instance:
    """The real lookup: ``modal.Cls.from_name`` with production credentials or the developer's login."""
    import modal

    creds = target.credentials
    client = await modal.Client.from_credentials.aio(*creds) if creds else None
    cls = modal.Cls.from_name(target.app, target.cls_name, environment_name=target.environment, client=client)
    return cls()


class ModalTarget:
    """One deployed class, looked up once and lazily (a worker starts without contacting Modal)."""

    def __init__(self, entry: ModelEntry, resolver: Resolver = modal_resolver):
        self.app, self.cls_name, self.method = parse_target(entry.litellm_params.model)
        extras = entry.litellm_params.extra_params()
        self.environment: str | None = extras.get("environment")
        self.credentials = modal_credentials()
        self._resolver = resolver
        self._instance: Instance = None
        self._lock = asyncio.Lock()

    async def method_of(self, name: str | None = None) -> Any:
        async with self._lock:
            if self._instance is None:
                self._instance = await self._resolver(self)
        return getattr(self._instance, name or self.method)

    async def call(self, job: JobSpec, *args: Any) -> Any:
        """``method.remote.aio(*args)`` bounded by the job's deadline, Modal's errors mapped."""
        with self.errors():
            method = await self.method_of()
            return await asyncio.wait_for(method.remote.aio(*args), max(0.05, job.remaining()))

    @contextlib.contextmanager
    def errors(self) -> Iterator[None]:
        """Modal's exceptions as BackendErrors, at this one boundary."""
        import modal.exception as mx

        try:
            yield
        except TimeoutError as e:
            raise BackendError(504, "The Modal app did not answer in time.", type_="timeout_error",
                               code="timeout") from e
        except mx.NotFoundError as e:
            raise BackendError(502, f"Modal app {self.app}/{self.cls_name} is not deployed.",
                               code="upstream_unreachable") from e
        except mx.AuthError as e:
            raise BackendError(502, "Modal refused the credentials.", code="upstream_auth") from e
        except mx.Error as e:
            raise BackendError(502, f"The Modal call failed ({type(e).__name__}).") from e
