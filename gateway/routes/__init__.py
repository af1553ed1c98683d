"""Thin routers: each maps a request to a service call and the result to JSON, SSE or an error body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from core.schemas import dumps_json
from gateway.auth import Principal
from gateway.db.database import Database, DatabaseUnavailable
from gateway.errors import NotFound
from gateway.openapi import PlainEndpoint
from gateway.services import services

Endpoint = Callable[[Request], Awaitable[Response]]


def plain_post(router: APIRouter, path: str, endpoint: Endpoint, *body: type[BaseModel],
               include_in_schema: bool = True) -> None:
    """``POST path`` as a plain Starlette route: for hot endpoints that take only the request (they parse the
    body themselves, into one of the ``body`` models), so FastAPI's per-call dependency solving would be work
    for nothing. The route's path template is put in the scope for the HTTP metrics, as FastAPI's own routes
    do; the OpenAPI document (gateway.openapi) describes its body with the ``body`` models."""
    plain = PlainEndpoint(path, endpoint, body)
    router.add_route(path, plain.handle, methods=["POST"], name=endpoint.__name__, include_in_schema=include_in_schema)


def not_found(what: str, ident: str, param: str, code: str) -> NotFound:
    """404 for a stored object the caller may not see or that does not exist (the same answer for both), the id
    echoed at most 64 characters long."""
    shown = ident if len(ident) <= 64 else ident[:64] + "…"
    return NotFound(f"No {what} found with id '{shown}'.", param=param, code=code)


def json_response(obj: Any) -> Response:
    return Response(dumps_json(obj), media_type="application/json")


async def stored(request: Request, what: str) -> tuple[Database, Principal]:
    """The caller (authenticated) and the database that keeps ``what``; 503 when none is configured."""
    svc = services(request)
    principal = await svc.auth.authenticate(request)
    db = await svc.database()
    if db is None:
        raise DatabaseUnavailable(f"No database is configured (set DATABASE_URL): {what} are kept in PostgreSQL.")
    return db, principal
