"""JWT auth (gateway.auth.jwt_auth): HS256 with a shared secret, RS256/ES256 against a real local JWKS
server (aiohttp on 127.0.0.1), a table of valid tokens and attacks, key rotation, refresh rate limiting,
single-flight fetches, IdP outages, claim mapping and settings validation."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from pydantic import ValidationError

from gateway.auth.jwt_auth import ClaimMapping, JwtSettings, JwtVerifier
from gateway.errors import AuthenticationFailed

SECRET = "hs256-shared-secret-for-tests-0123456789"
ISSUER = "https://idp.test/realms/gatehouse"
AUDIENCE = "gatehouse"
DROP = object()  # marks a claim to leave out
MakeVerifier = Callable[..., JwtVerifier]


# --------------------------------------------------------------------------- keys, tokens


@dataclass(frozen=True)
class Keys:
    rsa: rsa.RSAPrivateKey
    rsa_other: rsa.RSAPrivateKey  # the attacker's key
    ec: ec.EllipticCurvePrivateKey
    ec2: ec.EllipticCurvePrivateKey
    ec_other: ec.EllipticCurvePrivateKey

    def rsa_public_pem(self) -> bytes:
        return self.rsa.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo)


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys(rsa=rsa.generate_private_key(65537, 2048), rsa_other=rsa.generate_private_key(65537, 2048),
                ec=ec.generate_private_key(ec.SECP256R1()), ec2=ec.generate_private_key(ec.SECP256R1()),
                ec_other=ec.generate_private_key(ec.SECP256R1()))


def jwk(key: Any, kid: str | None, **extra: Any) -> dict[str, Any]:
    """The public JWK of a private key (what an IdP publishes)."""
    algo = RSAAlgorithm if isinstance(key, rsa.RSAPrivateKey) else ECAlgorithm
    out = {**algo.to_jwk(key.public_key(), as_dict=True), "use": "sig", **extra}
    if kid is not None:
        out["kid"] = kid
    return out


def claims(**over: Any) -> dict[str, Any]:
    """IdP-style claims (iss, aud) valid for five minutes; ``DROP`` removes one."""
    now = int(time.time())
    base = {"sub": "carol", "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 300}
    return {k: v for k, v in {**base, **over}.items() if v is not DROP}


def hs_claims(**over: Any) -> dict[str, Any]:
    """The shared-secret service's format: sub or user, exp, iat."""
    return claims(**{"iss": DROP, "aud": DROP, "sub": "alice", **over})


def hs256(payload: dict[str, Any], secret: str = SECRET, **headers: Any) -> str:
    return jwt.encode(payload, secret, algorithm="HS256", headers=headers or None)


def rs256(key: Any, payload: dict[str, Any], kid: str | None = "rsa-1") -> str:
    return jwt.encode(payload, key, algorithm="RS256", headers={"kid": kid} if kid else None)


def es256(key: Any, payload: dict[str, Any], kid: str | None = "ec-1") -> str:
    return jwt.encode(payload, key, algorithm="ES256", headers={"kid": kid} if kid else None)


def b64(data: bytes | dict[str, Any]) -> str:
    raw = json.dumps(data).encode() if isinstance(data, dict) else data
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], hmac_key: bytes | None = None) -> str:
    """A token built by hand: unsigned, or HMAC-SHA256 signed with any bytes (e.g. a public key PEM)."""
    signing_input = f"{b64(header)}.{b64(payload)}"
    sig = b64(hmac.new(hmac_key, signing_input.encode(), hashlib.sha256).digest()) if hmac_key else ""
    return f"{signing_input}.{sig}"


def tamper_payload(token: str, **over: Any) -> str:
    head, _, sig = token.split(".")
    return f"{head}.{b64(claims(**over))}.{sig}"


def tamper_signature(token: str) -> str:
    head, body, sig = token.split(".")
    return f"{head}.{body}.{('A' if sig[0] != 'A' else 'B') + sig[1:]}"


