"""Hybrid scaling (seed 004): the policy, its settings, reconciliation and the /health report."""

from __future__ import annotations

import pytest

from gpu_apps.scaling import HybridScaler, ScalingSettings


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


async def test_window_follows_recent_activity() -> None:
    clock, applied = Clock(), []

    async def apply(app: str, window: int, max_containers: int) -> None:
        applied.append((app, window, max_containers))

    s = HybridScaler(ScalingSettings(base_warm_time=900, extension_time=600, activity_window=300,
                                     max_containers=4), apply, clock)
    assert s.desired_window("idle-app") == 900  # never seen: base warm time
    s.record("qwen3-4b")
    assert s.desired_window("qwen3-4b") == 1500  # recent activity: base + extension
    assert await s.reconcile() == {"qwen3-4b": 1500}
    assert await s.reconcile() == {}  # nothing changed: no call to Modal
    clock.t += 301  # the activity window passed
    assert await s.reconcile() == {"qwen3-4b": 900}
    assert applied == [("qwen3-4b", 1500, 4), ("qwen3-4b", 900, 4)]
    h = s.health()
    assert h["configuration"]["extension_time"] == 600 and h["models"] == ["qwen3-4b"]
    assert h["scaling"]["qwen3-4b"] == {"scaledown_window": 900, "recent_requests": 0, "total_requests": 1,
                                        "seconds_since_last_request": 301.0}


def test_activity_is_per_model() -> None:
    clock = Clock()

    async def apply(*_: object) -> None:
        return None

    s = HybridScaler(ScalingSettings(), apply, clock)
    s.record("a")
    clock.t += 100
    s.record("b")
    clock.t += 250  # a's request is 350 s old, b's 250 s
    assert (s.desired_window("a"), s.desired_window("b")) == (900, 1800)


def test_settings_from_the_seed_environment() -> None:
    s = ScalingSettings.from_env({"MODAL_BASE_WARM_TIME": "600", "MODAL_EXTENSION_TIME": "600",
                                  "MODAL_ACTIVITY_WINDOW": "300", "MODAL_MAX_CONTAINERS": "10"})
    assert (s.base_warm_time, s.extension_time, s.activity_window, s.max_containers) == (600, 600, 300, 10)
    assert ScalingSettings.from_env({}) == ScalingSettings()  # the seed's defaults: 900 / 900 / 300 / 10
    with pytest.raises(ValueError, match="MODAL_BASE_WARM_TIME must be a whole number"):
        ScalingSettings.from_env({"MODAL_BASE_WARM_TIME": "15m"})
    with pytest.raises(ValueError, match="at least 2 s"):
        ScalingSettings(base_warm_time=1)


def test_modal_app_of_urls() -> None:
    from gpu_apps.scaling import modal_app_of

    assert modal_app_of("https://acme-prod--gatehouse-vllm-qwen3-4b-serve.modal.run/v1") == "gatehouse-vllm-qwen3-4b"
    assert modal_app_of("https://acme--gatehouse-qgpt-web.modal.run") == "gatehouse-qgpt"
    assert modal_app_of("http://127.0.0.1:8000/v1") is None


def test_workers_report_scaling_to_the_gateway_health(stack) -> None:  # type: ignore[no-untyped-def]
    """The worker counts requests to a Modal-hosted model and publishes its decision; /health shows it."""
    import time

    import httpx

    httpx.post(stack.base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {stack.master_key}"},
               json={"model": "echo-modal", "messages": [{"role": "user", "content": "x"}]})
    deadline = time.time() + 15
    report = None
    while time.time() < deadline:
        scaling = httpx.get(stack.base_url + "/health").json().get("scaling") or {}
        report = next((w["scaling"].get("gatehouse-vllm-echo") for w in scaling.values()
                       if "gatehouse-vllm-echo" in w["scaling"]), None)
        if report:
            break
        time.sleep(0.5)
    assert report is not None, "no scaling report reached /health"
    assert report["recent_requests"] >= 1 and report["scaledown_window"] == 1800  # 900 base + 900 extension
