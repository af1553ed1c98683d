"""Batches in PostgreSQL (migration 0004): the SQL both sides run. The gateway creates, lists, shows and cancels
batches; the runner (workers/batches/) stores validated lines, writes results and finishes batches.

Access is by ``scope`` as for files: None sees every batch (master and admin keys), otherwise only those whose
``owner_id`` is the scope.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from core.batches import Line, LineResult
from core.database import Database

PENDING, ANSWERED, FAILED, NOT_RUN = 0, 1, 2, 3
STAMPS = ("created_at", "expires_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
          "cancelling_at", "cancelled_at")
COLUMNS = ("id, owner_id, key_id, team_id, user_id, endpoint, input_file_id, completion_window, metadata, "
           "allowed_models, tenant, priority, scopes, status, errors, total, completed, failed, prompt_tokens, "
           "completion_tokens, output_file_id, error_file_id, " + ", ".join(STAMPS))
RESULT_PAGE = 2_000


@dataclass(frozen=True, slots=True)
class BatchRecord:
    id: str
    owner_id: str | None
    key_id: str | None
    team_id: str | None
    user_id: str | None
    endpoint: str
    input_file_id: str
    completion_window: str
    metadata: dict[str, Any] | None
    allowed_models: list[str] | None
    tenant: str
    priority: int
    scopes: list[dict[str, Any]]  # core.usage.Scope.to_dict() of each limit its lines count against
    status: str
    errors: list[dict[str, Any]] | None
    total: int
    completed: int
    failed: int
    prompt_tokens: int
    completion_tokens: int
    output_file_id: str | None
    error_file_id: str | None
    stamps: dict[str, datetime | None]

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> BatchRecord:
        d = dict(row)
        stamps = {k: d.pop(k) for k in STAMPS}
        for k in ("metadata", "errors", "scopes"):
            if isinstance(d[k], str):
                d[k] = orjson.loads(d[k])
        return cls(**d, stamps=stamps)

    def to_json(self) -> dict[str, Any]:
        """OpenAI's Batch object."""
        def ts(name: str) -> int | None:
            v = self.stamps.get(name)
            return int(v.timestamp()) if v is not None else None

        return {
            "id": self.id, "object": "batch", "endpoint": self.endpoint,
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id, "completion_window": self.completion_window,
            "status": self.status, "output_file_id": self.output_file_id, "error_file_id": self.error_file_id,
            **{name: ts(name) for name in STAMPS},
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "usage": {"input_tokens": self.prompt_tokens, "output_tokens": self.completion_tokens,
                      "total_tokens": self.prompt_tokens + self.completion_tokens,
                      "input_tokens_details": {"cached_tokens": 0},
                      "output_tokens_details": {"reasoning_tokens": 0}},
            "metadata": self.metadata,
        }


@dataclass(frozen=True, slots=True)
class Landed:
    """What one ``record`` wrote: lines, their tokens, the cost of the answered ones."""

    lines: int
    tokens: int
    cost: float


@dataclass(frozen=True, slots=True)
class PendingLine:
    line: int
    custom_id: str
    model: str
    body: bytes
    tries: int


