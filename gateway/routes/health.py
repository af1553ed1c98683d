"""Health probes: liveness (process up), readiness (Redis, PostgreSQL, a fresh worker unless
``?workers=optional``; ``down`` names what is not), and a summary. Each check is bounded (2 s), so a paused
dependency cannot hang the probe."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, cast

from fastapi import APIRouter, Request
from starlette.responses import Response

from core import __version__, lanes, recent, routestate
from core import queue as q
from core import schemas as p
from core.batchstore import BatchStore
from gateway.console.session import COOKIE
from gateway.services import Services, services

router = APIRouter()
NO_CREDENTIAL: dict[str, Any] = {"security": []}  # the probes answer without one
RECENT_ERRORS_SHOWN = 50


async def _redis_ok(svc: Services) -> bool:
    try:
        return bool(await asyncio.wait_for(svc.redis.ping(), 2))
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


async def _db_ok(svc: Services) -> bool:
    """PostgreSQL answers (bounded by the database's call timeout, 2 s, however it fails)."""
    db = await svc.database()
    if db is None:
        return True  # no database configured: nothing to wait for
    try:
        return await db.ping()
    except Exception:  # noqa: BLE001 - any failure means "not reachable"
        return False


async def fresh_workers(svc: Services) -> int:
    try:
        return int(await svc.redis.zcount(q.WORKERS_KEY, time.time() - q.HEARTBEAT_FRESH_S, "+inf"))
    except Exception:  # noqa: BLE001 - Redis unreachable: no worker can be seen
        return 0


async def _scaling(svc: Services) -> dict[str, Any]:
    """Per worker: hybrid scaling of Modal apps (seed 004); empty when it cannot be read."""
    try:
        # redis-py types its sync and asyncio clients alike; the asyncio client's hgetall is awaitable
        raw = await cast("Awaitable[dict[bytes, bytes]]", svc.redis.hgetall(q.SCALING_KEY))
        return {k.decode(): q.loads(v) for k, v in raw.items()}
    except Exception:  # noqa: BLE001 - the summary is best effort
        return {}


async def _shows_tenants(svc: Services, request: Request) -> bool:
    """Tenant names (team and key ids) are shown to an admin caller, or to all with metrics.tenant_labels."""
    if svc.config.settings.metrics.tenant_labels:
        return True
    if not (request.headers.get("authorization") or request.headers.get("x-api-key")
            or request.cookies.get(COOKIE)):
        return False
    try:
        return (await svc.auth.authenticate(request)).is_admin
    except Exception:  # noqa: BLE001 - a bad credential on a probe is not an error: no names, that is all
        return False


async def _depths(svc: Services) -> lanes.LaneTenants | None:
    try:
        return await asyncio.wait_for(lanes.tenant_depths(svc.redis), 2)
    except Exception:  # noqa: BLE001 - the summary is best effort
        return None


def _lanes(depths: lanes.LaneTenants, named: bool) -> dict[str, Any]:
    """Per lane: jobs waiting and running, per tenant (named, or only counted)."""
    out: dict[str, Any] = {}
    for lane, by_tenant in depths.lanes.items():
        entry: dict[str, Any] = {"waiting": sum(d.waiting for d in by_tenant.values()),
                                 "running": sum(d.running for d in by_tenant.values()),
                                 "tenants": len(by_tenant)}
        if named:
            entry["by_tenant"] = {t: {"waiting": d.waiting, "running": d.running}
                                  for t, d in sorted(by_tenant.items(), key=lambda kv: -kv[1].waiting)}
        out[lane] = entry
    return out


async def _models(svc: Services, depths: lanes.LaneTenants | None, redis_ok: bool) -> list[dict[str, Any]]:
    """Per model: its backend, jobs waiting and running (both lanes), and each deployment's routing state (in
    flight, cooldown, recent failures; core.routestate). Deployment ids only: never an upstream's address."""
    groups = svc.deployments
    states: dict[str, routestate.DeploymentState] = {}
    if redis_ok:
        flat = [d for deps in groups.values() for d in deps]
        try:
            states = dict(zip((d.id for d in flat), await asyncio.wait_for(routestate.read(svc.redis, flat), 2),
                              strict=True))
        except Exception:  # noqa: BLE001 - the summary is best effort
            states = {}
    out: list[dict[str, Any]] = []
    for name, entry in svc.models.items():
        item: dict[str, Any] = {"id": name, "backend": entry.backend}
        if depths is not None:
            d = depths.of_model(name)
            item["waiting"], item["running"] = d.waiting, d.running
        deployments = []
        for dep in groups.get(name, []):
            st = states.get(dep.id)
            deployments.append({"id": dep.id, "backend": dep.entry.backend, **({} if st is None else {
                "healthy": st.healthy, "cooldown_s": st.cooldown_s, "in_flight": st.in_flight,
                "recent_failures": st.recent_failures, "requests_this_minute": st.requests_this_minute,
                "tokens_this_minute": st.tokens_this_minute})})
        item["deployments"] = deployments
        if deployments and all("healthy" in x for x in deployments):
            item["healthy"] = any(x["healthy"] for x in deployments)
        out.append(item)
    return out


async def _worker_list(svc: Services) -> list[dict[str, Any]]:
    """Each worker with a lease: seconds since its last heartbeat and the jobs it runs per lane."""
    try:
        async with svc.redis.pipeline(transaction=False) as pipe:
            pipe.zrange(q.WORKERS_KEY, 0, -1, withscores=True)
            for lane in q.LANES:
                pipe.hgetall(q.busy_key(lane))
            beats, *busy = await asyncio.wait_for(pipe.execute(), 2)
    except Exception:  # noqa: BLE001 - the summary is best effort
        return []
    now = time.time()
    out = []
    for worker, beat in beats:
        wid = worker.decode()
        running = {lane: int(b.get(worker, 0)) for lane, b in zip(q.LANES, busy, strict=True)}
        age = max(0.0, now - float(beat))
        out.append({"id": wid, "last_heartbeat_s": round(age, 1), "fresh": age <= q.HEARTBEAT_FRESH_S,
                    "running": running})
    return out


async def _batch_backlog(svc: Services, named: bool) -> dict[str, Any] | None:
    """Lines of batches in progress still to run (PostgreSQL: the batch lane holds only what is fed)."""
    db = await svc.database()
    if db is None:
        return None
    try:
        rows = await BatchStore(db).backlog()
    except Exception:  # noqa: BLE001 - the summary is best effort
        return None
    pending: dict[str, int] = {}
    for tenant, _model, n in rows:
        pending[tenant] = pending.get(tenant, 0) + n
    out: dict[str, Any] = {"pending_lines": sum(pending.values()), "tenants": len(pending)}
    if named:
        out["by_tenant"] = dict(sorted(pending.items(), key=lambda kv: -kv[1]))
    return out


def _json(obj: dict[str, Any], status: int = 200) -> Response:
    return Response(p.dumps_json(obj), status_code=status, media_type="application/json")


@router.get("/health/live", openapi_extra=NO_CREDENTIAL)
async def live() -> Response:
    return _json({"status": "alive"})


@router.get("/health/ready", openapi_extra=NO_CREDENTIAL)
async def ready(request: Request) -> Response:
    svc = services(request)
    redis_ok, db_ok = await asyncio.gather(_redis_ok(svc), _db_ok(svc))
    workers = await fresh_workers(svc) if redis_ok else 0
    checks = {"redis": redis_ok, "postgres": db_ok, "workers": workers}
    # ?workers=optional: ready without a worker (Kubernetes, workers scaled to zero: jobs wait in the queue)
    optional = {"workers"} if request.query_params.get("workers") == "optional" else set()
    down = [name for name, up in checks.items() if not up and name not in optional]  # what is down, by name
    return _json({"status": "not_ready" if down else "ready", "checks": checks, "down": down}, 503 if down else 200)


@router.get("/health", openapi_extra=NO_CREDENTIAL)
async def summary(request: Request) -> Response:
    svc = services(request)
    redis_ok, db_ok = await asyncio.gather(_redis_ok(svc), _db_ok(svc))
    depth = await svc.queue.depth() if redis_ok else None
    workers = await fresh_workers(svc) if redis_ok else 0
    scaling = await _scaling(svc) if redis_ok else {}
    named = await _shows_tenants(svc, request)
    depths = await _depths(svc) if redis_ok else None
    backlog = await _batch_backlog(svc, named) if db_ok else None
    admin: dict[str, Any] = {}
    if named and redis_ok:  # who runs what, and what failed: for operators only
        worker_list, errors = await asyncio.gather(_worker_list(svc), _recent_errors(svc))
        admin = {"worker_list": worker_list, "recent_errors": errors}
    return _json({
        "status": "healthy" if redis_ok and db_ok and workers else "degraded",
        "version": __version__,
        "uptime_s": round(time.time() - svc.started_at, 1),
        "redis": redis_ok,
        "postgres": db_ok,
        "queue": {"name": svc.queue.name, "depth": depth, "max_depth": svc.queue.max_depth},
        "lanes": _lanes(depths, named) if depths is not None else {},  # per lane, per tenant (named for admins)
        **({"batches": backlog} if backlog is not None else {}),
        "workers": workers,
        "models": await _models(svc, depths, redis_ok),
        **({"scaling": scaling} if scaling else {}),  # per worker: hybrid scaling of Modal apps (seed 004)
        **admin,
    })


async def _recent_errors(svc: Services) -> list[dict[str, Any]]:
    try:
        return await asyncio.wait_for(recent.read(svc.redis, RECENT_ERRORS_SHOWN), 2)
    except Exception:  # noqa: BLE001 - the summary is best effort
        return []
