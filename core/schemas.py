"""OpenAI wire formats: request models (validated with pydantic) and response builders (plain dicts).

Requests are parsed into typed models before any logic runs; unknown fields are kept (``extra="allow"``)
and forwarded to the backend, as OpenAI-compatible servers accept vendor extensions (vLLM's ``top_k``,
qgpt's ``quantum_profile``...). Responses are built as dicts and serialised with orjson: they are on the
hot path and their shape is fixed by OpenAI, so a model class per response would only cost time.
"""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_STOP = 4


class _Wire(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class StreamOptions(_Wire):
    include_usage: bool = False


class ChatMessage(_Wire):
    role: Literal["system", "user", "assistant", "tool", "developer", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None

    def text(self) -> str:
        """The message's text (text parts of multi-part content joined)."""
        if isinstance(self.content, str):
            return self.content
        if not self.content:
            return ""
        return "".join(str(p.get("text", "")) for p in self.content if p.get("type") in ("text", "input_text"))


class SamplingRequest(_Wire):
    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    n: int | None = Field(default=None, ge=1, le=128)
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)
    user: str | None = Field(default=None, max_length=256)
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
        return v

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def token_limit(self) -> int | None:
        return self.max_tokens


class ChatCompletionRequest(SamplingRequest):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingRequest):
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = False
    suffix: str | None = None

    @model_validator(mode="after")
    def _non_empty(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be an empty list")
        return self


class GenerateRequest(_Wire):
    """The char-GPT seed's ``POST /generate {"seed", "temperature", "num_chars"}``."""

    model: str = Field(default="chargpt", min_length=1)
    seed: int = Field(default=42, ge=0, le=2**63 - 1)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    num_chars: int = Field(default=200, ge=1, le=100_000)
    prompt: str = Field(default="", max_length=100_000)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)


class QuantumGenerateRequest(_Wire):
    """The qgpt seed's ``POST /generate {"prompt", "max_tokens", "temperature", "quantum_profile"}``."""

    model: str = Field(default="qgpt", min_length=1)
    prompt: str = Field(min_length=1, max_length=100_000)
    max_tokens: int = Field(default=512, ge=1, le=8192)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    quantum_profile: str = "medium"
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)


class ClassifyRequest(_Wire):
    """The classifier seed's ``POST /classify {"prompts": [...]}`` (``model`` optional)."""

    model: str = Field(default="prompt-classifier", min_length=1)
    prompts: list[str] = Field(min_length=1, max_length=10_000)

    @field_validator("prompts")
    @classmethod
    def _lengths(cls, v: list[str]) -> list[str]:
        for i, text in enumerate(v):
            if len(text) > 100_000:
                raise ValueError(f"prompts[{i}] is longer than 100000 characters")
        return v


def is_quantum_generate(body: dict[str, Any]) -> bool:
    """Which seed's ``/generate`` this is: qgpt sends a prompt (and profile/max_tokens), char-GPT sends neither."""
    return "quantum_profile" in body or ("prompt" in body and "num_chars" not in body and "max_tokens" in body)


# ── response builders ────────────────────────────────────────────────────────────────────────────────
def now() -> int:
    return int(time.time())


def chat_completion(
    id_: str, model: str, created: int, choices: list[dict[str, Any]], usage: dict[str, Any] | None,
    system_fingerprint: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {"id": id_, "object": "chat.completion", "created": created, "model": model,
                           "choices": choices, "usage": usage}
    if system_fingerprint is not None:
        out["system_fingerprint"] = system_fingerprint
    return out


def chat_chunk(id_: str, model: str, created: int, choices: list[dict[str, Any]],
               usage: dict[str, Any] | None = None, system_fingerprint: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
                           "choices": choices}
    if system_fingerprint is not None:
        out["system_fingerprint"] = system_fingerprint
    if usage is not None:
        out["usage"] = usage
    return out


def text_completion(id_: str, model: str, created: int, choices: list[dict[str, Any]],
                    usage: dict[str, Any] | None) -> dict[str, Any]:
    return {"id": id_, "object": "text_completion", "created": created, "model": model, "choices": choices,
            "usage": usage}


def text_chunk(id_: str, model: str, created: int, choices: list[dict[str, Any]],
               usage: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": id_, "object": "text_completion", "created": created, "model": model,
                           "choices": choices}
    if usage is not None:
        out["usage"] = usage
    return out


def model_card(name: str, created: int, owned_by: str = "gatehouse") -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


def model_list(cards: list[dict[str, Any]]) -> dict[str, Any]:
    return {"object": "list", "data": cards}


def dumps_json(obj: Any) -> bytes:
    return orjson.dumps(obj)
