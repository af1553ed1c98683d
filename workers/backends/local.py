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
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core.config import ModelEntry
from core.queue import JobSpec
from gpu_apps.qgpt.profiles import DEFAULT_PROFILE, profile_names
from workers.backends.base import Backend, BackendError

DEFAULT_MAX_TOKENS = 256
_END = object()


def prompt_of(job: JobSpec) -> str:
    body = job.body
    if job.kind == "chat":
        parts = []
        for m in body.get("messages") or []:
            c = m.get("content")
            if isinstance(c, list):
                c = "".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
            if c:
                parts.append(str(c))
        return "\n".join(parts)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        if prompt and all(isinstance(x, str) for x in prompt):
            return str(prompt[0])
        raise BackendError(400, "This model takes text prompts, not token ids.", param="prompt",
                           code="invalid_value")
    return str(prompt)


def stops_of(body: dict[str, Any]) -> list[str]:
    stop = body.get("stop")
    if stop is None:
        return []
    return [stop] if isinstance(stop, str) else [s for s in stop if s]


class LocalBackend(Backend):
    name = "local"

    def __init__(self, entry: ModelEntry, engine: Any, executor: ThreadPoolExecutor, pool: Any = None):
        self.model_name = entry.model_name
        self.engine = engine
        self.executor = executor
        self.pool = pool  # gpu_apps.qgpt.entropy.EntropyPool
        self.quantum_default = DEFAULT_PROFILE if entry.litellm_params.extra_params().get("quantum") else None
        self.block_size = int(engine.info().get("block_size", 256))

    def _quantum(self, body: dict[str, Any], temperature: float, top_p: float) -> Any:
        """A quantum logits processor for this request, or None (no profile asked for, or greedy decoding)."""
        name = body.get("quantum_profile") or self.quantum_default
        if name is None or temperature == 0 or self.pool is None:
            return None
        from gpu_apps.qgpt.processor import QuantumLogitsProcessor  # imports transformers: only when used

        try:
            return QuantumLogitsProcessor(self.pool, str(name), temperature=temperature, top_p=top_p)
        except ValueError as e:
            raise BackendError(400, f"Unknown quantum_profile {name!r}: use one of {', '.join(profile_names())}.",
                               param="quantum_profile", code="invalid_value") from e

    def _params(self, job: JobSpec) -> dict[str, Any]:
        b = job.body
        max_tokens = b.get("max_completion_tokens") or b.get("max_tokens") or DEFAULT_MAX_TOKENS
        params = {"max_new_tokens": int(max_tokens),
                  "temperature": float(b["temperature"]) if b.get("temperature") is not None else 1.0,
                  "top_p": float(b["top_p"]) if b.get("top_p") is not None else 1.0,
                  "seed": b.get("seed"), "stop": stops_of(b)}
        params["logits_processor"] = self._quantum(b, params["temperature"], params["top_p"])
        return params

    def _run(self, prompt: str, params: dict[str, Any], cancel: threading.Event,
             emit: Any) -> str:
        """Thread body: pump the engine's generator, emitting pieces; returns the finish reason."""
        gen: Iterator[str] = self.engine.generate(prompt, **params)
        try:
            while True:
                if cancel.is_set():
                    return "cancelled"
                piece = next(gen)
                emit(piece)
        except StopIteration as stop:
            return str(stop.value or "length")
        finally:
            gen.close()

    async def _pieces(self, prompt: str, params: dict[str, Any]) -> AsyncIterator[str | tuple[str]]:
        """Stream pieces from a worker thread; the final item is ``(finish_reason,)``."""
        loop = asyncio.get_running_loop()
        q: asyncio.Queue[Any] = asyncio.Queue()
        cancel = threading.Event()

        def emit(piece: str) -> None:
            loop.call_soon_threadsafe(q.put_nowait, piece)

        fut = loop.run_in_executor(self.executor, self._run, prompt, params, cancel, emit)
        fut.add_done_callback(lambda _: loop.call_soon_threadsafe(q.put_nowait, _END))
        try:
            while True:
                item = await q.get()
                if item is _END:
                    break
                yield item
            yield (await fut,)
        finally:
            cancel.set()

    def _seeds(self, job: JobSpec) -> list[int | None]:
        n = int(job.body.get("n") or 1)
        seed = job.body.get("seed")
        # torch seeds are 64-bit: wrap rather than fail on a seed near the top of OpenAI's int64 range
        return [None if seed is None else (int(seed) + i) % 2**63 for i in range(n)]

    async def complete(self, job: JobSpec) -> dict[str, Any]:
        prompt = prompt_of(job)
        params = self._params(job)
        choices, completion_tokens = [], 0
        for i, seed in enumerate(self._seeds(job)):
            text, finish = [], "length"
            async for item in self._pieces(prompt, {**params, "seed": seed}):
                if isinstance(item, tuple):
                    finish = item[0]
                else:
                    text.append(item)
            out = "".join(text)
            completion_tokens += len(out)
            if job.kind == "chat":
                choices.append({"index": i, "message": {"role": "assistant", "content": out, "refusal": None},
                                "logprobs": None, "finish_reason": finish})
            else:
                choices.append({"index": i, "text": out, "logprobs": None, "finish_reason": finish})
        return {"choices": choices, "usage": _usage(len(prompt), completion_tokens), **_diagnostics(params)}

    async def stream(self, job: JobSpec) -> AsyncIterator[dict[str, Any]]:
        prompt = prompt_of(job)
        params = self._params(job)
        chat = job.kind == "chat"
        completion_tokens = 0
        for i, seed in enumerate(self._seeds(job)):
            if chat:
                yield {"choices": [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                                    "finish_reason": None}]}
            async for item in self._pieces(prompt, {**params, "seed": seed}):
                if isinstance(item, tuple):
                    end: dict[str, Any] = {"index": i, "logprobs": None, "finish_reason": item[0]}
                    end.update({"delta": {}} if chat else {"text": ""})
                    yield {"choices": [end]}
                else:
                    completion_tokens += len(item)
                    piece = {"delta": {"content": item}} if chat else {"text": item}
                    yield {"choices": [{"index": i, **piece, "logprobs": None, "finish_reason": None}]}
        yield {"choices": [], "usage": _usage(len(prompt), completion_tokens), **_diagnostics(params)}

    async def generate(self, job: JobSpec) -> dict[str, Any]:
        """The seeds' ``/generate``, in the format of the seed that sent it (``body["form"]``):
        char-GPT ``{"seed", "temperature", "num_chars"}`` -> ``{"generated_text", "seed", ...}``;
        qgpt ``{"prompt", "max_tokens", "temperature", "quantum_profile"}`` -> ``{"generated_text",
        "tokens_generated", "quantum_profile", "quantum_diagnostics", "generation_time", "model", "temperature"}``."""
        b = job.body
        quantum = b.get("form") == "qgpt"
        params = {"max_new_tokens": int(b["max_tokens"] if quantum else b["num_chars"]),
                  "temperature": float(b["temperature"]), "top_p": float(b.get("top_p", 1.0)),
                  "seed": b.get("seed"), "stop": []}
        params["logits_processor"] = self._quantum(b, params["temperature"], params["top_p"]) if quantum else None
        started = time.perf_counter()
        text = []
        async for item in self._pieces(str(b.get("prompt") or ""), params):
            if not isinstance(item, tuple):
                text.append(item)
        elapsed = time.perf_counter() - started
        out = "".join(text)
        if quantum:
            diagnostics = _diagnostics(params).get("quantum_diagnostics") or {
                "total_entropy_consumed": 0, "modifications_applied": 0, "average_logit_diff": 0.0,
                "entropy_source": "none"}
            return {"generated_text": out, "tokens_generated": len(out), "quantum_profile": b["quantum_profile"],
                    "quantum_diagnostics": diagnostics, "generation_time": round(elapsed, 4),
                    "model": self.model_name, "temperature": params["temperature"]}
        return {"generated_text": out, "seed": params["seed"], "temperature": params["temperature"],
                "num_chars": params["max_new_tokens"], "model": self.model_name,
                "generation_time_ms": round(elapsed * 1000, 2)}


def _diagnostics(params: dict[str, Any]) -> dict[str, Any]:
    proc = params.get("logits_processor")
    return {"quantum_diagnostics": {**proc.diagnostics(), "quantum_profile": proc.profile.name}} if proc else {}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
