"""Console sessions: a random id in an HttpOnly cookie, the credential it stands for in Redis.

``gatehouse:ui:session:<id>`` → ``{"credential", "csrf", "created"}`` for 12 hours. The credential is kept as
the user typed it, so every request re-derives the principal with the gateway's normal authentication: a
revoked or expired key stops working in the console at once, as it does for the SDK.
"""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass

import orjson
from redis.asyncio import Redis

COOKIE = "gh_session"
CSRF_HEADER = "x-csrf-token"
PREFIX = "gatehouse:ui:session:"
TTL_S = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_ID_CHARS = 128  # token_urlsafe(32) is 43 characters; anything much longer is not ours


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    credential: str
    csrf: str
    created: float

    def csrf_ok(self, token: str | None) -> bool:
        return token is not None and hmac.compare_digest(token.encode(), self.csrf.encode())


class SessionStore:
    def __init__(self, redis: Redis, ttl_s: int = TTL_S):
        self.redis = redis
        self.ttl_s = ttl_s

    async def create(self, credential: str) -> Session:
        session = Session(secrets.token_urlsafe(32), credential, secrets.token_urlsafe(32), time.time())
        body = orjson.dumps({"credential": session.credential, "csrf": session.csrf, "created": session.created})
        await self.redis.set(PREFIX + session.id, body, ex=self.ttl_s)
        return session

    async def get(self, session_id: str | None) -> Session | None:
        if not session_id or len(session_id) > MAX_ID_CHARS or not session_id.isascii():
            return None
        raw = await self.redis.get(PREFIX + session_id)
        if raw is None:
            return None
        try:
            d = orjson.loads(raw)
            return Session(session_id, str(d["credential"]), str(d["csrf"]), float(d["created"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return None

    async def delete(self, session_id: str) -> None:
        if session_id and len(session_id) <= MAX_ID_CHARS:
            await self.redis.delete(PREFIX + session_id)
