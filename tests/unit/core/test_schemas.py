"""core.schemas: the request models (validation, and the job each becomes) and the response builders."""

from __future__ import annotations

import copy
import time
from typing import Any

import orjson
import pytest
from pydantic import ValidationError

from core import schemas as s
from core.queue import DEFAULT_PARAMS, JobSpec, SamplingParams
from core.schemas import (
    ChatCompletionRequest,
    ChatMessage,
    ClassifyRequest,
    CompletionRequest,
    GenerateRequest,
    JobRequest,
    QuantumGenerateRequest,
)

DEADLINE = 1_700_000_060.0
MSGS = [{"role": "user", "content": "hi"}]


def job_of(model: type[JobRequest], raw: dict[str, Any], **kw: Any) -> JobSpec:
    return model.model_validate(raw).to_job(raw, request_id="req-1", deadline=DEADLINE, **kw)


def just_now(t: float) -> bool:
    return time.time() - 5 < t <= time.time()


# ── to_job: kind, body, stream, deadline ──────────────────────────────────────────────────────────────


def test_chat_forwards_the_raw_body_untouched() -> None:
    raw = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi", "cache_control": {"type": "x"}}],
           "stream": True, "top_k": 40, "repetition_penalty": 1.1, "response_format": {"type": "json_object"}}
    sent = copy.deepcopy(raw)
    trace = {"route": "POST /v1/chat/completions", "received_at": 1.0}
    job = job_of(ChatCompletionRequest, raw, trace=trace)
    assert job.body is raw and raw == sent  # forwarded as is, vendor extras included
    assert (job.id, job.kind, job.model, job.stream, job.deadline, job.trace) == (
        "req-1", "chat", "gpt-4o", True, DEADLINE, trace)
    assert just_now(job.enqueued_at)


def test_completion_forwards_the_raw_body_untouched() -> None:
    raw = {"model": "m", "prompt": [[1, 2, 3]], "echo": True, "best_of": 3}
    sent = copy.deepcopy(raw)
    job = job_of(CompletionRequest, raw)
    assert job.body is raw and raw == sent
    assert (job.kind, job.model, job.stream, job.trace) == ("completion", "m", False, None)


def test_stream_null_is_not_streamed() -> None:
    assert job_of(ChatCompletionRequest, {"model": "m", "messages": MSGS, "stream": None}).stream is False


def test_chargpt_generate_gets_its_normalized_body() -> None:
    job = job_of(GenerateRequest, {"num_chars": 50})
    assert (job.kind, job.model, job.stream) == ("generate", "chargpt", False)
    assert job.body == {"model": "chargpt", "seed": 42, "temperature": 0.8, "num_chars": 50, "prompt": "",
                        "top_p": 1.0, "form": "chargpt"}
    assert job.params == SamplingParams(max_tokens=50, temperature=0.8, top_p=1.0, seed=42)


def test_qgpt_generate_gets_its_normalized_body() -> None:
    raw = {"prompt": "Once", "max_tokens": 20, "quantum_profile": "high", "temperature": 0.5}
    job = job_of(QuantumGenerateRequest, raw)
    assert (job.kind, job.model) == ("generate", "qgpt")
    assert job.body == {"model": "qgpt", "prompt": "Once", "max_tokens": 20, "temperature": 0.5,
                        "quantum_profile": "high", "top_p": 1.0, "seed": None, "form": "qgpt"}
    assert job.params == SamplingParams(max_tokens=20, temperature=0.5, top_p=1.0, seed=None,
                                        quantum_profile="high")
    defaults = job_of(QuantumGenerateRequest, {"prompt": "x"})
    assert (defaults.params.max_tokens, defaults.params.quantum_profile) == (512, "medium")


