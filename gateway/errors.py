"""One error hierarchy, one renderer: every failure a client sees is an OpenAI-style error body.

    GatewayError (500 server_error)
    ├── InvalidRequest (400 invalid_request_error)
    ├── AuthenticationFailed (401 invalid_api_key)
    ├── PermissionDenied (403)
    ├── NotFound (404) ── ModelNotFound (404 model_not_found)
    ├── MethodNotAllowed (405)
    ├── PayloadTooLarge (413)
    ├── RateLimited (429 rate_limit_exceeded)
    ├── UpstreamError (502 / upstream's own 4xx)
    ├── ServiceUnavailable (503) ─┬ QueueFull (503 queue_full, retry-after)
    │                             └ DatabaseUnavailable (503 database_unavailable, retry-after; gateway.db)
    └── GatewayTimeout (504 timeout)

Body: ``{"error": {"message", "type", "param", "code"}}``. Messages never contain credentials or tracebacks.
Anything else raised while handling a request is a bug: gateway.context answers it with a plain 500 of this
shape (naming the request id) and logs the traceback.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from pydantic import ValidationError
from starlette.responses import Response


class GatewayError(Exception):
    status = 500
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None,
                 status: int | None = None, type_: str | None = None, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status
        if type_ is not None:
            self.type = type_
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "invalid_request_error"
    code = "invalid_api_key"
    reason = "invalid"  # metric label: missing | invalid | expired | jwt_invalid

    def because(self, reason: str) -> AuthenticationFailed:
        self.reason = reason
        return self


class PermissionDenied(GatewayError):
    status = 403
    type = "invalid_request_error"
    code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"

    def __init__(self, model: str):
        super().__init__(f"The model `{model}` does not exist or you do not have access to it.", param="model")


class MethodNotAllowed(GatewayError):
    status = 405
    type = "invalid_request_error"
    code = "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(GatewayError):
    status = 429
    type = "requests"
    code = "rate_limit_exceeded"
    scope_kind = "unknown"  # metric labels: whose limit (key/team/user) and which one (rpm/tpm/parallel/budget)
    limit = "unknown"


class UpstreamError(GatewayError):
    status = 502
    type = "upstream_error"
    code = "upstream_error"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "service_unavailable"


class QueueFull(ServiceUnavailable):
    code = "queue_full"

    def __init__(self, retry_after: int = 1):
        super().__init__("The gateway's queue is full; retry shortly.", headers={"retry-after": str(retry_after)})


class GatewayTimeout(GatewayError):
    status = 504
    type = "timeout_error"
    code = "timeout"


def from_validation_error(err: ValidationError) -> InvalidRequest:
    """The first pydantic error as an OpenAI 400 naming the parameter."""
    return from_error_list(err.errors(include_url=False, include_input=False))


def from_error_list(errors: Sequence[Any], *, located: bool = False) -> InvalidRequest:
    """The first of pydantic's error dicts as an OpenAI 400. ``located``: FastAPI's, whose location starts
    with where the parameter was (``query``, ``path``, ``body``...)."""
    if not errors:
        return InvalidRequest("Invalid request parameters.")
    first = errors[0]
    # list positions as OpenAI writes them: tools[0].function.name
    loc = [f"[{p}]" if isinstance(p, int) else str(p) for p in first["loc"][1 if located else 0:] if p != "body"]
    param = ".".join(loc).replace(".[", "[") or None
    kind = first["type"]
    if kind == "missing":
        return InvalidRequest(f"Missing required parameter: '{param}'.", param=param,
                              code="missing_required_parameter")
    msg = first["msg"]
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    code = "invalid_type" if kind.endswith(("_type", "_parsing")) else "invalid_value"
    return InvalidRequest(f"Invalid value for '{param}': {msg}." if param else f"{msg}.", param=param, code=code)


def render(err: GatewayError, request_id: str | None = None) -> Response:
    """The error as an HTTP response. Pass ``request_id`` only outside RequestContextMiddleware."""
    headers = dict(err.headers)
    if request_id:
        headers["x-request-id"] = request_id
    return Response(orjson.dumps(err.body()), status_code=err.status, headers=headers,
                    media_type="application/json")


def sse_error(err: GatewayError) -> bytes:
    """A mid-stream failure: one ``data: {"error": ...}`` event (the stream then ends with [DONE])."""
    return b"data: " + orjson.dumps(err.body()) + b"\n\n"


STATUS_TO_ERROR: dict[int, type[GatewayError]] = {
    400: InvalidRequest, 401: AuthenticationFailed, 403: PermissionDenied, 404: NotFound, 413: PayloadTooLarge,
    429: RateLimited, 503: ServiceUnavailable, 504: GatewayTimeout,
}


def from_event(ev: dict[str, Any]) -> GatewayError:
    """Rebuild the error a worker reported in its output stream (with the headers it names: an upstream 429's
    ``retry-after``)."""
    status = int(ev.get("status") or 502)
    cls = STATUS_TO_ERROR.get(status, UpstreamError if status >= 500 else InvalidRequest)
    headers = ev.get("headers")
    return cls(str(ev.get("message") or "upstream error"), code=ev.get("code"), status=status,
               type_=ev.get("type"), param=ev.get("param"),
               headers={str(k): str(v) for k, v in headers.items()} if isinstance(headers, dict) else None)
