"""Benchmark runs (issue #14, docs/benchmark-runs-contract.md): ``POST /v1/benchmarks``, ``GET /v1/benchmarks``,
``GET /v1/benchmarks/{id}``, ``GET /v1/benchmarks/{id}/results``, ``POST /v1/benchmarks/{id}/cancel`` (and the
same without ``/v1``).

The gateway validates and records a run (``queued``) and answers; the benchmark runner in the workers sends its
requests back through this gateway and records each result (docs/adr/0018-benchmark-runs.md). Summaries are
computed from the results on read (core.benchstats). Ownership as for batches: a key sees and cancels only its
own runs, the master key and admin keys see all; another key's run is a 404.
"""

from __future__ import annotations

import math
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Query, Request
from starlette.responses import Response

from core import benchstats
from core.benchstore import ID_PREFIX, BenchRecord, BenchStore, new_bench_id
from core.benchsuite import Suite, SuiteError
from core.usage import headroom
from gateway.auth import Principal
from gateway.errors import InvalidRequest, NotFound, PermissionDenied, RateLimited
from gateway.files.store import owner_of, scope_of
from gateway.priority import tenant_of
from gateway.routes import json_response, not_found, stored
from gateway.services import Services, services
from gateway.serving import read_json

router = APIRouter(tags=["benchmarks"])
ListLimit = Annotated[int, Query(ge=1, le=100, description="Runs per page (1 to 100)")]
ResultLimit = Annotated[int, Query(ge=1, le=1000, description="Results per page (1 to 1000)")]
Cursor = Annotated[str | None, Query(max_length=64, description="A run id: the page starts after it")]
ResultCursor = Annotated[str | None, Query(max_length=32, description="A `last_id`: the page starts after it")]

FIELDS = ("suite", "models", "parallel", "rate", "sweep", "repeat", "slo", "metadata")
SLO_KEYS = benchstats.SLO_METRICS
MIN_RATE, MAX_PARALLEL, MAX_RATE, MAX_SWEEP_STEPS, MAX_REPEAT, MAX_MODELS = 0.001, 256, 1000, 16, 100, 32
MAX_TOTAL = 1_000_000  # requests in one run: items x models x repeat x levels
MAX_SLO_MS = 86_400_000
MIN_BODY_BYTES = 16 * 1024 * 1024  # a suite may be larger than a chat request: the body limit is at least this
METADATA_PAIRS, METADATA_KEY, METADATA_VALUE = 16, 64, 512
_NUMBER = {"type": "number", "exclusiveMinimum": 0}
CREATE_BODY: dict[str, Any] = {"requestBody": {"required": True, "content": {"application/json": {"schema": {
    "type": "object", "required": ["suite", "models"], "additionalProperties": False, "properties": {
        "suite": {"oneOf": [{"type": "array", "items": {"type": "object"}}, {
            "type": "object", "required": ["items"], "properties": {
                "name": {"type": "string"}, "sandbox": {"type": "string", "enum": ["local", "modal"]},
                "items": {"type": "array", "items": {"type": "object"}}}}]},
        "models": {"type": "array", "minItems": 1, "maxItems": MAX_MODELS, "items": {"type": "string"}},
        "parallel": {"type": ["integer", "null"], "minimum": 1, "maximum": MAX_PARALLEL},
        "rate": {"type": ["number", "null"], "minimum": MIN_RATE, "maximum": MAX_RATE},
        "sweep": {"type": ["array", "null"], "minItems": 1, "maxItems": MAX_SWEEP_STEPS,
                  "items": {"type": "integer", "minimum": 1, "maximum": MAX_PARALLEL}},
        "repeat": {"type": "integer", "minimum": 1, "maximum": MAX_REPEAT},
        "slo": {"type": ["object", "null"], "additionalProperties": False,
                "properties": {k: {**_NUMBER, "type": ["number", "null"]} for k in SLO_KEYS}},
        "metadata": {"type": "object", "additionalProperties": {"type": "string"}}}}}}}}


