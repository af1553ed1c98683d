"""The virtual key format.

A virtual key is a pair: a public id ``ak-<16 hex>`` and a secret ``as-<43 url-safe chars>`` (256 bits).
Clients present it either as one Bearer / ``x-api-key`` token, ``sk-gh-<id>.<secret>`` (without the
``ak-``/``as-`` prefixes), or as HTTP Basic ``base64(ak-…:as-…)``. Only SHA-256 of the secret is stored:
the secret has full entropy, so a slow password hash would add latency and no protection.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

BEARER_PREFIX = "sk-gh-"
ID_PREFIX = "ak-"
SECRET_PREFIX = "as-"
_ID = re.compile(r"^ak-[0-9a-f]{16}$")
_SECRET = re.compile(r"^as-[A-Za-z0-9_\-]{20,128}$")


@dataclass(frozen=True, slots=True)
class KeyCredential:
    key_id: str
    secret: str

    @property
    def bearer(self) -> str:
        return f"{BEARER_PREFIX}{self.key_id[len(ID_PREFIX):]}.{self.secret[len(SECRET_PREFIX):]}"

    def __repr__(self) -> str:  # never show the secret
        return f"KeyCredential(key_id={self.key_id!r})"


def new_credential() -> KeyCredential:
    return KeyCredential(ID_PREFIX + secrets.token_hex(8), SECRET_PREFIX + secrets.token_urlsafe(32))


def is_key_id(value: str) -> bool:
    """Whether ``value`` is a well-formed key id (``ak-`` and 16 hex digits)."""
    return _ID.fullmatch(value) is not None


def parse_pair(key_id: str, secret: str) -> KeyCredential | None:
    """The Basic-auth form; None unless both parts are well-formed."""
    if _ID.match(key_id) and _SECRET.match(secret):
        return KeyCredential(key_id, secret)
    return None


def parse_bearer(token: str) -> KeyCredential | None:
    """``sk-gh-<id>.<secret>``; None for anything else (the master key, a JWT, garbage)."""
    if not token.startswith(BEARER_PREFIX):
        return None
    ident, dot, secret = token[len(BEARER_PREFIX):].partition(".")
    if not dot:
        return None
    return parse_pair(ID_PREFIX + ident, SECRET_PREFIX + secret)


def hash_secret(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def secret_matches(secret: str, stored_hash: bytes) -> bool:
    return hmac.compare_digest(hash_secret(secret), stored_hash)
