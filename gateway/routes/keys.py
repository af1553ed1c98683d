"""Admin API for virtual keys, compatible with LiteLLM's where the two overlap:
``POST /key/generate``, ``GET /key/info``, ``POST /key/update``, ``POST /key/delete``, ``GET /key/list``.

Only the master key or an admin principal may call them, except ``/key/info`` about the caller's own key.
The secret is shown once, in the answer to ``/key/generate``.
"""

from __future__ import annotations

import base64
import math
from typing import Annotated, Any

import asyncpg
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from core import schemas as p
from core.keys.store import KeyRecord
from core.keys.tokens import is_key_id, parse_bearer
from gateway.auth import Principal
from gateway.errors import InvalidRequest, NotFound, PermissionDenied
from gateway.keys.fields import KeyDelete, KeyFields, KeyUpdate, text_param
from gateway.openapi import request_body
from gateway.services import Services, services
from gateway.serving import parse, read_json

router = APIRouter(tags=["keys"])
MAX_PAGE = 1_000_000
KeyParam = Annotated[str | None, Query(max_length=512, description="A virtual key (sk-gh-…) or a key id (ak-…)")]
TeamParam = Annotated[str | None, Query(max_length=256)]


def _json(obj: Any, status: int = 200) -> Response:
    return Response(p.dumps_json(obj), status_code=status, media_type="application/json")


def key_id_of(value: str) -> str:
    """A key named by its Bearer form or by its id."""
    cred = parse_bearer(value)
    if cred is not None:
        return cred.key_id
    if is_key_id(value):
        return value
    raise InvalidRequest("`key` must be a virtual key (sk-gh-…) or a key id (ak-…).", param="key")


def _shown(record: KeyRecord) -> dict[str, Any]:
    d = record.to_json()
    d["expires"] = d.pop("expires_at")
    return d


def _not_configured(svc: Services, fields: dict[str, Any]) -> list[str]:
    """Warnings for allowed models this gateway does not serve yet. Like LiteLLM, a key may name them (teams
    create keys before a model is deployed): the allowlist holds them, and calling one is a 404 until it is
    configured."""
    unknown = sorted(set(fields.get("models") or ()) - set(svc.models))
    return [f"model(s) not configured on this gateway yet: {', '.join(unknown)}"] if unknown else []


async def _admin(request: Request) -> tuple[Services, Principal]:
    svc = services(request)
    principal = await svc.auth.authenticate(request)
    if not principal.is_admin:
        raise PermissionDenied("Only the master key or an admin key may manage keys.", code="admin_only")
    return svc, principal


@router.post("/key/generate", openapi_extra=request_body(KeyFields))
async def generate_key(request: Request) -> Response:
    svc, principal = await _admin(request)
    fields = parse(KeyFields, await read_json(request, svc.config.settings.max_body_bytes)).columns()
    if fields.get("is_admin") and principal.kind != "master":
        raise PermissionDenied("Only the master key may create admin keys.", param="is_admin", code="admin_only")
    warnings = _not_configured(svc, fields)
    store = await svc.key_store()
    try:
        record, cred = await store.create(**fields)
    except asyncpg.UniqueViolationError:
        raise InvalidRequest("Another active key already has this key_alias.", param="key_alias",
                             code="duplicate_key_alias") from None
    basic = base64.b64encode(f"{cred.key_id}:{cred.secret}".encode()).decode()
    return _json({"key": cred.bearer, "key_id": cred.key_id, "key_secret": cred.secret,
                  "basic_auth": f"Basic {basic}", **_shown(record), **({"warnings": warnings} if warnings else {})})


