"""Graceful shutdown of the gateway: stop accepting, drain what is in flight for a bounded time, then stop.

On the first SIGTERM/SIGINT the gateway does not close its socket (a client would then see "connection
refused", with no hint to retry): it answers new requests ``503 shutting_down`` with ``retry-after`` and
``connection: close``, fails ``/health/ready`` so load balancers move traffic away, and lets the requests in
flight finish. When they are done, or ``shutdown_grace_s`` has passed, uvicorn's own shutdown runs; streams
still open by then end with a ``shutting_down`` error event and ``[DONE]`` (the relay checks ``Drain.expired``
between reads), never with a cut connection. A second signal stops at once.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import time
from collections.abc import Iterator
from types import FrameType

import orjson
import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.errors import ServiceUnavailable

log = logging.getLogger("gatehouse.gateway")
PASS_THROUGH = frozenset({"/health/live", "/metrics"})  # still answered while draining
FINISH_S = 2.0  # after the grace period: time for the relays to send their final events


class Drain:
    """The gateway's shutdown state, shared by the server, the middleware and the relays."""

    def __init__(self, grace_s: float):
        self.grace_s = grace_s
        self.started_at: float | None = None

    @property
    def draining(self) -> bool:
        return self.started_at is not None

    @property
    def expired(self) -> bool:
        """The grace period is over: requests still running must end now."""
        return self.started_at is not None and time.monotonic() - self.started_at >= self.grace_s

    def begin(self) -> None:
        if self.started_at is None:
            self.started_at = time.monotonic()


def shutting_down() -> ServiceUnavailable:
    return ServiceUnavailable("The gateway is shutting down; retry on another replica or shortly.",
                              code="shutting_down", headers={"retry-after": "1"})


class DrainMiddleware:
    """Refuses new requests once draining (pure ASGI: nothing added to a request otherwise)."""

    def __init__(self, app: ASGIApp, drain: Drain):
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.drain.draining or scope["path"] in PASS_THROUGH:
            await self.app(scope, receive, send)
            return
        if scope["path"] == "/health/ready":
            status, body = 503, orjson.dumps({"status": "shutting_down", "checks": {}, "down": ["gateway"]})
            headers = [(b"content-type", b"application/json")]
        else:
            err = shutting_down()
            status, body = err.status, orjson.dumps(err.body())
            headers = [(b"content-type", b"application/json"), (b"retry-after", b"1")]
        await send({"type": "http.response.start", "status": status,
                    "headers": [*headers, (b"content-length", str(len(body)).encode()), (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


class DrainingServer(uvicorn.Server):
    """uvicorn's server with a drain phase before its own shutdown (see the module docstring)."""

    def __init__(self, config: uvicorn.Config, drain: Drain):
        super().__init__(config)
        self.drain = drain

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.drain.draining:  # a second signal: stop now
            self.should_exit = True
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        log.info("received %s: refusing new requests, draining %d in flight (up to %.0f s)",
                 signal.Signals(sig).name, len(self.server_state.tasks), self.drain.grace_s)
        self.drain.begin()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn re-raises the signals it caught once it has stopped, so that the process dies of them (a
        KeyboardInterrupt traceback for SIGINT); the drain already handled them: exit normally instead."""
        with super().capture_signals():
            yield
            self._captured_signals.clear()

    async def on_tick(self, counter: int) -> bool:
        if self.drain.draining and not self.should_exit:
            assert self.drain.started_at is not None
            waited = time.monotonic() - self.drain.started_at
            if not self.server_state.tasks or waited >= self.drain.grace_s + FINISH_S:
                log.info("drained after %.1f s; stopping", waited)
                self.should_exit = True
        return await super().on_tick(counter)