def test_classify_gets_model_and_prompts_only() -> None:
    job = job_of(ClassifyRequest, {"prompts": ["a", "b"], "debug": True})
    assert (job.kind, job.model, job.stream) == ("classify", "prompt-classifier", False)
    assert job.body == {"model": "prompt-classifier", "prompts": ["a", "b"]}
    assert job.params == DEFAULT_PARAMS
    assert job_of(ClassifyRequest, {"model": "mine", "prompts": ["a"]}).body["model"] == "mine"


def test_jobs_survive_the_queue() -> None:
    for model, raw in ((ChatCompletionRequest, {"model": "m", "messages": MSGS, "stop": "x", "n": 2}),
                       (QuantumGenerateRequest, {"prompt": "p"}), (GenerateRequest, {}),
                       (ClassifyRequest, {"prompts": ["a"]})):
        job = job_of(model, raw)
        assert JobSpec.from_dict(orjson.loads(orjson.dumps(job.to_dict()))) == job, model.__name__


# ── sampling parameters ───────────────────────────────────────────────────────────────────────────────


def chat_params(**fields: Any) -> SamplingParams:
    return job_of(ChatCompletionRequest, {"model": "m", "messages": MSGS, **fields}).params


def test_chat_sampling_params() -> None:
    assert chat_params() == SamplingParams(n=1)
    assert chat_params(max_tokens=10, temperature=0.0, top_p=0.5, seed=-3, n=3) == SamplingParams(
        max_tokens=10, temperature=0.0, top_p=0.5, seed=-3, n=3)


@pytest.mark.parametrize(("fields", "limit"), [
    ({"max_tokens": 10}, 10),
    ({"max_completion_tokens": 20}, 20),
    ({"max_tokens": 10, "max_completion_tokens": 20}, 20),  # the newer field wins
    ({"max_tokens": 30, "max_completion_tokens": 5}, 5),
    ({}, None),
])
def test_max_completion_tokens_beats_max_tokens(fields: dict[str, int], limit: int | None) -> None:
    assert chat_params(**fields).max_tokens == limit


@pytest.mark.parametrize(("stop", "expected"), [
    ("###", ("###",)),
    (["a", "b"], ("a", "b")),
    (["a", "", "b"], ("a", "b")),  # empty stops dropped
    ([], ()),
    (None, ()),
])
def test_stop_is_always_a_tuple(stop: Any, expected: tuple[str, ...]) -> None:
    assert chat_params(stop=stop).stop == expected


def test_quantum_profile_comes_from_the_extras() -> None:
    assert chat_params(quantum_profile="high").quantum_profile == "high"
    assert chat_params(quantum_profile=3).quantum_profile == "3"
    assert chat_params().quantum_profile is None
    raw = {"model": "qgpt", "prompt": "p", "quantum_profile": "low"}
    assert job_of(CompletionRequest, raw).params.quantum_profile == "low"


def test_completion_sampling_params() -> None:
    raw = {"model": "m", "prompt": "p", "max_tokens": 7, "stop": ["\n"], "temperature": 1.5}
    assert job_of(CompletionRequest, raw).params == SamplingParams(max_tokens=7, temperature=1.5, stop=("\n",))


def test_include_usage() -> None:
    def req(**f: Any) -> ChatCompletionRequest:
        return ChatCompletionRequest.model_validate({"model": "m", "messages": MSGS, **f})

    assert req(stream=True, stream_options={"include_usage": True}).include_usage()
    assert not req(stream=False, stream_options={"include_usage": True}).include_usage()
    assert not req(stream=True).include_usage()


def test_message_text() -> None:
    assert ChatMessage(role="user", content="plain").text() == "plain"
    parts = [{"type": "text", "text": "a"}, {"type": "image_url", "image_url": {"url": "x"}},
             {"type": "input_text", "text": "b"}]
    assert ChatMessage(role="user", content=parts).text() == "ab"
    assert ChatMessage(role="assistant", content=None).text() == ""


