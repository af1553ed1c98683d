"""JWT auth (gateway.auth.jwt_auth): a table of valid tokens and attacks (HS256 with a shared secret, RS256/ES256
against a real local JWKS server), claim mapping and settings validation.
JWKS cache behaviour: test_jwt_auth_jwks.py."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from jwt_support import (
    AUDIENCE,
    DROP,
    SECRET,
    Idp,
    Keys,
    MakeVerifier,
    b64,
    claims,
    es256,
    hand_made,
    hs256,
    hs_claims,
    rejected,
    rs256,
    tamper_payload,
    tamper_signature,
)
from pydantic import ValidationError

from core.settings import ClaimMapping, JwtSettings
from gateway.auth.jwt_auth import JwtVerifier

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


def test_settings_validation(jwks_idp: Idp) -> None:
    assert not JwtSettings().enabled
    assert JwtSettings(hs256_secret=SECRET).enabled and JwtSettings(jwks_url=jwks_idp.url).enabled
    assert SECRET not in repr(JwtSettings(hs256_secret=SECRET))
    for bad in ({"hs256_secret": "too-short"}, {"leeway_s": 301}, {"leeway_s": -1}, {"jwks_url": "ftp://jwks_idp"},
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
