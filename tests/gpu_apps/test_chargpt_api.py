"""The char-GPT seed's own HTTP surface (what the Modal app serves): /health, /generate, x-api-key, CORS."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from gpu_apps.chargpt.api import create_app
from gpu_apps.chargpt.engine import CharGPTEngine


@pytest.fixture(scope="module")
def client() -> TestClient:
    return TestClient(create_app(CharGPTEngine.load(), api_key="seed-key"))


def test_health(client: TestClient) -> None:
    r = client.get("/health")
    assert r.status_code == 200 and r.json()["status"] == "healthy" and r.json()["model_loaded"] is True


def test_generate_in_the_seed_format_and_deterministic(client: TestClient) -> None:
    body = {"seed": 42, "temperature": 0.8, "num_chars": 50}
    a = client.post("/generate", json=body, headers={"x-api-key": "seed-key"})
    b = client.post("/generate", json=body, headers={"x-api-key": "seed-key"})
    assert a.status_code == 200
    out = a.json()
    assert len(out["generated_text"]) == 50 and out["generated_text"] == b.json()["generated_text"]
    assert out["seed"] == 42 and out["temperature"] == 0.8 and out["num_chars"] == 50


def test_api_key_and_validation(client: TestClient) -> None:
    assert client.post("/generate", json={}, headers={"x-api-key": "wrong"}).status_code == 401
    assert client.post("/generate", json={}).status_code == 401
    assert client.post("/generate", json={"num_chars": 0}, headers={"x-api-key": "seed-key"}).status_code == 422
    pre = client.options("/generate", headers={"origin": "https://ui.example", "access-control-request-method": "POST",
                                               "access-control-request-headers": "x-api-key"})
    assert pre.status_code == 200 and pre.headers["access-control-allow-origin"] == "*"
