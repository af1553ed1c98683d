"""OpenAI's Files API: ``POST /v1/files``, ``GET /v1/files``, ``GET /v1/files/{id}``, ``GET /v1/files/{id}/content``,
``DELETE /v1/files/{id}`` (and the same without ``/v1``). Files live in PostgreSQL (gateway.files.store).

A key sees and deletes only its own files; the master key and admin keys see all. Another key's file is a
404, as a file that does not exist.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from starlette.responses import Response, StreamingResponse

from gateway.auth import Principal
from gateway.errors import InvalidRequest
from gateway.files.store import FileRecord, FileStore, file_not_found, owner_of, scope_of
from gateway.files.upload import EXPIRES_MAX_S, EXPIRES_MIN_S, PURPOSES, Limits, Upload
from gateway.keys.fields import text_param
from gateway.routes import json_response, stored
from gateway.services import services

router = APIRouter(tags=["files"])
ListLimit = Annotated[int, Query(ge=1, le=10_000, description="Files per page (1 to 10,000)")]
Cursor = Annotated[str | None, Query(max_length=64, description="A file id: the page starts after it")]
PurposeFilter = Annotated[str | None, Query(max_length=64)]

UPLOAD_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["file", "purpose"], "properties": {
        "file": {"type": "string", "format": "binary", "description": "The file (JSONL for purpose `batch`)"},
        "purpose": {"type": "string", "enum": list(PURPOSES)},
        "expires_after[anchor]": {"type": "string", "enum": ["created_at"]},
        "expires_after[seconds]": {"type": "integer", "minimum": EXPIRES_MIN_S, "maximum": EXPIRES_MAX_S}}}}}}}
CONTENT_RESPONSE: dict[int | str, dict[str, Any]] = {200: {
    "description": "The file's bytes", "content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                          "format": "binary"}}}}}


async def _files(request: Request) -> tuple[FileStore, Principal]:
    db, principal = await stored(request, "files")
    return FileStore(db), principal


async def _visible(store: FileStore, principal: Principal, file_id: str) -> FileRecord:
    record = await store.get(file_id, scope_of(principal))
    if record is None:
        raise file_not_found(file_id)
    return record


@router.post("/v1/files", openapi_extra=UPLOAD_BODY)
@router.post("/files", include_in_schema=False, openapi_extra=UPLOAD_BODY)
async def create_file(request: Request) -> Response:
    """Upload a file: multipart `file` and `purpose` (`batch`, `user_data`); optional `expires_after`."""
    store, principal = await _files(request)
    upload = Upload(store, Limits.of(services(request).config.settings), owner_of(principal), principal.team_id)
    return json_response((await upload.receive(request)).to_json())


@router.get("/v1/files")
@router.get("/files", include_in_schema=False)
async def list_files(request: Request, purpose: PurposeFilter = None, limit: ListLimit = 10_000,
                     after: Cursor = None, order: Literal["asc", "desc"] = "desc") -> Response:
    store, principal = await _files(request)
    text_param(purpose, "purpose")
    if after is not None and ("\x00" in after or not after.isascii()):
        raise InvalidRequest("Invalid value for 'after': a file id.", param="after", code="invalid_value")
    records, has_more = await store.list(scope_of(principal), purpose=purpose, after=after, limit=limit,
                                         order=order)
    data = [r.to_json() for r in records]
    return json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                  "last_id": data[-1]["id"] if data else None, "has_more": has_more})


@router.get("/v1/files/{file_id}")
@router.get("/files/{file_id}", include_in_schema=False)
async def retrieve_file(request: Request, file_id: str) -> Response:
    store, principal = await _files(request)
    return json_response((await _visible(store, principal, file_id)).to_json())


@router.get("/v1/files/{file_id}/content", responses=CONTENT_RESPONSE)
@router.get("/files/{file_id}/content", include_in_schema=False)
async def file_content(request: Request, file_id: str) -> Response:
    """The file's bytes, streamed from the store a chunk at a time."""
    store, principal = await _files(request)
    record = await _visible(store, principal, file_id)
    return StreamingResponse(store.chunks(record), media_type="application/octet-stream",
                             headers={"content-length": str(record.bytes)})


@router.delete("/v1/files/{file_id}")
@router.delete("/files/{file_id}", include_in_schema=False)
async def delete_file(request: Request, file_id: str) -> Response:
    store, principal = await _files(request)
    if not await store.delete(file_id, scope_of(principal)):
        raise file_not_found(file_id)
    return json_response({"id": file_id, "object": "file", "deleted": True})
