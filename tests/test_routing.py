"""Routing end to end (issue #12): a gateway and a worker in front of two fake upstreams, with a LiteLLM config of
several deployments per model, router keys in litellm_params, a failing deployment, fallbacks and a context-window
fallback. Fault-suite item: "two deployments → both serve, a failing one is cooled down, fallback answers"."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from conftest import MASTER_KEY, ROOT, Stack, free_port, show_logs, start_processes, stop_processes, wait_http

from bench.fake_upstream import UpstreamThread

ROUTER_KEYS = ("rpm", "tpm", "weight", "order", "max_parallel_requests", "model_info")


@dataclass
class Routed:
    stack: Stack
    a: UpstreamThread
    b: UpstreamThread


def deployment(name: str, model: str, up: UpstreamThread, **params: object) -> dict[str, object]:
    return {"model_name": name, "litellm_params": {"model": f"openai/{model}", "api_base": up.base_url,
                                                   "api_key": "sk-upstream", **params}}


@pytest.fixture(scope="module")
def routed(tmp_path_factory: pytest.TempPathFactory, redis_url: str, database_url: str) -> Iterator[Routed]:
    root = tmp_path_factory.mktemp("routing")
    a, b = UpstreamThread(free_port()).start(), UpstreamThread(free_port()).start()
    port = free_port()
    cfg = {
        "model_list": [
            deployment("pair", "fake", a, weight=1, rpm=100_000, tpm=10_000_000, order=1, max_parallel_requests=64,
                       model_info={"id": "pair-a"}),
            deployment("pair", "fake", b, weight=1, rpm=100_000, order=1, model_info={"id": "pair-b"}),
            deployment("shaky", "fake", a),
            deployment("shaky", "status-500", b),
            deployment("broken", "status-500", a),
            deployment("picky", "status-400", a),
            deployment("backup", "fake", b),
            deployment("small-context", "context-window", a),
            deployment("big-context", "fake", b),
        ],
        "router_settings": {"routing_strategy": "least-busy", "allowed_fails": 1, "cooldown_time": 120,
                            "num_retries": 2, "fallbacks": [{"broken": ["backup"]}, {"picky": ["backup"]}],
                            "context_window_fallbacks": [{"small-context": ["big-context"]}],
                            "enable_pre_call_checks": True},  # accepted, not used: named in the start-up warning
        "litellm_settings": {"drop_params": True, "set_verbose": False},
        "gatehouse": {"port": port, "data_dir": str(root / "data"), "request_timeout_s": 20},
    }
    path = root / "gatehouse.yaml"
    path.write_text(yaml.safe_dump(cfg))
    own_db = redis_url.rsplit("/", 1)[0] + "/7"  # a queue of its own: other stacks share the server
    env = {**os.environ, "REDIS_URL": own_db, "DATABASE_URL": database_url, "GATEHOUSE_MASTER_KEY": MASTER_KEY,
           "GATEHOUSE_LOG_LEVEL": "info"}
    for name in ("GATEHOUSE_CONFIG", "GATEHOUSE_PORT", "PROMETHEUS_MULTIPROC_DIR", "LANGFUSE_PUBLIC_KEY",
                 "LANGFUSE_SECRET_KEY"):
        env.pop(name, None)
    logs = root / "logs"
    procs = start_processes(path, env, logs)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health/ready", procs=procs)
        yield Routed(Stack(base, MASTER_KEY, own_db, database_url, path, a, logs, procs), a, b)
    finally:
        stop_processes(procs)
        a.stop()
        b.stop()
        show_logs(logs, "routing")


def hi(client: openai.OpenAI, model: str) -> str:
    r = client.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}])
    assert r.choices[0].message.content
    return r.model


def count(up: UpstreamThread, model: str) -> int:
    return up.fake.by_model.get(model, 0)


def test_both_deployments_serve(routed: Routed) -> None:
    before = count(routed.a, "fake"), count(routed.b, "fake")

    async def burst() -> None:
        client = routed.stack.aclient()
        await asyncio.gather(*(client.chat.completions.create(model="pair", messages=[{"role": "user",
                                                                                       "content": "hi"}])
                               for _ in range(24)))

    asyncio.run(burst())
    served = count(routed.a, "fake") - before[0], count(routed.b, "fake") - before[1]
    assert sum(served) == 24 and min(served) > 0, served


def test_the_routers_keys_never_reach_the_upstream(routed: Routed) -> None:
    for _ in range(6):
        assert hi(routed.stack.client(), "pair") == "pair"
    for up in (routed.a, routed.b):
        body = up.fake.last
        assert body is not None and body["model"] == "fake"
        assert not set(ROUTER_KEYS) & set(body), body


def test_a_failing_deployment_is_cooled_down(routed: Routed) -> None:
    client = routed.stack.client()
    for _ in range(20):  # each request the failing deployment fails is answered by the other one
        assert hi(client, "shaky") == "shaky"
    assert count(routed.b, "status-500") == 2  # allowed_fails: 1, so the second failure cooled it down
    for _ in range(10):
        assert hi(client, "shaky") == "shaky"
    assert count(routed.b, "status-500") == 2  # and it has had no request since (cooldown_time: 120)
    # /health (the console's models page) shows which deployment is cooling down, by id, not by address
    health = httpx.get(routed.stack.base_url + "/health", timeout=10).json()
    shaky = next(m for m in health["models"] if m["id"] == "shaky")
    states = {d["id"]: d for d in shaky["deployments"]}
    assert set(states) == {"shaky#0", "shaky#1"}, states
    assert states["shaky#1"]["healthy"] is False and 0 < states["shaky#1"]["cooldown_s"] <= 120, states
    assert states["shaky#0"]["healthy"] is True and states["shaky#0"]["cooldown_s"] == 0, states
    assert shaky["healthy"] is True  # one deployment still serves
    assert routed.b.base_url not in str(health) and routed.a.base_url not in str(health)


def test_a_fallback_answers_and_the_response_names_it(routed: Routed) -> None:
    client = routed.stack.client()
    failed = count(routed.a, "status-500")
    assert hi(client, "broken") == "backup"
    assert count(routed.a, "status-500") > failed
    chunks = list(client.chat.completions.create(model="broken", messages=[{"role": "user", "content": "hi"}],
                                                 stream=True, stream_options={"include_usage": True}))
    assert {c.model for c in chunks} == {"backup"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0


def test_a_context_window_error_moves_to_the_bigger_model(routed: Routed) -> None:
    assert hi(routed.stack.client(), "small-context") == "big-context"


def test_a_client_error_does_not_fall_back(routed: Routed) -> None:
    with pytest.raises(openai.BadRequestError):  # the upstream's 400 is the request's fault: no fallback
        hi(routed.stack.client(), "picky")


def test_ignored_settings_are_named_in_one_start_up_warning(routed: Routed) -> None:
    lines = [ln for ln in (routed.stack.logs / "gateway.log").read_text().splitlines() if "ignored" in ln]
    assert len(lines) == 1 and "router_settings.enable_pre_call_checks" in lines[0]
    assert "litellm_settings.set_verbose" in lines[0] and "drop_params" not in lines[0]


def test_an_unknown_router_setting_stops_start_up(tmp_path: Path) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text("model_list: [{model_name: m, litellm_params: {model: openai/fake}}]\n"
                 "router_settings: {routing_stratgy: least-busy}\n")
    r = subprocess.run([sys.executable, "-m", "cli", "serve", "-c", str(p)], capture_output=True, text=True,
                       timeout=60, cwd=ROOT)
    assert r.returncode == 2
    assert "router_settings.routing_stratgy: not supported" in r.stderr and "Traceback" not in r.stderr
