"""The FastAPI application: routers, error handlers, middleware; services built once in the lifespan."""

from __future__ import annotations

import gc
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from core import __version__
from core import queue as q
from core.config import Config
from gateway.console import routes as console
from gateway.context import RequestContextMiddleware
from gateway.draining import Drain, DrainMiddleware
from gateway.errors import GatewayError, MethodNotAllowed, NotFound, ServiceUnavailable, from_error_list, render
from gateway.files.upload import body_limits
from gateway.openapi import DocumentedAPI
from gateway.routes import (
    batches,
    benchmarks,
    classify,
    embeddings,
    files,
    generate,
    health,
    keys,
    metrics,
    openai,
    responses,
)
from gateway.services import build_services
from observability import metrics as prom
from observability.http import count_refusal

log = logging.getLogger("gatehouse.gateway")


def create_app(config: Config, master_key: str) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.services = await build_services(config, master_key, drain)
        prom.prime(q.LANES, app.state.services.models)
        # everything allocated so far lives for the whole process: keep the collector from rescanning it
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 50, 100)  # fewer young-generation passes under load
        log.info("gateway ready: %d model(s): %s", len(app.state.services.models),
                 ", ".join(app.state.services.models))
        try:
            yield
        finally:
            await app.state.services.aclose()

    drain = Drain(config.settings.shutdown_grace_s)
    docs = config.settings.expose_docs  # every route but the health probes needs a credential: docs are opt-in
    app = DocumentedAPI(title="Gatehouse", version=__version__, lifespan=lifespan, docs_url="/docs" if docs else None,
                  telemetry={"tracing": False, "metrics": False, "logs": False},
                  redoc_url=None, openapi_url="/openapi.json" if docs else None)
    app.include_router(openai.router)
    app.include_router(generate.router)
    app.include_router(classify.router)
    app.include_router(embeddings.router)
    app.include_router(health.router)
    app.include_router(keys.router)
    app.include_router(files.router)
    app.include_router(batches.router)
    app.include_router(benchmarks.router)
    app.include_router(metrics.router)
    app.include_router(responses.router)
    console.mount(app)  # the web console at /ui (gateway/console/, ADR 0021)

    @app.exception_handler(GatewayError)
    async def _gateway_error(request: Request, exc: GatewayError) -> Response:
        count_refusal(exc)
        if exc.status >= 500:
            log.warning("%s %s -> %d %s", request.method, request.url.path, exc.status, exc.code)
        return render(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
        return render(from_error_list(exc.errors(), located=True))  # a query or path parameter, named

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 405:
            err: GatewayError = MethodNotAllowed(f"Method {request.method} is not allowed for {request.url.path}.")
        elif exc.status_code == 404:
            err = NotFound(f"Unknown route: {request.method} {request.url.path}.")
        else:
            err = GatewayError(str(exc.detail), status=exc.status_code, type_="invalid_request_error")
        return render(err)

    @app.exception_handler(RedisConnectionError)
    @app.exception_handler(RedisTimeoutError)
    async def _redis_down(request: Request, exc: Exception) -> Response:
        log.warning("Redis unavailable on %s %s: %s", request.method, request.url.path, type(exc).__name__)
        return render(ServiceUnavailable("The gateway's queue is not reachable; retry shortly.",
                                         headers={"retry-after": "1"}))

    # Any other exception: RequestContextMiddleware answers a clean 500 (not Starlette's ServerErrorMiddleware,
    # which re-raises after answering, so the server drops the connection).

    app.add_middleware(RequestContextMiddleware, max_body_bytes=config.settings.max_body_bytes,
                       log_access=config.settings.access_log, body_limits=body_limits(config.settings))
    app.add_middleware(DrainMiddleware, drain=drain)  # outermost: refuses new requests once draining
    app.state.drain = drain  # the server (gateway.draining.DrainingServer) starts the drain on a signal
    return app
