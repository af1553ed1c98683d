"""Thin routers: each maps a request to a service call and the result to JSON, SSE or an error body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response

from gateway.openapi import PlainEndpoint

Endpoint = Callable[[Request], Awaitable[Response]]


def plain_post(router: APIRouter, path: str, endpoint: Endpoint, *body: type[BaseModel],
               include_in_schema: bool = True) -> None:
    """``POST path`` as a plain Starlette route: for hot endpoints that take only the request (they parse the
    body themselves, into one of the ``body`` models), so FastAPI's per-call dependency solving would be work
    for nothing. The route's path template is put in the scope for the HTTP metrics, as FastAPI's own routes
    do; the OpenAPI document (gateway.openapi) describes its body with the ``body`` models."""
    plain = PlainEndpoint(path, endpoint, body)
    router.add_route(path, plain.handle, methods=["POST"], name=endpoint.__name__, include_in_schema=include_in_schema)
