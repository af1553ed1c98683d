"""Per-request context: request ids (header + log records), the body-size guard, and the last-resort 500, as
pure ASGI middleware.

Pure ASGI rather than Starlette's BaseHTTPMiddleware: it adds no task and no body copy per request.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.errors import GatewayError, PayloadTooLarge
from observability.http import OTHER_ROUTE, observe_http, route_of
from observability.logs import request_id_var

access_log = logging.getLogger("gatehouse.access")
log = logging.getLogger("gatehouse.gateway")

REQUEST_ID_KEY = "gatehouse.request_id"
STARTED_KEY = "gatehouse.started"  # (time.time(), time.perf_counter()) when the request arrived


def new_request_id() -> str:
    return uuid.uuid4().hex


def request_id(scope: Scope) -> str:
    return scope.get(REQUEST_ID_KEY) or "-"


class RequestContextMiddleware:
    """Assigns the request id, echoes it on every response, and refuses bodies whose declared length exceeds
    the limit before reading them (``body_limits``: POST paths with a limit of their own, and the error answered
    beyond it: file uploads). An exception nothing else handled is logged once (with its traceback) and
    answered with a complete JSON 500 when the response has not started, so the connection stays usable and
    the access log says 500.

    The id is always generated here, never taken from the caller: it names the job and its output stream,
    and a caller-chosen id could name someone else's."""

    def __init__(self, app: ASGIApp, max_body_bytes: int, log_access: bool = True,
                 body_limits: Mapping[str, tuple[int, GatewayError]] | None = None):
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.log_access = log_access
        self.body_limits = dict(body_limits or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        too_large = False
        limit, refusal = self.max_body_bytes, None
        if scope["method"] == "POST" and scope["path"] in self.body_limits:
            limit, refusal = self.body_limits[scope["path"]]
        for name, value in scope["headers"]:
            if name == b"content-length":
                too_large = not value.isdigit() or int(value) > limit
        rid = new_request_id()
        scope[REQUEST_ID_KEY] = rid
        request_id_var.set(rid)
        rid_header = (b"x-request-id", rid.encode())

        if too_large:
            err = refusal or PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.")
            body = orjson.dumps(err.body())
            await send({"type": "http.response.start", "status": err.status,
                        "headers": [(b"content-type", b"application/json"),
                                    (b"content-length", str(len(body)).encode()), rid_header,
                                    (b"connection", b"close")]})
            await send({"type": "http.response.body", "body": body})
            observe_http(OTHER_ROUTE, err.status, 0.0)
            return

        started = time.perf_counter()
        scope[STARTED_KEY] = (time.time(), started)
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), rid_header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except ClientDisconnect:
            pass  # gone while its body was read: nobody to answer (the access log says 499)
        except Exception as exc:  # the innermost place that can still answer
            log.error("unhandled error on %s %s (request %s)", scope["method"], scope["path"], rid, exc_info=exc)
            if not status:
                await _answer_500(send_with_id, rid)
            # else the response has started: returning unfinished makes the server cut it short
        finally:
            elapsed = time.perf_counter() - started
            observe_http(route_of(scope), status or 499, elapsed)
            if self.log_access:
                access_log.info("%s %s %d %.1fms", scope["method"], scope["path"], status or 499, elapsed * 1000)


async def _answer_500(send: Send, rid: str) -> None:
    """A complete JSON 500 (so the connection stays usable), naming the request for the logs."""
    err = GatewayError(f"The gateway had an internal error handling this request (request id {rid}).")
    body = orjson.dumps(err.body())
    await send({"type": "http.response.start", "status": err.status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
