"""Tests for qgpt: profile math, statistical soundness of the mixing, entropy accounting, QRNG fallback
with a local fake QBCK server, the generator on a tiny offline model, and the FastAPI surface in the seed's
formats."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import torch
from aiohttp import web
from transformers import TemperatureLogitsWarper, TopPLogitsWarper

from gpu_apps.qgpt.api import create_app
from gpu_apps.qgpt.entropy import CircuitBreaker, EntropyPool, QrngClient
from gpu_apps.qgpt.generator import QuantumGenerator
from gpu_apps.qgpt.processor import QuantumLogitsProcessor, bytes_to_uniforms
from gpu_apps.qgpt.profiles import PROFILES, UnknownProfileError, get_profile
from gpu_apps.qgpt.tiny import save_tiny

API_KEY = "qbck-secret-key-0123"
SEED_DIAG_KEYS = {"total_entropy_consumed", "modifications_applied", "average_logit_diff", "entropy_source"}
SEED_RESPONSE_KEYS = {"generated_text", "tokens_generated", "quantum_profile", "quantum_diagnostics",
                      "generation_time", "model", "temperature"}


def chi_square_ok(counts: np.ndarray, probs: np.ndarray, z: float = 3.09) -> tuple[bool, float, float]:
    """Pearson chi-square goodness of fit at the 0.1 % level (Wilson-Hilferty critical value); bins with an
    expected count below 5 are merged."""
    expected = probs * counts.sum()
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum()) if small.any() else counts
    exp = np.append(expected[~small], expected[small].sum()) if small.any() else expected
    stat = float(((obs - exp) ** 2 / exp).sum())
    df = len(obs) - 1
    crit = df * (1 - 2 / (9 * df) + z * math.sqrt(2 / (9 * df))) ** 3
    return stat < crit, stat, crit


def seeded_pool(n_bytes: int, seed: int) -> EntropyPool:
    pool = EntropyPool(None, high_water=max(n_bytes, 1), low_water=0)
    assert pool.deposit(np.random.default_rng(seed).bytes(n_bytes)) == n_bytes
    return pool


def fixed_logits(vocab: int = 40, seed: int = 0) -> torch.Tensor:
    return torch.randn(vocab, generator=torch.Generator().manual_seed(seed)) * 1.5


def test_profiles() -> None:
    assert {n: p.influence for n, p in PROFILES.items()} == {
        "strict": 0.0, "light": 0.1, "medium": 0.3, "spicy": 0.5, "chaos": 0.8}
    assert get_profile(" Chaos ").name == "chaos" and get_profile("strict").is_control
    with pytest.raises(UnknownProfileError):
        get_profile("turbo")


def test_bytes_to_uniforms() -> None:
    u = bytes_to_uniforms(b"\x00\x00\x00\x00" + b"\xff\xff\xff\xff" + b"\x00\x00\x00\x80")
    assert u.tolist() == [0.0, 1 - 2.0 ** -32, 0.5]


@pytest.mark.parametrize(("temperature", "top_p"), [(1.0, 1.0), (0.7, 0.9)])
def test_strict_leaves_logits_untouched(temperature: float, top_p: float) -> None:
    pool = seeded_pool(64, seed=1)
    proc = QuantumLogitsProcessor(pool, "strict", temperature=temperature, top_p=top_p)
    scores = fixed_logits().repeat(4, 1)
    ids = torch.zeros((4, 3), dtype=torch.long)
    out = proc(ids, scores.clone())
    reference = TopPLogitsWarper(top_p)(ids, TemperatureLogitsWarper(temperature)(ids, scores.clone())) \
        if temperature != 1.0 else scores
    assert torch.equal(out, reference)  # bit-identical to what generate() itself would sample from
    if temperature == 1.0:
        same = scores.clone()
        assert proc(ids, same) is same
    assert proc.diagnostics() == {"total_entropy_consumed": 0, "modifications_applied": 0,
                                  "average_logit_diff": 0.0, "entropy_source": "none"}
    assert pool.level().bytes == 64 and pool.stats()["bytes_served"] == {"qrng": 0, "os_csprng": 0}


def test_strict_sampled_distribution_matches_model() -> None:
    logits, draws = fixed_logits(), 20_000
    proc = QuantumLogitsProcessor(EntropyPool(None), "strict")
    out = proc(torch.zeros((draws, 1), dtype=torch.long), logits.repeat(draws, 1))
    rng = torch.Generator().manual_seed(3)
    tokens = torch.multinomial(torch.softmax(out, -1), 1, generator=rng).squeeze(1)
    p = torch.softmax(logits, 0).numpy()
    ok, stat, crit = chi_square_ok(np.bincount(tokens.numpy(), minlength=40), p)
    assert ok, (stat, crit)


def _chaos_run(logits: torch.Tensor, draws: int, seed: int, profile: str = "chaos"
               ) -> tuple[QuantumLogitsProcessor, torch.Tensor, torch.Tensor]:
    proc = QuantumLogitsProcessor(seeded_pool(4 * draws, seed), profile)
    scores = logits.repeat(draws, 1)
    out = proc(torch.zeros((draws, 1), dtype=torch.long), scores)
    emitted = torch.multinomial(torch.softmax(out, -1), 1, generator=torch.Generator().manual_seed(seed))
    return proc, out, emitted.squeeze(1)


def test_chaos_moves_each_step_but_not_the_marginal() -> None:
    logits, draws, alpha = fixed_logits(), 20_000, 0.8
    p = torch.softmax(logits, 0)
    proc, out, emitted = _chaos_run(logits, draws, seed=11)
    diag = proc.diagnostics()
    assert diag["modifications_applied"] == draws and diag["average_logit_diff"] > 0
    assert diag["entropy_source"] == "qrng"
    delta = out - logits
    assert ((delta != 0).sum(1) == 1).all()  # exactly one logit (the quantum token) raised per row
    q = delta.argmax(1)
    assert math.isclose(diag["average_logit_diff"], float(delta.abs().mean()), rel_tol=1e-4)
    # each row's distribution is exactly (1 - a) p + a delta_q
    p_rows = torch.softmax(out, -1)
    assert torch.allclose(p_rows.gather(1, q[:, None]).squeeze(1), (1 - alpha) * p[q] + alpha, atol=1e-5)
    tv = 0.5 * (p_rows - p).abs().sum(1)
    assert float(tv.mean()) > 0.5  # strongly moved per step...
    # ...while the quantum tokens are exact samples from p (no bias toward any ids), as are emitted tokens
    for sample in (q, emitted):
        ok, stat, crit = chi_square_ok(np.bincount(sample.numpy(), minlength=40), p.numpy())
        assert ok, (stat, crit)
    assert float((emitted == q).float().mean()) > alpha


def test_no_low_id_bias_and_the_test_has_power() -> None:
    vocab, draws = 64, 20_000
    uniform = np.full(vocab, 1 / vocab)
    _, _, emitted = _chaos_run(torch.zeros(vocab), draws, seed=5)
    assert chi_square_ok(np.bincount(emitted.numpy(), minlength=vocab), uniform)[0]
    assert abs(float(emitted.float().mean()) - (vocab - 1) / 2) < 0.5
    # A naive design that maps u straight to an id (floor(u * V)) ignores p: the same test rejects it.
    logits = fixed_logits()
    u = bytes_to_uniforms(np.random.default_rng(5).bytes(4 * draws))
    naive = np.floor(u * 40).astype(int)
    assert not chi_square_ok(np.bincount(naive, minlength=40), torch.softmax(logits, 0).numpy())[0]


@pytest.mark.parametrize("profile", ["light", "medium", "spicy"])
def test_each_profile_gives_its_influence(profile: str) -> None:
    alpha = get_profile(profile).influence
    logits = fixed_logits(seed=2)
    _, out, _ = _chaos_run(logits, 500, seed=9, profile=profile)
    q = (out - logits).argmax(1)
    got = torch.softmax(out, -1).gather(1, q[:, None]).squeeze(1)
    assert torch.allclose(got, (1 - alpha) * torch.softmax(logits, 0)[q] + alpha, atol=1e-5)


def test_inverse_cdf_endpoints_skip_masked_tokens() -> None:
    pool = EntropyPool(None, high_water=8, low_water=0)
    pool.deposit(b"\x00\x00\x00\x00" + b"\xff\xff\xff\xff")  # u = 0 and u = 1 - 2**-32
    proc = QuantumLogitsProcessor(pool, "chaos")
    inf = float("-inf")
    scores = torch.tensor([[inf, 0.0, 1.0, 2.0, inf]] * 2)
    out = proc(torch.zeros((2, 1), dtype=torch.long), scores)
    assert (out - torch.nan_to_num(scores)).nan_to_num().argmax(1).tolist() == [1, 3]
    assert torch.isinf(out[:, [0, 4]]).all()


def test_entropy_accounting_is_exact() -> None:
    batch, steps, spare = 3, 5, 10
    pool = seeded_pool(4 * batch * steps + spare, seed=4)
    proc = QuantumLogitsProcessor(pool, "medium", temperature=0.8, top_p=0.95)
    ids, scores = torch.zeros((batch, 2), dtype=torch.long), fixed_logits().repeat(batch, 1)
    for _ in range(steps):
        proc(ids, scores.clone())
    assert proc.total_entropy_consumed == 4 * batch * steps == pool.stats()["bytes_served"]["qrng"]
    assert pool.level().bytes == spare and proc.entropy_source == "qrng"
    proc(ids, scores.clone())  # the pool holds 10 < 12 bytes: the whole step falls back, labelled
    assert pool.stats()["bytes_served"] == {"qrng": 4 * batch * steps, "os_csprng": 4 * batch}
    assert proc.total_entropy_consumed == 4 * batch * (steps + 1) and proc.entropy_source == "mixed"
    assert proc.modifications_applied == batch * (steps + 1) and pool.level().bytes == spare


# ---- fake QBCK server, client, circuit breaker, pool ------------------------------------------------------


@pytest.fixture
async def qrng() -> AsyncIterator[dict[str, Any]]:
    state: dict[str, Any] = {"mode": "ok", "calls": 0, "keys": []}

    async def block_hex(request: web.Request) -> web.StreamResponse:
        state["calls"] += 1
        state["keys"].append(request.match_info["key"])
        size, length = int(request.query["size"]), int(request.query["length"])
        mode = state["mode"]
        if mode == "quota":
            return web.json_response({"data": {}, "error": "quota exceeded"})
        if mode == "500":
            return web.Response(status=500, text="boom")
        if mode == "garbage":
            return web.Response(text="<html>not json</html>")
        if mode == "stall":
            await asyncio.sleep(1.0)
        return web.json_response({"data": {"result": [os.urandom(length).hex() for _ in range(size)]},
                                  "error": "OK"})

    app = web.Application()
    app.router.add_get("/{key}/qbck/block/hex", block_hex)
    runner = web.AppRunner(app, shutdown_timeout=0.1, access_log=None)  # the server side may log paths
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state["url"] = f"http://127.0.0.1:{port}"
    yield state
    await runner.cleanup()


def make_client(qrng: dict[str, Any], timeout_s: float = 1.0) -> QrngClient:
    return QrngClient(API_KEY, base_url=qrng["url"], timeout_s=timeout_s, block_length=16, max_blocks=4)


async def test_client_fetches_hex_blocks(qrng: dict[str, Any]) -> None:
    client = make_client(qrng)
    try:
        data = await client.fetch(40)
    finally:
        await client.close()
    assert len(data) == 48 and qrng["keys"] == [API_KEY]  # 3 blocks of 16 bytes
    assert API_KEY not in repr(client)


@pytest.mark.parametrize(("mode", "message"), [("quota", "quota exceeded"), ("500", "HTTP 500"),
                                               ("stall", "timed out"), ("garbage", "failed")])
async def test_pool_falls_back_when_qrng_fails(qrng: dict[str, Any], mode: str, message: str,
                                               caplog: pytest.LogCaptureFixture) -> None:
    qrng["mode"] = mode
    pool = EntropyPool(make_client(qrng, timeout_s=0.2), high_water=64, low_water=32)
    caplog.set_level(logging.DEBUG)
    started = time.monotonic()
    assert await pool.refill_once() == 0
    assert time.monotonic() - started < 0.9
    data, source = pool.take(8)
    stats = pool.stats()
    await pool.stop()
    assert len(data) == 8 and source == "os_csprng"
    assert stats["refill_failures"] == 1 and message in stats["last_error"]
    assert stats["bytes_served"] == {"qrng": 0, "os_csprng": 8} and stats["circuit_breaker"] == "closed"
    assert API_KEY not in caplog.text and API_KEY not in json.dumps(stats)


async def test_circuit_breaker_opens_and_half_opens(qrng: dict[str, Any]) -> None:
    now = [0.0]
    breaker = CircuitBreaker(failure_threshold=2, cooldown_s=5.0, clock=lambda: now[0])
    pool = EntropyPool(make_client(qrng), high_water=64, low_water=32, breaker=breaker)
    qrng["mode"] = "500"
    await pool.refill_once()
    assert breaker.state == "closed"
    await pool.refill_once()
    assert breaker.state == "open" and qrng["calls"] == 2
    await pool.refill_once()  # open: no request goes out
    assert qrng["calls"] == 2 and pool.take(4)[1] == "os_csprng"
    now[0] = 5.0
    assert breaker.state == "half_open"
    await pool.refill_once()  # the half-open trial fails: open again
    assert breaker.state == "open" and breaker.times_opened == 2 and qrng["calls"] == 3
    now[0] = 10.0
    qrng["mode"] = "ok"
    assert await pool.refill_once() == 64  # trial succeeds, breaker closes, pool fills to high water
    assert breaker.state == "closed" and pool.take(8)[1] == "qrng"
    assert pool.level().bytes == 56 and pool.stats()["bytes_served"]["qrng"] == 8
    await pool.stop()


async def test_background_refill_and_gauge(qrng: dict[str, Any]) -> None:
    pool = EntropyPool(make_client(qrng), high_water=256, low_water=128, poll_interval_s=0.05)

    async def wait_level(target: int) -> None:
        for _ in range(200):
            if pool.level().bytes >= target:
                return
            await asyncio.sleep(0.01)
        raise AssertionError(pool.stats())

    pool.start()
    try:
        await wait_level(256)
        assert pool.level().fraction == 1.0
        assert pool.take(200)[1] == "qrng" and pool.level().bytes == 56
        await wait_level(256)  # woken below the low-water mark, refilled to high water
        assert pool.stats()["refills"] >= 8
    finally:
        await pool.stop()


# ---- generator and API on a tiny offline model ------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("qgpt-tiny"))


@pytest.fixture(scope="module")
def gen(tiny_dir: Path) -> QuantumGenerator:
    return QuantumGenerator.from_pretrained_dir(tiny_dir, device="cpu", dtype="float32",
                                                model_name="tiny-qgpt")


def test_generator_strict_is_deterministic_and_plain_sampling(gen: QuantumGenerator) -> None:
    first = gen.generate("The quantum", max_new_tokens=12, quantum_profile="strict", temperature=0.9, seed=7)
    second = gen.generate("The quantum", max_new_tokens=12, quantum_profile="strict", temperature=0.9, seed=7)
    assert set(first) == SEED_RESPONSE_KEYS and set(first["quantum_diagnostics"]) == SEED_DIAG_KEYS
    assert first["generated_text"] == second["generated_text"] and first["tokens_generated"] == 12
    assert first["quantum_diagnostics"]["modifications_applied"] == 0
    ids = gen.tokenizer("The quantum", return_tensors="pt")
    torch.manual_seed(7)
    plain = gen.model.generate(**ids, do_sample=True, temperature=0.9, top_k=0, max_new_tokens=12,
                               pad_token_id=gen.tokenizer.eos_token_id)
    assert gen.tokenizer.decode(plain[0, ids["input_ids"].shape[1]:], skip_special_tokens=True) \
        == first["generated_text"]


def test_generator_chaos_accounts_every_step(gen: QuantumGenerator) -> None:
    out = gen.generate("Hello", max_new_tokens=10, quantum_profile="chaos", temperature=0.8, top_p=0.95,
                       seed=1)
    diag, n = out["quantum_diagnostics"], out["tokens_generated"]
    assert out["quantum_profile"] == "chaos" and out["model"] == "tiny-qgpt" and out["temperature"] == 0.8
    assert diag["modifications_applied"] == n and diag["total_entropy_consumed"] == 4 * n
    assert diag["average_logit_diff"] > 0 and diag["entropy_source"] == "os_csprng"  # no QRNG configured
    greedy = gen.generate("Hello", max_new_tokens=4, quantum_profile="chaos", temperature=0.0)
    assert greedy["quantum_diagnostics"]["modifications_applied"] == 0
    with pytest.raises(UnknownProfileError):
        gen.generate("Hello", max_new_tokens=2, quantum_profile="turbo")


def test_generator_stream_matches_generate(gen: QuantumGenerator) -> None:
    ref = gen.generate("The quick", max_new_tokens=10, quantum_profile="strict", temperature=1.0, seed=3)
    stream = gen.stream("The quick", max_new_tokens=10, quantum_profile="strict", temperature=1.0, seed=3)
    assert "".join(stream) == ref["generated_text"]
    assert stream.response is not None and stream.response["tokens_generated"] == ref["tokens_generated"]


def test_generator_stream_cancel_stops_early(gen: QuantumGenerator) -> None:
    stream = gen.stream("Hello", max_new_tokens=200, quantum_profile="light", temperature=1.0, seed=4)
    pieces = iter(stream)
    next(pieces)
    stream.cancel()
    rest = list(pieces)
    assert stream.response is not None and stream.response["tokens_generated"] < 200, len(rest)


AUTH = {"Authorization": "Basic " + base64.b64encode(b"ak-test:as-secret").decode()}


@pytest.fixture
async def api(gen: QuantumGenerator) -> AsyncIterator[httpx.AsyncClient]:
    assert isinstance(gen.pool, EntropyPool)
    app = create_app(gen, gen.pool, credentials=("ak-test", "as-secret"), manage_pool=False)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://qgpt") as client:
        yield client


async def test_api_health_and_generate(api: httpx.AsyncClient) -> None:
    health = (await api.get("/health")).json()
    assert health["status"] == "healthy" and health["service"] == "Quantum GPT API"
    assert health["entropy_pool"]["level_bytes"] == 0 and health["entropy_pool"]["circuit_breaker"] == "closed"
    assert health["entropy_pool"]["qrng_configured"] is False
    body = {"prompt": "Your text prompt", "max_tokens": 6, "temperature": 0.8, "quantum_profile": "medium"}
    assert (await api.post("/generate", json=body)).status_code == 401
    r = await api.post("/generate", json=body, headers=AUTH)
    assert r.status_code == 200, r.text
    out = r.json()
    assert set(out) == SEED_RESPONSE_KEYS and set(out["quantum_diagnostics"]) == SEED_DIAG_KEYS
    assert out["quantum_profile"] == "medium" and out["temperature"] == 0.8 and out["tokens_generated"] == 6
    assert out["quantum_diagnostics"]["modifications_applied"] == 6
    bad = await api.post("/generate", json={**body, "quantum_profile": "turbo"}, headers=AUTH)
    assert bad.status_code == 422 and "strict" in bad.text


async def test_api_streams_sse(api: httpx.AsyncClient) -> None:
    body = {"prompt": "Hello", "max_tokens": 8, "quantum_profile": "spicy", "stream": True, "seed": 2}
    r = await api.post("/generate", json=body, headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = [line.removeprefix("data: ") for line in r.text.split("\n\n") if line]
    assert events[-1] == "[DONE]"
    final = json.loads(events[-2])
    tokens = "".join(json.loads(e)["token"] for e in events[:-2])
    assert final["done"] is True and final["generated_text"] == tokens
    assert final["quantum_diagnostics"]["modifications_applied"] == final["tokens_generated"] == 8


async def test_api_lifespan_prefetches_pool(gen: QuantumGenerator, qrng: dict[str, Any]) -> None:
    pool = EntropyPool(make_client(qrng), high_water=128, low_water=64)
    app = create_app(gen, pool)
    async with app.router.lifespan_context(app):
        assert pool.level().bytes == 128 and pool.stats()["qrng_configured"]
    assert pool._task is None