# --------------------------------------------------------------------------- the IdP


@dataclass
class Idp:
    """A JWKS endpoint whose key set, availability and latency a test can change; counts its fetches."""

    url: str
    jwks: dict[str, Any]
    fetches: int = 0
    down: bool = False
    delay_s: float = 0.0

    def publish(self, *keys: dict[str, Any]) -> None:
        self.jwks = {"keys": list(keys)}


@pytest.fixture
async def idp(keys: Keys) -> AsyncIterator[Idp]:
    state = Idp(url="", jwks={"keys": [jwk(keys.rsa, "rsa-1"), jwk(keys.ec, "ec-1")]})

    async def serve(_: web.Request) -> web.Response:
        state.fetches += 1
        if state.delay_s:
            await asyncio.sleep(state.delay_s)
        return web.Response(status=503) if state.down else web.json_response(state.jwks)

    app = web.Application()
    app.router.add_get("/jwks", serve)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    await web.SockSite(runner, sock).start()
    state.url = f"http://127.0.0.1:{sock.getsockname()[1]}/jwks"
    yield state
    await runner.cleanup()


@pytest.fixture
async def make_verifier(idp: Idp) -> AsyncIterator[MakeVerifier]:
    """``make_verifier(mode, **settings)``: mode "both", "hs" (secret only) or "jwks" (IdP only)."""
    made: list[JwtVerifier] = []

    def make(mode: str = "both", **over: Any) -> JwtVerifier:
        cfg: dict[str, Any] = {}
        if mode in ("both", "hs"):
            cfg["hs256_secret"] = SECRET
        if mode in ("both", "jwks"):
            cfg.update(jwks_url=idp.url, issuer=ISSUER, audience=AUDIENCE)
        verifier = JwtVerifier(JwtSettings(**{**cfg, **over}))
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.aclose()


def assert_rejected_cleanly(err: AuthenticationFailed, token: str) -> None:
    """401 invalid_api_key, and neither the token, any segment of it, nor the secret in the error."""
    assert (err.status, err.code) == (401, "invalid_api_key")
    shown = f"{err} {err.message} {err.body()!r} {err!r}"
    assert token not in shown and SECRET not in shown
    for segment in token.split("."):
        assert len(segment) < 8 or segment not in shown
    assert err.__cause__ is None


async def rejected(verifier: JwtVerifier, token: str) -> str:
    with pytest.raises(AuthenticationFailed) as info:
        await verifier.verify(token)
    assert_rejected_cleanly(info.value, token)
    return info.value.message


# --------------------------------------------------------------------------- the table

