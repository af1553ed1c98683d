"""Authentication. This module accepts the master key as a Bearer token; virtual keys, JWT, Basic and
``x-api-key`` build on the same ``Principal`` (issue #3)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field

from starlette.requests import Request

from gateway.errors import AuthenticationFailed

NO_KEY = ("You didn't provide an API key. You need to provide your API key in an Authorization header using "
          "Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
BAD_KEY = "Incorrect API key provided. You can find your API keys in your Gatehouse admin."


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling. ``models`` is None when every model is allowed."""

    id: str
    is_admin: bool = False
    models: frozenset[str] | None = None
    metadata: dict[str, str] = field(default_factory=dict)


class Authenticator:
    def __init__(self, master_key: str):
        self._master = master_key.encode()
        self._admin = Principal(id="master", is_admin=True)

    def authenticate(self, request: Request) -> Principal:
        header = request.headers.get("authorization")
        if not header:
            raise AuthenticationFailed(NO_KEY, code="invalid_api_key")
        scheme, _, token = header.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationFailed(NO_KEY, code="invalid_api_key")
        # constant-time comparison; the token never appears in a message or a log
        if hmac.compare_digest(token.encode(), self._master):
            return self._admin
        raise AuthenticationFailed(BAD_KEY)
