"""The char-GPT seed's HTTP surface: ``GET /health`` and ``POST /generate {"seed", "temperature", "num_chars"}``
→ ``{"generated_text", ...}``, with the seed's optional ``x-api-key`` check and CORS (its UI calls it from a
browser). Used by the Modal app; the gateway serves the same format through its queue."""

from __future__ import annotations

import hmac
import time
from typing import Any

from fastapi import FastAPI, Header, HTTPException
from fastapi.middleware.cors import CORSMiddleware
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from gpu_apps.chargpt.engine import CharGPTEngine


class GenerateBody(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seed: int = Field(default=42, ge=0, le=2**63 - 1)
    temperature: float = Field(default=0.8, ge=0.0, le=2.0)
    num_chars: int = Field(default=200, ge=1, le=10_000)
    prompt: str = Field(default="", max_length=10_000)


def create_app(engine: CharGPTEngine, api_key: str | None = None) -> FastAPI:
    app = FastAPI(title="chargpt", docs_url=None, redoc_url=None)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["GET", "POST"],
                       allow_headers=["content-type", "x-api-key"])

    def check(key: str | None) -> None:
        if api_key and not (key and hmac.compare_digest(key.encode(), api_key.encode())):
            raise HTTPException(status_code=401, detail="Unauthorized")

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "healthy", "model_loaded": True, "model": engine.info().get("name", "chargpt")}

    @app.post("/generate")
    async def generate(body: GenerateBody, x_api_key: str | None = Header(default=None)) -> dict[str, Any]:
        check(x_api_key)
        started = time.perf_counter()
        text, _ = await run_in_threadpool(engine.generate_text, body.prompt, body.num_chars,
                                          temperature=body.temperature, seed=body.seed)
        return {"generated_text": text, "seed": body.seed, "temperature": body.temperature,
                "num_chars": body.num_chars, "generation_time_ms": round((time.perf_counter() - started) * 1000, 2)}

    return app