# ── validation ────────────────────────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(("fields", "where"), [
    ({"temperature": 3}, "temperature"),
    ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"n": 0}, "n"),
    ({"n": 129}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": 0}, "max_completion_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "robot", "content": "x"}]}, "messages.0.role"),
    ({"model": ""}, "model"),
    ({"presence_penalty": 2.5}, "presence_penalty"),
    ({"seed": 2**64}, "seed"),
    ({"stream_options": {"include_usage": "maybe"}}, "stream_options.include_usage"),
])
def test_bad_chat_requests(fields: dict[str, Any], where: str) -> None:
    with pytest.raises(ValidationError) as e:
        ChatCompletionRequest.model_validate({"model": "m", "messages": MSGS, **fields})
    assert ".".join(str(p) for p in e.value.errors()[0]["loc"]) == where


def test_four_stops_are_allowed() -> None:
    assert chat_params(stop=["a", "b", "c", "d"]).stop == ("a", "b", "c", "d")


def test_missing_fields() -> None:
    with pytest.raises(ValidationError, match="messages"):
        ChatCompletionRequest.model_validate({"model": "m"})
    with pytest.raises(ValidationError, match="model"):
        ChatCompletionRequest.model_validate({"messages": MSGS})
    with pytest.raises(ValidationError, match="prompt"):
        CompletionRequest.model_validate({"model": "m"})


