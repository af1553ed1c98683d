"""JWT bearer tokens: HS256 with a shared secret, RS256/ES256 with keys from the IdP's JWKS URL. ``jwt.decode``
only ever gets the one algorithm the chosen key is for (no ``none``, no alg confusion). Error messages say
what is wrong and never contain the token, any part of it, or the secret."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
import aiohttp
import jwt
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from yarl import URL

from gateway.errors import AuthenticationFailed

log = logging.getLogger("gatehouse.auth")

KTY_FOR_ALG: Mapping[str, str] = MappingProxyType({"RS256": "RSA", "ES256": "EC"})
_PUBLIC_MEMBERS = MappingProxyType({"RSA": ("kty", "kid", "n", "e"), "EC": ("kty", "kid", "crv", "x", "y")})
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
MAX_TOKEN_CHARS = 16_384
MAX_JWKS_BYTES = 1 << 20
# pyjwt exception -> client message, most specific first (several are subclasses of DecodeError)
_MESSAGES: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token has expired"), (jwt.ImmatureSignatureError, "token is not yet valid"),
    (jwt.InvalidSignatureError, "token signature is invalid"),
    (jwt.InvalidIssuerError, "token issuer is not accepted"),
    (jwt.InvalidAudienceError, "token audience is not accepted"),
    (jwt.InvalidIssuedAtError, "token issued-at time is invalid"),
    (jwt.InvalidAlgorithmError, "unsupported token algorithm"),
    (jwt.InvalidKeyError, "token signing key is not acceptable"), (jwt.DecodeError, "token is malformed"))


def _fail(message: str) -> AuthenticationFailed:
    return AuthenticationFailed(message, code="invalid_api_key")


class ClaimMapping(BaseModel):
    """Which claims make the identity. Names may be dotted paths into nested objects (``realm_access.roles``);
    a claim literally named with dots (``https://idp/team``) wins over the nested reading."""

    model_config = ConfigDict(extra="forbid")

    user: list[str] = Field(default_factory=lambda: ["sub", "user", "email"], min_length=1)
    team: str = "team_id"
    models: str = "models"
    rpm_limit: str = "rpm_limit"
    tpm_limit: str = "tpm_limit"
    max_parallel_requests: str = "max_parallel_requests"
    admin: str | None = None
    admin_value: str = "gatehouse-admin"


class JwtSettings(BaseModel):
    """JWT config. ``issuer``/``audience`` describe the IdP: with ``jwks_url`` set they are checked on RS256/ES256
    tokens only (the shared-secret service's HS256 tokens carry no iss/aud); without it, on HS256 tokens."""

    model_config = ConfigDict(extra="forbid")

    hs256_secret: SecretStr | None = None
    jwks_url: str | None = Field(None, pattern=r"^https?://[^/?#\s]+")
    issuer: str | None = None
    audience: str | list[str] | None = None
    leeway_s: float = Field(30, ge=0, le=300)
    jwks_cache_ttl_s: float = Field(300, gt=0)
    jwks_min_refresh_interval_s: float = Field(10, ge=0)
    jwks_timeout_s: float = Field(5, gt=0)
    required_claims: list[str] = Field(default_factory=lambda: ["exp"])
    claims: ClaimMapping = Field(default_factory=ClaimMapping)

    @field_validator("hs256_secret")
    @classmethod
    def _long_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value().encode()) < 32:
            raise ValueError("hs256_secret must be at least 32 bytes")
        return v

    @property
    def enabled(self) -> bool:
        return self.hs256_secret is not None or self.jwks_url is not None


@dataclass(frozen=True)
class JwtIdentity:
    """Who a verified token says the caller is. ``models`` is None when the token does not restrict models."""

    subject: str
    team_id: str | None
    models: frozenset[str] | None
    rpm_limit: int | None
    tpm_limit: int | None
    max_parallel_requests: int | None
    is_admin: bool
    issuer: str | None
    expires_at: float | None
    claims: Mapping[str, Any] = field(repr=False, compare=False, hash=False)  # kept for later use; never logged


