"""Benchmark runs in PostgreSQL (migration 0006): the only SQL for them. The gateway creates, lists, shows and
cancels runs (gateway/routes/benchmarks.py); the runner in the workers drives those not final, records each
result once and finishes them. Shapes: docs/benchmark-runs-contract.md; design: docs/adr/0018-benchmark-runs.md.

Access is by ``scope`` as for batches: None sees every run (master and admin keys), otherwise only those whose
``owner_id`` is the scope.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import asyncpg
import orjson

from core.benchstats import SLO_METRICS, summarize
from core.database import Database
from core.ids import sortable_id

ID_PREFIX: Final = "bench_"
ACTIVE: Final = ("queued", "running", "cancelling")
FINAL: Final = ("completed", "failed", "cancelled")
STAMPS: Final = ("created_at", "started_at", "completed_at", "failed_at", "cancelling_at", "cancelled_at")
FINAL_STAMP: Final = {"completed": "completed_at", "failed": "failed_at", "cancelled": "cancelled_at"}
COLUMNS: Final = ("id, owner_id, key_id, team_id, user_id, tenant, scopes, gateway_url, suite, models, options, "
                  "metadata, status, errors, total, completed, failed, " + ", ".join(STAMPS))
PAGE: Final = 5_000  # rows per call when reading a whole run's results (each call is bounded in time)
ResultKey = tuple[str, str, str, int]  # (model, level, item_id, repeat)
Result = dict[str, Any]  # the contract's RESULT object
Results = list[Result]  # (a name: inside BenchStore, ``list`` is its method)


def new_bench_id() -> str:
    """``bench_`` + 12 hex digits of milliseconds since 1970 + 14 random ones: ids sort by creation time."""
    return sortable_id(ID_PREFIX, 7)


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, (str, bytes)) else value


def _dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def _without_nul(value: Any) -> Any:
    """``value`` with U+0000 replaced in every string: PostgreSQL's jsonb cannot hold it (a model may answer it)."""
    if isinstance(value, str):
        return value.replace("\x00", "\ufffd")
    if isinstance(value, dict):
        return {_without_nul(k): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_without_nul(v) for v in value]
    return value


def _result_json(result: Result) -> str:
    text = _dumps(result)
    return _dumps(_without_nul(result)) if "\\u0000" in text else text


@dataclass(frozen=True, slots=True)
class BenchRecord:
    id: str
    owner_id: str | None
    key_id: str | None
    team_id: str | None
    user_id: str | None
    tenant: str
    scopes: list[dict[str, Any]]  # core.usage.Scope.to_dict() of the submitter's limits
    gateway_url: str
    suite: dict[str, Any]  # core.benchsuite.Suite.to_json()
    models: list[str]
    options: dict[str, Any]  # {parallel, rate, sweep, repeat, slo}
    metadata: dict[str, Any] | None
    status: str
    errors: list[dict[str, Any]] | None
    total: int
    completed: int
    failed: int
    stamps: dict[str, datetime | None]

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> BenchRecord:
        d = dict(row)
        stamps = {k: d.pop(k) for k in STAMPS}
        for k in ("scopes", "suite", "options", "metadata", "errors"):
            d[k] = _json(d[k])
        d["models"] = list(d["models"])
        return cls(**d, stamps=stamps)

    @property
    def final(self) -> bool:
        return self.status in FINAL

    def suite_info(self) -> dict[str, Any]:
        items = self.suite.get("items")
        return {"name": self.suite.get("name"), "items": len(items) if isinstance(items, list) else 0,
                "sandbox": self.suite.get("sandbox")}

    def to_api(self) -> dict[str, Any]:
        """The contract's run object (``*_at`` in unix seconds)."""
        def ts(name: str) -> int | None:
            v = self.stamps.get(name)
            return int(v.timestamp()) if v is not None else None

        o = self.options
        slo = o.get("slo")
        if isinstance(slo, dict):  # jsonb keeps keys in its own order: the contract's
            slo = {k: slo.get(k) for k in SLO_METRICS} | slo
        return {
            "id": self.id, "object": "benchmark", "status": self.status, "suite": self.suite_info(),
            "models": list(self.models),
            "options": {"parallel": o.get("parallel"), "rate": o.get("rate"), "sweep": o.get("sweep"),
                        "repeat": o.get("repeat", 1), "slo": slo},
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            **{name: ts(name) for name in STAMPS},
            "errors": self.errors, "metadata": self.metadata if self.metadata is not None else {},
        }


