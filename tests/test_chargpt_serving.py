"""The local char-GPT through the whole queue path: OpenAI endpoints and the seed's /generate."""

from __future__ import annotations

import httpx
import openai


def test_chat_is_deterministic_for_a_seed(client: openai.OpenAI) -> None:
    kw = {"model": "chargpt", "messages": [{"role": "user", "content": "Return the"}], "max_tokens": 40, "seed": 11,
          "temperature": 0.8}
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    c = client.chat.completions.create(**{**kw, "seed": 12})
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].message.content != c.choices[0].message.content
    assert a.choices[0].finish_reason == "length"
    assert len(a.choices[0].message.content) == 40
    assert a.usage.completion_tokens == 40 and a.usage.prompt_tokens == len("Return the")


def test_stream_matches_non_stream(client: openai.OpenAI) -> None:
    kw = {"model": "chargpt", "messages": [{"role": "user", "content": "The "}], "max_tokens": 30, "seed": 3}
    whole = client.chat.completions.create(**kw).choices[0].message.content
    chunks = list(client.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole
    assert chunks[-1].usage.completion_tokens == 30


def test_stop_sequence(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="chargpt", messages=[{"role": "user", "content": "x"}], max_tokens=200,
                                       seed=5, temperature=0, stop=[" "])
    assert " " not in r.choices[0].message.content
    assert r.choices[0].finish_reason == "stop"


def test_completions_and_n(client: openai.OpenAI) -> None:
    r = client.completions.create(model="chargpt", prompt="import ", max_tokens=20, seed=1, n=2)
    assert [c.index for c in r.choices] == [0, 1]
    assert all(len(c.text) == 20 for c in r.choices)
    assert r.usage.completion_tokens == 40


def test_seed_generate_endpoint(stack) -> None:  # type: ignore[no-untyped-def]
    h = {"authorization": f"Bearer {stack.master_key}"}
    body = {"seed": 42, "temperature": 0.8, "num_chars": 100}
    a = httpx.post(stack.base_url + "/generate", json=body, headers=h, timeout=60)
    b = httpx.post(stack.base_url + "/generate", json=body, headers=h, timeout=60)
    assert a.status_code == 200, a.text
    out = a.json()
    assert out["generated_text"] == b.json()["generated_text"]
    assert len(out["generated_text"]) == 100
    assert out["seed"] == 42 and out["temperature"] == 0.8 and out["num_chars"] == 100
    bad = httpx.post(stack.base_url + "/generate", json={"seed": -1}, headers=h)
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "seed"
    wrong_model = httpx.post(stack.base_url + "/generate", json={"model": "fake"}, headers=h)
    assert wrong_model.status_code == 400 and wrong_model.json()["error"]["code"] == "unsupported_endpoint"