TokenFactory = Callable[[Keys], str]
CASES: list[Any] = [
    # (mode, token factory, expected: "ok:<subject>" or a fragment of the error message)
    pytest.param("both", lambda k: hs256(hs_claims()), "ok:alice", id="hs256-sub"),
    pytest.param("both", lambda k: hs256(hs_claims(sub=DROP, user="bob")), "ok:bob", id="hs256-user-claim"),
    pytest.param("hs", lambda k: hs256(hs_claims(aud="someone")), "ok:alice", id="hs256-aud-not-configured"),
    pytest.param("both", lambda k: rs256(k.rsa, claims()), "ok:carol", id="rs256"),
    pytest.param("both", lambda k: es256(k.ec, claims(sub="dave")), "ok:dave", id="es256"),
    pytest.param("both", lambda k: es256(k.ec, claims(aud=["other", AUDIENCE])), "ok:carol",
                 id="es256-aud-list"),
    pytest.param("both", lambda k: hs256(hs_claims(exp=int(time.time()) - 10)), "ok:alice",
                 id="expired-within-leeway"),
    pytest.param("both", lambda k: hand_made({"alg": "none", "typ": "JWT"}, hs_claims()),
                 "unsupported token algorithm", id="alg-none"),
    pytest.param("both", lambda k: hand_made({"alg": "None"}, claims()), "unsupported token algorithm",
                 id="alg-None-capitalised"),
    pytest.param("jwks", lambda k: hand_made({"alg": "HS256", "kid": "rsa-1"}, claims(), k.rsa_public_pem()),
                 "unsupported token algorithm", id="alg-confusion-jwks-only"),
    pytest.param("both", lambda k: hand_made({"alg": "HS256", "kid": "rsa-1"}, claims(), k.rsa_public_pem()),
                 "token signature is invalid", id="alg-confusion-with-secret"),
    pytest.param("both", lambda k: hand_made({"alg": "RS256", "kid": "rsa-1"}, claims(), k.rsa_public_pem()),
                 "token signature is invalid", id="alg-confusion-rs256-header-hmac-signature"),
    pytest.param("both", lambda k: hs256(hs_claims(exp=int(time.time()) - 3600)), "token has expired",
                 id="expired"),
    pytest.param("both", lambda k: rs256(k.rsa, claims(nbf=int(time.time()) + 3600)),
                 "token is not yet valid", id="nbf-in-future"),
    pytest.param("both", lambda k: hs256(hs_claims(iat=int(time.time()) + 3600)), "token is not yet valid",
                 id="iat-far-in-future"),
    pytest.param("both", lambda k: rs256(k.rsa, claims(aud="another-service")),
                 "token audience is not accepted", id="wrong-aud"),
    pytest.param("both", lambda k: rs256(k.rsa, claims(aud=DROP)), "missing the 'aud' claim",
                 id="missing-aud"),
    pytest.param("both", lambda k: es256(k.ec, claims(iss="https://evil.test")),
                 "token issuer is not accepted", id="wrong-iss"),
    pytest.param("both", lambda k: es256(k.ec, claims(iss=DROP)), "missing the 'iss' claim",
                 id="missing-iss"),
    pytest.param("both", lambda k: rs256(k.rsa, claims(), kid="no-such-kid"), "unknown signing key",
                 id="unknown-kid"),
    pytest.param("both", lambda k: rs256(k.rsa, claims(), kid=None), "unknown signing key",
                 id="no-kid-two-keys-published"),
    pytest.param("both", lambda k: es256(k.ec, claims(), kid="rsa-1"), "does not match its signing key",
                 id="es256-naming-rsa-kid"),
    pytest.param("both", lambda k: rs256(k.rsa_other, claims()), "token signature is invalid",
                 id="rs256-signed-by-attacker-key"),
    pytest.param("both", lambda k: es256(k.ec_other, claims()), "token signature is invalid",
                 id="es256-signed-by-attacker-key"),
    pytest.param("both", lambda k: tamper_payload(rs256(k.rsa, claims()), sub="mallory"),
                 "token signature is invalid", id="tampered-payload-rs256"),
    pytest.param("both", lambda k: tamper_payload(hs256(hs_claims()), sub="mallory", rpm_limit=10**9),
                 "token signature is invalid", id="tampered-payload-hs256"),
    pytest.param("both", lambda k: tamper_signature(rs256(k.rsa, claims())), "token signature is invalid",
                 id="tampered-signature"),
    pytest.param("both", lambda k: hs256(hs_claims(), secret="another-secret-of-at-least-32-bytes!!"),
                 "token signature is invalid", id="hs256-wrong-secret"),
    pytest.param("jwks", lambda k: hs256(hs_claims()), "unsupported token algorithm", id="hs256-no-secret"),
    pytest.param("hs", lambda k: rs256(k.rsa, claims()), "unsupported token algorithm", id="rs256-no-jwks"),
    pytest.param("hs", lambda k: es256(k.ec, claims()), "unsupported token algorithm", id="es256-no-jwks"),
    pytest.param("both", lambda k: jwt.encode(hs_claims(), SECRET * 2, algorithm="HS512"),
                 "unsupported token algorithm", id="hs512"),
    pytest.param("both", lambda k: jwt.encode(claims(), k.rsa, algorithm="PS256", headers={"kid": "rsa-1"}),
                 "unsupported token algorithm", id="ps256"),
    pytest.param("both", lambda k: "not-a-jwt-at-all", "token is malformed", id="garbage"),
    pytest.param("both", lambda k: "eyJhbGciOi.!!!.???", "token is malformed", id="garbage-three-segments"),
    pytest.param("both", lambda k: hs256(hs_claims(exp=DROP)), "missing the 'exp' claim", id="missing-exp"),
    pytest.param("both", lambda k: rs256(k.rsa, claims(exp=DROP)), "missing the 'exp' claim",
                 id="missing-exp-rs256"),
    pytest.param("both", lambda k: hs256(hs_claims(sub=DROP)), "token names no user", id="no-user-claim"),
    pytest.param("both", lambda k: hs256(hs_claims(rpm_limit=-1)),
                 "'rpm_limit' must be a non-negative integer", id="negative-limit"),
]