@router.get("/key/info")
async def key_info(request: Request, key: KeyParam = None) -> Response:
    svc = services(request)
    principal = await svc.auth.authenticate(request)
    key_id = key_id_of(key) if key else principal.key_id
    if key_id is None:
        raise InvalidRequest("Name the key with ?key=…", param="key", code="missing_required_parameter")
    if not principal.is_admin and key_id != principal.key_id:
        raise PermissionDenied("A key may only look at itself.", code="admin_only")
    found = await (await svc.key_store()).get(key_id)
    if found is None:
        raise NotFound(f"No key with id {key_id}.", code="key_not_found")
    return _json({"key": key_id, "info": _shown(found[0])})


@router.post("/key/update", openapi_extra=request_body(KeyUpdate))
async def update_key(request: Request) -> Response:
    svc, principal = await _admin(request)
    req = parse(KeyUpdate, await read_json(request, svc.config.settings.max_body_bytes))
    fields = req.columns()
    fields.pop("key", None)
    if fields.get("is_admin") and principal.kind != "master":
        raise PermissionDenied("Only the master key may grant admin.", param="is_admin", code="admin_only")
    key_id = key_id_of(req.key)
    record = await (await svc.key_store()).update(key_id, **fields)
    if record is None:
        raise NotFound(f"No active key with id {key_id}.", code="key_not_found")
    await svc.keys.invalidate(key_id)
    warnings = _not_configured(svc, fields)
    return _json({"key": key_id, **_shown(record), **({"warnings": warnings} if warnings else {})})


@router.post("/key/delete", openapi_extra=request_body(KeyDelete))
async def delete_keys(request: Request) -> Response:
    svc, _ = await _admin(request)
    req = parse(KeyDelete, await read_json(request, svc.config.settings.max_body_bytes))
    ids = [key_id_of(k) for k in req.keys]
    deleted = await (await svc.key_store()).revoke(ids)
    await svc.keys.invalidate(*ids)
    return _json({"deleted_keys": deleted})


@router.get("/key/list")
async def list_keys(request: Request, team_id: TeamParam = None, page: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 1,
                    size: Annotated[int, Query(ge=1, le=1000)] = 100, return_full_object: bool = False,
                    include_revoked: bool = False) -> Response:
    svc, _ = await _admin(request)
    text_param(team_id, "team_id")
    records, total = await (await svc.key_store()).list(team_id=team_id, include_revoked=include_revoked,
                                                        page=page, size=size)
    return _json({"keys": [_shown(r) if return_full_object else r.key_id for r in records],
                  "total_count": total, "current_page": page, "total_pages": max(1, math.ceil(total / size))})


@router.get("/spend/daily")
async def spend_daily(request: Request, key: KeyParam = None, team_id: TeamParam = None,
                      days: Annotated[int, Query(ge=1, le=366)] = 30) -> Response:
    """Spend per key, team, model and day (admins: anyone's; a key: its own)."""
    svc = services(request)
    principal = await svc.auth.authenticate(request)
    key_id = key_id_of(key) if key else None
    text_param(team_id, "team_id")
    if not principal.is_admin:
        if principal.key_id is None or (key_id not in (None, principal.key_id)) or team_id is not None:
            raise PermissionDenied("A key may only look at its own spend.", code="admin_only")
        key_id = principal.key_id
    db = await svc.database()
    if db is None:
        await svc.key_store()  # raises the 503
    await svc.spend.flush_within(1.0)  # include what this replica has not written yet (bounded: PG may be down)
    rows = await db.fetch(  # type: ignore[union-attr]
        "SELECT day, key_id, team_id, model, requests, prompt_tokens, completion_tokens, cost FROM spend_daily "
        "WHERE day >= date_trunc('day', now()) - make_interval(days => $1 - 1) "
        "AND ($2::text IS NULL OR key_id = $2) AND ($3::text IS NULL OR team_id = $3) ORDER BY day, key_id, model",
        days, key_id, team_id)
    data = [{**dict(r), "day": r["day"].date().isoformat(), "cost": float(r["cost"])} for r in rows]
    return _json({"object": "list", "data": data, "total_cost": round(sum(d["cost"] for d in data), 8)})