def _signing_key(jwk: Any) -> jwt.PyJWK | None:
    """The JWK as a verification key when it is an RSA or EC P-256 signing key, else None (skipped)."""
    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or not isinstance(jwk.get("kid", ""), str):
        return None
    kty = jwk.get("kty")
    alg = "RS256" if kty == "RSA" else "ES256" if kty == "EC" and jwk.get("crv") == "P-256" else None
    ops = jwk.get("key_ops")
    if alg is None or jwk.get("alg", alg) != alg or (ops is not None and "verify" not in ops):
        return None
    public = {k: jwk[k] for k in _PUBLIC_MEMBERS[kty] if k in jwk}  # never load private members
    try:
        return jwt.PyJWK(public, algorithm=alg)
    except (jwt.PyJWTError, ValueError, TypeError):
        return None


class JwksCache:
    """The IdP's signing keys: cached for ``ttl_s``, refreshed early when a token names an unknown kid (at most
    once per ``min_refresh_interval_s``), one fetch at a time, and kept when the IdP cannot be reached."""

    def __init__(self, url: str, session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
                 ttl_s: float = 300, min_refresh_interval_s: float = 10, timeout_s: float = 5):
        self._url = url
        self._log_url = str(URL(url).with_user(None).with_query(None))  # no credentials in logs
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None
        self._ttl_s = ttl_s
        self._min_interval_s = min_refresh_interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._keys: tuple[jwt.PyJWK, ...] = ()
        self._fetched_at: float | None = None  # monotonic time of the last successful fetch
        self._attempted_at = float("-inf")  # monotonic time of the last fetch attempt
        self._generation = 0  # bumped by every attempt: waiters on the lock skip their own fetch
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key to verify an ``alg`` token naming ``kid``; without a kid, the JWKS's only signing key."""
        if alg not in KTY_FOR_ALG:
            raise _fail("unsupported token algorithm")
        if self._expired() and self._may_attempt():
            await self._refresh(self._generation)
        key = self._lookup(kid)
        if key is None and self._may_attempt():
            await self._refresh(self._generation)
            key = self._lookup(kid)
        if key is None:
            raise _fail("unknown signing key")
        if key.algorithm_name != alg:
            raise _fail("token algorithm does not match its signing key")
        return key

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return self._keys[0] if len(self._keys) == 1 else None
        return next((k for k in self._keys if k.key_id == kid), None)

    def _expired(self) -> bool:
        return self._fetched_at is None or time.monotonic() - self._fetched_at >= self._ttl_s

    def _may_attempt(self) -> bool:
        return time.monotonic() - self._attempted_at >= self._min_interval_s

    async def _refresh(self, seen_generation: int) -> None:
        async with self._lock:
            if self._generation != seen_generation:
                return  # someone refreshed while we waited
            self._generation += 1
            self._attempted_at = time.monotonic()
            try:
                self._keys = await self._fetch()
                self._fetched_at = time.monotonic()
            except (aiohttp.ClientError, TimeoutError, ValueError) as e:
                log.warning("JWKS fetch from %s failed (%s); keeping %d cached keys",
                            self._log_url, type(e).__name__, len(self._keys))

    async def _fetch(self) -> tuple[jwt.PyJWK, ...]:
        if self._session is None:
            self._session = self._session_factory()
        async with self._session.get(self._url, timeout=self._timeout) as resp:
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            body = bytearray()
            async for chunk in resp.content.iter_chunked(65_536):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS document too large")
        doc = json.loads(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError("not a JWKS document")
        keys = tuple(k for k in map(_signing_key, doc["keys"]) if k is not None)
        if not keys:
            log.warning("JWKS at %s holds no RS256/ES256 signing keys", self._log_url)
        return keys


class JwtVerifier:
    """Verifies bearer JWTs per ``JwtSettings`` and maps their claims to a ``JwtIdentity``."""

    def __init__(self, settings: JwtSettings, jwks: JwksCache | None = None):
        self._settings = settings
        self._secret = settings.hs256_secret.get_secret_value().encode() if settings.hs256_secret else None
        self._owns_jwks = jwks is None and settings.jwks_url is not None
        if self._owns_jwks:
            jwks = JwksCache(settings.jwks_url or "", ttl_s=settings.jwks_cache_ttl_s,
                             min_refresh_interval_s=settings.jwks_min_refresh_interval_s,
                             timeout_s=settings.jwks_timeout_s)
        self._jwks = jwks if settings.jwks_url is not None else None
        self._required = sorted(set(settings.required_claims) | {"exp"})

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        """Cheap shape test (no verification): three base64url segments, the first a JSON object with ``alg``."""
        if len(token) > MAX_TOKEN_CHARS or not _JWT_SHAPE.fullmatch(token):
            return False
        segment = token.split(".", 1)[0]
        try:
            header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
        except ValueError:
            return False
        return isinstance(header, dict) and "alg" in header

    async def verify(self, token: str) -> JwtIdentity:
        """The identity in a valid token; ``AuthenticationFailed`` naming the problem otherwise."""
        if len(token) > MAX_TOKEN_CHARS:
            raise _fail("token is too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _fail("token is malformed") from None
        alg = header.get("alg")
        key = await self._key(alg, header.get("kid"))
        return self._identity(self._decode(token, key, alg))

    async def aclose(self) -> None:
        if self._owns_jwks and self._jwks is not None:
            await self._jwks.aclose()

    async def _key(self, alg: Any, kid: str | None) -> bytes | jwt.PyJWK:
        if alg == "HS256" and self._secret is not None:
            return self._secret
        if isinstance(alg, str) and alg in KTY_FOR_ALG and self._jwks is not None:
            return await self._jwks.key_for(kid, alg)
        raise _fail("unsupported token algorithm")

    def _decode(self, token: str, key: bytes | jwt.PyJWK, alg: str) -> dict[str, Any]:
        s = self._settings
        check_idp = alg != "HS256" or s.jwks_url is None
        audience = s.audience if check_idp else None
        options: Any = {"require": self._required, "verify_aud": audience is not None,
                        "enforce_minimum_key_length": True}
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=audience,
                                issuer=s.issuer if check_idp else None, leeway=s.leeway_s, options=options)
        except jwt.MissingRequiredClaimError as e:
            raise _fail(f"token is missing the '{e.claim}' claim") from None
        except jwt.PyJWTError as e:
            raise _fail(next((m for t, m in _MESSAGES if isinstance(e, t)), "token is invalid")) from None
        if isinstance(claims.get("iat"), (int, float)) and claims["iat"] > time.time() + s.leeway_s:
            raise _fail("token is not yet valid")  # pyjwt < 2.10 does not check this
        return claims

    def _identity(self, claims: dict[str, Any]) -> JwtIdentity:
        m = self._settings.claims
        subject = next((v for v in (_scalar(_claim(claims, n), n) for n in m.user) if v), None)
        if subject is None:
            raise _fail("token names no user")
        exp, iss = claims.get("exp"), claims.get("iss")
        return JwtIdentity(
            subject=subject,
            team_id=_scalar(_claim(claims, m.team), m.team),
            models=_models(_claim(claims, m.models), m.models),
            rpm_limit=_limit(_claim(claims, m.rpm_limit), m.rpm_limit),
            tpm_limit=_limit(_claim(claims, m.tpm_limit), m.tpm_limit),
            max_parallel_requests=_limit(_claim(claims, m.max_parallel_requests), m.max_parallel_requests),
            is_admin=m.admin is not None and _is_admin(_claim(claims, m.admin), m.admin_value),
            issuer=iss if isinstance(iss, str) else None,
            expires_at=float(exp) if isinstance(exp, (int, float)) and not isinstance(exp, bool) else None,
            claims=MappingProxyType(claims),
        )


def _claim(claims: Mapping[str, Any], path: str) -> Any:
    """The claim named ``path``: the literal key if present, else the dotted path into nested objects."""
    if path in claims:
        return claims[path]
    value: Any = claims
    for part in path.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return None
        value = value[part]
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _scalar(value: Any, name: str) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str) or _is_int(value):
        return str(value)
    raise _fail(f"token claim '{name}' is invalid")


def _models(value: Any, name: str) -> frozenset[str] | None:
    """Allowed models from a list of names or a space/comma separated string."""
    if isinstance(value, str):
        return frozenset(p for p in re.split(r"[\s,]+", value) if p)
    if value is None or (isinstance(value, list) and all(isinstance(v, str) for v in value)):
        return None if value is None else frozenset(value)
    raise _fail(f"token claim '{name}' is invalid")


def _limit(value: Any, name: str) -> int | None:
    if value is None or (_is_int(value) and value >= 0):
        return value
    raise _fail(f"token claim '{name}' must be a non-negative integer")


def _is_admin(value: Any, admin_value: str) -> bool:
    """True for the boolean ``true``, or a string/list holding ``admin_value`` (roles lists, scope strings)."""
    if isinstance(value, str):
        value = re.split(r"[\s,]+", value)
    return value is True or (isinstance(value, list) and admin_value in value)
