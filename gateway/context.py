"""Per-request context: request ids (header + log records) and the body-size guard, as pure ASGI middleware.

Pure ASGI rather than Starlette's BaseHTTPMiddleware: it adds no task and no body copy per request.
"""

from __future__ import annotations

import contextvars
import logging
import uuid

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import PayloadTooLarge

request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")
REQUEST_ID_KEY = "gatehouse.request_id"


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id(scope: Scope) -> str:
    return scope.get(REQUEST_ID_KEY) or "-"


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every log record as ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class RequestContextMiddleware:
    """Assigns the request id, echoes it on every response, and refuses bodies whose declared length exceeds
    the limit before reading them.

    The id is always generated here, never taken from the caller: it names the job and its output stream,
    and a caller-chosen id could name someone else's."""

    def __init__(self, app: ASGIApp, max_body_bytes: int):
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = False
        for name, value in scope["headers"]:
            if name == b"content-length":
                too_large = not value.isdigit() or int(value) > self.max_body_bytes
        rid = new_request_id()
        scope[REQUEST_ID_KEY] = rid
        request_id_var.set(rid)
        rid_header = (b"x-request-id", rid.encode())

        if too_large:
            err = PayloadTooLarge(f"Request body exceeds the limit of {self.max_body_bytes} bytes.")
            body = orjson.dumps(err.body())
            await send({"type": "http.response.start", "status": err.status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()), rid_header,
                                    (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            return

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        await self.app(scope, receive, send_with_id)
