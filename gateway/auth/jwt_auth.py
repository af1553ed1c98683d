"""JWT bearer tokens: HS256 with a shared secret, RS256/ES256 with keys from the IdP's JWKS URL.

``jwt.decode`` only ever gets the one algorithm the chosen key is for (no ``none``, no alg confusion).
Error messages say what is wrong and never contain the token, any part of it, or the secret."""

from __future__ import annotations

import asyncio
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
from yarl import URL

from core.settings import JwtSettings
from gateway.errors import AuthenticationFailed

log = logging.getLogger("gatehouse.auth")

KTY_FOR_ALG: Mapping[str, str] = MappingProxyType({"RS256": "RSA", "ES256": "EC"})
_PUBLIC_MEMBERS = MappingProxyType({"RSA": ("kty", "kid", "n", "e"), "EC": ("kty", "kid", "crv", "x", "y")})
_JWT_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_LIST_SEP = re.compile(r"[\s,]+")
MAX_TOKEN_CHARS = 16_384
MAX_JWKS_BYTES = 1 << 20
# pyjwt exception -> client message, most specific first (several subclass DecodeError)
_MESSAGES: tuple[tuple[type[Exception], str], ...] = (
    (jwt.ExpiredSignatureError, "token has expired"), (jwt.ImmatureSignatureError, "token is not yet valid"),
    (jwt.InvalidSignatureError, "token signature is invalid"), (jwt.DecodeError, "token is malformed"),
    (jwt.InvalidIssuerError, "token issuer is not accepted"), (jwt.InvalidKeyError, "token key is unusable"),
    (jwt.InvalidAudienceError, "token audience is not accepted"),
    (jwt.InvalidAlgorithmError, "unsupported token algorithm"))
# claim kind -> (does a present value qualify, what the error says when it does not)
_CLAIM_KINDS: Mapping[str, tuple[Callable[[Any], bool], str]] = MappingProxyType({
    "any": (lambda v: True, "is invalid"),
    "text": (lambda v: isinstance(v, str) or type(v) is int, "must be a string"),
    "count": (lambda v: type(v) is int and v >= 0, "must be a non-negative integer"),
    "names": (lambda v: isinstance(v, str) or (isinstance(v, list) and all(isinstance(x, str) for x in v)),
              "must be a list of model names")})


def _fail(message: str) -> AuthenticationFailed:
    return AuthenticationFailed(message, code="invalid_api_key").because("jwt_invalid")


@dataclass(frozen=True)
class JwtIdentity:
    """Who a verified token says the caller is. ``models`` is None when the token does not restrict models;
    ``claims`` (all, read-only) is kept for later use and left out of ``repr`` so it is never logged."""

    subject: str
    team_id: str | None
    models: frozenset[str] | None
    rpm_limit: int | None
    tpm_limit: int | None
    max_parallel_requests: int | None
    is_admin: bool
    issuer: str | None
    expires_at: float | None
    claims: Mapping[str, Any] = field(repr=False, compare=False, hash=False)


def _signing_key(jwk: Any) -> jwt.PyJWK | None:
    """The JWK as a verification key when it is an RSA or EC P-256 signing key, else None (skipped)."""
    if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or not isinstance(jwk.get("kid", ""), str):
        return None
    kty, ops = jwk.get("kty"), jwk.get("key_ops")
    alg = "RS256" if kty == "RSA" else "ES256" if kty == "EC" and jwk.get("crv") == "P-256" else None
    if alg is None or jwk.get("alg", alg) != alg or (ops is not None and "verify" not in ops):
        return None
    members = _PUBLIC_MEMBERS[KTY_FOR_ALG[alg]]  # alg was chosen by kty: these are kty's public members
    try:  # load the public members only, whatever else the IdP publishes
        return jwt.PyJWK({k: jwk[k] for k in members if k in jwk}, algorithm=alg)
    except (jwt.PyJWTError, ValueError, TypeError):
        return None


