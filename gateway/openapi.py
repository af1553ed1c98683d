"""The OpenAPI document (``/openapi.json``, served only with ``expose_docs``), describing the real API.

FastAPI documents what it parses itself. Gatehouse's endpoints read their bodies on their own (the hot ones
are plain Starlette routes, see ``gateway.routes.plain_post``; the admin ones parse after authenticating), so
their request bodies are added here from the same pydantic models that validate them:

- plain routes are found by their endpoint (a :class:`PlainEndpoint`) and documented with its body models;
- FastAPI routes declare theirs with ``openapi_extra=request_body(Model)``;
- the models' nested definitions are moved under ``components/schemas``, errors are documented as the
  OpenAI-style body every route answers with (400, not FastAPI's 422), and the credential as bearer auth.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route

from observability.http import ROUTE_KEY

REF = "#/components/schemas/{model}"
ERROR_SCHEMA: dict[str, Any] = {
    "type": "object", "title": "Error", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["message", "type", "param", "code"], "properties": {
        "message": {"type": "string"}, "type": {"type": "string"},
        "param": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "code": {"anyOf": [{"type": "string"}, {"type": "null"}]}}}},
}
ERROR_RESPONSE = {"description": "An OpenAI-style error",
                  "content": {"application/json": {"schema": {"$ref": REF.format(model="Error")}}}}


def request_body(*models: type[BaseModel]) -> dict[str, Any]:
    """The ``requestBody`` of an operation whose JSON body is one of ``models`` (as ``openapi_extra``)."""
    schemas = [m.model_json_schema(ref_template=REF) for m in models]
    schema = schemas[0] if len(schemas) == 1 else {"oneOf": schemas}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


class PlainEndpoint:
    """A plain route's endpoint: puts the path template in the scope (for the HTTP metrics, as FastAPI's own
    routes do) and calls ``endpoint``; knows the body models for the OpenAPI document."""

    def __init__(self, path: str, endpoint: Callable[[Request], Awaitable[Response]],
                 body: tuple[type[BaseModel], ...]):
        self.path = path
        self.endpoint = endpoint
        self.body = body
        self.name = endpoint.__name__

    async def handle(self, request: Request) -> Response:
        request.scope[ROUTE_KEY] = self.path
        return await self.endpoint(request)

    def operation(self) -> dict[str, Any]:
        doc = (self.endpoint.__doc__ or "").strip()
        return {"summary": self.name.replace("_", " ").capitalize(), **({"description": doc} if doc else {}),
                "operationId": f"{self.name}_{self.path.strip('/').replace('/', '_')}_post",
                **request_body(*self.body),
                "responses": {"200": {"description": "The answer (JSON, or server-sent events when streaming)",
                                      "content": {"application/json": {"schema": {"type": "object"}},
                                                  "text/event-stream": {"schema": {"type": "string"}}}},
                              "4XX": ERROR_RESPONSE, "5XX": ERROR_RESPONSE}}


def _walk(routes: Iterable[BaseRoute]) -> Iterator[BaseRoute]:
    """Every route, including those of included routers (which newer FastAPI keeps behind a wrapper)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _walk(inner.routes)
        else:
            yield route


def _hoist_defs(node: Any, into: dict[str, Any]) -> None:
    """Move every ``$defs`` (pydantic's nested models) into ``into`` (components/schemas)."""
    if isinstance(node, dict):
        into.update(node.pop("$defs", {}))
        for v in node.values():
            _hoist_defs(v, into)
    elif isinstance(node, list):
        for v in node:
            _hoist_defs(v, into)


def openapi_document(app: FastAPI) -> dict[str, Any]:
    doc = get_openapi(title=app.title, version=app.version, routes=app.routes,
                      description="OpenAI-compatible LLM gateway. Every route but the health probes needs a "
                                  "credential: the master key, a virtual key, or a JWT, as a Bearer token.")
    paths: dict[str, Any] = doc.setdefault("paths", {})
    for route in _walk(app.routes):
        plain = getattr(getattr(route, "endpoint", None), "__self__", None)
        if isinstance(route, Route) and route.include_in_schema and isinstance(plain, PlainEndpoint):
            paths.setdefault(route.path, {})["post"] = plain.operation()
    schemas: dict[str, Any] = doc.setdefault("components", {}).setdefault("schemas", {})
    _hoist_defs(paths, schemas)
    for name in ("HTTPValidationError", "ValidationError"):
        schemas.pop(name, None)
    schemas["Error"] = ERROR_SCHEMA
    for item in paths.values():
        for op in item.values():
            responses = op.setdefault("responses", {})
            if responses.pop("422", None) is not None:
                responses["400"] = ERROR_RESPONSE
    doc["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    doc["security"] = [{"bearer": []}]
    return doc


class DocumentedAPI(FastAPI):
    """FastAPI serving :func:`openapi_document` (built on first use: the routes are all in place by then)."""

    def openapi(self) -> dict[str, Any]:
        if not self.openapi_schema:
            self.openapi_schema = openapi_document(self)
        return self.openapi_schema
