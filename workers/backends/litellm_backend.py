"""Providers that need protocol translation (Anthropic, Bedrock, Vertex, Azure, ...) through LiteLLM.

LiteLLM is imported lazily: it costs seconds and ~150 MB to import, and a worker that serves only
OpenAI-compatible or local models never pays that.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator
from typing import Any

from core import embeddings
from core import schemas as s
from core.config import ModelEntry
from core.queue import JobSpec
from workers.backends.base import Answer, BackendError, Chunk, Completions, Embeds

_DROP = {"model", "stream", "stream_options"}
# a deployment's request defaults that only chat/completions take (kept out of embeddings calls)
_CHAT_ONLY = {"max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "stop", "presence_penalty",
              "frequency_penalty", "logit_bias", "logprobs", "top_logprobs", "seed", "tools", "tool_choice",
              "response_format", "stream", "stream_options"}
# what of a message (or a delta) the client gets, as from an OpenAI-compatible upstream: reasoning included,
# LiteLLM's own bookkeeping (provider_specific_fields, ...) not
_MESSAGE_KEYS = ("role", "content", "tool_calls", "function_call", "refusal", "reasoning_content", "annotations",
                 "audio")
_USAGE_DETAILS = ("prompt_tokens_details", "completion_tokens_details")
_RELAYED_HEADERS = ("retry-after", "retry-after-ms")  # a provider's 4xx headers its client gets too (a 429's)


class LiteLLMBackend(Completions, Embeds):
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
                choice = s.message_choice(index, msg, finish)
            else:
                choice = s.answer_choice(index, c.get("text", ""), finish, chat=False)
            choice["logprobs"] = c.get("logprobs")
            choices.append(choice)
        return s.answer(choices, _usage(out.get("usage") or {}), **_fingerprint(out))

    async def stream(self, job: JobSpec) -> AsyncIterator[Chunk]:
        litellm = _import()
        fn = litellm.acompletion if job.kind == "chat" else litellm.atext_completion
        started = False
        try:
            resp = await fn(**self._kwargs(job, stream=True))
            async for chunk in resp:
                d = chunk.model_dump(exclude_none=True)
                choices = [c for raw in d.get("choices") or () if (c := _chunk_choice(raw, job.kind)) is not None]
                if choices:
                    started = True
                    yield s.chunk(choices, **_fingerprint(d))
                if d.get("usage"):
                    yield s.usage_chunk(_usage(d["usage"]))
        except BackendError:
            raise
        except Exception as e:
            err = _map_error(e)
            if started and err.status >= 500 and err.code != "timeout":  # as the native client (ADR 0019)
                err = BackendError(502, f"The provider's stream was cut off midway ({type(e).__name__}).",
                                   code="upstream_stream_interrupted")
            raise err from e

    async def embed(self, job: JobSpec) -> Answer:
        """``litellm.aembedding`` (Cohere, Bedrock, Vertex, Mistral, ...): the body's fields but
        ``encoding_format`` (providers differ; the vectors are asked for as floats and put in the client's format
        here), and the deployment's parameters but its chat defaults."""
        litellm = _import()
        params = {k: v for k, v in self.params.items() if k not in _CHAT_ONLY}
        kw = {**params, **{k: v for k, v in job.body.items() if k not in ("model", "encoding_format")}}
        kw.update(model=self.model, timeout=max(0.05, min(self.timeout_s, job.remaining())))
        try:
            resp = await litellm.aembedding(**kw)
        except Exception as e:
            raise _map_error(e) from e
        out = resp.model_dump(exclude_none=True)
        data = [embeddings.embedding_item(int(d.get("index", i)), d.get("embedding") or [])
                for i, d in enumerate(out.get("data") or ())]
        try:
            data = embeddings.conform(data, job.body.get("encoding_format"))
        except ValueError as e:
            raise BackendError(502, f"The provider's embeddings are not usable: {e}.") from e
        return {"data": data, "usage": embeddings.usage_of(out.get("usage"))}


def _chunk_choice(c: dict[str, Any], kind: str) -> dict[str, Any] | None:
    """An OpenAI-shaped chunk choice, or None for LiteLLM's empty filler deltas."""
    finish = c.get("finish_reason")
    if kind == "chat":
        delta = {k: v for k, v in (c.get("delta") or {}).items() if k in _MESSAGE_KEYS}
        if not delta and finish is None:
            return None
        return {"index": c.get("index", 0), "delta": delta, "logprobs": c.get("logprobs"), "finish_reason": finish}
    text = c.get("text", "")
    if not text and finish is None:
        return None
    choice = s.delta_choice(c.get("index", 0), text, chat=False, finish_reason=finish)
    choice["logprobs"] = c.get("logprobs")
    return choice


def _usage(u: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's usage: the counts, and the token details when the provider gave them (cached, reasoning...)."""
    out: dict[str, Any] = s.usage(int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0))
    for key in _USAGE_DETAILS:
        details = u.get(key)
        if isinstance(details, dict) and details:
            out[key] = details
    return out


def _fingerprint(d: dict[str, Any]) -> dict[str, Any]:
    fp = d.get("system_fingerprint")
    return {"system_fingerprint": fp} if fp else {}


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
    name = type(e).__name__
    if "Timeout" in name:
        return BackendError(504, "The upstream model did not answer in time.", type_="timeout_error", code="timeout")
    if "ContextWindowExceeded" in name:
        return BackendError(400, message, code="context_length_exceeded", param="messages")
    if "UnsupportedParams" in name:  # LiteLLM's own per-provider check (drop_params turns it into dropping)
        found = re.search(r"parameters: \[['\"]?([A-Za-z0-9_.]+)", message)
        return BackendError(400, message, code="unsupported_parameter", param=found.group(1) if found else None)
    headers = getattr(e, "litellm_response_headers", None)  # set when the provider answered (not when unreachable)
    upstream = status if getattr(e, "status_code", None) is not None and headers is not None else None
    if status >= 500:  # as the native client: 502 upstream_error, the provider's status kept for the log
        return BackendError(502, message, type_="upstream_error", code="upstream_error",
                            retryable=status in (500, 502, 503), upstream_status=upstream)
    relayed = {h: str(v) for h in _RELAYED_HEADERS if headers is not None and (v := headers.get(h))}
    return BackendError(status, message, retryable=status == 429, upstream_status=upstream, headers=relayed)
