"""The classifier seed's ``POST /classify {"prompts": [...]}`` (and ``/v1/classify``) — through the queue."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from core import schemas as p
from gateway.routes import plain_post
from gateway.serving import Generation

router = APIRouter()


async def classify(request: Request) -> Response:
    gen, body, req = await Generation.accept(request, p.ClassifyRequest)
    return await gen.run(request, req, body, id_prefix="cls-")


for _path in ("/v1/classify", "/classify"):
    plain_post(router, _path, classify, p.ClassifyRequest)