@pytest.mark.parametrize(("mode", "factory", "expected"), CASES)
async def test_token_table(make_verifier: MakeVerifier, keys: Keys, mode: str,
                           factory: TokenFactory, expected: str) -> None:
    verifier, token = make_verifier(mode), factory(keys)
    if expected.startswith("ok:"):
        assert (await verifier.verify(token)).subject == expected[3:]
    else:
        assert expected in await rejected(verifier, token)


# --------------------------------------------------------------------------- JWKS cache behaviour


async def test_key_rotation(make_verifier: MakeVerifier, idp: Idp, keys: Keys) -> None:
    verifier = make_verifier("jwks", jwks_cache_ttl_s=0.5, jwks_min_refresh_interval_s=0)
    idp.publish(jwk(keys.ec, "ec-1"))
    assert (await verifier.verify(es256(keys.ec, claims()))).subject == "carol"
    idp.publish(jwk(keys.ec, "ec-1"), jwk(keys.ec2, "ec-2"))  # new key appears
    assert (await verifier.verify(es256(keys.ec2, claims(), kid="ec-2"))).subject == "carol"
    assert idp.fetches == 2  # the unknown kid triggered a refresh
    idp.publish(jwk(keys.ec2, "ec-2"))  # old key removed: still cached until the TTL runs out
    await verifier.verify(es256(keys.ec, claims()))
    await asyncio.sleep(0.55)
    assert "unknown signing key" in await rejected(verifier, es256(keys.ec, claims()))
    assert (await verifier.verify(es256(keys.ec2, claims(), kid="ec-2"))).subject == "carol"


async def test_unknown_kid_refresh_is_rate_limited(make_verifier: MakeVerifier, idp: Idp,
                                                   keys: Keys) -> None:
    verifier = make_verifier("jwks", jwks_min_refresh_interval_s=0.5)
    await verifier.verify(es256(keys.ec, claims()))
    assert idp.fetches == 1

    async def random_kids() -> list[BaseException | Any]:
        tokens = [es256(keys.ec, claims(), kid=uuid.uuid4().hex) for _ in range(50)]
        return await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)

    results = await random_kids()  # just fetched: no refresh at all
    assert all(isinstance(r, AuthenticationFailed) and r.message == "unknown signing key" for r in results)
    assert idp.fetches == 1
    await asyncio.sleep(0.55)
    results = await random_kids()  # interval passed: exactly one refresh for all 50
    assert all(isinstance(r, AuthenticationFailed) for r in results)
    assert idp.fetches == 2


async def test_single_flight_refresh(make_verifier: MakeVerifier, idp: Idp, keys: Keys) -> None:
    verifier = make_verifier("jwks", jwks_min_refresh_interval_s=0.2)
    await verifier.verify(es256(keys.ec, claims()))
    await asyncio.sleep(0.25)  # past the refresh interval
    idp.publish(jwk(keys.ec, "ec-1"), jwk(keys.ec2, "ec-2"))
    idp.delay_s = 0.1  # keep the fetch in flight while more requests arrive
    token = es256(keys.ec2, claims(sub="erin"), kid="ec-2")
    early = asyncio.gather(*(verifier.verify(token) for _ in range(10)))
    await asyncio.sleep(0.03)  # these arrive while the fetch is in flight: they join it
    late = await asyncio.gather(*(verifier.verify(token) for _ in range(10)))
    assert {i.subject for i in [*await early, *late]} == {"erin"}
    assert idp.fetches == 2


