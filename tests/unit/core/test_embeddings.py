"""``POST /v1/embeddings``'s request model and response shapes (core.embeddings), and the Batch API's use of them."""

from __future__ import annotations

import base64
import struct

import orjson
import pytest
from pydantic import ValidationError

from core import batches as b
from core import embeddings as e
from gateway.errors import from_validation_error


def param_of(body: dict[str, object]) -> tuple[str | None, str]:
    """The 400 the gateway answers for ``body``: (param, message)."""
    with pytest.raises(ValidationError) as info:
        e.EmbeddingRequest.model_validate(body)
    err = from_validation_error(info.value)
    assert err.status == 400
    return err.param, err.message


@pytest.mark.parametrize("value", ["one text", ["a", "b"], [1, 2, 3], [[1, 2], [3]], ["x"] * e.MAX_INPUTS])
def test_the_four_input_forms_are_accepted(value: object) -> None:
    req = e.EmbeddingRequest.model_validate({"model": "m", "input": value, "encoding_format": "base64",
                                             "dimensions": 64, "user": "u", "vendor_extension": True})
    assert req.kind == "embed" and req.input == value
    job = req.to_job({"model": "m", "input": value, "vendor_extension": True}, request_id="r", deadline=0.0)
    assert job.kind == "embed" and not job.stream and job.body["vendor_extension"] is True  # forwarded untouched


@pytest.mark.parametrize("value, fragment", [
    ("", "empty string"), ([], "empty list"), (["a", ""], "input[1] is an empty string"),
    ([[1], []], "input[1] is an empty token array"), (["a", 1], "all strings"), ([True, 1], "all strings"),
    ([[1, "2"]], "input[0] must hold only token ids"), ([-1], "all strings"), ({"text": "a"}, "expected a string"),
    (None, "expected a string"), (["x"] * (e.MAX_INPUTS + 1), "at most 2048 inputs"),
])
def test_bad_input_is_a_400_naming_input(value: object, fragment: str) -> None:
    param, message = param_of({"model": "m", "input": value})
    assert param == "input" and fragment in message


@pytest.mark.parametrize("body, param", [
    ({"model": "m", "input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "m", "input": "a", "dimensions": 0}, "dimensions"),
    ({"model": "m", "input": "a", "dimensions": "64"}, "dimensions"),
    ({"model": "", "input": "a"}, "model"),
    ({"input": "a"}, "model"),
    ({"model": "m"}, "input"),
])
def test_other_bad_fields_name_their_param(body: dict[str, object], param: str) -> None:
    assert param_of(body)[0] == param


def test_items_of_keeps_a_token_array_whole() -> None:
    assert e.items_of("a") == ["a"]
    assert e.items_of(["a", "b"]) == ["a", "b"]
    assert e.items_of([1, 2]) == [[1, 2]]
    assert e.items_of([[1], [2, 3]]) == [[1], [2, 3]]


def test_base64_is_little_endian_float32_as_openai_sends_it() -> None:
    vec = [0.5, -1.25, 3.0]
    encoded = e.to_base64(vec)
    assert base64.b64decode(encoded) == struct.pack("<3f", *vec)
    assert e.from_base64(encoded) == vec
    with pytest.raises(ValueError):
        e.to_base64(["x"])  # type: ignore[list-item]


def test_conform_puts_vectors_in_the_asked_format() -> None:
    floats = [e.embedding_item(0, [0.5, 0.25])]
    as_b64 = e.conform(floats, "base64")
    assert as_b64[0]["embedding"] == e.to_base64([0.5, 0.25]) and floats[0]["embedding"] == [0.5, 0.25]
    assert e.conform(as_b64, "float")[0]["embedding"] == [0.5, 0.25]
    assert e.conform(as_b64, None)[0]["embedding"] == [0.5, 0.25]  # floats unless base64 is asked for
    assert e.conform(as_b64, "base64") == as_b64


def test_upstream_answers_become_backend_answers() -> None:
    out = {"id": "embd-1", "object": "list", "created": 1, "model": "up", "data": [e.embedding_item(0, [1.0])],
           "usage": {"prompt_tokens": 3, "total_tokens": 3}, "vendor": {"x": 1}}
    assert e.upstream_answer(out, "base64") == {"data": [e.embedding_item(0, e.to_base64([1.0]))],
                                                 "usage": {"prompt_tokens": 3, "total_tokens": 3},
                                                 "vendor": {"x": 1}}
    assert e.upstream_answer({"data": []}, None)["usage"] is None
    for bad in ({"object": "list"}, [], {"data": ["x"]}):
        with pytest.raises(ValueError):
            e.upstream_answer(bad, None)


def test_usage_of_providers_that_count_differently() -> None:
    assert e.usage_of({"prompt_tokens": 4, "completion_tokens": 0, "total_tokens": 4}) == \
        {"prompt_tokens": 4, "total_tokens": 4}
    assert e.usage_of({"total_tokens": 5}) == {"prompt_tokens": 5, "total_tokens": 5}
    assert e.usage_of({}) is None and e.usage_of(None) is None


def test_the_envelope_names_the_model_and_keeps_vendor_fields() -> None:
    answer = {"data": [e.embedding_item(0, [1.0])], "usage": e.embedding_usage(2), "vendor": 1}
    assert e.embedding_list(answer, "m") == {"object": "list", "data": answer["data"], "model": "m",
                                             "usage": {"prompt_tokens": 2, "total_tokens": 2}, "vendor": 1}
    assert e.embedding_list({**answer, "model": "group"}, "m")["model"] == "group"  # a fallback group answered
    assert e.summary(answer) == {"embeddings": 1, "dimensions": 1}
    assert e.summary({"data": [e.embedding_item(0, e.to_base64([1.0, 2.0]))]}) == {"embeddings": 1, "dimensions": 2}
    assert e.cosine([1.0, 0.0], [2.0, 0.0]) == pytest.approx(1.0) and e.cosine([1.0, 0.0], [0.0, 1.0]) == 0.0


def test_batches_accept_embedding_lines_and_write_the_embeddings_body() -> None:
    assert b.kind_of("/v1/embeddings") == "embed" and b.kind_of("/v1/chat/completions") == "chat"
    v = b.LineValidator("/v1/embeddings", {"m"}, None, 100)
    line = {"custom_id": "c1", "method": "POST", "url": "/v1/embeddings", "body": {"model": "m", "input": ["a"]}}
    ok = v.check(1, orjson.dumps(line))
    assert isinstance(ok, b.Line) and ok.model == "m"
    bad = v.check(2, orjson.dumps({**line, "custom_id": "c2", "body": {"model": "m", "input": []}}))
    assert isinstance(bad, b.LineError) and bad.param == "body.input"
    chat = v.check(3, orjson.dumps({**line, "custom_id": "c3", "url": "/v1/chat/completions"}))
    assert isinstance(chat, b.LineError) and chat.code == "mismatched_endpoint"
    result = {"data": [e.embedding_item(0, [0.5])], "usage": e.embedding_usage(3)}
    done = b.answered(1, "c1", "embed", "m", [{"k": "result", "d": result}])
    record = orjson.loads(done.record)
    assert done.ok and (done.prompt_tokens, done.completion_tokens) == (3, 0)
    assert record["response"]["status_code"] == 200
    assert record["response"]["body"] == {"object": "list", "data": result["data"], "model": "m",
                                          "usage": {"prompt_tokens": 3, "total_tokens": 3}}
