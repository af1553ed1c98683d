"""The seeds' ``POST /generate``, through the queue like everything else: the char-GPT form
``{"seed", "temperature", "num_chars"}`` and the qgpt form ``{"prompt", "max_tokens", "temperature",
"quantum_profile"}`` (told apart by their fields; each answers in its own seed's format)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway.serving import Generation

router = APIRouter()


@router.post("/generate")
async def generate(request: Request) -> Response:
    gen, body, req = await Generation.accept_generate(request)
    return await gen.run(request, "generate", body, req.model, stream=False, include_usage=False, id_prefix="gen-")
