"""The seeds' ``POST /generate``, through the queue like everything else: the char-GPT form
``{"seed", "temperature", "num_chars"}`` and the qgpt form ``{"prompt", "max_tokens", "temperature",
"quantum_profile"}`` (told apart by their fields; each answers in its own seed's format)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from core import schemas as p
from gateway.serving import Generation

router = APIRouter()


@router.post("/generate")
async def generate(request: Request) -> Response:
    gen, _, req = await Generation.accept(request, _form_of)
    form = "qgpt" if isinstance(req, p.QuantumGenerateRequest) else "chargpt"
    return await gen.run(request, "generate", {**req.model_dump(), "form": form}, req.model, stream=False,
                         include_usage=False, id_prefix="gen-")


def _form_of(body: dict[str, Any]) -> type[p.GenerateRequest] | type[p.QuantumGenerateRequest]:
    return p.QuantumGenerateRequest if p.is_quantum_generate(body) else p.GenerateRequest
