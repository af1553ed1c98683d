"""OpenAI's ``POST /v1/embeddings`` (and ``/embeddings``): through the queue like every call (job kind ``embed``),
with auth, limits and spend (its prompt tokens count against TPM; a price set for the model is charged per prompt
token). The request model and response shapes are core.embeddings'; see docs/embeddings.md."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from starlette.responses import Response

from core.embeddings import EmbeddingRequest, embedding_list
from gateway.errors import GatewayError, InvalidRequest, from_event
from gateway.relay import Outcome
from gateway.routes import plain_post
from gateway.serving import Generation

router = APIRouter()


class EmbeddingsRelay:
    """The worker's answer as OpenAI's embeddings list (``Generation.run``'s relay); never streamed."""

    def __init__(self, model: str):
        self.model = model

    def stream(self, batches: AsyncIterator[tuple[list[dict[str, Any]], bool]],
               outcome: Outcome) -> AsyncIterator[bytes]:
        raise InvalidRequest("Embeddings are not streamed.", param="stream")

    async def collect(self, events: AsyncIterator[dict[str, Any]], outcome: Outcome) -> dict[str, Any]:
        async for ev in events:
            if ev["k"] == "result":
                body = embedding_list(ev["d"], self.model)
                outcome.usage = body.get("usage")  # rate limits, budgets and the spend log count it
                return body
            if ev["k"] == "error":
                raise from_event(ev)
        raise GatewayError("The worker finished without a result.")


async def embeddings(request: Request) -> Response:
    gen, body, req = await Generation.accept(request, EmbeddingRequest)
    return await gen.run(request, req, body, id_prefix="emb-", relay=EmbeddingsRelay(req.model))


for _path in ("/v1/embeddings", "/embeddings"):
    plain_post(router, _path, embeddings, EmbeddingRequest, include_in_schema=_path.startswith("/v1/"))
