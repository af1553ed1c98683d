"""OpenAI's Batch API: ``POST /v1/batches``, ``GET /v1/batches``, ``GET /v1/batches/{id}``,
``POST /v1/batches/{id}/cancel`` (and the same without ``/v1``).

The gateway only records a batch (``validating``) and answers; the batch runner in the workers validates the
input file, runs the lines on the batch lane and writes the result files (workers/batches/). A key sees and
cancels only its own batches; the master key and admin keys see all. Another key's batch is a 404.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from core import batches as b
from core.batchstore import BatchRecord, BatchStore
from core.usage import headroom
from gateway.auth import Principal
from gateway.errors import InvalidRequest, NotFound, RateLimited
from gateway.files.store import FileStore, file_not_found, owner_of, scope_of
from gateway.priority import priority_for, tenant_of
from gateway.routes import json_response, not_found, stored
from gateway.services import services
from gateway.serving import read_json

router = APIRouter(tags=["batches"])
ListLimit = Annotated[int, Query(ge=1, le=100, description="Batches per page (1 to 100)")]
Cursor = Annotated[str | None, Query(max_length=64, description="A batch id: the page starts after it")]
METADATA_PAIRS, METADATA_KEY, METADATA_VALUE = 16, 64, 512
CREATE_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["input_file_id", "endpoint", "completion_window"], "properties": {
        "input_file_id": {"type": "string"}, "endpoint": {"type": "string", "enum": list(b.ENDPOINTS)},
        "completion_window": {"type": "string", "enum": list(b.COMPLETION_WINDOWS)},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}}}}}}}}


async def _batches(request: Request) -> tuple[BatchStore, Principal]:
    db, principal = await stored(request, "batches")
    return BatchStore(db), principal


def batch_not_found(batch_id: str) -> NotFound:
    return not_found("batch", batch_id, "batch_id", "batch_not_found")


def _text(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        raise InvalidRequest(f"Missing required parameter: '{name}'.", param=name, code="missing_required_parameter")
    if not isinstance(value, str) or not value or len(value) > 256 or "\x00" in value:
        raise InvalidRequest(f"Invalid value for '{name}': a non-empty string.", param=name, code="invalid_value")
    return value


def _metadata(value: Any) -> dict[str, str] | None:
    if value is None:
        return None
    ok = isinstance(value, dict) and len(value) <= METADATA_PAIRS and all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= METADATA_KEY and len(v) <= METADATA_VALUE
        and "\x00" not in k + v for k, v in value.items())
    if not ok:
        raise InvalidRequest(f"Invalid 'metadata': at most {METADATA_PAIRS} string pairs, keys up to {METADATA_KEY} "
                             f"and values up to {METADATA_VALUE} characters.", param="metadata", code="invalid_value")
    return dict(value)


@router.post("/v1/batches", openapi_extra=CREATE_BODY)
@router.post("/batches", include_in_schema=False, openapi_extra=CREATE_BODY)
async def create_batch(request: Request) -> Response:
    """Create a batch from an uploaded `batch` file; it runs on the workers' batch lane."""
    store, principal = await _batches(request)
    svc = services(request)
    body = await read_json(request, svc.config.settings.max_body_bytes)
    endpoint = _text(body, "endpoint")
    if endpoint not in b.ENDPOINTS:
        raise InvalidRequest(f"Unsupported endpoint {endpoint[:100]!r}: batches run "
                             f"{', '.join(b.ENDPOINTS)}.", param="endpoint", code="invalid_value")
    window = _text(body, "completion_window")
    if window not in b.COMPLETION_WINDOWS:
        raise InvalidRequest(f"Invalid completion_window {window[:32]!r}: only '24h' is supported.",
                             param="completion_window", code="invalid_value")
    file_id = _text(body, "input_file_id")
    metadata = _metadata(body.get("metadata"))
    priority = priority_for(principal, body.get("priority"), svc.config.settings.default_priority)
    scopes = svc.scopes(principal)
    if (spent := await headroom(svc.redis, scopes, db=store.db)) is not None and spent[1] == "budget":
        raise RateLimited(f"You exceeded your current quota: the budget of this {spent[0].kind} (${spent[0].budget:g}) "
                          "is spent; a batch would not run.", type_="insufficient_quota", code="insufficient_quota")
    record = await FileStore(store.db).get(file_id, scope_of(principal))
    if record is None:
        raise file_not_found(file_id)
    if record.purpose != "batch":
        raise InvalidRequest(f"The file {file_id} has purpose '{record.purpose}'; a batch needs a file uploaded "
                             "with purpose 'batch'.", param="input_file_id", code="invalid_file")
    batch = await store.create(
        batch_id=b.new_batch_id(), owner_id=owner_of(principal), key_id=principal.key_id, team_id=principal.team_id,
        user_id=principal.user_id, endpoint=endpoint, input_file_id=file_id, completion_window=window,
        window_s=b.COMPLETION_WINDOWS[window], metadata=metadata,
        allowed_models=sorted(principal.models) if principal.models is not None else None,
        tenant=tenant_of(principal), priority=priority, scopes=[sc.to_dict() for sc in scopes])
    return json_response(batch.to_json())


@router.get("/v1/batches")
@router.get("/batches", include_in_schema=False)
async def list_batches(request: Request, after: Cursor = None, limit: ListLimit = 20) -> Response:
    store, principal = await _batches(request)
    if after is not None and ("\x00" in after or not after.isascii()):
        raise InvalidRequest("Invalid value for 'after': a batch id.", param="after", code="invalid_value")
    records, has_more = await store.page(scope_of(principal), after=after, limit=limit)
    data = [r.to_json() for r in records]
    return json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                  "last_id": data[-1]["id"] if data else None, "has_more": has_more})


async def _visible(store: BatchStore, principal: Principal, batch_id: str) -> BatchRecord:
    record = await store.get(batch_id, scope_of(principal)) if _plausible(batch_id) else None
    if record is None:
        raise batch_not_found(batch_id)
    return record


def _plausible(batch_id: str) -> bool:
    return batch_id.startswith("batch_") and len(batch_id) <= 64 and batch_id.isascii() and "\x00" not in batch_id


@router.get("/v1/batches/{batch_id}")
@router.get("/batches/{batch_id}", include_in_schema=False)
async def retrieve_batch(request: Request, batch_id: str) -> Response:
    store, principal = await _batches(request)
    return json_response((await _visible(store, principal, batch_id)).to_json())


@router.post("/v1/batches/{batch_id}/cancel")
@router.post("/batches/{batch_id}/cancel", include_in_schema=False)
async def cancel_batch(request: Request, batch_id: str) -> Response:
    """Cancel a batch: `cancelling` at once, `cancelled` within seconds (finished lines are kept)."""
    store, principal = await _batches(request)
    if not _plausible(batch_id):
        raise batch_not_found(batch_id)
    record = await store.cancel(batch_id, scope_of(principal))
    if record is None:
        raise batch_not_found(batch_id)
    if record.status in ("completed", "failed", "expired"):
        raise InvalidRequest(f"Cannot cancel a batch with status '{record.status}'.", param="batch_id",
                             code="invalid_state", status=409)
    return json_response(record.to_json())
