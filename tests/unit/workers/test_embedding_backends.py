"""The embedding backends without a stack: the local model's refusals, formats and batching (with a stand-in
encoder: the real one is exercised in tests/test_embeddings.py), its load failure, and LiteLLM's call."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from core import embeddings as e
from core.config import ModelEntry
from core.queue import JobSpec
from workers.backends import BackendError, Embeds
from workers.backends.embeddings_local import LocalEmbeddingBackend, serves
from workers.backends.litellm_backend import LiteLLMBackend


class FakeEncoder:
    """Two tokens per word plus two special ones; an input's vector is the unit vector on axis (its tokens mod 4)."""

    dimensions = 4
    max_length = 8

    def __init__(self) -> None:
        self.encoded: list[int] = []  # inputs per encode call

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return [[101, *range(2 * len(t.split())), 102] for t in texts]

    def encode(self, ids: list[list[int]]) -> np.ndarray:
        self.encoded.append(len(ids))
        out = np.zeros((len(ids), 4), dtype=np.float32)
        for row, seq in enumerate(ids):
            out[row, len(seq) % 4] = 1.0
        return out


def entry(model: str = "local/all-minilm-l6-v2", **params: Any) -> ModelEntry:
    return ModelEntry.model_validate({"model_name": "mini", "litellm_params": {"model": model, **params}})


def job(body: dict[str, Any], deadline_s: float = 10.0) -> JobSpec:
    return JobSpec(id=f"emb-{time.monotonic_ns()}", kind="embed", model="mini", body={"model": "mini", **body},
                   stream=False, deadline=time.time() + deadline_s)


def backend(**params: Any) -> tuple[LocalEmbeddingBackend, FakeEncoder]:
    b = LocalEmbeddingBackend(entry(**params))
    enc = FakeEncoder()
    b.encoder = enc  # type: ignore[assignment]
    return b, enc


def test_the_local_model_is_an_embedding_backend_only() -> None:
    b, _ = backend()
    assert isinstance(b, Embeds) and b.capabilities == {"embed"}
    assert serves(entry()) and not serves(entry("local/chargpt")) and not serves(entry("openai/x", api_base="h"))


async def test_floats_base64_order_and_usage() -> None:
    b, _ = backend()
    out = await b.embed(job({"input": ["one", "two words", "three more words"]}))
    assert [d["index"] for d in out["data"]] == [0, 1, 2]
    assert [d["embedding"] for d in out["data"]] == [[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]
    assert out["usage"] == {"prompt_tokens": 4 + 6 + 8, "total_tokens": 18}
    b64 = await b.embed(job({"input": "one", "encoding_format": "base64"}))
    assert e.from_base64(b64["data"][0]["embedding"]) == [1.0, 0.0, 0.0, 0.0]
    assert (await b.embed(job({"input": "one", "dimensions": 4})))["data"][0]["embedding"] == [1.0, 0.0, 0.0, 0.0]
    await b.aclose()


@pytest.mark.parametrize("body, param, code", [
    ({"input": [1, 2, 3]}, "input", "invalid_value"),
    ({"input": [[1, 2], [3]]}, "input", "invalid_value"),
    ({"input": "a", "dimensions": 2}, "dimensions", "invalid_value"),
    ({"input": ["ok", "far too many words here"]}, "input", "context_length_exceeded"),
])
async def test_what_the_local_model_cannot_do_is_a_400_naming_the_param(body: dict[str, Any], param: str,
                                                                        code: str) -> None:
    b, enc = backend()
    with pytest.raises(BackendError) as info:
        await b.embed(job(body))
    assert (info.value.status, info.value.param, info.value.code) == (400, param, code)
    assert enc.encoded == []  # refused before any forward pass
    if code == "context_length_exceeded":
        assert "input[1] is 12 tokens long" in info.value.message and "at most 8 tokens" in info.value.message
    await b.aclose()


async def test_concurrent_requests_run_as_one_forward_pass() -> None:
    b, enc = backend(batch_wait_ms=50, max_batch_size=64)
    outs = await asyncio.gather(*(b.embed(job({"input": ["a"] * n})) for n in (1, 2, 3)))
    assert [len(o["data"]) for o in outs] == [1, 2, 3]
    assert enc.encoded == [6]
    assert b.batcher.calls == 1
    await b.aclose()


async def test_a_model_that_cannot_load_is_a_503_and_is_tried_again_later(tmp_path: Path) -> None:
    b = LocalEmbeddingBackend(entry(checkpoint=str(tmp_path)))
    with pytest.raises(BackendError) as info:
        await b.embed(job({"input": "a"}))
    assert (info.value.status, info.value.code, info.value.param) == (503, "model_unavailable", "model")
    assert "holds no config.json" in info.value.message
    with pytest.raises(BackendError):  # within the retry delay: the same answer, no new load
        await b.embed(job({"input": "a"}))
    assert b._loading is None and b._failed is not None
    await b.aclose()


async def test_litellm_embeddings_drop_chat_defaults_and_conform_the_format(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class Response:
        def model_dump(self, exclude_none: bool = False) -> dict[str, Any]:
            return {"object": "list", "model": "embed-v1", "data": [{"object": "embedding", "index": 0,
                                                                     "embedding": [0.5, 0.25]}],
                    "usage": {"prompt_tokens": 2, "completion_tokens": 0, "total_tokens": 2}}

    class Stub:
        async def aembedding(self, **kw: Any) -> Response:
            seen.update(kw)
            return Response()

    monkeypatch.setattr("workers.backends.litellm_backend._import", lambda: Stub())
    lb = LiteLLMBackend(entry("cohere/embed-v1", api_key="k", max_tokens=256, temperature=0.2, aws_region_name="r"))
    assert lb.capabilities >= {"chat", "completion", "embed"}
    out = await lb.embed(job({"input": ["a"], "encoding_format": "base64", "dimensions": 2, "user": "u"}))
    assert out == {"data": [e.embedding_item(0, e.to_base64([0.5, 0.25]))],
                   "usage": {"prompt_tokens": 2, "total_tokens": 2}}
    assert seen["model"] == "cohere/embed-v1" and seen["input"] == ["a"] and seen["dimensions"] == 2
    assert seen["user"] == "u" and seen["aws_region_name"] == "r" and seen["api_key"] == "k"
    assert "encoding_format" not in seen and "max_tokens" not in seen and "temperature" not in seen
