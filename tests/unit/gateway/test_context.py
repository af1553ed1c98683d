"""The last-resort 500: an exception nothing handled gets a complete JSON 500 from RequestContextMiddleware, on
a connection that stays usable, with one error log line (and its traceback) and a 500 in the access log."""

from __future__ import annotations

import http.client
import json
import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from core.config import Config
from gateway.app import create_app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def server() -> Iterator[int]:
    """The real gateway app (without its services: these routes need none) under a real uvicorn."""
    app = create_app(Config.model_validate({}), "sk-gh-unit-master-key-0123456789")

    async def boom(request: Request) -> Response:
        raise RuntimeError("a bug")

    async def fine(request: Request) -> Response:
        return JSONResponse({"ok": True})

    app.router.add_route("/boom", boom, methods=["GET", "POST"])
    app.router.add_route("/fine", fine)
    port = _free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.time() + 10
    while not srv.started:
        assert time.time() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    yield port
    srv.should_exit = True
    thread.join(5)


def test_unhandled_error_is_a_clean_500_on_a_reusable_connection(server: int,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", server, timeout=5)
    with caplog.at_level(logging.INFO):
        conn.request("POST", "/boom", body=b'{"x": 1}', headers={"content-type": "application/json"})
        r = conn.getresponse()
        body = json.loads(r.read())
        sock = conn.sock
        assert r.status == 500
        assert r.getheader("content-type") == "application/json"
        rid = r.getheader("x-request-id")
        assert rid and rid in body["error"]["message"]
        assert set(body["error"]) == {"message", "type", "param", "code"}
        assert body["error"]["type"] == "server_error"
        assert "Traceback" not in body["error"]["message"] and "a bug" not in body["error"]["message"]
        assert r.getheader("connection") != "close"

        conn.request("GET", "/fine")  # the same connection serves the next request
        r2 = conn.getresponse()
        assert r2.status == 200 and json.loads(r2.read()) == {"ok": True}
        assert conn.sock is sock
    conn.close()

    errors = [rec for rec in caplog.records if rec.levelno >= logging.ERROR]
    assert len(errors) == 1, [rec.getMessage() for rec in errors]  # one line, ours (not uvicorn's too)
    assert errors[0].name == "gatehouse.gateway" and errors[0].exc_info is not None
    assert rid in errors[0].getMessage()
    access = [rec.getMessage() for rec in caplog.records if rec.name == "gatehouse.access"]
    assert any(m.startswith("POST /boom 500 ") for m in access), access
    assert any(m.startswith("GET /fine 200 ") for m in access), access
