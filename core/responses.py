"""OpenAI's Responses API (``POST /v1/responses``) over chat completions (ADR 0020).

The request is validated here (every refusal names its parameter), its ``input`` items (with the history a
``previous_response_id`` brings) become chat ``messages``, its flat function tools chat's nested ones, its
``text.format`` a ``response_format``; the chat answer becomes a Response object (``output`` items, usage in
input/output tokens). What chat completions cannot express is refused: built-in tools, background mode,
conversations, stored prompts, ``include``. Streams are translated by core.responsestream.

A model whose entry says ``model_info.supports_responses: true`` gets the body as sent (``NativeResponses``):
its upstream speaks the Responses API itself.
"""

from __future__ import annotations

import secrets
import time
from typing import Any, Literal

from pydantic import ConfigDict, Field, field_validator

from core import schemas as p

FUNCTION_TOOL = "function"
MESSAGE_ROLES = ("user", "system", "developer", "assistant")
METADATA_PAIRS, METADATA_KEY, METADATA_VALUE = 16, 64, 512
Item = dict[str, Any]


class Invalid(ValueError):
    """A request the Responses API (or its translation) cannot take: an OpenAI 400 naming ``param``."""

    def __init__(self, message: str, param: str, code: str = "invalid_value"):
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def new_id(prefix: str) -> str:
    """``resp_``/``msg_``/``fc_`` + 48 hex digits: milliseconds since 1970, then random."""
    return f"{prefix}_{int(time.time() * 1000):012x}{secrets.token_hex(18)}"


