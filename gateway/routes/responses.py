"""OpenAI's Responses API: ``POST /v1/responses``, ``GET``/``DELETE /v1/responses/{id}``,
``GET /v1/responses/{id}/input_items``, ``POST /v1/responses/{id}/cancel`` (and the same without ``/v1``).

A model whose upstream speaks the Responses API (``model_info.supports_responses: true``; by default OpenAI's
own API) gets the body as sent; every other model's call is translated to a chat completion and back
(core.responses), through the same job path as ``/v1/chat/completions``. ``store`` (default: true when a
database is configured) keeps the Response, owner-scoped like files, for ``GET``, ``DELETE`` and
``previous_response_id``. ADR 0020.
"""

from __future__ import annotations

import logging
from typing import Annotated, Any, Literal

import asyncpg
import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from core import database as core_db
from core import schemas as p
from core.config import ModelEntry
from core.responses import (
    Invalid,
    NativeResponses,
    ResponsesRequest,
    chat_body,
    from_chat,
    new_id,
    responses_param,
    skeleton,
)
from core.responsestore import ResponseStore, StoredResponse
from core.responsestream import StreamTranslator
from gateway.auth import Principal
from gateway.db.database import DatabaseUnavailable
from gateway.errors import GatewayError, InvalidRequest, NotFound
from gateway.files.store import owner_of, scope_of
from gateway.relay import SSE_HEADERS, SSEResponse
from gateway.responses_relay import Keep, NativeRelay, translated_stream
from gateway.routes import json_response, plain_post, stored
from gateway.services import Services, services
from gateway.serving import Generation, parse, read_json

log = logging.getLogger("gatehouse.gateway")
router = APIRouter(tags=["responses"])
ItemsLimit = Annotated[int, Query(ge=1, le=100, description="Items per page (1 to 100)")]
Cursor = Annotated[str | None, Query(max_length=160, description="An item id: the page starts after it")]


def passes_through(entry: ModelEntry) -> bool:
    """Whether the model's upstream takes ``POST /responses`` itself: ``model_info.supports_responses`` on an
    OpenAI-compatible entry (default: true for OpenAI's own API, false for any other base URL)."""
    if entry.backend != "openai":
        return False
    flag = entry.model_info.get("supports_responses")
    if flag is None:
        lp = entry.litellm_params
        return lp.provider == "openai" and lp.api_base is None
    return bool(flag)


def not_found(response_id: str, param: str = "response_id") -> NotFound:
    shown = response_id if len(response_id) <= 64 else response_id[:64] + "…"
    return NotFound(f"Response with id '{shown}' not found.", param=param)


def invalid(e: Invalid) -> InvalidRequest:
    return InvalidRequest(e.message, param=e.param, code=e.code)


class Call:
    """One ``POST /v1/responses``: who asks, what, and where its Response is kept."""

    def __init__(self, svc: Services, principal: Principal, req: ResponsesRequest, body: dict[str, Any]):
        self.svc, self.principal, self.req, self.body = svc, principal, req, body
        self.store = False
        self.db: core_db.Database | None = None
        self.previous: StoredResponse | None = None
        self.conversation: list[dict[str, Any]] = []  # what is kept as the Response's input: history + input

    async def open(self) -> None:
        """Decide ``store`` and find the previous response (404 if the caller cannot see it)."""
        self.db = await self.svc.database()
        self.store = self.req.store if self.req.store is not None else self.db is not None
        if self.store and self.db is None:
            raise DatabaseUnavailable("No database is configured (set DATABASE_URL): stored responses are kept in "
                                      "PostgreSQL. Send store: false to answer without keeping the response.")
        rid = self.req.previous_response_id
        if rid is not None:
            self.previous = await ResponseStore(self.db).get(rid, scope_of(self.principal)) if self.db else None
            if self.previous is None:
                raise not_found(rid, "previous_response_id")

    def history(self) -> list[dict[str, Any]]:
        return self.previous.history() if self.previous is not None else []

    def keeper(self, passthrough: bool) -> Keep:
        async def keep(response: dict[str, Any]) -> None:
            if not self.store or self.db is None or not response.get("id"):
                return
            try:
                await ResponseStore(self.db).put(response, owner_id=owner_of(self.principal), model=self.req.model,
                                                 passthrough=passthrough, input_items=self.conversation)
            except (core_db.DatabaseUnavailable, asyncpg.PostgresError) as e:  # the answer is out already
                log.warning("response %s was answered but could not be stored: %s", response.get("id"),
                            type(e).__name__)
        return keep


async def create_response(request: Request) -> Response:
    """Create a model response (OpenAI's Responses API): translated to chat completions, or passed through to an
    upstream that speaks it."""
    svc = services(request)
    principal = await svc.auth.authenticate(request)
    gen = Generation(svc, principal)
    body = await read_json(request, gen.settings.max_body_bytes)
    req = parse(ResponsesRequest, body)
    gen.check_model(req.model, principal)
    limit = gen.settings.max_tokens_limit
    if req.max_output_tokens is not None and req.max_output_tokens > limit:
        raise InvalidRequest(f"max_output_tokens is too large: {req.max_output_tokens}. This gateway allows at most "
                             f"{limit} tokens per response.", param="max_output_tokens", code="invalid_value")
    call = Call(svc, principal, req, body)
    await call.open()
    try:
        if passes_through(svc.models[req.model]):
            return await _native(request, gen, call)
        return await _translated(request, gen, call)
    except Invalid as e:
        raise invalid(e) from None


