"""OpenAI-compatible routes: chat completions, completions, models.

The generation endpoints are plain routes (``plain_post``): the body is parsed by ``Generation.accept``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import Response

from core import schemas as p
from gateway.errors import ModelNotFound
from gateway.routes import plain_post
from gateway.services import services
from gateway.serving import Generation

router = APIRouter()


async def chat_completions(request: Request) -> Response:
    gen, body, req = await Generation.accept(request, p.ChatCompletionRequest)
    return await gen.run(request, req, body, id_prefix="chatcmpl-")


async def completions(request: Request) -> Response:
    gen, body, req = await Generation.accept(request, p.CompletionRequest)
    return await gen.run(request, req, body, id_prefix="cmpl-")


for _path, _endpoint, _body in (("/v1/chat/completions", chat_completions, p.ChatCompletionRequest),
                                ("/chat/completions", chat_completions, p.ChatCompletionRequest),
                                ("/v1/completions", completions, p.CompletionRequest),
                                ("/completions", completions, p.CompletionRequest)):
    plain_post(router, _path, _endpoint, _body, include_in_schema=_path.startswith("/v1/"))


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
