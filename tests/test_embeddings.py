"""``POST /v1/embeddings`` through the official SDK against the stack (gateway, queue, worker): the embedded
default's local all-MiniLM-L6-v2, an OpenAI-compatible upstream (the fake upstream records what it received), a
LiteLLM provider, refusals naming their param, limits and spend, and the Batch API."""

from __future__ import annotations

import asyncio
import base64
import math
import struct
import time
from typing import Any

import httpx
import openai
import orjson
import pytest
from conftest import create_key

from bench.fake_upstream import fake_embedding
from core.embeddings import cosine

LOCAL = "all-minilm-l6-v2"
GUITAR, PARAPHRASE, UNRELATED = "A man is playing guitar.", "Someone plays a guitar.", "The stock market fell today."


def post(stack, body: dict[str, Any], path: str = "/v1/embeddings", key: str | None = None) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(stack.base_url + path, json=body, timeout=120,
                      headers={"authorization": f"Bearer {key or stack.master_key}"})


def received(stack) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    body = stack.upstream.fake.last
    assert body is not None
    return body  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def local_ready(stack) -> None:  # type: ignore[no-untyped-def]
    """The local model loads on its first request (a few seconds; longer on a busy machine): wait for it."""
    deadline = time.time() + 240
    while True:
        r = post(stack, {"model": LOCAL, "input": "warm up"})
        if r.status_code == 200:
            return
        assert r.status_code == 503 and r.json()["error"]["code"] == "model_loading", r.text
        assert time.time() < deadline, "the local embedding model did not load in 240 s"


def test_local_model_vectors_are_unit_384d_and_mean_what_they_say(stack, local_ready) -> None:  # type: ignore[no-untyped-def]
    client = stack.client(timeout=120)
    out = client.embeddings.create(model=LOCAL, input=[GUITAR, PARAPHRASE, UNRELATED], encoding_format="float")
    assert out.object == "list" and out.model == LOCAL
    assert [d.index for d in out.data] == [0, 1, 2] and {d.object for d in out.data} == {"embedding"}
    vecs = [d.embedding for d in out.data]
    assert all(len(v) == 384 for v in vecs)
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1.0) < 1e-4 for v in vecs)  # L2-normalised
    paraphrase, unrelated = cosine(vecs[0], vecs[1]), cosine(vecs[0], vecs[2])
    assert paraphrase > unrelated + 0.3, (paraphrase, unrelated)  # 0.84 vs -0.05 with the real weights
    # usage: the tokens the model ran, [CLS] and [SEP] included (8 + 7 + 8)
    assert out.usage.prompt_tokens == 23 and out.usage.total_tokens == 23

    # base64, as OpenAI sends it: little-endian float32, the same vectors
    raw = client.embeddings.with_raw_response.create(model=LOCAL, input=[GUITAR, PARAPHRASE, UNRELATED],
                                                     encoding_format="base64")
    body = orjson.loads(raw.content)
    assert all(isinstance(d["embedding"], str) for d in body["data"])
    for d, v in zip(body["data"], vecs, strict=True):
        decoded = struct.unpack("<384f", base64.b64decode(d["embedding"]))
        assert max(abs(a - b) for a, b in zip(decoded, v, strict=True)) < 1e-5
    # the SDK's default (it asks for base64 and decodes it) gives the same floats; one string is one item
    single = client.embeddings.create(model=LOCAL, input=PARAPHRASE)
    assert len(single.data) == 1 and max(abs(a - b) for a, b in zip(single.data[0].embedding, vecs[1],
                                                                     strict=True)) < 1e-5
    same = client.embeddings.create(model=LOCAL, input=[PARAPHRASE], dimensions=384)  # its own size: fine
    assert len(same.data[0].embedding) == 384


async def test_concurrent_local_requests_are_answered_each_in_its_own_order(stack, local_ready) -> None:  # type: ignore[no-untyped-def]
    client = stack.aclient(timeout=120)
    texts = [f"sentence number {i} about {topic}" for i, topic in enumerate(["cats", "trains", "rain", "music"] * 3)]
    outs = await asyncio.gather(*(client.embeddings.create(model=LOCAL, input=texts[i:i + 3]) for i in range(10)))
    alone = await client.embeddings.create(model=LOCAL, input=texts)
    by_text = {t: d.embedding for t, d in zip(texts, alone.data, strict=True)}
    for i, out in enumerate(outs):
        assert [d.index for d in out.data] == list(range(len(texts[i:i + 3])))
        for t, d in zip(texts[i:i + 3], out.data, strict=True):
            assert max(abs(a - b) for a, b in zip(d.embedding, by_text[t], strict=True)) < 1e-5


