"""The qgpt Modal class (``QuantumService``) behind Completions and Generates.

``generate(prompt, max_new_tokens, quantum_profile, temperature, top_p, seed)`` returns the seed's /generate
body; chat and completions requests are translated to it and back (``quantum_diagnostics`` kept). Streams
come from the class's generator method (``stream_method``, default ``stream``) through ``.remote_gen``: text
pieces, then the whole /generate body as a dict.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from core import capabilities
from core import schemas as s
from core.config import ModelEntry
from core.queue import JobSpec
from workers.backends.base import Answer, BackendError, Chunk, Completions, Generates
from workers.backends.modal_client import ModalTarget, Resolver, modal_resolver
from workers.backends.prompt import prompt_of

DEFAULT_MAX_TOKENS = 512
DEFAULT_PROFILE = "medium"
DEFAULT_TEMPERATURE = 0.8


class ModalQgptBackend(Completions, Generates):
    kind = "modal"
    features = capabilities.MODAL_QGPT  # one choice, no stop sequences, no tools, formats, logprobs (core.capabilities)

    def __init__(self, entry: ModelEntry, resolver: Resolver = modal_resolver):
        self.target = ModalTarget(entry, resolver)
        self.stream_method = str(entry.litellm_params.extra_params().get("stream_method") or "stream")

    @staticmethod
    def _args(job: JobSpec, prompt: str) -> tuple[Any, ...]:
        """The class method's positional arguments, from the job's typed sampling parameters."""
        p = job.params
        return (prompt, p.max_tokens or DEFAULT_MAX_TOKENS, p.quantum_profile or DEFAULT_PROFILE,
                p.temperature if p.temperature is not None else DEFAULT_TEMPERATURE,
                p.top_p if p.top_p is not None else 1.0, p.seed)

    async def complete(self, job: JobSpec) -> Answer:
        started = time.perf_counter()
        args = self._args(job, prompt_of(job))
        out = await self.target.call(job, *args)
        generated = int(out.get("tokens_generated", 0))
        finish = "length" if generated >= args[1] else "stop"
        choice = s.answer_choice(0, str(out.get("generated_text", "")), finish, chat=job.kind == "chat")
        return s.answer([choice], s.usage(0, generated), quantum_diagnostics=out.get("quantum_diagnostics"),
                        generation_time=out.get("generation_time", round(time.perf_counter() - started, 4)))

    async def stream(self, job: JobSpec) -> AsyncIterator[Chunk]:
        chat = job.kind == "chat"
        args = self._args(job, prompt_of(job))
        final: dict[str, Any] = {}
        opened = not chat
        with self.target.errors():
            method = await self.target.method_of(self.stream_method)
            async for item in method.remote_gen.aio(*args):
                if isinstance(item, dict):
                    final = item
                    continue
                yield s.chunk([s.delta_choice(0, str(item), chat=chat, role=not opened)])
                opened = True
        if not opened:
            yield s.chunk([s.delta_choice(0, "", chat=chat, role=True)])
        generated = int(final.get("tokens_generated", 0))
        yield s.chunk([s.finish_choice(0, "length" if generated >= args[1] else "stop", chat=chat)])
        yield s.usage_chunk(s.usage(0, generated), quantum_diagnostics=final.get("quantum_diagnostics"))

    async def generate(self, job: JobSpec) -> Answer:
        if job.body.get("form") != "qgpt":
            raise BackendError(400, f"Model `{job.model}` takes the qgpt /generate form (prompt, max_tokens, "
                               "temperature, quantum_profile), not the char-GPT one.", code="unsupported_endpoint")
        return dict(await self.target.call(job, *self._args(job, str(job.body.get("prompt") or ""))))