async def _runs(request: Request) -> tuple[BenchStore, Principal]:
    db, principal = await stored(request, "benchmark runs")
    return BenchStore(db), principal


def run_not_found(run_id: str) -> NotFound:
    return not_found("benchmark run", run_id, "benchmark_id", "benchmark_not_found")


def _invalid(message: str, param: str | None, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(message, param=param, code=code)


def _storable(value: Any, param: str, code: str) -> None:
    """What PostgreSQL's jsonb can hold, and orjson write: no U+0000, nested at most 254 levels."""
    try:
        text = orjson.dumps(value)
    except TypeError:
        raise _invalid(f"Invalid '{param}': nested too deeply.", param, code) from None
    if b"\\u0000" in text:
        raise _invalid(f"Invalid '{param}': it contains a NUL character (U+0000).", param, code)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ── the body ──────────────────────────────────────────────────────────────────────────────────────────
def _suite(body: dict[str, Any]) -> Suite:
    if body.get("suite") is None:
        raise _invalid("Missing required parameter: 'suite'.", "suite", "missing_required_parameter")
    try:
        suite = Suite.from_json(body["suite"])
    except SuiteError as e:
        raise _invalid(f"Invalid suite: {e}", "suite", "invalid_suite") from None
    _storable(body["suite"], "suite", "invalid_suite")
    return suite


def _check_model(svc: Services, principal: Principal, name: str, param: str, what: str) -> None:
    entry = svc.models.get(name)
    if entry is None:
        raise _invalid(f"The model `{name[:200]}` ({what}) does not exist.", param, "model_not_found")
    if not principal.may_use(name):
        raise _invalid(f"This API key is not allowed to use the model `{name}` ({what}).", param,
                       "model_not_allowed")
    if entry.backend == "classifier":
        raise _invalid(f"The model `{name}` ({what}) is a classifier: benchmarks send chat completions.", param)


def _models(svc: Services, principal: Principal, body: dict[str, Any], suite: Suite) -> list[str]:
    models = body.get("models")
    if models is None:
        raise _invalid("Missing required parameter: 'models'.", "models", "missing_required_parameter")
    if not isinstance(models, list) or not models or len(models) > MAX_MODELS \
            or not all(isinstance(m, str) and m for m in models):
        raise _invalid(f"Invalid 'models': a list of 1 to {MAX_MODELS} model names.", "models")
    for name in models:
        if models.count(name) > 1:
            raise _invalid(f"Invalid 'models': `{name[:200]}` is listed twice.", "models")
        _check_model(svc, principal, name, "models", "in 'models'")
    for item in suite.items:
        if item.scorer is not None and item.scorer.judge is not None:
            _check_model(svc, principal, item.scorer.judge, "suite", f"the judge of suite item '{item.id[:100]}'")
    return list(models)


def _options(body: dict[str, Any]) -> dict[str, Any]:
    """``{parallel, rate, sweep, repeat, slo}``: exactly one of the first three (``parallel`` 1 by default)."""
    given = [k for k in ("parallel", "rate", "sweep") if body.get(k) is not None]
    if len(given) > 1:
        raise _invalid(f"'parallel', 'rate' and 'sweep' are exclusive; got {' and '.join(given)}.", given[1])
    parallel, rate, sweep = body.get("parallel"), body.get("rate"), body.get("sweep")
    if not given:
        parallel = 1
    if parallel is not None and not (_is_int(parallel) and 1 <= parallel <= MAX_PARALLEL):
        raise _invalid(f"Invalid 'parallel': an integer from 1 to {MAX_PARALLEL}.", "parallel")
    if rate is not None and not (_is_number(rate) and MIN_RATE <= rate <= MAX_RATE):
        raise _invalid(f"Invalid 'rate': requests per second per model, from {MIN_RATE} to {MAX_RATE}.", "rate")
    if sweep is not None:
        if not (isinstance(sweep, list) and 1 <= len(sweep) <= MAX_SWEEP_STEPS
                and all(_is_int(c) and 1 <= c <= MAX_PARALLEL for c in sweep)):
            raise _invalid(f"Invalid 'sweep': a list of 1 to {MAX_SWEEP_STEPS} concurrency levels, each an integer "
                           f"from 1 to {MAX_PARALLEL}.", "sweep")
        if len(set(sweep)) != len(sweep):
            raise _invalid("Invalid 'sweep': a concurrency level is listed twice.", "sweep")
    repeat = body.get("repeat", 1)
    if repeat is None:
        repeat = 1
    if not (_is_int(repeat) and 1 <= repeat <= MAX_REPEAT):
        raise _invalid(f"Invalid 'repeat': an integer from 1 to {MAX_REPEAT}.", "repeat")
    return {"parallel": parallel, "rate": rate, "sweep": sweep, "repeat": repeat, "slo": _slo(body.get("slo"))}


def _slo(value: Any) -> dict[str, float | int | None]:
    if value is None:
        return dict.fromkeys(SLO_KEYS)
    if not isinstance(value, dict):
        raise _invalid(f"Invalid 'slo': an object with any of {', '.join(SLO_KEYS)} (milliseconds).", "slo")
    for k, v in value.items():
        if k not in SLO_KEYS:
            raise _invalid(f"Invalid 'slo': unknown target {str(k)[:64]!r} (targets: {', '.join(SLO_KEYS)}).", "slo")
        if v is not None and not (_is_number(v) and 0 < v <= MAX_SLO_MS):
            raise _invalid(f"Invalid 'slo': {k} must be a positive number of milliseconds (at most {MAX_SLO_MS}).",
                           "slo")
    return {k: value.get(k) for k in SLO_KEYS}


def _metadata(value: Any) -> dict[str, str]:
    if value is None:
        return {}
    ok = isinstance(value, dict) and len(value) <= METADATA_PAIRS and all(
        isinstance(k, str) and isinstance(v, str) and len(k) <= METADATA_KEY and len(v) <= METADATA_VALUE
        and "\x00" not in k + v for k, v in value.items())
    if not ok:
        raise _invalid(f"Invalid 'metadata': at most {METADATA_PAIRS} string pairs, keys up to {METADATA_KEY} "
                       f"and values up to {METADATA_VALUE} characters.", "metadata")
    return dict(value)


# ── routes ────────────────────────────────────────────────────────────────────────────────────────────
@router.post("/v1/benchmarks", openapi_extra=CREATE_BODY)
@router.post("/benchmarks", include_in_schema=False, openapi_extra=CREATE_BODY)
async def create_benchmark(request: Request) -> Response:
    """Queue a benchmark run: a suite sent to each model; the workers run it through this gateway."""
    store, principal = await _runs(request)
    svc = services(request)
    body = await read_json(request, max(svc.config.settings.max_body_bytes, MIN_BODY_BYTES))
    unknown = sorted(str(k) for k in body if k not in FIELDS)
    if unknown:
        raise _invalid(f"Unrecognized request argument supplied: {unknown[0][:64]} (arguments: {', '.join(FIELDS)}).",
                       unknown[0][:64], "unknown_parameter")
    suite = _suite(body)
    models = _models(svc, principal, body, suite)
    options = _options(body)
    metadata = _metadata(body.get("metadata"))
    if any(item.is_task for item in suite.items) and not principal.is_admin:
        raise PermissionDenied("Agent tasks (suite items with a 'command') run programs on the workers: only the "
                               "master key and admin keys may submit them.", param="suite")
    levels = benchstats.levels_of(options)
    total = len(suite.items) * len(models) * options["repeat"] * len(levels)
    if total > MAX_TOTAL:
        raise _invalid(f"This run would send {total} requests (items x models x repeat x levels); at most "
                       f"{MAX_TOTAL} are allowed in one run.", None, "too_many_requests")
    scopes = svc.scopes(principal)
    if (spent := await headroom(svc.redis, scopes, db=store.db)) is not None and spent[1] == "budget":
        raise RateLimited(f"You exceeded your current quota: the budget of this {spent[0].kind} (${spent[0].budget:g}) "
                          "is spent; a benchmark would not run.", type_="insufficient_quota", code="insufficient_quota")
    record = await store.create(
        run_id=new_bench_id(), owner_id=owner_of(principal), key_id=principal.key_id, team_id=principal.team_id,
        user_id=principal.user_id, tenant=tenant_of(principal), gateway_url=str(request.base_url).rstrip("/"),
        suite=suite.to_json(), models=models, options=options, total=total, metadata=metadata,
        scopes=[sc.to_dict() for sc in scopes])
    return json_response(record.to_api())


@router.get("/v1/benchmarks")
@router.get("/benchmarks", include_in_schema=False)
async def list_benchmarks(request: Request, after: Cursor = None, limit: ListLimit = 20) -> Response:
    """Benchmark runs, newest first."""
    store, principal = await _runs(request)
    if after is not None and ("\x00" in after or not after.isascii()):
        raise _invalid("Invalid value for 'after': a benchmark run id.", "after")
    records, has_more = await store.list(scope_of(principal), after=after, limit=limit)
    data = [r.to_api() for r in records]
    return json_response({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                          "last_id": data[-1]["id"] if data else None, "has_more": has_more})


def _plausible(run_id: str) -> bool:
    return run_id.startswith(ID_PREFIX) and len(run_id) <= 64 and run_id.isascii() and "\x00" not in run_id


async def _visible(store: BenchStore, principal: Principal, run_id: str) -> BenchRecord:
    record = await store.get(run_id, scope_of(principal)) if _plausible(run_id) else None
    if record is None:
        raise run_not_found(run_id)
    return record


@router.get("/v1/benchmarks/{benchmark_id}")
@router.get("/benchmarks/{benchmark_id}", include_in_schema=False)
async def retrieve_benchmark(request: Request, benchmark_id: str) -> Response:
    """The run, with its figures so far: per model and level (`summary`) and per model (`models_summary`)."""
    store, principal = await _runs(request)
    record = await _visible(store, principal, benchmark_id)
    summary, models_summary = await store.summaries(record)
    return json_response({**record.to_api(), "summary": summary, "models_summary": models_summary})


@router.get("/v1/benchmarks/{benchmark_id}/results")
@router.get("/benchmarks/{benchmark_id}/results", include_in_schema=False)
async def benchmark_results(request: Request, benchmark_id: str, after: ResultCursor = None,
                            limit: ResultLimit = 100) -> Response:
    """The run's results, one per model, level, item and repeat, in the order they were recorded."""
    store, principal = await _runs(request)
    if after is not None and not (after.isascii() and after.isdigit() and len(after) <= 18):
        raise _invalid("Invalid value for 'after': a `last_id` from a previous page.", "after")
    record = await _visible(store, principal, benchmark_id)
    data, has_more, last = await store.results(record.id, int(after) if after else None, limit)
    return json_response({"object": "list", "data": data, "has_more": has_more,
                          "last_id": str(last) if last is not None else None})


@router.post("/v1/benchmarks/{benchmark_id}/cancel")
@router.post("/benchmarks/{benchmark_id}/cancel", include_in_schema=False)
async def cancel_benchmark(request: Request, benchmark_id: str) -> Response:
    """Cancel a run: `cancelling` at once, `cancelled` once the runner has stopped (results so far are kept)."""
    store, principal = await _runs(request)
    if not _plausible(benchmark_id):
        raise run_not_found(benchmark_id)
    record = await store.cancel(benchmark_id, scope_of(principal))
    if record is None:
        raise run_not_found(benchmark_id)
    if record.status in ("completed", "failed"):
        raise InvalidRequest(f"Cannot cancel a benchmark run with status '{record.status}'.", param="benchmark_id",
                             code="invalid_state", status=409)
    return json_response(record.to_api())
