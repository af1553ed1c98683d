"""Shared by the JWT tests: keys, token builders, a real local JWKS server (aiohttp on 127.0.0.1) and a
verifier factory. Fixtures are imported into the test modules that use them."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import jwt
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from core.settings import JwtSettings
from gateway.auth.jwt_auth import JwtVerifier
from gateway.errors import AuthenticationFailed

SECRET = "hs256-shared-secret-for-tests-0123456789"
ISSUER = "https://jwks_idp.test/realms/gatehouse"
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
async def jwks_idp(keys: Keys) -> AsyncIterator[Idp]:
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
async def make_verifier(jwks_idp: Idp) -> AsyncIterator[MakeVerifier]:
    """``make_verifier(mode, **settings)``: mode "both", "hs" (secret only) or "jwks" (IdP only)."""
    made: list[JwtVerifier] = []

    def make(mode: str = "both", **over: Any) -> JwtVerifier:
        cfg: dict[str, Any] = {}
        if mode in ("both", "hs"):
            cfg["hs256_secret"] = SECRET
        if mode in ("both", "jwks"):
            cfg.update(jwks_url=jwks_idp.url, issuer=ISSUER, audience=AUDIENCE)
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


