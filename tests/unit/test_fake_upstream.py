"""The fake upstream's paced model (bench/fake_upstream.py ``pace-T-I``), which the benchmark cross-check with
guidellm (bench/bench_runs.py) relies on: ``max_tokens`` word chunks, the first after T ms, then one every I ms."""

from __future__ import annotations

import time

import httpx
import orjson

from bench.fake_upstream import UpstreamThread


def test_a_paced_stream_sends_max_tokens_words_at_its_pace() -> None:
    up = UpstreamThread().start()
    try:
        body = {"model": "pace-40-15", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5,
                "stream": True, "stream_options": {"include_usage": True}}
        arrivals: list[float] = []
        usage = None
        t0 = time.perf_counter()
        with httpx.stream("POST", up.base_url + "/chat/completions", json=body, timeout=10) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                chunk = orjson.loads(line[6:])
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    arrivals.append(time.perf_counter() - t0)
                usage = chunk.get("usage") or usage
        assert len(arrivals) == 5 and usage is not None and usage["completion_tokens"] == 5
        # chunk k cannot be sent before 40 + 15·k ms (sleeps are never shorter than asked; a busy reader may see
        # chunks late, never early)
        assert all(t >= 0.040 + 0.015 * k - 0.001 for k, t in enumerate(arrivals)), arrivals
        whole = httpx.post(up.base_url + "/chat/completions", json={**body, "stream": False}, timeout=10).json()
        assert len(whole["choices"][0]["message"]["content"].split(" ")) == 5
    finally:
        up.stop()
