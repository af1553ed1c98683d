"""``POST /v1/embeddings``: the request model and the response shapes, shared by the gateway, the workers'
backends and the Batch API.

The request is validated as OpenAI validates it — ``input`` is a string, a list of strings, a token array (a list
of ints) or a list of token arrays; at most ``MAX_INPUTS`` items; no empty string or empty token array —
and forwarded untouched to upstreams (extra fields included). A backend answers
``{"data": [{"object": "embedding", "index", "embedding"}, ...], "usage": {...}}``; the gateway wraps it into
OpenAI's envelope (:func:`embedding_list`).

``encoding_format: "base64"`` is what OpenAI sends: each vector as the base64 of its little-endian float32 bytes
(the official Python SDK asks for it by default and decodes it itself). :func:`conform` puts an answer's vectors
in the format the client asked for, whichever one a backend produced.
"""

from __future__ import annotations

import base64
import math
import struct
from collections.abc import Sequence
from typing import Any, ClassVar, Literal

from pydantic import Field, StrictInt, field_validator

from core.queue import JobKind
from core.schemas import JobRequest

MAX_INPUTS = 2048  # OpenAI's limit on the items of one request
EncodingFormat = Literal["float", "base64"]
Input = str | list[str] | list[int] | list[list[int]]
Vector = list[float] | str  # floats, or base64 of little-endian float32


class EmbeddingRequest(JobRequest):
    """OpenAI's ``POST /v1/embeddings`` body."""

    kind: ClassVar[JobKind] = "embed"
    model: str = Field(min_length=1, max_length=256)
    input: Input
    encoding_format: EncodingFormat | None = None
    dimensions: StrictInt | None = Field(default=None, ge=1, le=65_536)  # strict: the raw body is what is forwarded
    user: str | None = Field(default=None, max_length=256)

    @field_validator("input", mode="before")
    @classmethod
    def _input(cls, v: Any) -> Any:
        """Exactly OpenAI's four forms (no coercion: ``["1", 2]`` or ``[true]`` are errors, not token ids)."""
        if isinstance(v, str):
            if not v:
                raise ValueError("the input must not be an empty string")
            return v
        if not isinstance(v, list):
            raise ValueError("expected a string, a list of strings, a token array or a list of token arrays")
        if not v:
            raise ValueError("the input must not be an empty list")
        if len(v) > MAX_INPUTS:
            raise ValueError(f"at most {MAX_INPUTS} inputs are allowed per request, got {len(v)}")
        return _checked_list(v)


def _checked_list(v: list[Any]) -> list[Any]:
    if all(isinstance(x, str) for x in v):
        for i, text in enumerate(v):
            if not text:
                raise ValueError(f"input[{i}] is an empty string")
        return v
    if all(_is_token(x) for x in v):
        return v
    if all(isinstance(x, list) for x in v):
        for i, arr in enumerate(v):
            if not arr:
                raise ValueError(f"input[{i}] is an empty token array")
            if not all(_is_token(t) for t in arr):
                raise ValueError(f"input[{i}] must hold only token ids (non-negative integers)")
        return v
    raise ValueError("the input's items must be all strings, all token ids, or all token arrays")


def _is_token(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 2**32


def items_of(value: Any) -> list[str] | list[list[int]]:
    """A validated ``input`` as a list of items: strings or token arrays (one token array stays one item)."""
    if isinstance(value, str):
        return [value]
    if value and all(isinstance(t, int) for t in value):
        return [list(value)]
    return list(value)


# ── vectors ───────────────────────────────────────────────────────────────────────────────────────────
def to_base64(vector: Sequence[float]) -> str:
    """OpenAI's base64 encoding: the vector's little-endian float32 bytes."""
    try:
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    except struct.error as e:
        raise ValueError(f"not a vector of numbers ({e})") from e


def from_base64(data: str) -> list[float]:
    raw = base64.b64decode(data)
    return list(struct.unpack(f"<{len(raw) // 4}f", raw[: len(raw) // 4 * 4]))


def conform(data: list[dict[str, Any]], encoding_format: str | None) -> list[dict[str, Any]]:
    """An answer's ``data`` with every vector in the format the client asked for (floats unless "base64")."""
    want_b64 = encoding_format == "base64"
    out = []
    for item in data:
        vec = item.get("embedding")
        if want_b64 and isinstance(vec, list):
            item = {**item, "embedding": to_base64(vec)}
        elif not want_b64 and isinstance(vec, str):
            item = {**item, "embedding": from_base64(vec)}
        out.append(item)
    return out


def embedding_item(index: int, vector: Vector) -> dict[str, Any]:
    return {"object": "embedding", "index": index, "embedding": vector}


def embedding_usage(prompt_tokens: int, total_tokens: int | None = None) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "total_tokens": prompt_tokens if total_tokens is None else total_tokens}


def usage_of(u: Any) -> dict[str, int] | None:
    """An upstream's usage as OpenAI's embeddings usage (providers that give only ``total_tokens`` included)."""
    if not isinstance(u, dict):
        return None
    prompt = u.get("prompt_tokens")
    total = u.get("total_tokens")
    if prompt is None and total is None:
        return None
    prompt = int(prompt if prompt is not None else total or 0)
    return embedding_usage(prompt, int(total if total is not None else prompt))


_ENVELOPE = ("object", "model", "id", "created")


def upstream_answer(out: Any, encoding_format: str | None) -> dict[str, Any]:
    """An OpenAI-compatible upstream's embeddings body as a backend's answer: its ``data`` (vectors in the
    client's format) and ``usage``, and any vendor fields; not its envelope (the gateway writes that)."""
    if not isinstance(out, dict) or not isinstance(out.get("data"), list):
        raise ValueError("no list of embeddings (`data`)")
    if not all(isinstance(item, dict) for item in out["data"]):
        raise ValueError("`data` holds something other than embedding objects")
    answer = {k: v for k, v in out.items() if k not in _ENVELOPE}
    answer["data"] = conform(out["data"], encoding_format)
    answer["usage"] = usage_of(out.get("usage"))
    return answer


def embedding_list(result: dict[str, Any], model: str) -> dict[str, Any]:
    """A backend's answer (``data``, ``usage``; ``model`` when a fallback group answered; vendor fields) in
    OpenAI's envelope."""
    out: dict[str, Any] = {"object": "list", "data": result.get("data") or [], "model": result.get("model") or model,
                           "usage": result.get("usage")}
    extra = {k: v for k, v in result.items() if k not in out}
    return {**out, **extra} if extra else out


def summary(result: dict[str, Any]) -> dict[str, Any]:
    """What a trace keeps of an embeddings answer: how many vectors, of what size (never the vectors)."""
    data = result.get("data") or []
    first = data[0].get("embedding") if data else None
    dims = len(first) if isinstance(first, list) else (len(base64.b64decode(first)) // 4 if first else 0)
    return {"embeddings": len(data), "dimensions": dims}


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity (for tests and checks; vectors of any norm)."""
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    na, nb = math.sqrt(sum(x * x for x in a)), math.sqrt(sum(y * y for y in b))
    return dot / (na * nb) if na and nb else 0.0