class ResponsesRequest(p.Wire):
    """``POST /v1/responses``. Types are strict (``"yes"`` is no boolean); unknown fields are vendor extensions,
    forwarded as the chat path forwards them. Fields that take several shapes are checked by hand, so that a
    refusal names the parameter rather than a pydantic union branch."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(min_length=1, max_length=256)
    input: Any = None
    instructions: str | None = Field(default=None, max_length=1_000_000)
    tools: list[dict[str, Any]] | None = Field(default=None, max_length=128)
    tool_choice: Any = None
    text: dict[str, Any] | None = None
    max_output_tokens: int | None = Field(default=None, ge=1, le=p.MAX_TOKENS)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    metadata: dict[str, str] | None = None
    stream: bool | None = False
    store: bool | None = None
    previous_response_id: str | None = Field(default=None, min_length=1, max_length=128)
    parallel_tool_calls: bool | None = None
    user: str | None = Field(default=None, max_length=256)
    reasoning: dict[str, Any] | None = None
    background: bool | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    max_tool_calls: int | None = Field(default=None, ge=1)
    conversation: Any = None
    prompt: Any = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is not None and (len(v) > METADATA_PAIRS or any(len(k) > METADATA_KEY or len(s) > METADATA_VALUE
                                                             for k, s in v.items())):
            raise ValueError(f"at most {METADATA_PAIRS} pairs, keys up to {METADATA_KEY} and values up to "
                             f"{METADATA_VALUE} characters")
        return v

    def items(self) -> list[Item]:
        """``input`` as a list of items (a string is one user message)."""
        if isinstance(self.input, str):
            return [{"type": "message", "role": "user", "content": [{"type": "input_text", "text": self.input}]}]
        if self.input is None:
            raise Invalid("Missing required parameter: 'input'.", "input", "missing_required_parameter")
        if not isinstance(self.input, list) or not all(isinstance(i, dict) for i in self.input):
            raise Invalid("Invalid 'input': a string or a list of input items (objects).", "input", "invalid_type")
        return [dict(i) for i in self.input]


class NativeResponses(p.JobRequest):
    """The body as sent, for an upstream that speaks the Responses API (the worker posts it to ``/responses``)."""

    kind = "responses"
    model: str = Field(min_length=1, max_length=256)
    stream: bool | None = False

    def streams(self) -> bool:
        return bool(self.stream)


# ── request → chat ─────────────────────────────────────────────────────────────────────────────────
_REFUSED = {  # Responses features chat completions cannot express: refused on the translated path
    "background": "background mode", "conversation": "conversations", "prompt": "stored prompts",
    "include": "`include`", "top_logprobs": "`top_logprobs`", "max_tool_calls": "`max_tool_calls`",
}
# Responses fields this module reads; any other field is a vendor extension and goes into the chat body as is
_KNOWN = {*ResponsesRequest.model_fields, "stream_options", "service_tier", "prompt_cache_key", "safety_identifier",
          "prompt_cache_retention", "context_management"}


def refuse_unsupported(req: ResponsesRequest) -> None:
    """400 naming the first parameter the translation cannot honour."""
    for name, what in _REFUSED.items():
        value = getattr(req, name)
        if value not in (None, False, []):
            raise Invalid(f"{what[0].upper()}{what[1:]} is not supported for model `{req.model}`: Gatehouse "
                          "translates its Responses calls to chat completions.", name, "unsupported_parameter")
    if req.truncation == "auto":
        raise Invalid("truncation 'auto' is not supported: Gatehouse translates this model's Responses calls to "
                      "chat completions, which never drop input.", "truncation", "unsupported_parameter")
    extra = set(req.reasoning or {}) - {"effort"}
    if any((req.reasoning or {}).get(k) is not None for k in extra):
        raise Invalid("Only reasoning.effort can be translated to chat completions.", "reasoning",
                      "unsupported_parameter")
    if (req.text or {}).get("verbosity") is not None:
        raise Invalid("text.verbosity is not supported by the translation to chat completions.", "text.verbosity",
                      "unsupported_parameter")


def chat_body(req: ResponsesRequest, raw: dict[str, Any], history: list[Item], items: list[Item]) -> dict[str, Any]:
    """The chat completions body for ``req``: ``history`` (a previous response's input and output) and ``items``
    (this request's input) become the messages, after ``instructions`` as a system message."""
    refuse_unsupported(req)
    messages: list[dict[str, Any]] = [{"role": "system", "content": req.instructions}] if req.instructions else []
    add_messages(messages, history, "")
    add_messages(messages, items, "input")
    check_tool_outputs(messages)
    body: dict[str, Any] = {k: v for k, v in raw.items() if k not in _KNOWN}  # vendor extensions (top_k...)
    body.update(model=req.model, messages=messages)
    if req.stream:
        body.update(stream=True, stream_options={"include_usage": True})  # the Response reports usage
    for name, value in (("max_tokens", req.max_output_tokens), ("temperature", req.temperature),
                        ("top_p", req.top_p), ("user", req.user)):
        if value is not None:
            body[name] = value
    if req.tools:
        body["tools"] = [chat_tool(t, i) for i, t in enumerate(req.tools)]
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.tool_choice is not None:
        body["tool_choice"] = chat_tool_choice(req.tool_choice)
    fmt = response_format((req.text or {}).get("format"))
    if fmt is not None:
        body["response_format"] = fmt
    effort = (req.reasoning or {}).get("effort")
    if effort is not None:
        body["reasoning_effort"] = effort
    return body


def add_messages(messages: list[dict[str, Any]], items: list[Item], where: str) -> None:
    """Append ``items`` as chat messages. ``where``: their parameter name (``input``), or "" for stored history,
    whose items chat cannot express (a hosted tool's call, reasoning) are skipped rather than refused."""
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        kind = item.get("type") or ("message" if "role" in item else None)
        if kind == "message":
            try:
                messages.append(_message(item, at))
            except Invalid:
                if where:
                    raise  # stored history holds only what was taken once; anything else is skipped
        elif kind == "function_call":
            call = {"id": _text(item, "call_id", at), "type": "function",
                    "function": {"name": _text(item, "name", at), "arguments": _text(item, "arguments", at)}}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # parallel calls, or text then calls: one turn
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _text(item, "call_id", at),
                             "content": _output_text(item.get("output"), at)})
        elif kind == "reasoning" or not where:
            continue  # reasoning (from a pass-through model) has nothing chat can take
        else:
            raise Invalid(f"Input items of type {str(kind)[:64]!r} are not supported for this model (translated "
                          "to chat completions): use messages, function_call and function_call_output items.",
                          f"{at}.type", "unsupported_parameter")