async def test_first_use_is_single_flight(make_verifier: MakeVerifier, idp: Idp,
                                          keys: Keys) -> None:
    verifier = make_verifier("jwks")
    idp.delay_s = 0.1
    early = asyncio.gather(*(verifier.verify(rs256(keys.rsa, claims())) for _ in range(10)))
    await asyncio.sleep(0.03)
    late = await asyncio.gather(*(verifier.verify(rs256(keys.rsa, claims())) for _ in range(10)))
    assert len([*await early, *late]) == 20
    assert idp.fetches == 1


async def test_cancelled_fetch_does_not_fail_the_waiters(make_verifier: MakeVerifier, idp: Idp,
                                                         keys: Keys) -> None:
    verifier = make_verifier("jwks")
    idp.delay_s = 0.3
    token = rs256(keys.rsa, claims())
    first = asyncio.ensure_future(verifier.verify(token))
    await asyncio.sleep(0.03)  # the first caller is now fetching
    others = asyncio.gather(*(verifier.verify(token) for _ in range(5)))
    first.cancel()  # e.g. its client went away
    assert {i.subject for i in await others} == {"carol"}
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_idp_down_keeps_cached_keys(make_verifier: MakeVerifier, idp: Idp, keys: Keys,
                                          caplog: pytest.LogCaptureFixture) -> None:
    verifier = make_verifier("jwks", jwks_cache_ttl_s=0.2, jwks_min_refresh_interval_s=0)
    token = rs256(keys.rsa, claims())
    await verifier.verify(token)
    idp.down = True
    await asyncio.sleep(0.25)
    with caplog.at_level(logging.WARNING, logger="gatehouse.auth"):
        assert (await verifier.verify(token)).subject == "carol"  # TTL ran out, fetch failed, cache kept
        assert "unknown signing key" in await rejected(verifier, rs256(keys.rsa, claims(), kid="new"))
    assert idp.fetches >= 2
    assert "JWKS fetch" in caplog.text and "keeping 2 cached keys" in caplog.text
    assert token not in caplog.text and token.split(".")[2] not in caplog.text


async def test_idp_down_from_start_is_retried_at_most_once_per_interval(
        make_verifier: MakeVerifier, idp: Idp, keys: Keys) -> None:
    idp.down = True
    verifier = make_verifier("jwks", jwks_min_refresh_interval_s=10)
    for _ in range(3):
        assert "unknown signing key" in await rejected(verifier, rs256(keys.rsa, claims()))
    assert idp.fetches == 1


async def test_idp_timeout(make_verifier: MakeVerifier, idp: Idp, keys: Keys) -> None:
    idp.delay_s = 0.6
    verifier = make_verifier("jwks", jwks_timeout_s=0.1)
    started = time.monotonic()
    assert "unknown signing key" in await rejected(verifier, rs256(keys.rsa, claims()))
    assert time.monotonic() - started < 0.5


async def test_token_without_kid_needs_a_single_signing_key(make_verifier: MakeVerifier, idp: Idp,
                                                            keys: Keys) -> None:
    idp.publish(jwk(keys.ec, None))
    verifier = make_verifier("jwks")
    assert (await verifier.verify(es256(keys.ec, claims(), kid=None))).subject == "carol"


