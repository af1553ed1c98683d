"""A batch's lines count against the limits of the key that created it (workers/batches/quota.py): tokens in its
TPM window, cost in its budget; a spent budget stops the batch's remaining lines and refuses new batches."""

from __future__ import annotations

import time
from typing import Any

import httpx
import openai
import orjson
import pytest
import redis
from conftest import create_key

from core.usage import Scope


def lines(n: int, model: str = "priced") -> bytes:
    return b"\n".join(orjson.dumps({"custom_id": f"q-{i}", "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"model": model, "messages": [{"role": "user", "content": f"line {i}"}]}})
                      for i in range(n)) + b"\n"


def run_batch(client: openai.OpenAI, content: bytes, timeout: float = 90) -> Any:
    f = client.files.create(file=("in.jsonl", content), purpose="batch")
    batch = client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    deadline = time.time() + timeout
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        assert time.time() < deadline, f"batch still {batch.status}"
        time.sleep(0.2)
        batch = client.batches.retrieve(batch.id)
    return batch


def jsonl(client: openai.OpenAI, file_id: str | None) -> list[dict[str, Any]]:
    return [orjson.loads(x) for x in client.files.content(file_id).content.splitlines()] if file_id else []


def test_batch_tokens_and_cost_count_against_the_key(stack) -> None:  # type: ignore[no-untyped-def]
    key = create_key(stack, tpm_limit=1_000_000, max_budget=1_000.0)
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key["key"], max_retries=0)
    # one call first: the gateway loads the key's budget counter (0 spent) and shows the TPM left
    client.chat.completions.create(model="priced", messages=[{"role": "user", "content": "hi"}])
    done = run_batch(client, lines(6))
    assert done.status == "completed" and done.request_counts.completed == 6
    batch_tokens = done.usage.total_tokens
    raw = client.chat.completions.with_raw_response.create(model="priced", messages=[{"role": "user", "content": "x"}])
    # the batch's tokens are in this minute's window (give or take the two interactive calls' own)
    remaining = int(raw.headers["x-ratelimit-remaining-tokens"])
    assert remaining <= 1_000_000 - batch_tokens
    batch_cost = sum(0.001 * x["response"]["body"]["usage"]["prompt_tokens"]
                     + 0.002 * x["response"]["body"]["usage"]["completion_tokens"]
                     for x in jsonl(client, done.output_file_id))
    r = redis.Redis.from_url(stack.redis_url)
    spent = float(r.get(Scope("key", key["key_id"]).spend_key(time.time())) or 0)
    r.close()
    # the batch's cost, plus at most the first interactive call's (the second settles after its response)
    assert batch_cost > 0 and batch_cost - 1e-9 <= spent <= batch_cost + 0.1


def test_a_spent_budget_stops_the_batch_and_refuses_the_next(stack) -> None:  # type: ignore[no-untyped-def]
    key = create_key(stack, max_budget=0.05)
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key["key"], max_retries=0)
    total = 400  # far more than are fed at once (batch_max_concurrent): the budget runs out while it runs
    done = run_batch(client, lines(total))
    assert done.status == "completed"
    counts = done.request_counts
    assert counts.completed + counts.failed == total and 0 < counts.completed < total and counts.failed > 0
    out, errors = jsonl(client, done.output_file_id), jsonl(client, done.error_file_id)
    assert len(out) == counts.completed and len(errors) == counts.failed
    assert {e["error"]["code"] for e in errors} == {"insufficient_quota"}
    assert sorted(x["custom_id"] for x in out + errors) == sorted(f"q-{i}" for i in range(total))
    # the next batch is refused at once; an interactive call too
    f = client.files.create(file=("again.jsonl", lines(2)), purpose="batch")
    with pytest.raises(openai.RateLimitError) as refused:
        client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert refused.value.body["code"] == "insufficient_quota"
    r = httpx.post(stack.base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {key['key']}"},
                   json={"model": "priced", "messages": [{"role": "user", "content": "x"}]})
    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota"