def _text(item: Item, name: str, at: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise Invalid(f"Invalid '{at}.{name}': expected a string.", f"{at}.{name}", "invalid_type")
    return value


def _message(item: Item, at: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in MESSAGE_ROLES:
        raise Invalid(f"Invalid '{at}.role': one of {', '.join(MESSAGE_ROLES)}.", f"{at}.role")
    content = item.get("content")
    if isinstance(content, str):
        parts: list[dict[str, Any]] = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = [_part(c, f"{at}.content[{j}]") for j, c in enumerate(content)]
    else:
        raise Invalid(f"Invalid '{at}.content': a string or a list of content parts.", f"{at}.content",
                      "invalid_type")
    chat_role = "system" if role == "developer" else role  # many chat templates know no developer role
    if role == "assistant" or all(part["type"] == "text" for part in parts):
        return {"role": chat_role, "content": "\n".join(str(part.get("text", "")) for part in parts)}
    return {"role": chat_role, "content": parts}


def _part(part: Any, at: str) -> dict[str, Any]:
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in ("input_text", "output_text", "text"):
        return {"type": "text", "text": _text(part, "text", at)}
    if kind == "refusal":
        return {"type": "text", "text": _text(part, "refusal", at)}
    if kind == "input_image" and isinstance(part.get("image_url"), str):
        return {"type": "image_url", "image_url": {"url": part["image_url"], "detail": part.get("detail") or "auto"}}
    raise Invalid(f"Content parts of type {str(kind)[:64]!r} are not supported for this model (translated to chat "
                  "completions): use input_text, or input_image with an image_url.", f"{at}.type",
                  "unsupported_parameter")


def _output_text(output: Any, at: str) -> str:
    if isinstance(output, str):
        return output
    if isinstance(output, list) and all(isinstance(c, dict) and c.get("type") == "input_text" for c in output):
        return "".join(str(c.get("text", "")) for c in output)
    raise Invalid(f"Invalid '{at}.output': a string, or a list of input_text parts.", f"{at}.output", "invalid_type")


def check_tool_outputs(messages: list[dict[str, Any]]) -> None:
    """Each tool result answers a call made before it (else an upstream would fail, less clearly)."""
    calls: set[str] = set()
    for m in messages:
        calls.update(c["id"] for c in m.get("tool_calls") or ())
        if m["role"] == "tool" and m["tool_call_id"] not in calls:
            raise Invalid(f"No tool call found for function call output with call_id {m['tool_call_id'][:64]}: "
                          "send its function_call item, or the previous_response_id that made it.", "input")


# a chat parameter a refusal may name → the Responses parameter it came from
_CHAT_PARAMS = {"messages": "input", "response_format": "text.format", "max_tokens": "max_output_tokens",
                "max_completion_tokens": "max_output_tokens", "reasoning_effort": "reasoning.effort"}


def responses_param(param: str | None) -> str | None:
    """The Responses name of a chat parameter a refusal named (``messages[2].content`` → ``input``,
    ``tools[0].function.name`` → ``tools[0].name``)."""
    if not param:
        return param
    head = param.split(".", 1)[0].split("[", 1)[0]
    return _CHAT_PARAMS.get(head) or param.replace(".function.", ".")


def chat_tool(tool: dict[str, Any], i: int) -> dict[str, Any]:
    """Responses' flat ``{type, name, description, parameters, strict}`` → chat's ``{type, function: {...}}``."""
    if tool.get("type") != FUNCTION_TOOL:
        raise Invalid(f"Tools of type {str(tool.get('type'))[:64]!r} are not supported for this model: Gatehouse "
                      "translates its Responses calls to chat completions, which take function tools only.",
                      f"tools[{i}].type", "unsupported_parameter")
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise Invalid(f"Missing required parameter: 'tools[{i}].name'.", f"tools[{i}].name",
                      "missing_required_parameter")
    function = {"name": name, **{k: tool[k] for k in ("description", "parameters", "strict")
                                 if tool.get(k) is not None}}
    return {"type": "function", "function": function}


def chat_tool_choice(choice: Any) -> Any:
    if choice in ("none", "auto", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == FUNCTION_TOOL and isinstance(choice.get("name"), str):
        return {"type": "function", "function": {"name": choice["name"]}}
    raise Invalid("Invalid 'tool_choice': 'none', 'auto', 'required' or {\"type\": \"function\", \"name\": ...} "
                  "(the translation to chat completions takes no other).", "tool_choice")


def response_format(fmt: Any) -> dict[str, Any] | None:
    """``text.format`` → chat's ``response_format`` (None for plain text)."""
    if fmt is None:
        return None
    kind = fmt.get("type") if isinstance(fmt, dict) else None
    if kind == "text":
        return None
    if kind == "json_object":
        return {"type": "json_object"}
    if kind != "json_schema":
        raise Invalid("Invalid 'text.format.type': 'text', 'json_object' or 'json_schema'.", "text.format.type")
    if not isinstance(fmt.get("name"), str) or not fmt["name"]:
        raise Invalid("Missing required parameter: 'text.format.name'.", "text.format.name",
                      "missing_required_parameter")
    if not isinstance(fmt.get("schema"), dict):
        raise Invalid("Missing required parameter: 'text.format.schema' (an object).", "text.format.schema",
                      "missing_required_parameter")
    schema = {"name": fmt["name"], "schema": fmt["schema"],
              **{k: fmt[k] for k in ("description", "strict") if fmt.get(k) is not None}}
    return {"type": "json_schema", "json_schema": schema}


# ── chat → Response ────────────────────────────────────────────────────────────────────────────────
def skeleton(req: ResponsesRequest, response_id: str, *, store: bool, created_at: int | None = None) -> dict[str, Any]:
    """The Response object before any output: what it was asked, status ``in_progress``."""
    fmt = (req.text or {}).get("format") or {"type": "text"}
    return {
        "id": response_id, "object": "response", "created_at": created_at or p.now(), "status": "in_progress",
        "background": False, "error": None, "incomplete_details": None, "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens, "max_tool_calls": None, "model": req.model, "output": [],
        "parallel_tool_calls": req.parallel_tool_calls is not False, "previous_response_id": req.previous_response_id,
        "reasoning": {"effort": (req.reasoning or {}).get("effort"), "summary": None}, "store": store,
        "temperature": req.temperature, "text": {"format": fmt}, "tool_choice": req.tool_choice or "auto",
        "tools": list(req.tools or []), "top_p": req.top_p, "truncation": "disabled", "usage": None,
        "user": req.user, "metadata": dict(req.metadata or {}),
    }


def usage_of(u: dict[str, Any] | None) -> dict[str, Any] | None:
    """Chat usage → Responses usage."""
    if not u:
        return None
    i, o = int(u.get("prompt_tokens") or 0), int(u.get("completion_tokens") or 0)
    cached = int((u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0)
    reasoning = int((u.get("completion_tokens_details") or {}).get("reasoning_tokens") or 0)
    return {"input_tokens": i, "input_tokens_details": {"cached_tokens": cached}, "output_tokens": o,
            "output_tokens_details": {"reasoning_tokens": reasoning},
            "total_tokens": int(u.get("total_tokens") or i + o)}


def chat_usage(u: dict[str, Any] | None) -> dict[str, int] | None:
    """Responses usage → chat usage (what limits, spend and metrics count)."""
    if not u:
        return None
    return p.usage(int(u.get("input_tokens") or 0), int(u.get("output_tokens") or 0))


def finished(response: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    """``response`` with its final status: ``incomplete`` when the answer was cut (length, content filter)."""
    reason = {"length": "max_output_tokens", "content_filter": "content_filter"}.get(finish_reason or "")
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    return response


def text_part(text: str) -> dict[str, Any]:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def function_call(call_id: str, name: str, arguments: str, status: str = "completed") -> Item:
    return {"type": "function_call", "id": new_id("fc"), "call_id": call_id, "name": name, "arguments": arguments,
            "status": status}


def from_chat(response: dict[str, Any], chat: dict[str, Any]) -> dict[str, Any]:
    """The Response for a whole chat completion (its first choice)."""
    choice = (chat.get("choices") or [{}])[0]
    message = choice.get("message") or {}
    status = "incomplete" if choice.get("finish_reason") == "length" else "completed"
    parts = []
    if message.get("content") or not (message.get("tool_calls") or message.get("refusal")):
        parts.append(text_part(message.get("content") or ""))
    if message.get("refusal"):
        parts.append({"type": "refusal", "refusal": message["refusal"]})
    output: list[Item] = []
    if parts:
        output.append({"type": "message", "id": new_id("msg"), "status": status, "role": "assistant",
                       "content": parts})
    for call in message.get("tool_calls") or ():
        fn = call.get("function") or {}
        output.append(function_call(call.get("id") or new_id("call"), fn.get("name", ""), fn.get("arguments", "")))
    response.update(output=output, usage=usage_of(chat.get("usage")), model=chat.get("model") or response["model"])
    return finished(response, choice.get("finish_reason"))


def output_text(response: dict[str, Any]) -> str:
    """The text of a Response's message items (as the SDK's ``response.output_text``)."""
    return "".join(c.get("text", "") for item in response.get("output") or () if item.get("type") == "message"
                   for c in item.get("content") or () if c.get("type") == "output_text")