async def test_only_signing_keys_are_used(make_verifier: MakeVerifier, idp: Idp, keys: Keys) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    private_jwk = {**RSAAlgorithm.to_jwk(keys.rsa, as_dict=True), "kid": "rsa-private"}  # "d" etc. ignored
    del private_jwk["key_ops"]
    idp.publish(jwk(keys.rsa, "rsa-enc", use="enc"), jwk(keys.rsa, "rsa-rs512", alg="RS512"),
                jwk(keys.rsa, "rsa-encrypt-op", key_ops=["encrypt"]), jwk(p384, "ec-p384"),
                {"kty": "oct", "k": b64(SECRET.encode()), "kid": "oct"}, {"kty": "RSA", "kid": "broken"},
                "junk",
                private_jwk, jwk(keys.ec, "ec-1"))
    verifier = make_verifier("jwks")
    for kid in ("rsa-enc", "rsa-rs512", "rsa-encrypt-op", "broken", "oct"):
        assert "unknown signing key" in await rejected(verifier, rs256(keys.rsa, claims(), kid=kid))
    assert "unknown signing key" in await rejected(verifier, es256(keys.ec, claims(), kid="ec-p384"))
    assert "unsupported token algorithm" in await rejected(verifier, jwt.encode(
        claims(), p384, algorithm="ES384", headers={"kid": "ec-p384"}))
    assert "unsupported token algorithm" in await rejected(verifier, hs256(claims(), kid="oct"))
    assert (await verifier.verify(rs256(keys.rsa, claims(), kid="rsa-private"))).subject == "carol"
    assert (await verifier.verify(es256(keys.ec, claims()))).subject == "carol"


# --------------------------------------------------------------------------- claim mapping


async def test_claim_mapping_nested_paths_and_admin(make_verifier: MakeVerifier) -> None:
    mapping = ClaimMapping(user=["preferred_username", "sub"], team="org.team", models="llm.models",
                           rpm_limit="limits.rpm", admin="realm_access.roles")
    verifier = make_verifier("hs", claims=mapping)
    token = hs256(hs_claims(preferred_username="frank", org={"team": "research"},
                            llm={"models": ["gpt-4o", "chargpt"]}, limits={"rpm": 60}, tpm_limit=1000,
                            max_parallel_requests=4, realm_access={"roles": ["user", "gatehouse-admin"]}))
    ident = await verifier.verify(token)
    assert (ident.subject, ident.team_id) == ("frank", "research")
    assert ident.models == frozenset({"gpt-4o", "chargpt"})
    assert (ident.rpm_limit, ident.tpm_limit, ident.max_parallel_requests) == (60, 1000, 4)
    assert ident.is_admin and ident.issuer is None and ident.expires_at is not None
    assert ident.claims["org"] == {"team": "research"}
    with pytest.raises(TypeError):
        ident.claims["sub"] = "x"  # type: ignore[index]
    plain = await verifier.verify(hs256(hs_claims(realm_access={"roles": ["user"]})))
    assert (plain.subject, plain.is_admin, plain.models, plain.team_id) == ("alice", False, None, None)


@pytest.mark.parametrize(("models", "expected"), [
    pytest.param(["a", "b"], {"a", "b"}, id="list"),
    pytest.param("a b", {"a", "b"}, id="space-separated"),
    pytest.param("a, b,c", {"a", "b", "c"}, id="comma-separated"),
    pytest.param([], set(), id="empty-list-allows-none"),
])
async def test_models_claim(make_verifier: MakeVerifier, models: Any, expected: set[str]) -> None:
    ident = await make_verifier("hs").verify(hs256(hs_claims(models=models)))
    assert ident.models == frozenset(expected)


@pytest.mark.parametrize(("admin_claim", "value", "is_admin"), [
    pytest.param("is_admin", True, True, id="bool-true"),
    pytest.param("is_admin", False, False, id="bool-false"),
    pytest.param("is_admin", "yes", False, id="other-string"),
    pytest.param("scope", "openid gatehouse-admin", True, id="scope-string"),
    pytest.param("https://gatehouse.test/roles", ["gatehouse-admin"], True, id="dotted-literal-key"),
])
async def test_admin_claim(make_verifier: MakeVerifier, admin_claim: str, value: Any,
                           is_admin: bool) -> None:
    verifier = make_verifier("hs", claims=ClaimMapping(admin=admin_claim))
    assert (await verifier.verify(hs256(hs_claims(**{admin_claim: value})))).is_admin is is_admin