async def _translated(request: Request, gen: Generation, call: Call) -> Response:
    req = call.req
    items = req.items()
    history = call.history()
    chat = chat_body(req, call.body, history, items)
    call.conversation = [*history, *items]
    try:
        chat_req = p.ChatCompletionRequest.model_validate(chat)
    except ValueError as e:  # what the chat path refuses that the checks above let through: rare
        raise InvalidRequest(f"The request cannot be translated to chat completions: {str(e)[:300]}",
                             param="input") from None
    response = skeleton(req, new_id("resp"), store=call.store)
    keep = call.keeper(passthrough=False)
    try:
        chat, chat_req = gen.prepare(chat_req, chat)  # limits; what the model cannot do: 400 (or dropped)
        answer = await gen.run(request, chat_req, chat, id_prefix="chatcmpl-")
    except GatewayError as e:  # a refusal names the parameter as the caller sent it
        e.param = responses_param(e.param)
        raise
    headers = _headers(answer)
    if isinstance(answer, SSEResponse):
        return SSEResponse(translated_stream(answer.body_iterator, StreamTranslator(response), keep),
                           headers={**SSE_HEADERS, **headers})
    result = from_chat(response, orjson.loads(answer.body))
    await keep(result)
    return Response(orjson.dumps(result), media_type="application/json", headers=headers)


async def _native(request: Request, gen: Generation, call: Call) -> Response:
    req, body = call.req, dict(call.body)
    items = req.items() if req.input is not None else []
    history = call.history()
    call.conversation = [*history, *items]
    previous = call.previous
    if previous is not None and not (previous.passthrough and previous.model == req.model):
        # the upstream does not hold that response: send the conversation instead (without our item ids, and
        # without another upstream's reasoning, which only that upstream can read)
        body["input"] = [{k: v for k, v in item.items() if k != "id"} for item in history
                         if item.get("type") != "reasoning"] + items
        body.pop("previous_response_id", None)
    body["store"] = call.store
    relay = NativeRelay(req.model, call.keeper(passthrough=True))
    job = parse(NativeResponses, body)
    return await gen.run(request, job, body, id_prefix="resp_", relay=relay)


def _headers(answer: Response) -> dict[str, str]:
    """The answer's own headers (rate limits), less those of its body."""
    return {k: v for k, v in answer.headers.items() if k not in ("content-length", "content-type")}


for _path in ("/v1/responses", "/responses"):
    plain_post(router, _path, create_response, ResponsesRequest, include_in_schema=_path.startswith("/v1/"))


async def _visible(request: Request, response_id: str) -> tuple[ResponseStore, Principal, StoredResponse]:
    db, principal = await stored(request, "responses")
    store = ResponseStore(db)
    record = await store.get(response_id, scope_of(principal))
    if record is None:
        raise not_found(response_id)
    return store, principal, record


@router.get("/v1/responses/{response_id}")
@router.get("/responses/{response_id}", include_in_schema=False)
async def retrieve_response(request: Request, response_id: str, stream: bool = False) -> Response:
    """A stored response (``store: true``), if it is the caller's."""
    _, _, record = await _visible(request, response_id)
    if stream:
        raise InvalidRequest("Streaming a stored response (background mode) is not supported.", param="stream",
                             code="unsupported_parameter")
    return json_response(record.response)


@router.delete("/v1/responses/{response_id}")
@router.delete("/responses/{response_id}", include_in_schema=False)
async def delete_response(request: Request, response_id: str) -> Response:
    db, principal = await stored(request, "responses")
    if not await ResponseStore(db).delete(response_id, scope_of(principal)):
        raise not_found(response_id)
    return json_response({"id": response_id, "object": "response", "deleted": True})


@router.post("/v1/responses/{response_id}/cancel")
@router.post("/responses/{response_id}/cancel", include_in_schema=False)
async def cancel_response(request: Request, response_id: str) -> Response:
    """Only background responses can be cancelled, and Gatehouse runs none."""
    await _visible(request, response_id)
    raise InvalidRequest("Only responses created with background: true can be cancelled; Gatehouse does not "
                         "support background mode.", param="response_id", code="invalid_state")


@router.get("/v1/responses/{response_id}/input_items")
@router.get("/responses/{response_id}/input_items", include_in_schema=False)
async def list_input_items(request: Request, response_id: str, after: Cursor = None, limit: ItemsLimit = 20,
                           order: Literal["asc", "desc"] = "desc") -> Response:
    """The items a stored response answered (the previous responses' included), newest first by default."""
    _, _, record = await _visible(request, response_id)
    items = [{**item, "id": item.get("id") or f"item_{response_id.removeprefix('resp_')}_{i}"}
             for i, item in enumerate(record.input)]
    if order == "desc":
        items.reverse()
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise InvalidRequest(f"No input item with id '{after[:64]}' in this response.", param="after")
        items = items[ids.index(after) + 1:]
    page = items[:limit]
    return json_response({"object": "list", "data": page, "first_id": page[0]["id"] if page else None,
                          "last_id": page[-1]["id"] if page else None, "has_more": len(items) > limit})

