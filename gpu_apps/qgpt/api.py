"""FastAPI surface of qgpt, in the seed's formats: ``GET /health`` and ``POST /generate`` (optionally SSE).

``/generate`` takes ``{"prompt", "max_tokens", "temperature", "quantum_profile"}`` (plus optional ``top_p``,
``seed``, ``stream``) and answers ``{"generated_text", "tokens_generated", "quantum_profile",
"quantum_diagnostics": {...}, "generation_time", "model", "temperature"}``. With ``"stream": true`` it answers
``text/event-stream``: ``data: {"token": "..."}`` per piece, then ``data: {"done": true, ...full body}``, then
``data: [DONE]``; a failure mid-stream is one ``data: {"error": {...}}`` event. HTTP Basic auth
(``base64(key:secret)``) guards ``/generate`` when ``credentials`` are given.
"""

from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from gpu_apps.qgpt.entropy import EntropyPool
from gpu_apps.qgpt.generator import QuantumGenerator
from gpu_apps.qgpt.profiles import DEFAULT_PROFILE, get_profile

SERVICE_NAME = "Quantum GPT API"


class GenerateRequest(BaseModel):
    """The seed's /generate request body; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")

    prompt: str = Field(min_length=1)
    max_tokens: int = Field(512, ge=1, le=8192)
    temperature: float = Field(0.8, ge=0.0, le=5.0)
    quantum_profile: str = DEFAULT_PROFILE
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    seed: int | None = None
    stream: bool = False

    @field_validator("quantum_profile")
    @classmethod
    def _known_profile(cls, value: str) -> str:
        return get_profile(value).name  # UnknownProfileError is a ValueError -> 422


class QuantumDiagnostics(BaseModel):
    """The seed's ``quantum_diagnostics`` plus the entropy source."""

    total_entropy_consumed: int
    modifications_applied: int
    average_logit_diff: float
    entropy_source: str


class GenerateResponse(BaseModel):
    """The seed's /generate response body."""

    generated_text: str
    tokens_generated: int
    quantum_profile: str
    quantum_diagnostics: QuantumDiagnostics
    generation_time: float
    model: str
    temperature: float


def _basic_auth_dependency(credentials: tuple[str, str] | None) -> Any:
    """A dependency checking ``Authorization: Basic base64(key:secret)`` (no-op without credentials)."""

    def check(request: Request) -> None:
        if credentials is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        try:
            user, _, password = base64.b64decode(token, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            user = password = ""
        ok = scheme.lower() == "basic" and secrets.compare_digest(user.encode(), credentials[0].encode()) \
            and secrets.compare_digest(password.encode(), credentials[1].encode())
        if not ok:
            raise HTTPException(401, "invalid or missing Basic credentials", {"WWW-Authenticate": "Basic"})

    return check


def _sse(payload: Any) -> bytes:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n".encode()


def create_app(generator: QuantumGenerator, pool: EntropyPool, *, credentials: tuple[str, str] | None = None,
               manage_pool: bool = True, prefill_timeout_s: float = 10.0) -> FastAPI:
    """Build the app. With ``manage_pool`` the lifespan prefetches the pool and runs its refill task."""

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        if manage_pool:
            await pool.fill(prefill_timeout_s)
            pool.start()
        try:
            yield
        finally:
            if manage_pool:
                await pool.stop()

    app = FastAPI(title=SERVICE_NAME, lifespan=lifespan)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {"status": "healthy", "service": SERVICE_NAME, "model": generator.model_name,
                "entropy_pool": pool.stats()}

    @app.post("/generate", response_model=GenerateResponse,
              dependencies=[Depends(_basic_auth_dependency(credentials))])
    async def generate(body: GenerateRequest) -> Any:
        args = (body.prompt, body.max_tokens, body.quantum_profile, body.temperature, body.top_p, body.seed)
        if body.stream:
            return StreamingResponse(_stream_events(generator, args), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache"})
        try:
            return await run_in_threadpool(generator.generate, *args)
        except ValueError as e:
            return JSONResponse({"error": {"message": str(e), "type": "invalid_request_error"}}, 400)

    return app


async def _stream_events(generator: QuantumGenerator, args: tuple[Any, ...]) -> AsyncIterator[bytes]:
    """SSE events for one streamed generation; cancels the generation if the client goes away."""
    stream = await run_in_threadpool(generator.stream, *args)
    try:
        async for piece in iterate_in_threadpool(iter(stream)):
            yield _sse({"token": piece})
        yield _sse({"done": True, **(stream.response or {})})
    except Exception as e:  # noqa: BLE001 - reported to the client as one error event
        yield _sse({"error": {"message": str(e), "type": type(e).__name__}})
    finally:
        stream.cancel()
    yield _sse("[DONE]")
