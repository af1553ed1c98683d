"""The seeds' ``POST /generate``, through the queue like everything else: the char-GPT form
``{"seed", "temperature", "num_chars"}`` and the qgpt form ``{"prompt", "max_tokens", "temperature",
"quantum_profile"}`` (told apart by their fields; each answers in its own seed's format)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from core import schemas as p
from gateway.routes import plain_post
from gateway.serving import Generation

router = APIRouter()


async def generate(request: Request) -> Response:
    gen, body, req = await Generation.accept(request, _form_of)
    return await gen.run(request, req, body, id_prefix="gen-")


def _form_of(body: dict[str, Any]) -> type[p.GenerateRequest] | type[p.QuantumGenerateRequest]:
    return p.QuantumGenerateRequest if p.is_quantum_generate(body) else p.GenerateRequest


plain_post(router, "/generate", generate, p.GenerateRequest, p.QuantumGenerateRequest)
