"""Thin routers: each maps a request to a service call and the result to JSON, SSE or an error body."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter
from starlette.requests import Request
from starlette.responses import Response

from observability.http import ROUTE_KEY

Endpoint = Callable[[Request], Awaitable[Response]]


def plain_post(router: APIRouter, path: str, endpoint: Endpoint, *, include_in_schema: bool = True) -> None:
    """``POST path`` as a plain Starlette route: for hot endpoints that take only the request (they parse the
    body themselves), so FastAPI's per-call dependency solving would be work for nothing. The route's path
    template is put in the scope for the HTTP metrics, as FastAPI's own routes do."""

    async def handle(request: Request) -> Response:
        request.scope[ROUTE_KEY] = path
        return await endpoint(request)

    router.add_route(path, handle, methods=["POST"], name=endpoint.__name__, include_in_schema=include_in_schema)
