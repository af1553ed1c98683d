"""qgpt through the gateway on the local char-GPT: quantum_profile in, quantum_diagnostics out, QRNG-fed."""

from __future__ import annotations

import time

import httpx
import openai
import pytest

MSG = [{"role": "user", "content": "def "}]


def test_chat_with_a_quantum_profile(client: openai.OpenAI, stack) -> None:  # type: ignore[no-untyped-def]
    time.sleep(0.5)  # the worker's pool fills from the (fake) QRNG in the background
    r = client.chat.completions.create(model="qgpt", messages=MSG, max_tokens=30, seed=3, temperature=0.9,
                                       extra_body={"quantum_profile": "chaos"})
    d = r.model_extra["quantum_diagnostics"]
    assert d["quantum_profile"] == "chaos" and d["entropy_source"] == "qrng"
    assert d["total_entropy_consumed"] == 4 * 30 and d["modifications_applied"] == 30
    assert d["average_logit_diff"] > 0
    assert len(r.choices[0].message.content) == 30
    assert stack.upstream.fake.qrng_requests >= 1


def test_strict_is_the_plain_model(client: openai.OpenAI) -> None:
    kw = {"messages": MSG, "max_tokens": 40, "seed": 5, "temperature": 0.8}
    strict = client.chat.completions.create(model="qgpt", extra_body={"quantum_profile": "strict"}, **kw)
    plain = client.chat.completions.create(model="chargpt", **kw)
    assert strict.choices[0].message.content == plain.choices[0].message.content
    assert strict.model_extra["quantum_diagnostics"]["total_entropy_consumed"] == 0


def test_streaming_carries_the_diagnostics_at_the_end(client: openai.OpenAI) -> None:
    chunks = list(client.chat.completions.create(model="qgpt", messages=MSG, max_tokens=10, stream=True,
                                                 stream_options={"include_usage": True},
                                                 extra_body={"quantum_profile": "light"}))
    assert chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].model_extra["quantum_diagnostics"]["quantum_profile"] == "light"


def test_unknown_profile_is_a_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="qgpt", messages=MSG, extra_body={"quantum_profile": "wild"})
    assert e.value.body["param"] == "quantum_profile"


def test_seed_generate_in_the_qgpt_format(stack) -> None:  # type: ignore[no-untyped-def]
    r = httpx.post(stack.base_url + "/generate", headers={"authorization": f"Bearer {stack.master_key}"},
                   json={"prompt": "Return the", "max_tokens": 25, "temperature": 0.8, "quantum_profile": "medium"},
                   timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == {"generated_text", "tokens_generated", "quantum_profile", "quantum_diagnostics",
                        "generation_time", "model", "temperature"}
    assert out["tokens_generated"] == 25 == len(out["generated_text"]) and out["model"] == "qgpt"
    assert set(out["quantum_diagnostics"]) >= {"total_entropy_consumed", "modifications_applied",
                                               "average_logit_diff", "entropy_source"}
    # the char-GPT form on the same route still answers in its own format
    c = httpx.post(stack.base_url + "/generate", headers={"authorization": f"Bearer {stack.master_key}"},
                   json={"seed": 1, "temperature": 0.5, "num_chars": 10}, timeout=60)
    assert c.status_code == 200 and c.json()["num_chars"] == 10 and "quantum_diagnostics" not in c.json()
