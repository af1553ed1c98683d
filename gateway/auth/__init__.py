"""Authentication: every credential form becomes one :class:`Principal`.

Accepted, on every protected route:

1. ``Authorization: Bearer <master key>`` — admin.
2. ``Authorization: Bearer sk-gh-<id>.<secret>`` — a virtual key (gateway/keys/).
3. ``Authorization: Bearer <JWT>`` — HS256 with a shared secret, or RS256/ES256 from a JWKS (jwt_auth.py).
4. ``Authorization: Basic base64(ak-<id>:as-<secret>)`` — the same virtual key as an id/secret pair.
5. ``x-api-key: <virtual key or master key>``.
6. Neither header, but a console session cookie (``gh_session``, gateway/console/): the session's stored
   credential, authenticated as above; a method other than GET/HEAD/OPTIONS must also carry the session's
   ``x-csrf-token`` (else 403). Only looked at when no header is present, so bearer requests pay nothing.

Secrets are compared in constant time and never appear in messages or logs.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.requests import Request

from core.durations import duration_seconds
from core.keys.tokens import KeyCredential, parse_bearer, parse_pair, secret_matches
from gateway.console.session import COOKIE, CSRF_HEADER, SAFE_METHODS, SessionStore
from gateway.errors import AuthenticationFailed, PermissionDenied
from gateway.keys.cache import KeyCache

if TYPE_CHECKING:
    from gateway.auth.jwt_auth import JwtIdentity, JwtVerifier

NO_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization header using "
          "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
BAD_KEY = "Incorrect API key provided. You can find your API keys in your Gatehouse admin."
EXPIRED = "This API key has expired or was revoked."
NO_SESSION = "Your console session has expired or was signed out; sign in again at /ui/login."
BAD_CSRF = "This request needs the console session's x-csrf-token header."
JWT_CACHE_MAX = 50_000


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``models`` is None when every model is allowed."""

    id: str
    kind: str = "master"  # master | key | jwt
    is_admin: bool = False
    models: frozenset[str] | None = None
    key_id: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    max_budget: float | None = None
    budget_period_s: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    alias: str | None = None  # the key's alias (for traces, and metric labels when tenant labels are on)

    def may_use(self, model: str) -> bool:
        return self.models is None or model in self.models


MASTER = Principal(id="master", kind="master", is_admin=True)


class Authenticator:
    def __init__(self, master_key: str, keys: KeyCache | None = None, jwt: JwtVerifier | None = None,
                 sessions: SessionStore | None = None):
        self._master = master_key.encode()
        self.sessions = sessions  # console sessions (gateway/console/), when the console is served
        self.keys = keys
        self.jwt = jwt  # when JWTs are configured
        # verified JWTs -> principal, until the token's own expiry: a signature check per request costs
        # ~50 µs (HS256) to ~150 µs (RS256), a dict hit ~1 µs. Bounded; cleared wholesale when full.
        self._jwt_seen: dict[str, tuple[float, Principal]] = {}

    async def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if header:
            scheme, _, value = header.partition(" ")
            value = value.strip()
            scheme = scheme.lower()
            if scheme == "bearer" and value:
                return await self._bearer(value)
            if scheme == "basic" and value:
                return await self._virtual_key(_basic_pair(value))
            raise AuthenticationFailed(NO_KEY).because("missing")
        api_key = request.headers.get("x-api-key")
        if api_key:
            return await self._bearer(api_key.strip(), allow_jwt=False)
        if self.sessions is not None:
            session_id = request.cookies.get(COOKIE)
            if session_id:
                return await self._session(request, self.sessions, session_id)
        raise AuthenticationFailed(NO_KEY).because("missing")

    async def credential(self, token: str) -> Principal:
        """The principal for a credential as typed into the console's sign-in form (master key, virtual key, JWT)."""
        return await self._bearer(token.strip())

    async def _session(self, request: Request, sessions: SessionStore, session_id: str) -> Principal:
        session = await sessions.get(session_id)
        if session is None:
            raise AuthenticationFailed(NO_SESSION).because("expired")
        if request.method not in SAFE_METHODS and not session.csrf_ok(request.headers.get(CSRF_HEADER)):
            raise PermissionDenied(BAD_CSRF, code="csrf_failed")
        return await self.credential(session.credential)

    async def _bearer(self, token: str, allow_jwt: bool = True) -> Principal:
        if hmac.compare_digest(token.encode(), self._master):
            return MASTER
        cred = parse_bearer(token)
        if cred is not None:
            return await self._virtual_key(cred)
        if allow_jwt and self.jwt is not None and (token in self._jwt_seen or self.jwt.looks_like_jwt(token)):
            return await self._jwt(self.jwt, token)
        raise AuthenticationFailed(BAD_KEY)

    async def _jwt(self, verifier: JwtVerifier, token: str) -> Principal:
        seen = self._jwt_seen.get(token)
        if seen is not None and seen[0] > time.time():
            return seen[1]
        identity = await verifier.verify(token)
        principal = _from_jwt(identity)
        if identity.expires_at is not None:
            if len(self._jwt_seen) >= JWT_CACHE_MAX:
                self._jwt_seen.clear()
            self._jwt_seen[token] = (identity.expires_at, principal)
        return principal

    async def _virtual_key(self, cred: KeyCredential | None) -> Principal:
        if cred is None or self.keys is None:
            raise AuthenticationFailed(BAD_KEY)
        entry = await self.keys.lookup(cred.key_id)
        if entry is None or not secret_matches(cred.secret, entry[1]):
            raise AuthenticationFailed(BAD_KEY)
        record = entry[0]
        if not record.usable(datetime.now(UTC)):
            raise AuthenticationFailed(EXPIRED).because("expired")
        return Principal(id=record.key_id, kind="key", is_admin=record.is_admin,
                         models=frozenset(record.models) if record.models is not None else None,
                         key_id=record.key_id, user_id=record.user_id, team_id=record.team_id,
                         rpm_limit=record.rpm_limit, tpm_limit=record.tpm_limit,
                         max_parallel_requests=record.max_parallel_requests, max_budget=record.max_budget,
                         budget_period_s=duration_seconds(record.budget_duration), metadata=record.metadata,
                         alias=record.key_alias)


def _basic_pair(value: str) -> KeyCredential | None:
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    key_id, sep, secret = decoded.partition(":")
    return parse_pair(key_id, secret) if sep else None


def _from_jwt(identity: JwtIdentity) -> Principal:
    return Principal(id=f"jwt:{identity.subject}", kind="jwt", is_admin=identity.is_admin, models=identity.models,
                     user_id=identity.subject, team_id=identity.team_id, rpm_limit=identity.rpm_limit,
                     tpm_limit=identity.tpm_limit, max_parallel_requests=identity.max_parallel_requests)
