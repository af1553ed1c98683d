"""In-process CPU backend: runs gpu_apps' model code (the char-level GPT) in a worker thread.

Generation is synchronous torch code, so it runs on a small thread pool; pieces cross back to the event
loop through an asyncio queue, and a cancelled request stops its thread at the next step. Characters are
this model's tokens, so ``usage`` counts characters.

Chat requests are turned into a prompt by joining the messages' text, one per line; the model continues it.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from gateway.config import ModelEntry
from workers.backends.base import Backend, BackendError
from workers.queue import JobSpec

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

    def __init__(self, entry: ModelEntry, engine: Any, executor: ThreadPoolExecutor):
        self.model_name = entry.model_name
        self.engine = engine
        self.executor = executor
        self.block_size = int(engine.info().get("block_size", 256))

    def _params(self, job: JobSpec) -> dict[str, Any]:
        b = job.body
        max_tokens = b.get("max_completion_tokens") or b.get("max_tokens") or DEFAULT_MAX_TOKENS
        return {"max_new_tokens": int(max_tokens),
                "temperature": float(b["temperature"]) if b.get("temperature") is not None else 1.0,
                "top_p": float(b["top_p"]) if b.get("top_p") is not None else 1.0,
                "seed": b.get("seed"), "stop": stops_of(b)}

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
        return {"choices": choices, "usage": _usage(len(prompt), completion_tokens)}

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
        yield {"choices": [], "usage": _usage(len(prompt), completion_tokens)}

    async def generate(self, job: JobSpec) -> dict[str, Any]:
        """The seed's ``/generate``: ``{"seed", "temperature", "num_chars"}`` -> ``{"generated_text", ...}``."""
        b = job.body
        params = {"max_new_tokens": int(b["num_chars"]), "temperature": float(b["temperature"]),
                  "top_p": float(b.get("top_p", 1.0)), "seed": int(b["seed"]), "stop": []}
        started = time.perf_counter()
        text = []
        async for item in self._pieces(str(b.get("prompt") or ""), params):
            if not isinstance(item, tuple):
                text.append(item)
        elapsed = time.perf_counter() - started
        return {"generated_text": "".join(text), "seed": params["seed"], "temperature": params["temperature"],
                "num_chars": params["max_new_tokens"], "model": self.model_name,
                "generation_time_ms": round(elapsed * 1000, 2)}


def _usage(prompt: int, completion: int) -> dict[str, int]:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
