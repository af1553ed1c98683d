"""The hot path's part in benchmark runs (issue #14, docs/benchmark-runs-contract.md), on the real stack: a key
whose metadata says ``lane: "batch"`` and ``bench_run`` has its calls queued on the batch lane, and the worker
leaves each one's timing record in Redis before the client's stream ends; a normal key's calls leave none."""

from __future__ import annotations

import time

import httpx
import openai
import orjson
import redis as sync_redis
from conftest import create_key

from core import queue as q


def sdk(stack, secret: str) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key=secret, max_retries=0)


def streamed_call(client: openai.OpenAI) -> tuple[str, str]:
    """A streamed chat call through the SDK: (its x-request-id, the text it streamed)."""
    raw = client.chat.completions.with_raw_response.create(
        model="fake", messages=[{"role": "user", "content": "hello bench"}], stream=True,
        stream_options={"include_usage": True})
    rid = raw.headers["x-request-id"]
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    return rid, text


def test_a_bench_keys_call_leaves_its_timing_record(stack) -> None:  # type: ignore[no-untyped-def]
    r = sync_redis.Redis.from_url(stack.redis_url)
    bench = create_key(stack, key_alias="bench-plumbing", metadata={"lane": "batch", "bench_run": "bench_test1"})
    rid, text = streamed_call(sdk(stack, bench["key"]))
    assert text
    raw = r.get(q.bench_timing_key(rid))  # read right after the stream ended: it is already there
    assert raw is not None
    timing = orjson.loads(raw)
    assert timing["bench_run"] == "bench_test1"
    assert timing["queue_ms"] >= 0 and timing["upstream_ms"] > 0
    assert timing["upstream_ttft_ms"] is None or 0 <= timing["upstream_ttft_ms"] <= timing["upstream_ms"]
    assert timing["cold_start"] is False and timing["retries"] == 0 and timing["cost"] == 0.0
    assert 0 < r.ttl(q.bench_timing_key(rid)) <= q.BENCH_TIMING_TTL_S

    normal = create_key(stack, key_alias="bench-plumbing-normal")
    rid, text = streamed_call(sdk(stack, normal["key"]))
    assert text and r.exists(q.bench_timing_key(rid)) == 0
    r.close()


def test_a_batch_lane_keys_call_waits_on_the_batch_lane(stack) -> None:  # type: ignore[no-untyped-def]
    """While it runs (a slow upstream), the call's entry is in the batch lane's queue, not the interactive one."""
    r = sync_redis.Redis.from_url(stack.redis_url)
    secret = create_key(stack, key_alias="bench-plumbing-lane", metadata={"lane": "batch"})["key"]
    body = {"model": "slow", "messages": [{"role": "user", "content": "a b c"}], "stream": True, "delay": 0.3}
    with httpx.stream("POST", stack.base_url + "/v1/chat/completions", json=body, timeout=30,
                      headers={"authorization": f"Bearer {secret}"}) as resp:
        assert resp.status_code == 200
        rid = resp.headers["x-request-id"]
        seen = []
        deadline = time.time() + 5
        while time.time() < deadline and not seen:
            seen = [lane for lane, queue in q.LANES.items() if r.zscore(queue, rid) is not None]
            time.sleep(0.02)
        assert seen == [q.BATCH_LANE]
        assert b"[DONE]" in resp.read()
    assert r.zscore(q.BATCH_QUEUE, rid) is None and r.exists(q.bench_timing_key(rid)) == 0  # no bench_run: none
    r.close()
