"""Virtual keys: the admin API, every credential form, allowlists, revocation across gateway replicas."""

from __future__ import annotations

import asyncio
import base64
import os
import subprocess
import sys
import time

import asyncpg
import httpx
import openai
import pytest
from conftest import admin, create_key

from gateway.db.migrate import discover, migrate

MSG = [{"role": "user", "content": "hi there"}]


def sdk(stack, key: str) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0)


def test_generate_returns_the_key_once_and_stores_only_a_hash(stack) -> None:  # type: ignore[no-untyped-def]
    k = create_key(stack, key_alias="alice-laptop", models=["echo"], metadata={"owner": "alice"})
    assert k["key"].startswith("sk-gh-") and k["key_id"].startswith("ak-") and k["key_secret"].startswith("as-")
    assert k["key_alias"] == "alice-laptop" and k["models"] == ["echo"] and k["metadata"] == {"owner": "alice"}

    async def row() -> dict:
        conn = await asyncpg.connect(stack.database_url)
        try:
            return dict(await conn.fetchrow("SELECT * FROM virtual_keys WHERE key_id = $1", k["key_id"]))
        finally:
            await conn.close()

    stored = asyncio.run(row())
    assert k["key_secret"].encode() not in stored["secret_hash"] and len(stored["secret_hash"]) == 32
    info = httpx.get(stack.base_url + "/key/info", params={"key": k["key_id"]}, headers=admin(stack)).json()
    assert "secret" not in str(info["info"]).lower() or "key_secret" not in info["info"]
    assert k["key_secret"] not in str(info)


def test_every_credential_form_is_accepted(stack) -> None:  # type: ignore[no-untyped-def]
    k = create_key(stack, models=["echo"])
    basic = base64.b64encode(f"{k['key_id']}:{k['key_secret']}".encode()).decode()
    for headers in ({"authorization": f"Bearer {k['key']}"}, {"x-api-key": k["key"]},
                    {"authorization": f"Basic {basic}"}, {"authorization": k["basic_auth"]}):
        r = httpx.post(stack.base_url + "/v1/chat/completions", headers=headers,
                       json={"model": "echo", "messages": MSG})
        assert r.status_code == 200, (headers, r.text)
    assert sdk(stack, k["key"]).chat.completions.create(model="echo", messages=MSG).choices[0].message.content == \
        "hi there"


@pytest.mark.parametrize("mutate", ["wrong_secret", "wrong_id", "truncated", "basic_wrong_secret"])
def test_wrong_keys_are_rejected(stack, mutate: str) -> None:  # type: ignore[no-untyped-def]
    k = create_key(stack)
    bad = {"wrong_secret": k["key"][:-4] + "AAAA", "wrong_id": "sk-gh-0123456789abcdef." + k["key"].split(".")[1],
           "truncated": k["key"][:20]}.get(mutate)
    headers = {"authorization": f"Bearer {bad}"} if bad else {
        "authorization": "Basic " + base64.b64encode(f"{k['key_id']}:as-{'x' * 43}".encode()).decode()}
    r = httpx.get(stack.base_url + "/v1/models", headers=headers)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert k["key_secret"][3:] not in r.text


def test_model_allowlist(stack) -> None:  # type: ignore[no-untyped-def]
    k = create_key(stack, models=["echo"])
    client = sdk(stack, k["key"])
    assert [m.id for m in client.models.list()] == ["echo"]
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="fake", messages=MSG)
    assert e.value.status_code == 403 and e.value.body["code"] == "model_not_allowed"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("fake")


def test_admin_routes_need_an_admin(stack) -> None:  # type: ignore[no-untyped-def]
    k = create_key(stack)
    h = {"authorization": f"Bearer {k['key']}"}
    for method, path, body in (("POST", "/key/generate", {}), ("GET", "/key/list", None),
                               ("POST", "/key/delete", {"keys": [k["key_id"]]})):
        r = httpx.request(method, stack.base_url + path, json=body, headers=h)
        assert r.status_code == 403 and r.json()["error"]["code"] == "admin_only", path
    own = httpx.get(stack.base_url + "/key/info", headers=h)  # a key may look at itself
    assert own.status_code == 200 and own.json()["key"] == k["key_id"]
    other = create_key(stack)
    r = httpx.get(stack.base_url + "/key/info", params={"key": other["key_id"]}, headers=h)
    assert r.status_code == 403
    # an admin key (made by the master key) can manage keys, but not mint more admins
    adm = create_key(stack, is_admin=True)
    ha = {"authorization": f"Bearer {adm['key']}"}
    assert httpx.post(stack.base_url + "/key/generate", json={}, headers=ha).status_code == 200
    assert httpx.post(stack.base_url + "/key/generate", json={"is_admin": True}, headers=ha).status_code == 403