@pytest.mark.parametrize("body, param, code", [
    ({"input": [101, 2023, 102]}, "input", "invalid_value"),  # a token array: the local model takes text
    ({"input": [[101, 102], [101, 7592, 102]]}, "input", "invalid_value"),
    ({"input": "a guitar", "dimensions": 128}, "dimensions", "invalid_value"),  # not a Matryoshka model
    ({"input": ["fine", "word " * 300]}, "input", "context_length_exceeded"),  # 256 tokens at most, never cut
])
def test_what_the_local_model_cannot_do_is_a_400_naming_the_param(stack, local_ready, body: dict[str, Any],  # type: ignore[no-untyped-def]
                                                                  param: str, code: str) -> None:
    r = post(stack, {"model": LOCAL, **body})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"], err["type"]) == (param, code, "invalid_request_error"), err


def test_an_upstream_gets_the_request_as_sent_and_the_client_what_it_answered(stack) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    out = client.embeddings.create(model="fake", input=["hello world", "x"], dimensions=4, user="u-1",
                                   extra_body={"truncate_prompt_tokens": 64})  # a vLLM extension
    up = received(stack)
    # the SDK asks for base64 unless told otherwise: passed through, as the rest of the body
    assert up == {"model": "fake", "input": ["hello world", "x"], "dimensions": 4, "user": "u-1",
                  "encoding_format": "base64", "truncate_prompt_tokens": 64}
    assert [d.embedding for d in out.data] == [fake_embedding("hello world", 4), fake_embedding("x", 4)]
    assert out.model == "fake" and out.usage.prompt_tokens == 3 and out.usage.total_tokens == 3

    raw = post(stack, {"model": "fake", "input": "one two", "encoding_format": "float"})
    assert raw.status_code == 200 and received(stack)["encoding_format"] == "float"
    assert raw.json() == {"object": "list", "model": "fake", "usage": {"prompt_tokens": 2, "total_tokens": 2},
                          "data": [{"object": "embedding", "index": 0, "embedding": fake_embedding("one two")}]}

    tokens = client.embeddings.create(model="fake", input=[[1, 2, 3], [4, 5]])  # token arrays pass through
    assert received(stack)["input"] == [[1, 2, 3], [4, 5]]
    assert [d.embedding for d in tokens.data] == [fake_embedding([1, 2, 3]), fake_embedding([4, 5])]
    assert tokens.usage.prompt_tokens == 5

    one = post(stack, {"model": "fake", "input": [7, 8, 9]}, path="/embeddings")  # without /v1 too
    assert one.status_code == 200 and len(one.json()["data"]) == 1 and received(stack)["input"] == [7, 8, 9]


def test_upstream_failures_are_relayed(stack) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model="status-400", input="x")
    assert "fake upstream says 400" in bad.value.message
    with pytest.raises(openai.APIStatusError) as down:
        client.embeddings.create(model="status-503", input="x")
    assert down.value.status_code == 502 and down.value.body["type"] == "upstream_error"  # type: ignore[index]


def test_a_litellm_provider_through_litellm(stack) -> None:  # type: ignore[no-untyped-def]
    out = stack.client(timeout=120).embeddings.create(model="embed-litellm", input=["hello world", "x"])
    # LiteLLM's Mistral client called the provider's /embeddings; floats were asked for and base64 made here
    assert received(stack) == {"model": "mistral-embed", "input": ["hello world", "x"]}
    assert [d.embedding for d in out.data] == [fake_embedding("hello world"), fake_embedding("x")]
    assert out.model == "embed-litellm" and out.usage.prompt_tokens == 3