@pytest.mark.parametrize(("model", "raw"), [
    (CompletionRequest, {"model": "m", "prompt": []}),
    (CompletionRequest, {"model": "m", "prompt": "p", "stop": ["1", "2", "3", "4", "5"]}),
    (GenerateRequest, {"num_chars": 0}),
    (GenerateRequest, {"num_chars": 100_001}),
    (GenerateRequest, {"seed": -1}),
    (GenerateRequest, {"temperature": 2.5}),
    (GenerateRequest, {"model": ""}),
    (QuantumGenerateRequest, {"prompt": ""}),
    (QuantumGenerateRequest, {}),
    (QuantumGenerateRequest, {"prompt": "p", "max_tokens": 8193}),
    (ClassifyRequest, {"prompts": []}),
    (ClassifyRequest, {}),
    (ClassifyRequest, {"prompts": ["ok", "x" * 100_001]}),
])
def test_bad_requests_of_the_other_kinds(model: type[JobRequest], raw: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        model.model_validate(raw)


def test_classify_names_the_overlong_prompt() -> None:
    with pytest.raises(ValidationError, match=r"prompts\[1\] is longer than 100000 characters"):
        ClassifyRequest.model_validate({"prompts": ["ok", "x" * 100_001]})


def test_is_quantum_generate() -> None:
    assert s.is_quantum_generate({"prompt": "p", "quantum_profile": "low"})
    assert s.is_quantum_generate({"quantum_profile": "low"})
    assert s.is_quantum_generate({"prompt": "p", "max_tokens": 10})
    assert not s.is_quantum_generate({"prompt": "p", "max_tokens": 10, "num_chars": 10})
    assert not s.is_quantum_generate({"prompt": "p"})  # char-GPT's optional prompt
    assert not s.is_quantum_generate({"seed": 1, "num_chars": 10})
    assert not s.is_quantum_generate({})


# ── response builders ─────────────────────────────────────────────────────────────────────────────────


def test_usage() -> None:
    assert s.usage(3, 4) == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_answer_choice() -> None:
    assert s.answer_choice(1, "hi", "stop", chat=True) == {
        "index": 1, "message": {"role": "assistant", "content": "hi", "refusal": None}, "logprobs": None,
        "finish_reason": "stop"}
    assert s.answer_choice(0, "hi", "length", chat=False) == {
        "index": 0, "text": "hi", "logprobs": None, "finish_reason": "length"}


def test_message_choice_keeps_the_upstream_message() -> None:
    msg = {"role": "assistant", "content": None, "tool_calls": [{"id": "c1", "type": "function"}]}
    assert s.message_choice(0, msg, "tool_calls") == {"index": 0, "message": msg, "logprobs": None,
                                                       "finish_reason": "tool_calls"}


def test_delta_choice() -> None:
    assert s.delta_choice(0, "", chat=True, role=True) == {
        "index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
    assert s.delta_choice(2, "lo", chat=True) == {
        "index": 2, "delta": {"content": "lo"}, "logprobs": None, "finish_reason": None}
    assert s.delta_choice(0, "x", chat=True, finish_reason="stop")["finish_reason"] == "stop"
    assert s.delta_choice(0, "lo", chat=False, role=True) == {  # no role in the completions shape
        "index": 0, "text": "lo", "logprobs": None, "finish_reason": None}


def test_finish_choice() -> None:
    assert s.finish_choice(0, "stop", chat=True) == {"index": 0, "delta": {}, "logprobs": None,
                                                     "finish_reason": "stop"}
    assert s.finish_choice(1, "length", chat=False) == {"index": 1, "text": "", "logprobs": None,
                                                        "finish_reason": "length"}


def test_chunk_usage_chunk_and_answer() -> None:
    choice = s.delta_choice(0, "a", chat=True)
    u = s.usage(1, 2)
    assert s.chunk([choice]) == {"choices": [choice]}
    assert s.chunk([choice], system_fingerprint="fp") == {"choices": [choice], "system_fingerprint": "fp"}
    assert s.usage_chunk(u) == {"choices": [], "usage": u}
    assert s.usage_chunk(u, quantum_diagnostics={"x": 1}) == {"choices": [], "usage": u,
                                                              "quantum_diagnostics": {"x": 1}}
    whole = s.answer_choice(0, "a", "stop", chat=True)
    assert s.answer([whole], u) == {"choices": [whole], "usage": u}
    assert s.answer([whole], None, system_fingerprint="fp") == {"choices": [whole], "usage": None,
                                                                "system_fingerprint": "fp"}


def test_chat_envelopes() -> None:
    choice, u = s.answer_choice(0, "a", "stop", chat=True), s.usage(1, 1)
    assert s.chat_completion("id-1", "m", 123, [choice], u) == {
        "id": "id-1", "object": "chat.completion", "created": 123, "model": "m", "choices": [choice], "usage": u}
    assert s.chat_completion("id-1", "m", 123, [choice], None, system_fingerprint="fp")["system_fingerprint"] == "fp"
    delta = s.delta_choice(0, "a", chat=True)
    assert s.chat_chunk("id-1", "m", 123, [delta]) == {
        "id": "id-1", "object": "chat.completion.chunk", "created": 123, "model": "m", "choices": [delta]}
    with_all = s.chat_chunk("id-1", "m", 123, [], usage=u, system_fingerprint="fp")
    assert with_all["usage"] == u and with_all["system_fingerprint"] == "fp" and with_all["choices"] == []


def test_text_envelopes() -> None:
    choice, u = s.answer_choice(0, "a", "stop", chat=False), s.usage(1, 1)
    assert s.text_completion("id-2", "m", 5, [choice], u) == {
        "id": "id-2", "object": "text_completion", "created": 5, "model": "m", "choices": [choice], "usage": u}
    delta = s.delta_choice(0, "a", chat=False)
    assert s.text_chunk("id-2", "m", 5, [delta]) == {
        "id": "id-2", "object": "text_completion", "created": 5, "model": "m", "choices": [delta]}
    assert s.text_chunk("id-2", "m", 5, [], usage=u)["usage"] == u


def test_model_cards_and_json() -> None:
    card = s.model_card("chargpt", 7)
    assert card == {"id": "chargpt", "object": "model", "created": 7, "owned_by": "gatehouse"}
    assert s.model_list([card]) == {"object": "list", "data": [card]}
    assert orjson.loads(s.dumps_json(s.model_list([card]))) == {"object": "list", "data": [card]}
    assert isinstance(s.now(), int) and abs(s.now() - time.time()) < 2
