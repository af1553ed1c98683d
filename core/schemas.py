"""OpenAI wire formats, in one module: request models (validated with pydantic) and the response shapes
(plain dicts) that every backend and the gateway's relay build.

Requests are parsed into typed models before any logic runs; unknown fields are kept (``extra="allow"``)
and forwarded to the backend, as OpenAI-compatible servers accept vendor extensions (vLLM's ``top_k``,
qgpt's ``quantum_profile``...). Each request converts itself into the job a worker runs (``to_job``): the
body to forward plus its sampling parameters, typed. Responses are built as dicts and serialised with
orjson: they are on the hot path and their shape is fixed by OpenAI, so a model class per response would
only cost time.
"""

from __future__ import annotations

import time
from typing import Annotated, Any, ClassVar, Literal

import orjson
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

from core.queue import JobKind, JobSpec, SamplingParams

MAX_STOP = 4
MAX_TOKENS = 2**31 - 1  # beyond any context window; the gateway's own max_tokens_limit is usually far lower
MAX_LOGIT_BIAS = 1024  # entries (each a token id -> a bias in [-100, 100])
MAX_TOOLS = 128  # tools per chat request, as OpenAI allows
TOOL_NAME = r"^[A-Za-z0-9_-]+$"  # a function's (or a json_schema's) name, as OpenAI checks it
Choice = dict[str, Any]
Usage = dict[str, int]


class Wire(BaseModel):
    """Every request model: extra fields kept (vendor extensions are forwarded)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


class JobRequest(Wire):
    """A request the gateway runs as a job. Subclasses say which kind, and may reshape the body."""

    kind: ClassVar[JobKind]
    model: str

    def job_body(self, raw: dict[str, Any]) -> dict[str, Any]:
        """What the worker gets as ``JobSpec.body``: the client's own body, forwarded untouched."""
        return raw

    def sampling(self) -> SamplingParams:
        return SamplingParams()

    def streams(self) -> bool:
        """Whether the answer is streamed (only chat and completions can be)."""
        return False

    def include_usage(self) -> bool:
        """Whether a streamed answer ends with a usage chunk."""
        return False

    def to_job(self, raw: dict[str, Any], *, request_id: str, deadline: float,
               trace: dict[str, Any] | None = None) -> JobSpec:
        """This request as the job a worker runs (``raw`` is the body as the client sent it)."""
        return JobSpec(id=request_id, kind=self.kind, model=self.model, body=self.job_body(raw),
                       stream=self.streams(), deadline=deadline, params=self.sampling(), trace=trace)


class SeedRequest(JobRequest):
    """A seed's ``/generate`` form: the worker gets the seed's fields with their defaults filled in, and which
    form it was."""

    form: ClassVar[str]

    def job_body(self, raw: dict[str, Any]) -> dict[str, Any]:
        return {**self.model_dump(), "form": self.form}


class StreamOptions(Wire):
    include_usage: bool = False


class ChatMessage(Wire):
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


class SamplingRequest(JobRequest):
    """What chat and completions share. Every numeric field is bounded as OpenAI bounds it (``seed``: any
    int64 or uint64, as torch seeds; temperatures as small as 1e-300 are valid and mean greedy sampling)."""

    model: str = Field(min_length=1, max_length=256)
    max_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
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
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(default=None,
                                                                                       max_length=MAX_LOGIT_BIAS)
    # LiteLLM's: drop the parameters the model does not support instead of refusing them (core.capabilities)
    drop_params: StrictBool | None = None

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> str | list[str] | None:
        if isinstance(v, list) and len(v) > MAX_STOP:
            raise ValueError(f"at most {MAX_STOP} stop sequences are allowed")
        return v

    def streams(self) -> bool:
        return bool(self.stream)

    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def token_limit(self) -> int | None:
        return self.max_tokens

    def sampling(self) -> SamplingParams:
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        stop = tuple(s for s in stop if s)  # an empty stop sequence stops nothing
        profile = (self.model_extra or {}).get("quantum_profile")
        return SamplingParams(max_tokens=self.token_limit(), temperature=self.temperature, top_p=self.top_p,
                              seed=self.seed, stop=stop, n=self.n or 1,
                              quantum_profile=str(profile) if profile is not None else None)