@pytest.mark.parametrize("body, param", [
    ({"model": "fake", "input": []}, "input"),
    ({"model": "fake", "input": ""}, "input"),
    ({"model": "fake", "input": ["a", ""]}, "input"),
    ({"model": "fake", "input": ["a", 1]}, "input"),
    ({"model": "fake", "input": [[1], []]}, "input"),
    ({"model": "fake", "input": ["a"] * 2049}, "input"),
    ({"model": "fake", "input": {"text": "a"}}, "input"),
    ({"model": "fake"}, "input"),
    ({"model": "fake", "input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "fake", "input": "a", "dimensions": 0}, "dimensions"),
    ({"model": "fake", "input": "a", "dimensions": "64"}, "dimensions"),
    ({"input": "a"}, "model"),
])
def test_bad_input_is_a_400_naming_the_param(stack, body: dict[str, Any], param: str) -> None:  # type: ignore[no-untyped-def]
    before = stack.upstream.fake.requests
    r = post(stack, body)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"
    assert stack.upstream.fake.requests == before  # refused by the gateway: nothing reached the upstream


def test_wrong_endpoint_for_the_model(stack) -> None:  # type: ignore[no-untyped-def]
    assert post(stack, {"model": "nope", "input": "a"}).status_code == 404
    r = post(stack, {"model": "chargpt", "input": "a"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "model"
    assert "is not an embedding model" in r.json()["error"]["message"]
    chat = httpx.post(stack.base_url + "/v1/chat/completions", timeout=60,
                      headers={"authorization": f"Bearer {stack.master_key}"},
                      json={"model": LOCAL, "messages": [{"role": "user", "content": "hi"}]})
    assert chat.status_code == 400 and "use POST /v1/embeddings" in chat.json()["error"]["message"]


def test_tokens_count_against_tpm_and_the_price_is_charged(stack) -> None:  # type: ignore[no-untyped-def]
    # `priced` is the fake upstream at 0.001 $ per prompt token: six words are six tokens, $0.006
    k = create_key(stack, tpm_limit=5)
    first = post(stack, {"model": "priced", "input": "one two three four five six"}, key=k["key"])
    assert first.status_code == 200 and first.json()["usage"] == {"prompt_tokens": 6, "total_tokens": 6}
    assert first.headers["x-ratelimit-limit-tokens"] == "5"
    time.sleep(0.5)  # tokens are counted after the response
    second = post(stack, {"model": "priced", "input": "seven"}, key=k["key"])
    assert second.status_code == 429 and "tokens per minute" in second.json()["error"]["message"]
    time.sleep(1.5)  # the spend log is written once a second
    own = httpx.get(stack.base_url + "/spend/daily", headers={"authorization": f"Bearer {k['key']}"}).json()
    assert own["data"][0]["model"] == "priced" and own["total_cost"] == pytest.approx(0.006)


def test_a_batch_of_embeddings(stack, local_ready) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    rows = [{"custom_id": f"e-{i}", "method": "POST", "url": "/v1/embeddings", "body": body} for i, body in enumerate([
        {"model": LOCAL, "input": [GUITAR, PARAPHRASE]}, {"model": LOCAL, "input": UNRELATED},
        {"model": "fake", "input": "hello world", "dimensions": 4}])]
    f = client.files.create(file=("emb.jsonl", b"\n".join(orjson.dumps(r) for r in rows) + b"\n"), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    deadline = time.time() + 120
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.time() < deadline, batch
        time.sleep(0.3)
        batch = client.batches.retrieve(batch.id)
    assert batch.status == "completed" and batch.request_counts.completed == 3, batch
    assert batch.output_file_id is not None and batch.error_file_id is None
    content = client.files.content(batch.output_file_id).content
    out = {r["custom_id"]: r for r in map(orjson.loads, content.splitlines())}
    first = out["e-0"]["response"]
    assert first["status_code"] == 200 and first["body"]["object"] == "list" and first["body"]["model"] == LOCAL
    vecs = [d["embedding"] for d in first["body"]["data"]]
    assert [len(v) for v in vecs] == [384, 384] and first["body"]["usage"]["prompt_tokens"] == 15
    assert cosine(vecs[0], vecs[1]) > cosine(vecs[0], out["e-1"]["response"]["body"]["data"][0]["embedding"])
    assert out["e-2"]["response"]["body"]["data"][0]["embedding"] == fake_embedding("hello world", 4)
    assert batch.usage is not None and batch.usage.input_tokens == 15 + 8 + 2
