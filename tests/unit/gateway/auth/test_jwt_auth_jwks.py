"""The JWKS cache behind RS256/ES256 tokens, against a real local JWKS server: key rotation, refresh rate
limiting, single-flight fetches, IdP outages, which published keys are used."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import RSAAlgorithm
from jwt_support import (
    SECRET,
    Idp,
    Keys,
    MakeVerifier,
    b64,
    claims,
    es256,
    hs256,
    jwk,
    rejected,
    rs256,
)

from gateway.errors import AuthenticationFailed

# --------------------------------------------------------------------------- JWKS cache behaviour


async def test_key_rotation(make_verifier: MakeVerifier, jwks_idp: Idp, keys: Keys) -> None:
    verifier = make_verifier("jwks", jwks_cache_ttl_s=0.5, jwks_min_refresh_interval_s=0)
    jwks_idp.publish(jwk(keys.ec, "ec-1"))
    assert (await verifier.verify(es256(keys.ec, claims()))).subject == "carol"
    jwks_idp.publish(jwk(keys.ec, "ec-1"), jwk(keys.ec2, "ec-2"))  # new key appears
    assert (await verifier.verify(es256(keys.ec2, claims(), kid="ec-2"))).subject == "carol"
    assert jwks_idp.fetches == 2  # the unknown kid triggered a refresh
    jwks_idp.publish(jwk(keys.ec2, "ec-2"))  # old key removed: still cached until the TTL runs out
    await verifier.verify(es256(keys.ec, claims()))
    await asyncio.sleep(0.55)
    assert "unknown signing key" in await rejected(verifier, es256(keys.ec, claims()))
    assert (await verifier.verify(es256(keys.ec2, claims(), kid="ec-2"))).subject == "carol"


async def test_unknown_kid_refresh_is_rate_limited(make_verifier: MakeVerifier, jwks_idp: Idp,
                                                   keys: Keys) -> None:
    verifier = make_verifier("jwks", jwks_min_refresh_interval_s=0.5)
    await verifier.verify(es256(keys.ec, claims()))
    assert jwks_idp.fetches == 1

    async def random_kids() -> list[BaseException | Any]:
        tokens = [es256(keys.ec, claims(), kid=uuid.uuid4().hex) for _ in range(50)]
        return await asyncio.gather(*(verifier.verify(t) for t in tokens), return_exceptions=True)

    results = await random_kids()  # just fetched: no refresh at all
    assert all(isinstance(r, AuthenticationFailed) and r.message == "unknown signing key" for r in results)
    assert jwks_idp.fetches == 1
    await asyncio.sleep(0.55)
    results = await random_kids()  # interval passed: exactly one refresh for all 50
    assert all(isinstance(r, AuthenticationFailed) for r in results)
    assert jwks_idp.fetches == 2


async def test_single_flight_refresh(make_verifier: MakeVerifier, jwks_idp: Idp, keys: Keys) -> None:
    verifier = make_verifier("jwks", jwks_min_refresh_interval_s=0.2)
    await verifier.verify(es256(keys.ec, claims()))
    await asyncio.sleep(0.25)  # past the refresh interval
    jwks_idp.publish(jwk(keys.ec, "ec-1"), jwk(keys.ec2, "ec-2"))
    jwks_idp.delay_s = 0.1  # keep the fetch in flight while more requests arrive
    token = es256(keys.ec2, claims(sub="erin"), kid="ec-2")
    early = asyncio.gather(*(verifier.verify(token) for _ in range(10)))
    await asyncio.sleep(0.03)  # these arrive while the fetch is in flight: they join it
    late = await asyncio.gather(*(verifier.verify(token) for _ in range(10)))
    assert {i.subject for i in [*await early, *late]} == {"erin"}
    assert jwks_idp.fetches == 2


async def test_first_use_is_single_flight(make_verifier: MakeVerifier, jwks_idp: Idp,
                                          keys: Keys) -> None:
    verifier = make_verifier("jwks")
    jwks_idp.delay_s = 0.1
    early = asyncio.gather(*(verifier.verify(rs256(keys.rsa, claims())) for _ in range(10)))
    await asyncio.sleep(0.03)
    late = await asyncio.gather(*(verifier.verify(rs256(keys.rsa, claims())) for _ in range(10)))
    assert len([*await early, *late]) == 20
    assert jwks_idp.fetches == 1


async def test_cancelled_fetch_does_not_fail_the_waiters(make_verifier: MakeVerifier, jwks_idp: Idp,
                                                         keys: Keys) -> None:
    verifier = make_verifier("jwks")
    jwks_idp.delay_s = 0.3
    token = rs256(keys.rsa, claims())
    first = asyncio.ensure_future(verifier.verify(token))
    await asyncio.sleep(0.03)  # the first caller is now fetching
    others = asyncio.gather(*(verifier.verify(token) for _ in range(5)))
    first.cancel()  # e.g. its client went away
    assert {i.subject for i in await others} == {"carol"}
    with pytest.raises(asyncio.CancelledError):
        await first


async def test_idp_down_keeps_cached_keys(make_verifier: MakeVerifier, jwks_idp: Idp, keys: Keys,
                                          caplog: pytest.LogCaptureFixture) -> None:
    verifier = make_verifier("jwks", jwks_cache_ttl_s=0.2, jwks_min_refresh_interval_s=0)
    token = rs256(keys.rsa, claims())
    await verifier.verify(token)
    jwks_idp.down = True
    await asyncio.sleep(0.25)
    with caplog.at_level(logging.WARNING, logger="gatehouse.auth"):
        assert (await verifier.verify(token)).subject == "carol"  # TTL ran out, fetch failed, cache kept
        assert "unknown signing key" in await rejected(verifier, rs256(keys.rsa, claims(), kid="new"))
    assert jwks_idp.fetches >= 2
    assert "JWKS fetch" in caplog.text and "keeping 2 cached keys" in caplog.text
    assert token not in caplog.text and token.split(".")[2] not in caplog.text


async def test_idp_down_from_start_is_retried_at_most_once_per_interval(
        make_verifier: MakeVerifier, jwks_idp: Idp, keys: Keys) -> None:
    jwks_idp.down = True
    verifier = make_verifier("jwks", jwks_min_refresh_interval_s=10)
    for _ in range(3):
        assert "unknown signing key" in await rejected(verifier, rs256(keys.rsa, claims()))
    assert jwks_idp.fetches == 1


async def test_idp_timeout(make_verifier: MakeVerifier, jwks_idp: Idp, keys: Keys) -> None:
    jwks_idp.delay_s = 0.6
    verifier = make_verifier("jwks", jwks_timeout_s=0.1)
    started = time.monotonic()
    assert "unknown signing key" in await rejected(verifier, rs256(keys.rsa, claims()))
    assert time.monotonic() - started < 0.5


async def test_token_without_kid_needs_a_single_signing_key(make_verifier: MakeVerifier, jwks_idp: Idp,
                                                            keys: Keys) -> None:
    jwks_idp.publish(jwk(keys.ec, None))
    verifier = make_verifier("jwks")
    assert (await verifier.verify(es256(keys.ec, claims(), kid=None))).subject == "carol"


async def test_only_signing_keys_are_used(make_verifier: MakeVerifier, jwks_idp: Idp, keys: Keys) -> None:
    p384 = ec.generate_private_key(ec.SECP384R1())
    private_jwk = {**RSAAlgorithm.to_jwk(keys.rsa, as_dict=True), "kid": "rsa-private"}  # "d" etc. ignored
    del private_jwk["key_ops"]
    jwks_idp.publish(jwk(keys.rsa, "rsa-enc", use="enc"), jwk(keys.rsa, "rsa-rs512", alg="RS512"),
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


