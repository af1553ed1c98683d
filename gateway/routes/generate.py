"""The char-GPT seed's ``POST /generate {"seed", "temperature", "num_chars"}`` — through the queue too."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from gateway import protocol as p
from gateway.serving import Generation, parse, read_json
from gateway.services import services

router = APIRouter()


@router.post("/generate")
async def generate(request: Request) -> Response:
    svc = services(request)
    svc.auth.authenticate(request)
    body = await read_json(request, svc.config.settings.max_body_bytes)
    req: p.GenerateRequest = parse(p.GenerateRequest, body)
    gen = Generation(svc)
    gen.check_model(req.model)
    return await gen.run(request, "generate", req.model_dump(), req.model, stream=False, include_usage=False,
                         id_prefix="gen-")
