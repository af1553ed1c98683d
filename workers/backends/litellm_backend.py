"""Providers that need protocol translation (Anthropic, Bedrock, Vertex, Azure, ...) through LiteLLM.

LiteLLM is imported lazily: it costs seconds and ~150 MB to import, and a worker that serves only
OpenAI-compatible or local models never pays that.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from typing import Any

from core import schemas as s
from core.config import ModelEntry
from core.queue import JobSpec
from workers.backends.base import Answer, BackendError, Chunk, Completions

_DROP = {"model", "stream", "stream_options"}
_MESSAGE_KEYS = ("role", "content", "tool_calls", "function_call", "refusal")


class LiteLLMBackend(Completions):
    kind = "litellm"

    def __init__(self, entry: ModelEntry, *, retries: int = 2, timeout_s: float = 600.0, drop_params: bool = False):
        lp = entry.litellm_params
        self.model = lp.model
        self.params: dict[str, Any] = dict(lp.extra_params())
        if lp.api_base:
            self.params["api_base"] = lp.api_base
        if lp.api_key is not None:
            self.params["api_key"] = lp.api_key.get_secret_value()
        self.params["num_retries"] = lp.max_retries if lp.max_retries is not None else retries
        if drop_params:  # litellm_settings.drop_params: unless the deployment says otherwise
            self.params.setdefault("drop_params", True)
        self.timeout_s = lp.timeout or timeout_s

    def _kwargs(self, job: JobSpec, stream: bool) -> dict[str, Any]:
        kw = {**self.params, **{k: v for k, v in job.body.items() if k not in _DROP}}
        kw.update(model=self.model, timeout=max(0.05, min(self.timeout_s, job.remaining())))
        if stream:
            kw.update(stream=True, stream_options={"include_usage": True})
        return kw

    async def complete(self, job: JobSpec) -> Answer:
        litellm = _import()
        fn = litellm.acompletion if job.kind == "chat" else litellm.atext_completion
        try:
            resp = await fn(**self._kwargs(job, stream=False))
        except Exception as e:
            raise _map_error(e) from e
        out = resp.model_dump(exclude_none=True)
        choices = []
        for c in out.get("choices") or ():
            index, finish = c.get("index", 0), c.get("finish_reason")
            if job.kind == "chat":
                msg = {k: v for k, v in (c.get("message") or {}).items() if k in _MESSAGE_KEYS}
                choices.append(s.message_choice(index, msg, finish))
            else:
                choices.append(s.answer_choice(index, c.get("text", ""), finish, chat=False))
        return s.answer(choices, _usage(out.get("usage") or {}))

    async def stream(self, job: JobSpec) -> AsyncIterator[Chunk]:
        litellm = _import()
        fn = litellm.acompletion if job.kind == "chat" else litellm.atext_completion
        try:
            resp = await fn(**self._kwargs(job, stream=True))
            async for chunk in resp:
                d = chunk.model_dump(exclude_none=True)
                choices = [c for raw in d.get("choices") or () if (c := _chunk_choice(raw, job.kind)) is not None]
                if choices:
                    yield s.chunk(choices)
                if d.get("usage"):
                    yield s.usage_chunk(_usage(d["usage"]))
        except BackendError:
            raise
        except Exception as e:
            raise _map_error(e) from e


def _chunk_choice(c: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """An OpenAI-shaped chunk choice, or None for LiteLLM's empty filler deltas."""
    finish = c.get("finish_reason")
    if kind == "chat":
        delta = {k: v for k, v in (c.get("delta") or {}).items() if k in _MESSAGE_KEYS}
        if not delta and finish is None:
            return None
        return {"index": c.get("index", 0), "delta": delta, "logprobs": None, "finish_reason": finish}
    text = c.get("text", "")
    if not text and finish is None:
        return None
    return s.delta_choice(c.get("index", 0), text, chat=False, finish_reason=finish)


def _usage(u: dict[str, Any]) -> s.Usage:
    return s.usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))


def _import() -> Any:
    # the bundled price map; otherwise LiteLLM fetches one from the internet at import
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    litellm.suppress_debug_info = True
    litellm.telemetry = False
    return litellm


def _map_error(e: Exception) -> BackendError:
    status = getattr(e, "status_code", None) or 502
    try:
        status = int(status)
    except (TypeError, ValueError):
        status = 502
    message = str(getattr(e, "message", None) or e) or "upstream error"
    if "Timeout" in type(e).__name__:
        return BackendError(504, "The upstream model did not answer in time.", type_="timeout_error", code="timeout")
    if "ContextWindowExceeded" in type(e).__name__:
        return BackendError(400, message, code="context_length_exceeded", param="messages")
    return BackendError(status if status < 500 else 502, message, retryable=status in (429, 500, 502, 503))
