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


def upstream_requests(stack, model: str) -> int:  # type: ignore[no-untyped-def]
    return int(stack.upstream.fake.by_model.get(model, 0))


def running(client: openai.OpenAI, batch_id: str, answered: int, timeout: float = 30) -> Any:
    """The batch once it is in progress with at least ``answered`` lines answered (and not yet final)."""
    deadline = time.time() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        counts = batch.request_counts
        if batch.status == "in_progress" and counts is not None and counts.completed >= answered:
            return batch
        assert batch.status in ("validating", "in_progress") and time.time() < deadline, batch
        time.sleep(0.05)


def stopped_files(client: openai.OpenAI, batch: Any, n: int, code: str) -> tuple[list[Any], list[Any]]:
    """A batch stopped part-way (cancelled or expired): what finished is in the output file, everything else in
    the error file as not run with ``code``; the counts match the files; every custom_id is in exactly one."""
    counts = batch.request_counts
    assert counts.total == n and 0 < counts.completed < n, counts
    out = jsonl(client, batch.output_file_id)
    err = jsonl(client, batch.error_file_id)
    assert len(out) == counts.completed, (len(out), counts)
    assert all(r["error"] is None and r["response"]["status_code"] == 200 for r in out)
    odd = [r for r in err if r["response"] is not None or r["error"]["code"] != code]
    assert not odd and counts.failed == 0, (counts, odd[:3])  # the lines stopped were not run, none failed
    assert len(err) == n - counts.completed, (len(err), counts)
    ids = [r["custom_id"] for r in out + err]
    assert len(ids) == len(set(ids)) and set(ids) == {f"req-{i}" for i in range(n)}
    return out, err


def test_cancel_mid_batch(stack) -> None:  # type: ignore[no-untyped-def]
    """Cancelled while lines run: ``cancelling`` at once, ``cancelled`` within seconds; finished lines in the output
    file, the rest in the error file with ``batch_cancelled``; nothing more reaches the upstream; a second cancel
    changes nothing; a finished batch cannot be cancelled (409)."""
    client = stack.client()
    n = 600  # at most 64 lines of a model at once, 0.4 s each: it would run for 4 s at the very least
    batch = submit(client, lines(n, model="slow", delay=0.4))
    running(client, batch.id, answered=10)
    asked = client.batches.cancel(batch.id)
    asked_at = time.time()
    assert asked.id == batch.id and asked.status in ("cancelling", "cancelled"), asked
    assert asked.cancelling_at is not None
    done = wait_final(client, batch.id, timeout=20)
    took = time.time() - asked_at
    assert done.status == "cancelled", done
    assert done.cancelling_at and done.cancelled_at and done.cancelled_at >= done.cancelling_at
    assert done.completed_at is None and done.expired_at is None
    assert took < 10, f"cancelled {took:.1f}s after the cancel"
    stopped_files(client, done, n, "batch_cancelled")
    seen = upstream_requests(stack, "slow")
    time.sleep(1.5)
    assert upstream_requests(stack, "slow") == seen, "lines of the cancelled batch still reach the upstream"
    again = client.batches.cancel(batch.id)  # a cancelled batch stays as it is
    assert (again.status, again.cancelled_at, again.request_counts) == ("cancelled", done.cancelled_at,
                                                                        done.request_counts)
    finished = wait_final(client, submit(client, lines(2)).id)
    assert finished.status == "completed"
    with pytest.raises(openai.ConflictError) as e:
        client.batches.cancel(finished.id)
    assert e.value.status_code == 409 and e.value.body["code"] == "invalid_state"  # type: ignore[index]


def test_expiry(stack) -> None:  # type: ignore[no-untyped-def]
    """A batch past its completion window (``expires_at`` set into the past in PostgreSQL) becomes ``expired``
    within seconds: finished lines in the output file, the rest in the error file with ``batch_expired``."""
    import asyncio

    import asyncpg

    async def expire(batch_id: str) -> None:
        conn = await asyncpg.connect(stack.database_url)
        try:
            await conn.execute("UPDATE batches SET expires_at = now() - interval '1 second' WHERE id = $1", batch_id)
        finally:
            await conn.close()

    client = stack.client()
    n = 600  # at most 64 lines of a model at once, 0.4 s each: it would run for 4 s at the very least
    batch = submit(client, lines(n, model="slow", delay=0.4))
    running(client, batch.id, answered=10)
    asyncio.run(expire(batch.id))
    expired_at = time.time()
    done = wait_final(client, batch.id, timeout=20)
    took = time.time() - expired_at
    assert done.status == "expired", done
    assert done.expired_at and done.expires_at is not None and done.expires_at <= done.expired_at
    assert done.completed_at is None and done.cancelled_at is None and done.cancelling_at is None
    assert took < 10, f"expired {took:.1f}s after its window closed"
    stopped_files(client, done, n, "batch_expired")
    seen = upstream_requests(stack, "slow")
    time.sleep(1.5)
    assert upstream_requests(stack, "slow") == seen, "lines of the expired batch still reach the upstream"


def test_cancel_before_it_runs(stack) -> None:  # type: ignore[no-untyped-def]
    """Cancelled at once (still ``validating``, nothing queued or running): ``cancelled`` within seconds, and the
    runner goes on running other batches."""
    client = stack.client()
    batch = submit(client, lines(50, model="slow", delay=0.25))
    asked = client.batches.cancel(batch.id)
    assert asked.status in ("cancelling", "cancelled"), asked
    done = wait_final(client, batch.id, timeout=10)
    assert done.status == "cancelled" and done.cancelled_at, done
    counts = done.request_counts  # total 0 when cancelled before validation, else what ran before the cancel
    assert counts.failed == 0 and counts.completed <= counts.total <= 50, counts
    errors = jsonl(client, done.error_file_id) if done.error_file_id else []
    assert len(errors) == counts.total - counts.completed
    assert all(r["error"]["code"] == "batch_cancelled" for r in errors)
    after = wait_final(client, submit(client, lines(3)).id, timeout=20)
    assert after.status == "completed", after