def test_update_list_and_validation(stack) -> None:  # type: ignore[no-untyped-def]
    k = create_key(stack, team_id="team-upd", models=["echo"], rpm_limit=10)
    client = sdk(stack, k["key"])
    with pytest.raises(openai.PermissionDeniedError):
        client.chat.completions.create(model="fake", messages=MSG)
    r = httpx.post(stack.base_url + "/key/update", json={"key": k["key"], "models": ["echo", "fake"],
                                                         "rpm_limit": 20}, headers=admin(stack))
    assert r.status_code == 200 and r.json()["models"] == ["echo", "fake"] and r.json()["rpm_limit"] == 20
    assert client.chat.completions.create(model="fake", messages=MSG).choices  # effective at once
    listed = httpx.get(stack.base_url + "/key/list", params={"team_id": "team-upd", "return_full_object": True},
                       headers=admin(stack)).json()
    assert listed["total_count"] == 1 and listed["keys"][0]["key_id"] == k["key_id"]
    for body, param in (({"budget_duration": "soon"}, "budget_duration"), ({"rpm_limit": -1}, "rpm_limit")):
        r = httpx.post(stack.base_url + "/key/generate", json=body, headers=admin(stack))
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text
    r = httpx.post(stack.base_url + "/key/update", json={"key": "ak-0000000000000000", "rpm_limit": 1},
                   headers=admin(stack))
    assert r.status_code == 404


NOT_YET = "model(s) not configured on this gateway yet: "


def test_a_key_may_name_a_model_not_configured_yet(stack) -> None:  # type: ignore[no-untyped-def]
    """As in LiteLLM, teams create keys before the model is deployed: accepted with a warning, and the
    allowlist is still enforced."""
    k = create_key(stack, key_alias="early-bird", models=["not-deployed-yet"])
    assert k["warnings"] == [NOT_YET + "not-deployed-yet"]
    assert k["models"] == ["not-deployed-yet"] and k["key_alias"] == "early-bird"
    assert k["key"].startswith("sk-gh-") and k["basic_auth"].startswith("Basic ") and k["key_secret"]
    info = httpx.get(stack.base_url + "/key/info", params={"key": k["key_id"]}, headers=admin(stack)).json()
    assert info["info"]["models"] == ["not-deployed-yet"]
    client = sdk(stack, k["key"])
    with pytest.raises(openai.PermissionDeniedError) as denied:  # a configured model it is not allowed
        client.chat.completions.create(model="chargpt", messages=MSG, max_tokens=4)
    assert denied.value.status_code == 403 and denied.value.body["code"] == "model_not_allowed"
    with pytest.raises(openai.NotFoundError) as missing:  # its own model, until it is configured
        client.chat.completions.create(model="not-deployed-yet", messages=MSG)
    assert missing.value.status_code == 404 and missing.value.body["code"] == "model_not_found"
    assert [m.id for m in client.models.list()] == []
    # only the models not configured are named; a key naming configured models only gets no warnings
    mixed = create_key(stack, models=["echo", "not-deployed-yet", "also-later"])
    assert mixed["warnings"] == [NOT_YET + "also-later, not-deployed-yet"]
    assert sdk(stack, mixed["key"]).chat.completions.create(model="echo", messages=MSG).choices
    assert "warnings" not in create_key(stack, models=["echo"]) and "warnings" not in create_key(stack)
    # /key/update says the same
    r = httpx.post(stack.base_url + "/key/update", json={"key": k["key_id"], "models": ["echo", "later-model"]},
                   headers=admin(stack))
    assert r.status_code == 200 and r.json()["models"] == ["echo", "later-model"], r.text
    assert r.json()["warnings"] == [NOT_YET + "later-model"]
    assert client.chat.completions.create(model="echo", messages=MSG).choices  # effective at once
    r = httpx.post(stack.base_url + "/key/update", json={"key": k["key_id"], "rpm_limit": 50}, headers=admin(stack))
    assert r.status_code == 200 and "warnings" not in r.json()