class BatchStore:
    def __init__(self, db: Database):
        self.db = db

    # ── the gateway's side ─────────────────────────────────────────────────────────────────────────────
    async def create(self, *, batch_id: str, owner_id: str | None, key_id: str | None, team_id: str | None,
                     user_id: str | None, endpoint: str, input_file_id: str, completion_window: str, window_s: int,
                     metadata: dict[str, str] | None, allowed_models: Sequence[str] | None, tenant: str,
                     priority: int, scopes: Sequence[dict[str, Any]] = ()) -> BatchRecord:
        row = await self.db.fetchrow(
            "INSERT INTO batches (id, owner_id, key_id, team_id, user_id, endpoint, input_file_id, completion_window, "
            "metadata, allowed_models, tenant, priority, expires_at, scopes) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, "
            f"$9, $10, $11, $12, now() + make_interval(secs => $13::integer), $14::jsonb) RETURNING {COLUMNS}",
            batch_id, owner_id, key_id, team_id, user_id, endpoint, input_file_id, completion_window,
            orjson.dumps(metadata).decode() if metadata is not None else None,
            list(allowed_models) if allowed_models is not None else None, tenant, priority, window_s,
            orjson.dumps(list(scopes)).decode())
        assert row is not None
        return BatchRecord.from_row(row)

    async def get(self, batch_id: str, scope: str | None = None) -> BatchRecord | None:
        row = await self.db.fetchrow(f"SELECT {COLUMNS} FROM batches WHERE id = $1 "
                                     "AND ($2::text IS NULL OR owner_id = $2)", batch_id, scope)
        return BatchRecord.from_row(row) if row is not None else None

    async def page(self, scope: str | None, *, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        """A page, newest first, of the batches created before ``after``; and whether more follow."""
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM batches WHERE ($1::text IS NULL OR owner_id = $1) "
            "AND ($2::text IS NULL OR id < $2) ORDER BY id DESC LIMIT $3", scope, after, limit + 1)
        return [BatchRecord.from_row(r) for r in rows[:limit]], len(rows) > limit

    async def cancel(self, batch_id: str, scope: str | None) -> BatchRecord | None:
        """Ask the runner to cancel (status ``cancelling``); the batch as it is now (None: not found)."""
        row = await self.db.fetchrow(
            "UPDATE batches SET status = 'cancelling', cancelling_at = now() WHERE id = $1 "
            f"AND ($2::text IS NULL OR owner_id = $2) AND status IN ('validating', 'in_progress') RETURNING {COLUMNS}",
            batch_id, scope)
        if row is not None:
            return BatchRecord.from_row(row)
        return await self.get(batch_id, scope)

    # ── the runner's side ──────────────────────────────────────────────────────────────────────────────
    async def active(self) -> list[BatchRecord]:
        rows = await self.db.fetch(f"SELECT {COLUMNS} FROM batches WHERE status IN "
                                   "('validating', 'in_progress', 'finalizing', 'cancelling') ORDER BY id")
        return [BatchRecord.from_row(r) for r in rows]

    async def add_lines(self, batch_id: str, lines: Sequence[Line]) -> None:
        """Validated lines (a page of them; a repeated page after a restart replaces nothing)."""
        records = [(batch_id, ln.line, ln.custom_id, ln.model, ln.body) for ln in lines]
        await self.db.run(lambda conn: conn.executemany(
            "INSERT INTO batch_lines (batch_id, line, custom_id, model, body) VALUES ($1, $2, $3, $4, $5) "
            "ON CONFLICT DO NOTHING", records, timeout=self.db.timeout_s), abandon=False)

    async def start(self, batch_id: str, total: int) -> bool:
        status = await self.db.fetchval(
            "UPDATE batches SET status = 'in_progress', in_progress_at = now(), total = $2 "
            "WHERE id = $1 AND status = 'validating' RETURNING status", batch_id, total)
        return status is not None

    async def fail(self, batch_id: str, errors: list[dict[str, Any]]) -> None:
        await self.db.fetchval(
            "UPDATE batches SET status = 'failed', failed_at = now(), errors = $2::jsonb "
            "WHERE id = $1 AND status IN ('validating', 'cancelling')", batch_id, orjson.dumps(errors).decode())

    async def pending(self, batch_id: str, after: int, limit: int) -> list[PendingLine]:
        rows = await self.db.fetch(
            "SELECT line, custom_id, model, body, tries FROM batch_lines WHERE batch_id = $1 AND state = 0 "
            "AND line > $2 ORDER BY line LIMIT $3", batch_id, after, limit)
        return [PendingLine(r["line"], r["custom_id"], r["model"], bytes(r["body"]), r["tries"]) for r in rows]

    async def custom_ids(self, batch_id: str, lines: Sequence[int]) -> dict[int, tuple[str, str]]:
        """line -> (custom_id, model) for the given lines."""
        rows = await self.db.fetch("SELECT line, custom_id, model FROM batch_lines WHERE batch_id = $1 "
                                   "AND line = ANY($2::int[])", batch_id, list(lines))
        return {r["line"]: (r["custom_id"], r["model"]) for r in rows}

    async def lost(self, batch_id: str, lines: Sequence[int]) -> None:
        """Count one more try of lines that were fed again after being lost."""
        await self.db.fetchval("UPDATE batch_lines SET tries = tries + 1 WHERE batch_id = $1 AND line = ANY($2::int[])",
                               batch_id, list(lines))

    async def record(self, batch: BatchRecord, results: Sequence[LineResult], costs: Sequence[float]) -> Landed:
        """Results of lines still pending (others are ignored: each line's result lands once), the batch's counts
        and usage, and a spend_log row per answered line charged to the batch's key; what landed."""
        if not results:
            return Landed(0, 0, 0.0)
        row = await self.db.run(lambda conn: conn.fetchrow(
            """
            WITH r AS (
              SELECT * FROM unnest($2::int[], $3::smallint[], $4::bytea[], $5::int[], $6::int[], $7::float8[])
                AS t(line, state, result, pt, ct, cost)
            ), u AS (
              UPDATE batch_lines b SET state = r.state, result = r.result FROM r
              WHERE b.batch_id = $1 AND b.line = r.line AND b.state = 0
              RETURNING b.line, b.model, r.state, r.pt, r.ct, r.cost
            ), s AS (
              INSERT INTO spend_log (request_id, key_id, team_id, user_id, model, prompt_tokens, completion_tokens,
                                     cost)
              SELECT $1 || ':' || u.line, $8, $9, $10, u.model, u.pt, u.ct, u.cost::numeric FROM u
              WHERE u.state = 1 AND ($8::text IS NOT NULL OR $9::text IS NOT NULL OR u.cost > 0)
            ), c AS (
              UPDATE batches SET completed = completed + (SELECT count(*) FROM u WHERE u.state = 1),
                failed = failed + (SELECT count(*) FROM u WHERE u.state = 2),
                prompt_tokens = prompt_tokens + (SELECT coalesce(sum(u.pt), 0) FROM u),
                completion_tokens = completion_tokens + (SELECT coalesce(sum(u.ct), 0) FROM u)
              WHERE id = $1
            )
            SELECT count(*) AS n, coalesce(sum(u.pt + u.ct), 0) AS tokens,
                   coalesce(sum(u.cost) FILTER (WHERE u.state = 1), 0) AS cost FROM u
            """, batch.id, [r.line for r in results], [1 if r.ok else 2 for r in results],
            [r.record for r in results], [r.prompt_tokens for r in results], [r.completion_tokens for r in results],
            list(costs), batch.key_id, batch.team_id, batch.user_id, timeout=self.db.timeout_s), abandon=False)
        assert row is not None
        return Landed(int(row["n"]), int(row["tokens"]), float(row["cost"]))

    async def close_pending(self, batch_id: str, results: Sequence[LineResult]) -> None:
        """Lines that will not run (cancelled, expired): into the error file, not counted as failed."""
        await self.db.run(lambda conn: conn.execute(
            "UPDATE batch_lines b SET state = 3, result = r.result FROM unnest($2::int[], $3::bytea[]) "
            "AS r(line, result) WHERE b.batch_id = $1 AND b.line = r.line AND b.state = 0",
            batch_id, [r.line for r in results], [r.record for r in results], timeout=self.db.timeout_s),
            abandon=False)

    async def pending_count(self, batch_id: str) -> int:
        return int(await self.db.fetchval("SELECT count(*) FROM batch_lines WHERE batch_id = $1 AND state = 0",
                                          batch_id))

    async def results(self, batch_id: str, states: Sequence[int]) -> AsyncIterator[bytes]:
        """The result records of lines in ``states``, in line order, a page per call."""
        after = 0
        while True:
            rows = await self.db.fetch(
                "SELECT line, result FROM batch_lines WHERE batch_id = $1 AND state = ANY($2::smallint[]) "
                "AND line > $3 ORDER BY line LIMIT $4", batch_id, list(states), after, RESULT_PAGE)
            for r in rows:
                yield bytes(r["result"])
            if len(rows) < RESULT_PAGE:
                return
            after = rows[-1]["line"]

    async def set_status(self, batch_id: str, status: str, *, stamp: str, where: Sequence[str],
                         output_file_id: str | None = None, error_file_id: str | None = None) -> bool:
        if stamp not in STAMPS:
            raise ValueError(stamp)
        done = await self.db.fetchval(
            f"UPDATE batches SET status = $2, {stamp} = now(), output_file_id = coalesce($4, output_file_id), "
            "error_file_id = coalesce($5, error_file_id) WHERE id = $1 AND status = ANY($3::text[]) RETURNING id",
            batch_id, status, list(where), output_file_id, error_file_id)
        return done is not None

    async def expired(self) -> list[str]:
        rows = await self.db.fetch("SELECT id FROM batches WHERE status IN ('validating', 'in_progress') "
                                   "AND expires_at <= now()")
        return [r["id"] for r in rows]

    async def backlog(self) -> list[tuple[str, str, int]]:
        """(tenant, model, lines pending) over the batches in progress: the batch lane's depth before feeding."""
        rows = await self.db.fetch(
            "SELECT b.tenant, l.model, count(*) AS n FROM batch_lines l JOIN batches b ON b.id = l.batch_id "
            "WHERE l.state = 0 AND b.status = 'in_progress' GROUP BY 1, 2")
        return [(r["tenant"], r["model"], int(r["n"])) for r in rows]