async def test_admin_needs_a_configured_claim(make_verifier: MakeVerifier) -> None:
    ident = await make_verifier("hs").verify(hs256(hs_claims(is_admin=True, roles=["gatehouse-admin"])))
    assert ident.is_admin is False


@pytest.mark.parametrize("value", [-1, "10", 1.5, True, [5]],
                         ids=["negative", "string", "float", "bool", "list"])
async def test_limits_must_be_non_negative_ints(make_verifier: MakeVerifier, value: Any) -> None:
    token = hs256(hs_claims(tpm_limit=value))
    assert "'tpm_limit' must be a non-negative integer" in await rejected(make_verifier("hs"), token)


async def test_bad_models_and_team_claims_reject(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier("hs")
    assert "'models'" in await rejected(verifier, hs256(hs_claims(models=[1, 2])))
    assert "'team_id'" in await rejected(verifier, hs256(hs_claims(team_id={"id": 1})))


async def test_identity_repr_hides_claims(make_verifier: MakeVerifier) -> None:
    ident = await make_verifier("hs").verify(hs256(hs_claims(email="secret@example.com", team_id=42)))
    assert ident.team_id == "42"
    assert "secret@example.com" not in repr(ident) and "claims" not in repr(ident)


# --------------------------------------------------------------------------- shape test and settings


def test_looks_like_jwt(keys: Keys) -> None:
    assert JwtVerifier.looks_like_jwt(hs256(hs_claims()))
    assert JwtVerifier.looks_like_jwt(rs256(keys.rsa, claims()))
    assert JwtVerifier.looks_like_jwt(hand_made({"alg": "none"}, claims()))  # a JWT, rejected later
    for not_jwt in ("sk-gh-test-master-key-0123456789", "a.b.c", f"{b64({'typ': 'JWT'})}.{b64({})}.sig",
                    f"{b64(b'[1]')}.e30.sig", "e30.e30", "x" * 20_000, ""):
        assert not JwtVerifier.looks_like_jwt(not_jwt), not_jwt


def test_settings_validation(idp: Idp) -> None:
    assert not JwtSettings().enabled
    assert JwtSettings(hs256_secret=SECRET).enabled and JwtSettings(jwks_url=idp.url).enabled
    assert SECRET not in repr(JwtSettings(hs256_secret=SECRET))
    for bad in ({"hs256_secret": "too-short"}, {"leeway_s": 301}, {"leeway_s": -1}, {"jwks_url": "ftp://idp"},
                {"unknown_field": 1}, {"claims": {"nope": "x"}}, {"claims": {"user": []}}):
        with pytest.raises(ValidationError) as info:
            JwtSettings(**bad)
        assert "too-short" not in str(info.value)
    assert JwtSettings(audience=["a", "b"], claims={"user": ["uid"]}).claims.user == ["uid"]


async def test_iss_and_aud_apply_to_hs256_when_no_jwks(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier("hs", issuer="svc", audience="gatehouse")
    assert (await verifier.verify(hs256(hs_claims(iss="svc", aud="gatehouse")))).issuer == "svc"
    assert "issuer" in await rejected(verifier, hs256(hs_claims(iss="other", aud="gatehouse")))
    assert "audience" in await rejected(verifier, hs256(hs_claims(iss="svc", aud="other")))


async def test_required_claims_setting(make_verifier: MakeVerifier) -> None:
    verifier = make_verifier("hs", required_claims=["iat", "jti"])  # exp stays required
    assert "'jti'" in await rejected(verifier, hs256(hs_claims()))
    assert "'exp'" in await rejected(verifier, hs256(hs_claims(exp=DROP, jti="1")))
    assert (await verifier.verify(hs256(hs_claims(jti="1")))).subject == "alice"
