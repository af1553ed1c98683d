"""The Batch API through the official SDK against the real stack (gateway, worker with its batch runner, Valkey,
PostgreSQL, the fake upstream): the whole lifecycle, validation errors with line numbers, cancel, expiry,
ownership and bad requests. (Restarts and kills mid-batch: tests/faults/test_batch_faults.py.)"""

from __future__ import annotations

import time
from typing import Any

import openai
import orjson
import pytest
from conftest import create_key


def lines(n: int, *, url: str = "/v1/chat/completions", model: str = "echo", start: int = 0,
          **body: Any) -> bytes:
    out = []
    for i in range(start, start + n):
        req = ({"model": model, "messages": [{"role": "user", "content": f"line {i}"}], **body}
               if url == "/v1/chat/completions" else {"model": model, "prompt": f"line {i}", **body})
        out.append(orjson.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": req}))
    return b"\n".join(out) + b"\n"


def sdk(stack, key: str) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0)


def wait_final(client: openai.OpenAI, batch_id: str, timeout: float = 60) -> Any:
    deadline = time.time() + timeout
    while time.time() < deadline:
        batch = client.batches.retrieve(batch_id)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch
        time.sleep(0.2)
    raise AssertionError(f"batch {batch_id} still {batch.status} after {timeout} s")


def submit(client: openai.OpenAI, content: bytes, endpoint: str = "/v1/chat/completions", **kw: Any) -> Any:
    f = client.files.create(file=("in.jsonl", content), purpose="batch")
    return client.batches.create(input_file_id=f.id, endpoint=endpoint, completion_window="24h", **kw)  # type: ignore[arg-type]


def jsonl(client: openai.OpenAI, file_id: str) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in client.files.content(file_id).content.splitlines()]


def test_lifecycle_from_upload_to_download(stack) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    created = submit(client, lines(40), metadata={"job": "nightly"})
    assert created.status == "validating" and created.object == "batch" and created.id.startswith("batch_")
    assert created.metadata == {"job": "nightly"} and created.completion_window == "24h"
    assert created.expires_at == created.created_at + 86_400
    done = wait_final(client, created.id)
    assert done.status == "completed", done
    assert (done.request_counts.total, done.request_counts.completed, done.request_counts.failed) == (40, 40, 0)
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.error_file_id is None
    assert done.usage is not None and done.usage.total_tokens > 0
    out = jsonl(client, done.output_file_id)
    assert sorted(r["custom_id"] for r in out) == sorted(f"req-{i}" for i in range(40))
    first = out[0]
    assert first["id"].startswith("batch_req_") and first["error"] is None
    assert first["response"]["status_code"] == 200
    assert first["response"]["body"]["object"] == "chat.completion"
    assert first["response"]["body"]["choices"][0]["message"]["content"]
    meta = client.files.retrieve(done.output_file_id)
    assert meta.purpose == "batch_output" and meta.filename == f"{created.id}_output.jsonl"
    assert created.id in [b.id for b in client.batches.list(limit=100)]


def test_completions_endpoint(stack) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    done = wait_final(client, submit(client, lines(3, url="/v1/completions"), endpoint="/v1/completions").id)
    assert done.status == "completed" and done.request_counts.completed == 3
    assert {r["response"]["body"]["object"] for r in jsonl(client, done.output_file_id)} == {"text_completion"}


def test_validation_names_every_bad_line(stack) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    good = lines(1).rstrip(b"\n")
    bad = b"\n".join([
        good,                                                                   # 1 ok
        b"{not json",                                                           # 2
        orjson.dumps({"method": "POST", "url": "/v1/chat/completions", "body": {}}),  # 3 no custom_id
        good,                                                                   # 4 duplicate custom_id
        lines(1, url="/v1/completions", start=5).rstrip(b"\n"),                 # 5 other endpoint
        lines(1, start=6, stream=True).rstrip(b"\n"),                          # 6 stream
        lines(1, start=7, model="no-such-model").rstrip(b"\n"),                # 7 unknown model
    ]) + b"\n"
    batch = wait_final(client, submit(client, bad).id)
    assert batch.status == "failed" and batch.failed_at and batch.output_file_id is None
    errors = {e.line: e.code for e in batch.errors.data}
    assert errors == {2: "invalid_json", 3: "missing_required_parameter", 4: "duplicate_custom_id",
                      5: "mismatched_endpoint", 6: "invalid_value", 7: "model_not_found"}, errors
    assert batch.request_counts.completed == 0


def test_upstream_errors_go_to_the_error_file(stack) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    content = lines(2) + lines(1, start=2, max_tokens=-5)  # the gateway's schema refuses a negative max_tokens
    batch = wait_final(client, submit(client, content).id)
    assert batch.status == "failed"  # a body the endpoint would refuse fails validation: nothing ran
    assert [e.line for e in batch.errors.data] == [3]


def test_bad_requests_are_4xx(stack) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    f = client.files.create(file=("in.jsonl", lines(1)), purpose="batch")
    with pytest.raises(openai.NotFoundError):
        client.batches.create(input_file_id="file-000000000000000000000000", endpoint="/v1/chat/completions",
                              completion_window="24h")
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="1h")  # type: ignore[arg-type]
    assert e.value.body["param"] == "completion_window"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as e:
        client.batches.create(input_file_id=f.id, endpoint="/v1/moderations", completion_window="24h")  # type: ignore[arg-type]
    assert e.value.body["param"] == "endpoint"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_nope")
    with pytest.raises(openai.NotFoundError):
        client.batches.cancel("batch_nope")


def test_ownership(stack) -> None:  # type: ignore[no-untyped-def]
    alice = sdk(stack, create_key(stack, key_alias="batch-alice")["key"])
    bob = sdk(stack, create_key(stack, key_alias="batch-bob")["key"])
    batch = submit(alice, lines(2))
    with pytest.raises(openai.NotFoundError):
        bob.batches.retrieve(batch.id)
    with pytest.raises(openai.NotFoundError):
        bob.batches.cancel(batch.id)
    assert batch.id not in [b.id for b in bob.batches.list()]
    f = alice.files.create(file=("in.jsonl", lines(1)), purpose="batch")
    with pytest.raises(openai.NotFoundError):  # another key's file
        bob.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = wait_final(alice, batch.id)
    assert done.status == "completed"
    assert stack.client().batches.retrieve(batch.id).id == batch.id  # the master key sees all