def result_key(result: Result) -> ResultKey:
    """A RESULT's identity: (model, level, item_id, repeat). KeyError/ValueError when one is missing or bad."""
    model, level, item_id, rep = result["model"], result["level"], result["item_id"], result["repeat"]
    if not (isinstance(model, str) and isinstance(level, str) and isinstance(item_id, str)) \
            or not isinstance(rep, int) or isinstance(rep, bool):
        raise ValueError(f"a result needs string model, level and item_id and an integer repeat: {result!r:.200}")
    return model, level, item_id, rep


class BenchStore:
    def __init__(self, db: Database):
        self.db = db

    # ── the gateway's side ─────────────────────────────────────────────────────────────────────────────
    async def create(self, *, run_id: str, owner_id: str | None, key_id: str | None, team_id: str | None,
                     user_id: str | None, tenant: str, gateway_url: str, suite: dict[str, Any],
                     models: Sequence[str], options: dict[str, Any], total: int,
                     metadata: dict[str, Any] | None = None, scopes: Sequence[dict[str, Any]] = ()) -> BenchRecord:
        row = await self.db.fetchrow(
            "INSERT INTO benchmark_runs (id, owner_id, key_id, team_id, user_id, tenant, scopes, gateway_url, suite, "
            "models, options, metadata, total) VALUES ($1, $2, $3, $4, $5, $6, $7::jsonb, $8, $9::jsonb, $10, "
            f"$11::jsonb, $12::jsonb, $13) RETURNING {COLUMNS}",
            run_id, owner_id, key_id, team_id, user_id, tenant, _dumps(list(scopes)), gateway_url, _dumps(suite),
            list(models), _dumps(options), _dumps(metadata) if metadata is not None else None, total)
        assert row is not None
        return BenchRecord.from_row(row)

    async def get(self, run_id: str, scope: str | None = None) -> BenchRecord | None:
        row = await self.db.fetchrow(f"SELECT {COLUMNS} FROM benchmark_runs WHERE id = $1 "
                                     "AND ($2::text IS NULL OR owner_id = $2)", run_id, scope)
        return BenchRecord.from_row(row) if row is not None else None

    async def list(self, scope: str | None, *, after: str | None = None,
                   limit: int = 20) -> tuple[Sequence[BenchRecord], bool]:
        """A page, newest first, of the runs created before ``after``; and whether more follow."""
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM benchmark_runs WHERE ($1::text IS NULL OR owner_id = $1) "
            "AND ($2::text IS NULL OR id < $2) ORDER BY id DESC LIMIT $3", scope, after, limit + 1)
        return [BenchRecord.from_row(r) for r in rows[:limit]], len(rows) > limit

    async def cancel(self, run_id: str, scope: str | None = None) -> BenchRecord | None:
        """Ask the runner to stop: ``queued``/``running`` → ``cancelling``; a run already cancelling or final is
        left as it is. The run as it is now (None: not found)."""
        row = await self.db.fetchrow(
            "UPDATE benchmark_runs SET status = 'cancelling', cancelling_at = now() WHERE id = $1 "
            f"AND ($2::text IS NULL OR owner_id = $2) AND status IN ('queued', 'running') RETURNING {COLUMNS}",
            run_id, scope)
        if row is not None:
            return BenchRecord.from_row(row)
        return await self.get(run_id, scope)

    # ── the runner's side ──────────────────────────────────────────────────────────────────────────────
    async def active(self) -> Sequence[tuple[str, str]]:
        """``(id, status)`` of the runs not final, oldest first: the runner's every-second look, without
        decoding suites (``get`` reads a whole run when it starts one)."""
        rows = await self.db.fetch("SELECT id, status FROM benchmark_runs WHERE status IN "
                                   "('queued', 'running', 'cancelling') ORDER BY id")
        return [(r["id"], r["status"]) for r in rows]

    async def mark_running(self, run_id: str) -> bool:
        """``queued`` → ``running`` (stamping ``started_at``); False when it was not queued."""
        done = await self.db.fetchval("UPDATE benchmark_runs SET status = 'running', started_at = now() "
                                      "WHERE id = $1 AND status = 'queued' RETURNING id", run_id)
        return done is not None

    async def finish(self, run_id: str, status: str, errors: Sequence[dict[str, Any]] | None = None) -> bool:
        """A run not final → ``completed``, ``failed`` or ``cancelled`` (with its stamp, and ``errors`` when
        given); False when it was final already."""
        if status not in FINAL_STAMP:
            raise ValueError(f"not a final status: {status!r}")
        done = await self.db.fetchval(
            f"UPDATE benchmark_runs SET status = $2, {FINAL_STAMP[status]} = now(), "
            "errors = coalesce($3::jsonb, errors) WHERE id = $1 AND status IN ('queued', 'running', 'cancelling') "
            "RETURNING id", run_id, status, _dumps(_without_nul(list(errors))) if errors is not None else None)
        return done is not None

    async def record(self, run_id: str, result: Result) -> bool:
        """One result (the contract's RESULT), unless its (model, level, item_id, repeat) has one already;
        whether it landed. The run's counts follow in the same statement."""
        return await self.record_many(run_id, [result]) == 1

    async def record_many(self, run_id: str, results: Sequence[Result]) -> int:
        """Results that have none yet for their key (others are ignored); how many landed."""
        if not results:
            return 0
        keys = [result_key(r) for r in results]
        statuses = ["ok" if r.get("status") == "ok" else "error" for r in results]
        n = await self.db.run(lambda conn: conn.fetchval(
            """
            WITH i AS (
              INSERT INTO benchmark_results (run_id, model, level, item_id, rep, status, data)
              SELECT $1, t.model, t.level, t.item_id, t.rep, t.status, t.data::jsonb
              FROM unnest($2::text[], $3::text[], $4::text[], $5::int[], $6::text[], $7::text[])
                AS t(model, level, item_id, rep, status, data)
              ON CONFLICT DO NOTHING RETURNING status
            ), c AS (
              UPDATE benchmark_runs SET completed = completed + (SELECT count(*) FROM i WHERE i.status = 'ok'),
                failed = failed + (SELECT count(*) FROM i WHERE i.status <> 'ok')
              WHERE id = $1 AND EXISTS (SELECT 1 FROM i)
            )
            SELECT count(*) FROM i
            """, run_id, [k[0] for k in keys], [k[1] for k in keys], [k[2] for k in keys], [k[3] for k in keys],
            statuses, [_result_json(r) for r in results], timeout=self.db.timeout_s), abandon=False)
        return int(n)

    async def done_keys(self, run_id: str) -> set[ResultKey]:
        """(model, level, item_id, repeat) of every result the run has: what a resumed runner skips."""
        out: set[ResultKey] = set()
        after = 0
        while True:
            rows = await self.db.fetch(
                "SELECT seq, model, level, item_id, rep FROM benchmark_results WHERE run_id = $1 AND seq > $2 "
                "ORDER BY seq LIMIT $3", run_id, after, PAGE)
            out.update((r["model"], r["level"], r["item_id"], r["rep"]) for r in rows)
            if len(rows) < PAGE:
                return out
            after = rows[-1]["seq"]

    # ── reading results ────────────────────────────────────────────────────────────────────────────────
    async def results(self, run_id: str, after: int | None = None,
                      limit: int = 100) -> tuple[Results, bool, int | None]:
        """A page of results in the order they landed, after the cursor ``after``; whether more follow, and the
        cursor of the page's last result (None for an empty page)."""
        rows = await self.db.fetch(
            "SELECT seq, data FROM benchmark_results WHERE run_id = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            run_id, after or 0, limit + 1)
        page = rows[:limit]
        return [_json(r["data"]) for r in page], len(rows) > limit, page[-1]["seq"] if page else None

    async def all_results(self, run_id: str) -> Results:
        out: Results = []
        after: int | None = None
        while True:
            page, more, after = await self.results(run_id, after, PAGE)
            out.extend(page)
            if not more:
                return out

    async def counts(self, run_id: str) -> tuple[int, int]:
        """(results with status ok, results with status error), counted from the results themselves."""
        row = await self.db.fetchrow(
            "SELECT count(*) FILTER (WHERE status = 'ok') AS ok, count(*) FILTER (WHERE status <> 'ok') AS failed "
            "FROM benchmark_results WHERE run_id = $1", run_id)
        assert row is not None
        return int(row["ok"]), int(row["failed"])

    async def summaries(self, record: BenchRecord) -> tuple[dict[str, dict[str, dict[str, Any]]],
                                                            dict[str, dict[str, Any]]]:
        """``({MODEL: {LEVEL: AGGREGATE}}, {MODEL: AGGREGATE})`` over all the run's results (core.benchstats)."""
        return summarize(await self.all_results(record.id), record.options.get("slo"))
