"""OpenAI-compatible routes: chat completions, completions, models."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from core import schemas as p
from gateway.errors import ModelNotFound
from gateway.services import services
from gateway.serving import Generation

router = APIRouter()


@router.post("/v1/chat/completions")
@router.post("/chat/completions", include_in_schema=False)
async def chat_completions(request: Request) -> Response:
    gen, body, req = await Generation.accept(request, p.ChatCompletionRequest)
    return await gen.run(request, req, body, id_prefix="chatcmpl-")


@router.post("/v1/completions")
@router.post("/completions", include_in_schema=False)
async def completions(request: Request) -> Response:
    gen, body, req = await Generation.accept(request, p.CompletionRequest)
    return await gen.run(request, req, body, id_prefix="cmpl-")


@router.get("/v1/models")
@router.get("/models", include_in_schema=False)
async def list_models(request: Request) -> Response:
    svc = services(request)
    principal = await svc.auth.authenticate(request)
    created = int(svc.started_at)
    cards = [p.model_card(name, created) for name in svc.models if principal.may_use(name)]
    return Response(p.dumps_json(p.model_list(cards)), media_type="application/json")


@router.get("/v1/models/{model_id:path}")
@router.get("/models/{model_id:path}", include_in_schema=False)
async def get_model(request: Request, model_id: str) -> Response:
    svc = services(request)
    principal = await svc.auth.authenticate(request)
    if not principal.may_use(model_id):
        raise ModelNotFound(model_id)  # as OpenAI: a model you cannot use does not exist for you
    Generation(svc).check_model(model_id, principal)
    return Response(p.dumps_json(p.model_card(model_id, int(svc.started_at))), media_type="application/json")