def test_keys_cli_prints_the_warning(stack) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "GATEHOUSE_ADMIN_KEY": stack.master_key, "FORCE_COLOR": "1"}
    r = subprocess.run([sys.executable, "-m", "cli", "keys", "create", "--model", "not-deployed-yet", "--base-url",
                        stack.base_url], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "sk-gh-" in r.stdout and NOT_YET + "not-deployed-yet" not in r.stdout
    assert NOT_YET + "not-deployed-yet" in r.stderr and "\x1b[33m" in r.stderr  # on stderr, in yellow


def test_expired_key_is_rejected(stack) -> None:  # type: ignore[no-untyped-def]
    k = create_key(stack, duration="1s")
    assert httpx.get(stack.base_url + "/v1/models", headers={"x-api-key": k["key"]}).status_code == 200
    time.sleep(2.1)
    r = httpx.get(stack.base_url + "/v1/models", headers={"x-api-key": k["key"]})
    assert r.status_code == 401 and "expired" in r.json()["error"]["message"]


def test_revocation_reaches_every_replica_within_a_second(stack, replica_url: str) -> None:  # type: ignore[no-untyped-def]
    """Two gateway processes share Redis and PostgreSQL; revoking through one stops the key on both."""
    k = create_key(stack)
    h = {"authorization": f"Bearer {k['key']}"}
    for base in (stack.base_url, replica_url):  # both replicas have it cached now
        assert httpx.get(base + "/v1/models", headers=h).status_code == 200
    r = httpx.post(stack.base_url + "/key/delete", json={"keys": [k["key"]]}, headers=admin(stack))
    assert r.json()["deleted_keys"] == [k["key_id"]]
    revoked_at = time.time()
    while httpx.get(replica_url + "/v1/models", headers=h).status_code == 200:
        assert time.time() - revoked_at < 1.0, "the replica still accepts a revoked key after 1 s"
        time.sleep(0.02)
    assert httpx.get(stack.base_url + "/v1/models", headers=h).status_code == 401


async def test_migrations_are_idempotent(stack) -> None:  # type: ignore[no-untyped-def]
    conn = await asyncpg.connect(stack.database_url)
    try:
        assert await migrate(conn) == []  # the gateway applied them at start-up
        versions = await conn.fetch("SELECT version FROM gatehouse_migrations ORDER BY version")
        assert [r["version"] for r in versions] == [m.version for m in discover()] == [1, 2, 3, 4, 5, 6, 7]
    finally:
        await conn.close()


def test_keys_cli(stack) -> None:  # type: ignore[no-untyped-def]
    env = {**os.environ, "GATEHOUSE_ADMIN_KEY": stack.master_key}
    run = [sys.executable, "-m", "cli", "keys"]
    r = subprocess.run([*run, "create", "--alias", "cli-key", "-m", "echo", "--rpm", "5", "--base-url",
                        stack.base_url], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
    key = next(w for w in r.stdout.split() if w.startswith("sk-gh-"))
    assert sdk(stack, key).chat.completions.create(model="echo", messages=MSG).choices
    r = subprocess.run([*run, "list", "--base-url", stack.base_url], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode == 0 and "cli-key" in r.stdout
    key_id = "ak-" + key[len("sk-gh-"):].split(".")[0]
    r = subprocess.run([*run, "revoke", key_id, "--base-url", stack.base_url], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0 and key_id in r.stdout
    r = subprocess.run([*run, "info", key_id, "--base-url", stack.base_url], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0 and key_id in r.stdout
    r = subprocess.run([*run, "spend", key_id, "--base-url", stack.base_url], capture_output=True, text=True,
                       env=env, timeout=60)
    assert r.returncode == 0 and "total: $" in r.stdout, r.stderr


def test_no_credential_reaches_logs_or_error_messages(stack) -> None:  # type: ignore[no-untyped-def]
    import jwt as pyjwt
    from conftest import JWT_SECRET

    k = create_key(stack, models=["echo"])
    token = pyjwt.encode({"sub": "log-test", "exp": int(time.time()) + 60}, JWT_SECRET, algorithm="HS256")
    bad_token = token[:-6] + "AAAAAA"
    basic = base64.b64encode(f"{k['key_id']}:{k['key_secret']}".encode()).decode()
    bodies = []
    for headers in ({"authorization": f"Bearer {k['key']}"}, {"x-api-key": k["key"]},
                    {"authorization": f"Basic {basic}"}, {"authorization": f"Bearer {token}"},
                    {"authorization": f"Bearer {bad_token}"}, {"authorization": f"Bearer {k['key']}x"},
                    {"authorization": f"Bearer {stack.master_key}"}):
        for model in ("echo", "fake", "status-400"):
            r = httpx.post(stack.base_url + "/v1/chat/completions", headers=headers,
                           json={"model": model, "messages": MSG})
            bodies.append(r.text)
    time.sleep(0.5)
    everything = "\n".join(bodies) + "".join(p.read_text() for p in stack.logs.glob("*.log"))
    for secret in (k["key"], k["key_secret"], k["key_secret"][3:], basic, token, token.split(".")[2], JWT_SECRET,
                   stack.master_key, "sk-upstream-secret"):
        assert secret not in everything


def test_a_429_carries_the_same_rate_limit_headers_as_a_200(stack) -> None:  # type: ignore[no-untyped-def]
    k = create_key(stack, rpm_limit=1, tpm_limit=1000)
    h = {"authorization": f"Bearer {k['key']}"}
    ok = httpx.post(stack.base_url + "/v1/chat/completions", headers=h, json={"model": "echo", "messages": MSG})
    refused = httpx.post(stack.base_url + "/v1/chat/completions", headers=h, json={"model": "echo", "messages": MSG})
    assert ok.status_code == 200 and refused.status_code == 429, refused.text
    names = {n for n in ok.headers if n.startswith("x-ratelimit-")}
    assert names == {f"x-ratelimit-{w}-{u}" for w in ("limit", "remaining", "reset") for u in ("requests", "tokens")}
    assert {n for n in refused.headers if n.startswith("x-ratelimit-")} == names
    assert refused.headers["x-ratelimit-limit-requests"] == "1"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-limit-tokens"] == "1000"
    assert "retry-after" in refused.headers