class FunctionDefinition(Wire):
    name: str = Field(min_length=1, max_length=64, pattern=TOOL_NAME)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class CustomToolDefinition(Wire):
    name: str = Field(min_length=1, max_length=64, pattern=TOOL_NAME)


class Tool(Wire):
    """A chat request's tool: ``{"type": "function", "function": {"name", ...}}`` (or OpenAI's ``custom``)."""

    type: Literal["function", "custom"]
    function: FunctionDefinition | None = None
    custom: CustomToolDefinition | None = None

    @model_validator(mode="after")
    def _has_its_definition(self) -> Tool:
        if getattr(self, self.type) is None:
            raise ValueError(f"a tool of type '{self.type}' needs its '{self.type}' object (with a name)")
        return self

    def name(self) -> str:
        d = self.function if self.type == "function" else self.custom
        return d.name if d is not None else ""


class JsonSchemaFormat(Wire):
    name: str = Field(min_length=1, max_length=64, pattern=TOOL_NAME)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(Wire):
    """``text``, ``json_object``, ``json_schema`` (with its ``json_schema``), or vLLM's ``structural_tag``."""

    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object (with a name)")
        return self


class ChatCompletionRequest(SamplingRequest):
    kind = "chat"
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1, le=MAX_TOKENS)
    logprobs: StrictBool | None = None
    top_logprobs: StrictInt | None = Field(default=None, ge=0, le=20)
    # typed as OpenAI types them; forwarded as the client sent them (``to_job`` forwards the raw body)
    tools: list[Tool] | None = Field(default=None, min_length=1, max_length=MAX_TOOLS)
    tool_choice: str | dict[str, Any] | None = None  # "none", "auto", "required" or a tool named by an object
    parallel_tool_calls: StrictBool | None = None
    response_format: ResponseFormat | None = None

    @field_validator("tool_choice")
    @classmethod
    def _tool_choice(cls, v: str | dict[str, Any] | None, info: ValidationInfo) -> str | dict[str, Any] | None:
        tools: list[Tool] | None = info.data.get("tools")
        if v is None:
            return v
        if not tools:
            raise ValueError("'tool_choice' is only allowed when 'tools' are specified")
        if isinstance(v, str) and v not in ("none", "auto", "required"):
            raise ValueError("expected 'none', 'auto', 'required' or an object naming a tool")
        if isinstance(v, dict):
            kind = v.get("type")
            if kind not in ("function", "custom", "allowed_tools"):
                raise ValueError("an object tool_choice needs a type: 'function', 'custom' or 'allowed_tools'")
            if kind in ("function", "custom"):
                named = v.get(kind)
                name = named.get("name") if isinstance(named, dict) else None
                if not isinstance(name, str):
                    raise ValueError(f"tool_choice of type '{kind}' needs '{kind}.name'")
                if name not in {t.name() for t in tools}:
                    raise ValueError(f"tool_choice names '{name}', which is not one of the tools")
        return v

    def token_limit(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(SamplingRequest):
    kind = "completion"
    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool | None = False
    suffix: str | None = None
    logprobs: int | None = Field(default=None, ge=0, le=5)
    best_of: int | None = Field(default=None, ge=1, le=20)

    @model_validator(mode="after")
    def _non_empty(self) -> CompletionRequest:
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt must not be an empty list")
        return self


class GenerateRequest(SeedRequest):
    """The char-GPT seed's ``POST /generate {"seed", "temperature", "num_chars"}``."""

    kind = "generate"
    form: ClassVar[str] = "chargpt"
    model: str = Field(default="chargpt", min_length=1)
    seed: int = Field(default=42, ge=0, le=2**63 - 1)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    num_chars: int = Field(default=200, ge=1, le=100_000)
    prompt: str = Field(default="", max_length=100_000)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.num_chars, temperature=self.temperature, top_p=self.top_p,
                              seed=self.seed)


