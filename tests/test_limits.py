"""Rate limits, budgets and spend, shared by two gateway replicas through Redis; JWT identities through the gateway."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import httpx
import jwt
import openai
import pytest
from conftest import JWT_SECRET, admin, create_key

MSG = [{"role": "user", "content": "hi"}]


def chat(base: str, key: str, model: str = "echo", **extra) -> httpx.Response:  # type: ignore[no-untyped-def]
    return httpx.post(base + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": model, "messages": MSG, **extra}, timeout=30)


def test_rate_limit_headers_and_429(stack) -> None:  # type: ignore[no-untyped-def]
    k = create_key(stack, rpm_limit=3)
    first = chat(stack.base_url, k["key"])
    assert first.headers["x-ratelimit-limit-requests"] == "3"
    assert first.headers["x-ratelimit-remaining-requests"] == "2"
    assert first.headers["x-ratelimit-reset-requests"].endswith("s")
    chat(stack.base_url, k["key"])
    chat(stack.base_url, k["key"])
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=k["key"], max_retries=0)
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model="echo", messages=MSG)
    assert e.value.status_code == 429
    assert e.value.body["code"] == "rate_limit_exceeded" and e.value.body["type"] == "requests"
    assert "requests per minute (limit 3)" in e.value.body["message"]
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 60


async def test_rpm_is_accurate_across_two_replicas_under_50_clients(stack, replica_url: str) -> None:  # type: ignore[no-untyped-def]
    limit, attempts = 120, 240
    k = create_key(stack, rpm_limit=limit)
    bases = [stack.base_url, replica_url]
    codes: list[int] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(attempts):
        queue.put_nowait(i)

    async def client_loop(c: httpx.AsyncClient) -> None:
        while not queue.empty():
            i = queue.get_nowait()
            r = await c.post(bases[i % 2] + "/v1/chat/completions", json={"model": "echo", "messages": MSG},
                             headers={"authorization": f"Bearer {k['key']}"})
            codes.append(r.status_code)

    async with httpx.AsyncClient(timeout=30, limits=httpx.Limits(max_connections=100)) as c:
        await asyncio.gather(*(client_loop(c) for _ in range(50)))
    assert set(codes) <= {200, 429}
    accepted = codes.count(200)
    assert abs(accepted - limit) <= limit * 0.05, accepted


def test_tpm_limit_counts_tokens_after_the_response(stack) -> None:  # type: ignore[no-untyped-def]
    k = create_key(stack, tpm_limit=20)
    first = chat(stack.base_url, k["key"], model="fake")  # usage: 7 prompt + 6 completion tokens
    assert first.status_code == 200 and first.headers["x-ratelimit-limit-tokens"] == "20"
    time.sleep(0.5)  # tokens are counted after the response, off the request path
    second = chat(stack.base_url, k["key"], model="fake")
    assert second.status_code == 200 and second.headers["x-ratelimit-remaining-tokens"] == "7"
    time.sleep(0.5)
    third = chat(stack.base_url, k["key"], model="fake")
    assert third.status_code == 429 and "tokens per minute" in third.json()["error"]["message"]


async def test_max_parallel_requests(stack) -> None:  # type: ignore[no-untyped-def]
    k = create_key(stack, max_parallel_requests=2)
    async with httpx.AsyncClient(timeout=30) as c:
        rs = await asyncio.gather(*(c.post(stack.base_url + "/v1/chat/completions",
                                           headers={"authorization": f"Bearer {k['key']}"},
                                           json={"model": "slow", "delay": 0.3, "messages": MSG}) for _ in range(5)))
    codes = sorted(r.status_code for r in rs)
    assert codes == [200, 200, 429, 429, 429]
    assert "in flight" in next(r for r in rs if r.status_code == 429).json()["error"]["message"]
    assert chat(stack.base_url, k["key"]).status_code == 200  # slots were released


def test_budget_and_spend_log(stack) -> None:  # type: ignore[no-untyped-def]
    # model `priced`: 0.001 $/prompt token, 0.002 $/completion token; one call = 7·0.001 + 6·0.002 = $0.019
    k = create_key(stack, max_budget=0.03, budget_duration="30d", team_id="team-budget")
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=k["key"], max_retries=0)
    client.chat.completions.create(model="priced", messages=MSG)
    time.sleep(0.5)
    client.chat.completions.create(model="priced", messages=MSG)  # $0.019 spent < $0.03: allowed
    time.sleep(0.5)
    with pytest.raises(openai.RateLimitError) as e:  # $0.038 spent
        client.chat.completions.create(model="priced", messages=MSG)
    assert e.value.body["code"] == "insufficient_quota" and e.value.body["type"] == "insufficient_quota"

    async def rows() -> list[dict]:
        conn = await asyncpg.connect(stack.database_url)
        try:
            return [dict(r) for r in await conn.fetch(
                "SELECT key_id, team_id, model, requests, cost FROM spend_daily WHERE key_id = $1", k["key_id"])]
        finally:
            await conn.close()

    time.sleep(1.5)  # the spend log is written in batches, once a second
    daily = asyncio.run(rows())
    assert len(daily) == 1 and daily[0]["requests"] == 2 and daily[0]["team_id"] == "team-budget"
    assert float(daily[0]["cost"]) == pytest.approx(0.038)
    # the same through the API: an admin sees it by key or team; the key sees its own
    by_team = httpx.get(stack.base_url + "/spend/daily", params={"team_id": "team-budget"}, headers=admin(stack))
    assert by_team.json()["total_cost"] == pytest.approx(0.038)
    own = httpx.get(stack.base_url + "/spend/daily", headers={"authorization": f"Bearer {k['key']}"}).json()
    assert own["data"][0]["key_id"] == k["key_id"] and own["data"][0]["model"] == "priced"
    other = httpx.get(stack.base_url + "/spend/daily", params={"team_id": "x"},
                      headers={"authorization": f"Bearer {k['key']}"})
    assert other.status_code == 403


def test_team_limits_are_shared_by_its_keys(stack) -> None:  # type: ignore[no-untyped-def]
    a, b = create_key(stack, team_id="team-small"), create_key(stack, team_id="team-small")  # team: 3 rpm
    codes = [chat(stack.base_url, key).status_code for key in (a["key"], b["key"], a["key"], b["key"])]
    assert codes == [200, 200, 200, 429]


def _token(**claims) -> str:  # type: ignore[no-untyped-def]
    now = int(time.time())
    return jwt.encode({"iat": now, "exp": now + 300, **claims}, JWT_SECRET, algorithm="HS256")


def test_jwt_identities_through_the_gateway(stack) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=_token(sub="dana", models=["echo"]),
                           max_retries=0)
    assert client.chat.completions.create(model="echo", messages=MSG).choices[0].message.content == "hi"
    assert [m.id for m in client.models.list()] == ["echo"]
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="fake", messages=MSG)
    limited = _token(user="erin", rpm_limit=1)  # the seed classifier's form: `user` instead of `sub`
    assert chat(stack.base_url, limited).status_code == 200
    assert chat(stack.base_url, limited).status_code == 429
    expired = jwt.encode({"sub": "x", "exp": int(time.time()) - 3600}, JWT_SECRET, algorithm="HS256")
    r = chat(stack.base_url, expired)
    assert r.status_code == 401 and r.json()["error"]["message"] == "token has expired"
    forged = jwt.encode({"sub": "x", "exp": int(time.time()) + 60}, "another-secret-of-sufficient-length-123",
                        algorithm="HS256")
    assert chat(stack.base_url, forged).status_code == 401


def test_rs256_tokens_from_the_idp_jwks(stack, idp) -> None:  # type: ignore[no-untyped-def]
    client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=idp.token(sub="frank", team_id="team-idp"),
                           max_retries=0)
    assert client.chat.completions.create(model="echo", messages=MSG).choices[0].message.content == "hi"
    wrong_aud = jwt.encode({"sub": "x", "iss": idp.issuer, "aud": "someone-else", "exp": int(time.time()) + 60},
                           idp.private_key, algorithm="RS256", headers={"kid": idp.kid})
    r = chat(stack.base_url, wrong_aud)
    assert r.status_code == 401 and "audience" in r.json()["error"]["message"]
    # an IdP role makes an admin: it may create keys
    admin_token = idp.token(sub="lead", roles=["gatehouse-admin"])
    r = httpx.post(stack.base_url + "/key/generate", json={"key_alias": "from-idp-admin"},
                   headers={"authorization": f"Bearer {admin_token}"})
    assert r.status_code == 200, r.text
    r = httpx.post(stack.base_url + "/key/generate", json={}, headers={"authorization": f"Bearer {idp.token(sub='x')}"})
    assert r.status_code == 403