class JwksCache:
    """The IdP's signing keys: cached for ``ttl_s``, refreshed early when a token names an unknown kid (at
    most once per ``min_refresh_interval_s``), one fetch at a time, and kept when the IdP is unreachable."""

    def __init__(self, url: str, session_factory: Callable[[], aiohttp.ClientSession] = aiohttp.ClientSession,
                 ttl_s: float = 300, min_refresh_interval_s: float = 10, timeout_s: float = 5):
        self._url, self._session_factory = url, session_factory
        self._log_url = str(URL(url).with_user(None).with_query(None))  # no credentials in logs
        self._session: aiohttp.ClientSession | None = None
        self._ttl_s, self._min_interval_s = ttl_s, min_refresh_interval_s
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._keys: tuple[jwt.PyJWK, ...] = ()
        self._fetched_at: float | None = None  # monotonic time of the last successful fetch
        self._attempted_at = float("-inf")  # monotonic time of the last attempt, successful or not
        self._generation = 0  # bumped after each completed attempt: coroutines that waited on it skip theirs
        self._lock = asyncio.Lock()

    async def key_for(self, kid: str | None, alg: str) -> jwt.PyJWK:
        """The key for an ``alg`` token naming ``kid``; without a kid, the JWKS's only signing key."""
        if alg not in KTY_FOR_ALG:
            raise _fail("unsupported token algorithm")
        expired = self._fetched_at is None or time.monotonic() - self._fetched_at >= self._ttl_s
        if expired and self._may_attempt():
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
        """Close the HTTP session (a later fetch opens a new one)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _lookup(self, kid: str | None) -> jwt.PyJWK | None:
        if kid is None:
            return self._keys[0] if len(self._keys) == 1 else None
        return next((k for k in self._keys if k.key_id == kid), None)

    def _may_attempt(self) -> bool:
        """A fetch is in flight (joining it costs nothing) or the last one is long enough ago."""
        return self._lock.locked() or time.monotonic() - self._attempted_at >= self._min_interval_s

    async def _refresh(self, seen_generation: int) -> None:
        async with self._lock:
            if self._generation != seen_generation:
                return  # another coroutine fetched while this one waited
            self._attempted_at = time.monotonic()
            try:
                self._keys, self._fetched_at = await self._fetch(), time.monotonic()
            except (aiohttp.ClientError, TimeoutError, ValueError, RecursionError) as e:
                log.warning("JWKS fetch from %s failed (%s); keeping %d cached keys",
                            self._log_url, type(e).__name__, len(self._keys))
            self._generation += 1  # not when cancelled: then the waiters fetch themselves

    async def _fetch(self) -> tuple[jwt.PyJWK, ...]:
        if self._session is None:
            self._session = self._session_factory()
        body = bytearray()
        async with self._session.get(self._url, timeout=self._timeout) as resp:
            resp.raise_for_status()
            async for chunk in resp.content.iter_chunked(65_536):
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ValueError("JWKS document too large")
        doc = json.loads(body)
        if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
            raise ValueError("not a JWKS document")
        keys = tuple(k for k in map(_signing_key, doc["keys"]) if k is not None)
        log.log(logging.DEBUG if keys else logging.WARNING, "JWKS at %s: %d RS256/ES256 signing keys",
                self._log_url, len(keys))
        return keys


class JwtVerifier:
    """Verifies bearer JWTs per ``JwtSettings`` and maps their claims to a ``JwtIdentity``."""

    def __init__(self, settings: JwtSettings, jwks: JwksCache | None = None):
        self._settings = settings
        self._secret = settings.hs256_secret.get_secret_value().encode() if settings.hs256_secret else None
        self._owned = None if jwks is not None or settings.jwks_url is None else JwksCache(
            settings.jwks_url, ttl_s=settings.jwks_cache_ttl_s, timeout_s=settings.jwks_timeout_s,
            min_refresh_interval_s=settings.jwks_min_refresh_interval_s)
        self._jwks = (jwks or self._owned) if settings.jwks_url is not None else None  # RS/ES need jwks_url
        self._required = sorted(set(settings.required_claims) | {"exp"})

    @staticmethod
    def looks_like_jwt(token: str) -> bool:
        """Cheap shape test, no verification: three base64url segments, the first a JSON object with alg."""
        if len(token) > MAX_TOKEN_CHARS or not _JWT_SHAPE.fullmatch(token):
            return False
        try:
            return "alg" in jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            return False

    async def verify(self, token: str) -> JwtIdentity:
        """The identity in a valid token; ``AuthenticationFailed`` saying what is wrong otherwise."""
        if len(token) > MAX_TOKEN_CHARS:
            raise _fail("token is too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _fail("token is malformed") from None
        alg = header.get("alg")
        if not isinstance(alg, str):
            raise _fail("unsupported token algorithm")
        return self._identity(self._decode(token, await self._key(alg, header.get("kid")), alg))

    async def aclose(self) -> None:
        if self._owned is not None:
            await self._owned.aclose()

    async def _key(self, alg: str, kid: str | None) -> bytes | jwt.PyJWK:
        if alg == "HS256" and self._secret is not None:
            return self._secret
        if alg in KTY_FOR_ALG and self._jwks is not None:
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
        subject = next((str(v) for n in m.user if (v := _claim(claims, n, "text")) not in (None, "")), None)
        if subject is None:
            raise _fail("token names no user")
        team, models = _claim(claims, m.team, "text"), _claim(claims, m.models, "names")
        admin = _claim(claims, m.admin) if m.admin else None
        admin = _LIST_SEP.split(admin) if isinstance(admin, str) else admin
        return JwtIdentity(
            subject=subject, team_id=None if team in (None, "") else str(team),
            models=None if models is None else frozenset(
                _LIST_SEP.split(models) if isinstance(models, str) else models) - {""},
            rpm_limit=_claim(claims, m.rpm_limit, "count"), tpm_limit=_claim(claims, m.tpm_limit, "count"),
            max_parallel_requests=_claim(claims, m.max_parallel_requests, "count"),
            is_admin=admin is True or (isinstance(admin, list) and m.admin_value in admin),
            issuer=claims["iss"] if isinstance(claims.get("iss"), str) else None,
            expires_at=float(claims["exp"]), claims=MappingProxyType(claims))


def _claim(claims: Mapping[str, Any], path: str, kind: str = "any") -> Any:
    """The claim at ``path`` (the literal key if present, else a dotted path into nested objects), None when
    absent; ``AuthenticationFailed`` when it is present but not of ``kind`` (a key of ``_CLAIM_KINDS``)."""
    value: Any = claims.get(path)
    if path not in claims:
        value = claims
        for part in path.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
    ok, problem = _CLAIM_KINDS[kind]
    if value is not None and not ok(value):
        raise _fail(f"token claim '{path}' {problem}")
    return value
