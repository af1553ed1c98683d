"""The char-GPT seed's ``POST /generate {"seed", "temperature", "num_chars"}`` — through the queue too."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import protocol as p
from gateway.serving import Generation

router = APIRouter()


@router.post("/generate")
async def generate(request: Request) -> Response:
    gen, _, req = await Generation.accept(request, p.GenerateRequest)
    return await gen.run(request, "generate", req.model_dump(), req.model, stream=False, include_usage=False,
                         id_prefix="gen-")