class QuantumGenerateRequest(SeedRequest):
    """The qgpt seed's ``POST /generate {"prompt", "max_tokens", "temperature", "quantum_profile"}``."""

    kind = "generate"
    form: ClassVar[str] = "qgpt"
    model: str = Field(default="qgpt", min_length=1)
    prompt: str = Field(min_length=1, max_length=100_000)
    max_tokens: int = Field(default=512, ge=1, le=8192)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    quantum_profile: str = "medium"
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    seed: int | None = Field(default=None, ge=0, le=2**63 - 1)

    def sampling(self) -> SamplingParams:
        return SamplingParams(max_tokens=self.max_tokens, temperature=self.temperature, top_p=self.top_p,
                              seed=self.seed, quantum_profile=self.quantum_profile)


class ClassifyRequest(JobRequest):
    """The classifier seed's ``POST /classify {"prompts": [...]}`` (``model`` optional)."""

    kind = "classify"
    model: str = Field(default="prompt-classifier", min_length=1)
    prompts: list[str] = Field(min_length=1, max_length=10_000)

    @field_validator("prompts")
    @classmethod
    def _lengths(cls, v: list[str]) -> list[str]:
        for i, text in enumerate(v):
            if len(text) > 100_000:
                raise ValueError(f"prompts[{i}] is longer than 100000 characters")
        return v

    def job_body(self, raw: dict[str, Any]) -> dict[str, Any]:
        return {"model": self.model, "prompts": self.prompts}


def is_quantum_generate(body: dict[str, Any]) -> bool:
    """Which seed's ``/generate`` this is: qgpt sends a prompt (and profile/max_tokens), char-GPT sends neither."""
    return "quantum_profile" in body or ("prompt" in body and "num_chars" not in body and "max_tokens" in body)


# ── response builders ────────────────────────────────────────────────────────────────────────────────
# Backends build choices, chunks and usage with these (without id/model/created: the relay adds them);
# the relay wraps them into the envelopes below. ``chat`` picks the chat or the legacy completions shape.
def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def answer_choice(index: int, content: str, finish_reason: str | None, *, chat: bool) -> Choice:
    """A whole answer's choice: ``message`` (chat) or ``text`` (completions)."""
    if chat:
        return {"index": index, "message": {"role": "assistant", "content": content, "refusal": None},
                "logprobs": None, "finish_reason": finish_reason}
    return {"index": index, "text": content, "logprobs": None, "finish_reason": finish_reason}


def message_choice(index: int, message: dict[str, Any], finish_reason: str | None) -> Choice:
    """A chat choice carrying an upstream's whole message (tool calls, refusal, ...)."""
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def delta_choice(index: int, content: str, *, chat: bool, role: bool = False,
                 finish_reason: str | None = None) -> Choice:
    """A stream chunk's choice with a piece of text. ``role`` also opens the assistant message (chat)."""
    if chat:
        delta: dict[str, Any] = {"role": "assistant", "content": content} if role else {"content": content}
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    return {"index": index, "text": content, "logprobs": None, "finish_reason": finish_reason}


def finish_choice(index: int, finish_reason: str | None, *, chat: bool) -> Choice:
    """A stream's closing choice: no content, the finish reason."""
    if chat:
        return {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish_reason}
    return {"index": index, "text": "", "logprobs": None, "finish_reason": finish_reason}


def chunk(choices: list[Choice], **extra: Any) -> dict[str, Any]:
    """A backend's stream chunk (``extra``: usage, system_fingerprint, vendor fields)."""
    return {"choices": choices, **extra}


def usage_chunk(u: Usage, **extra: Any) -> dict[str, Any]:
    """A stream's last chunk: no choices, the usage (and vendor fields such as quantum_diagnostics)."""
    return {"choices": [], "usage": u, **extra}


def answer(choices: list[Choice], u: Usage | None, **extra: Any) -> dict[str, Any]:
    """A backend's whole answer (``extra``: system_fingerprint, vendor fields)."""
    return {"choices": choices, "usage": u, **extra}


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
