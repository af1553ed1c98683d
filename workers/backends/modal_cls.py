"""Modal class methods behind the Backend interface (the qgpt and classifier apps' in-cluster entry points).

A ``model_list`` entry ``modal/<app>/<Class>.<method>`` (e.g. ``modal/gatehouse-qgpt/QuantumService.generate``)
calls that method with ``.remote.aio``; web-served apps (vLLM, the seeds' HTTP surfaces) are plain HTTP
upstreams instead (openai_compat.py, classifier.py). Two adapters, picked by ``adapter`` in ``litellm_params``
(default: from the method name):

- ``qgpt``: ``generate(prompt, max_new_tokens, quantum_profile, temperature, top_p, seed)`` → the seed's
  /generate body; chat and completions requests are translated to it and back (``quantum_diagnostics`` kept);
- ``classifier``: ``classify(prompt)`` (``@modal.batched`` on the app side, so one call per prompt here).

Credentials (the seed's dev/prod split): ``MODAL_TOKEN_ID`` + ``MODAL_TOKEN_SECRET`` from the environment in
production; without them, the developer's ``modal setup`` login. Setting only one of the two is an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from core.config import ModelEntry
from core.queue import JobSpec
from workers.backends.base import Backend, BackendError, WholeAnswer
from workers.backends.local import prompt_of


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


class ModalClsBackend(Backend):
    name = "modal"

    def __init__(self, entry: ModelEntry):
        extras = entry.litellm_params.extra_params()
        self.app, self.cls_name, self.method = parse_target(entry.litellm_params.model)
        self.adapter = str(extras.get("adapter") or ("classifier" if self.method == "classify" else "qgpt"))
        if self.adapter not in ("qgpt", "classifier"):
            raise ValueError(f"model_list entry {entry.model_name!r}: adapter must be qgpt or classifier")
        self.environment = extras.get("environment")
        self.credentials = modal_credentials()
        self.model_name = entry.model_name
        self.stream_method = str(extras.get("stream_method") or "stream")  # qgpt: a generator method
        self._instance: Any = None
        self._lock = asyncio.Lock()

    async def _target(self, name: str | None = None) -> Any:
        """A method of the remote class (looked up once, lazily: a worker starts without contacting Modal)."""
        async with self._lock:
            if self._instance is None:
                import modal

                client = await modal.Client.from_credentials.aio(*self.credentials) if self.credentials else None
                cls = modal.Cls.from_name(self.app, self.cls_name, environment_name=self.environment, client=client)
                self._instance = cls()
            return getattr(self._instance, name or self.method)

    async def _call(self, job: JobSpec, *args: Any, **kwargs: Any) -> Any:
        with self._modal_errors():
            method = await self._target()
            return await asyncio.wait_for(method.remote.aio(*args, **kwargs), max(0.05, job.remaining()))

    @contextlib.contextmanager
    def _modal_errors(self) -> Iterator[None]:
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

    async def complete(self, job: JobSpec) -> dict[str, Any]:
        if self.adapter != "qgpt":
            raise BackendError(400, f"Model `{job.model}` is a classifier: use POST /v1/classify.",
                               code="unsupported_endpoint")
        b = job.body
        started = time.perf_counter()
        out = await self._call(job, prompt_of(job), int(b.get("max_completion_tokens") or b.get("max_tokens") or 512),
                               str(b.get("quantum_profile") or "medium"), float(b.get("temperature", 0.8)),
                               float(b.get("top_p", 1.0)), b.get("seed"))
        text = str(out.get("generated_text", ""))
        choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": "length"
                                  if int(out.get("tokens_generated", 0)) >= int(b.get("max_tokens") or 512) else "stop"}
        choice.update({"message": {"role": "assistant", "content": text}} if job.kind == "chat" else {"text": text})
        usage = {"prompt_tokens": 0, "completion_tokens": int(out.get("tokens_generated", 0)),
                 "total_tokens": int(out.get("tokens_generated", 0))}
        return {"choices": [choice], "usage": usage, "quantum_diagnostics": out.get("quantum_diagnostics"),
                "generation_time": out.get("generation_time", round(time.perf_counter() - started, 4))}

    async def stream(self, job: JobSpec) -> AsyncIterator[dict[str, Any]]:
        """qgpt: text pieces from the class's generator method (``.remote_gen``) as OpenAI chunks, then
        usage and ``quantum_diagnostics``."""
        if self.adapter != "qgpt":
            yield WholeAnswer(await self.complete(job))
            return
        b, chat = job.body, job.kind == "chat"
        with self._modal_errors():
            method = await self._target(self.stream_method)
            if chat:
                yield {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                    "finish_reason": None}]}
            final: dict[str, Any] = {}
            async for item in method.remote_gen.aio(prompt_of(job), int(b.get("max_tokens") or 512),
                                                    str(b.get("quantum_profile") or "medium"),
                                                    float(b.get("temperature", 0.8)), float(b.get("top_p", 1.0)),
                                                    b.get("seed")):
                if isinstance(item, dict):
                    final = item
                    continue
                piece = {"delta": {"content": item}} if chat else {"text": item}
                yield {"choices": [{"index": 0, **piece, "logprobs": None, "finish_reason": None}]}
        end: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": "stop"}
        end.update({"delta": {}} if chat else {"text": ""})
        yield {"choices": [end]}
        n = int(final.get("tokens_generated", 0))
        yield {"choices": [], "usage": {"prompt_tokens": 0, "completion_tokens": n, "total_tokens": n},
               "quantum_diagnostics": final.get("quantum_diagnostics")}

    async def generate(self, job: JobSpec) -> dict[str, Any]:
        if self.adapter != "qgpt" or job.body.get("form") != "qgpt":
            return await super().generate(job)
        b = job.body
        return dict(await self._call(job, b["prompt"], int(b["max_tokens"]), b["quantum_profile"],
                                     float(b["temperature"]), float(b.get("top_p", 1.0)), b.get("seed")))

    async def classify(self, job: JobSpec) -> dict[str, Any]:
        if self.adapter != "classifier":
            return await super().classify(job)
        from gpu_apps.classifier.postprocess import to_columns

        results = await asyncio.gather(*(self._call(job, p) for p in job.body["prompts"]))
        return to_columns(list(results))  # type: ignore[no-any-return]
