"""In-process CPU backend: runs gpu_apps' model code (the char-level GPT) in a worker thread.

Generation is synchronous torch code, so it runs on a small thread pool; pieces cross back to the event
loop through an asyncio queue, and a cancelled request stops its thread at the next step. Characters are
this model's tokens, so ``usage`` counts characters.

Chat requests are turned into a prompt by joining the messages' text, one per line; the model continues it.

Quantum sampling (the qgpt seed): a request with ``quantum_profile`` (or any request to an entry with
``quantum: true``) samples through gpu_apps.qgpt's QuantumLogitsProcessor, fed by the worker's entropy pool
(QRNG when ``qrng_api_key`` is configured, else the OS CSPRNG, labelled as such); the answer carries
``quantum_diagnostics``.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from core import capabilities
from core import schemas as s
from core.config import ModelEntry
from core.queue import JobSpec, SamplingParams
from gpu_apps.qgpt.profiles import DEFAULT_PROFILE, profile_names
from workers.backends.base import Answer, BackendError, Chunk, Completions, Generates
from workers.backends.prompt import prompt_of

if TYPE_CHECKING:
    from gpu_apps.chargpt import CharGPTEngine
    from gpu_apps.qgpt.entropy import EntropyPool
    from gpu_apps.qgpt.processor import QuantumLogitsProcessor

DEFAULT_MAX_TOKENS = 256
_END = object()


@dataclass(frozen=True, slots=True)
class Run:
    """One generation's arguments, resolved from the job's sampling parameters."""

    max_new_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()
    processor: QuantumLogitsProcessor | None = None

    def kwargs(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "seed": self.seed, "stop": list(self.stop),
                "logits_processor": self.processor}

    def diagnostics(self) -> dict[str, Any]:
        """``{"quantum_diagnostics": ...}`` for a quantum-sampled run, else nothing."""
        proc = self.processor
        return {"quantum_diagnostics": {**proc.diagnostics(), "quantum_profile": proc.profile.name}} if proc else {}


class LocalBackend(Completions, Generates):
    kind = "local"
    features = capabilities.LOCAL  # several choices and stop sequences; no tools, formats, logprobs (core.capabilities)

    def __init__(self, entry: ModelEntry, engine: CharGPTEngine, executor: ThreadPoolExecutor,
                 pool: EntropyPool | None = None):
        self.model_name = entry.model_name
        self.engine = engine
        self.executor = executor
        self.pool = pool
        self.quantum_default = DEFAULT_PROFILE if entry.litellm_params.extra_params().get("quantum") else None

    def _quantum(self, profile: str | None, temperature: float, top_p: float) -> QuantumLogitsProcessor | None:
        """A quantum logits processor for this request, or None (no profile asked for, or greedy decoding)."""
        name = profile or self.quantum_default
        if name is None or temperature == 0 or self.pool is None:
            return None
        from gpu_apps.qgpt.processor import QuantumLogitsProcessor  # imports transformers: only when used

        try:
            return QuantumLogitsProcessor(self.pool, str(name), temperature=temperature, top_p=top_p)
        except ValueError as e:
            raise BackendError(400, f"Unknown quantum_profile {name!r}: use one of {', '.join(profile_names())}.",
                               param="quantum_profile", code="invalid_value") from e

    def _run_of(self, p: SamplingParams, *, quantum: bool = True) -> Run:
        temperature = p.temperature if p.temperature is not None else 1.0
        top_p = p.top_p if p.top_p is not None else 1.0
        processor = self._quantum(p.quantum_profile, temperature, top_p) if quantum else None
        return Run(p.max_tokens or DEFAULT_MAX_TOKENS, temperature, top_p, p.seed, p.stop, processor)

    def _pump(self, prompt: str, run: Run, cancel: threading.Event, emit: Callable[[str], None]) -> str:
        """Thread body: pump the engine's generator, emitting pieces; returns the finish reason."""
        gen: Generator[str, None, str] = self.engine.generate(prompt, run.max_new_tokens, **run.kwargs())
        try:
            while True:
                if cancel.is_set():
                    return "cancelled"
                emit(next(gen))
        except StopIteration as stop:
            return str(stop.value or "length")
        finally:
            gen.close()

    async def _pieces(self, prompt: str, run: Run) -> AsyncIterator[str | tuple[str]]:
        """Stream pieces from a worker thread; the final item is ``(finish_reason,)``."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def emit(piece: str) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, piece)

        fut = loop.run_in_executor(self.executor, self._pump, prompt, run, cancel, emit)
        fut.add_done_callback(lambda _: loop.call_soon_threadsafe(queue.put_nowait, _END))
        try:
            while (item := await queue.get()) is not _END:
                yield item
            yield (await fut,)
        finally:
            cancel.set()

    @staticmethod
    def _seeded(run: Run, n: int) -> list[Run]:
        # torch seeds are 64-bit: wrap rather than fail on a seed near the top of OpenAI's int64 range
        return [run if run.seed is None else replace(run, seed=(run.seed + i) % 2**63) for i in range(n)]

    async def complete(self, job: JobSpec) -> Answer:
        prompt, run = prompt_of(job), self._run_of(job.params)
        chat = job.kind == "chat"
        choices, completion_tokens = [], 0
        for i, r in enumerate(self._seeded(run, job.params.n)):
            text, finish = [], "length"
            async for item in self._pieces(prompt, r):
                if isinstance(item, tuple):
                    finish = item[0]
                else:
                    text.append(item)
            out = "".join(text)
            completion_tokens += len(out)
            choices.append(s.answer_choice(i, out, finish, chat=chat))
        return s.answer(choices, s.usage(len(prompt), completion_tokens), **run.diagnostics())

    async def stream(self, job: JobSpec) -> AsyncIterator[Chunk]:
        prompt, run = prompt_of(job), self._run_of(job.params)
        chat = job.kind == "chat"
        completion_tokens = 0
        for i, r in enumerate(self._seeded(run, job.params.n)):
            opened = not chat  # a chat choice's first chunk carries the assistant role
            async for item in self._pieces(prompt, r):
                if isinstance(item, tuple):
                    if not opened:  # nothing generated: the role still opens the message
                        yield s.chunk([s.delta_choice(i, "", chat=chat, role=True)])
                    yield s.chunk([s.finish_choice(i, item[0], chat=chat)])
                else:
                    completion_tokens += len(item)
                    yield s.chunk([s.delta_choice(i, item, chat=chat, role=not opened)])
                    opened = True
        yield s.usage_chunk(s.usage(len(prompt), completion_tokens), **run.diagnostics())

    async def generate(self, job: JobSpec) -> Answer:
        """The seeds' ``/generate``, in the format of the seed that sent it (``body["form"]``):
        char-GPT ``{"seed", "temperature", "num_chars"}`` -> ``{"generated_text", "seed", ...}``;
        qgpt ``{"prompt", "max_tokens", "temperature", "quantum_profile"}`` -> ``{"generated_text",
        "tokens_generated", "quantum_profile", "quantum_diagnostics", "generation_time", "model", "temperature"}``."""
        quantum = job.body.get("form") == "qgpt"
        run = self._run_of(job.params, quantum=quantum)
        started = time.perf_counter()
        text = [item async for item in self._pieces(str(job.body.get("prompt") or ""), run)
                if not isinstance(item, tuple)]
        elapsed = time.perf_counter() - started
        out = "".join(text)
        if quantum:
            diagnostics = run.diagnostics().get("quantum_diagnostics") or {
                "total_entropy_consumed": 0, "modifications_applied": 0, "average_logit_diff": 0.0,
                "entropy_source": "none"}
            return {"generated_text": out, "tokens_generated": len(out), "quantum_profile": job.params.quantum_profile,
                    "quantum_diagnostics": diagnostics, "generation_time": round(elapsed, 4),
                    "model": self.model_name, "temperature": run.temperature}
        return {"generated_text": out, "seed": run.seed, "temperature": run.temperature,
                "num_chars": run.max_new_tokens, "model": self.model_name,
                "generation_time_ms": round(elapsed * 1000, 2)}
