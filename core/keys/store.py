"""Virtual keys in PostgreSQL (table ``virtual_keys``, migration 0001), through core.database's bounded calls:
an unreachable database is a ``DatabaseUnavailable`` (the gateway's answers 503), never a hang."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from core.database import Database
from core.keys.tokens import KeyCredential, hash_secret, new_credential

# columns a caller may set (create/update); everything else is managed here
SETTABLE = ("key_alias", "user_id", "team_id", "models", "max_budget", "budget_duration", "rpm_limit", "tpm_limit",
            "max_parallel_requests", "metadata", "is_admin", "expires_at")
_COLUMNS = ("key_id", *SETTABLE, "revoked_at", "created_at", "updated_at")


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    key_alias: str | None = None
    user_id: str | None = None
    team_id: str | None = None
    models: tuple[str, ...] | None = None
    max_budget: float | None = None
    budget_duration: str | None = None
    rpm_limit: int | None = None
    tpm_limit: int | None = None
    max_parallel_requests: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    is_admin: bool = False
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    created_at: datetime | None = None
    updated_at: datetime | None = None

    def usable(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k in _COLUMNS:
            v = getattr(self, k)
            out[k] = v.isoformat() if isinstance(v, datetime) else (list(v) if isinstance(v, tuple) else v)
        return out

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KeyRecord:
        kw = dict(d)
        for k in ("expires_at", "revoked_at", "created_at", "updated_at"):
            if kw.get(k):
                kw[k] = datetime.fromisoformat(kw[k])
        if kw.get("models") is not None:
            kw["models"] = tuple(kw["models"])
        return cls(**kw)

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> KeyRecord:
        kw = {k: row[k] for k in _COLUMNS}
        kw["models"] = tuple(kw["models"]) if kw["models"] is not None else None
        kw["max_budget"] = float(kw["max_budget"]) if isinstance(kw["max_budget"], Decimal) else kw["max_budget"]
        kw["metadata"] = orjson.loads(kw["metadata"]) if isinstance(kw["metadata"], (str, bytes)) else kw["metadata"]
        return cls(**kw)


def _values(fields: dict[str, Any]) -> dict[str, Any]:
    unknown = set(fields) - set(SETTABLE)
    if unknown:
        raise ValueError(f"unknown key field(s): {', '.join(sorted(unknown))}")
    out = dict(fields)
    if "metadata" in out:
        out["metadata"] = orjson.dumps(out["metadata"] or {}).decode()
    if out.get("models") is not None:
        out["models"] = list(out["models"])
    return out


class KeyStore:
    def __init__(self, db: Database | asyncpg.Pool):
        self.db = db if isinstance(db, Database) else Database(pool=db)

    async def create(self, **fields: Any) -> tuple[KeyRecord, KeyCredential]:
        """A new key; the credential (with its secret) is returned once and never stored."""
        cred = new_credential()
        values = _values(fields)
        cols = ["key_id", "secret_hash", *values]
        args = [cred.key_id, hash_secret(cred.secret), *values.values()]
        placeholders = ", ".join(f"${i}" if c != "metadata" else f"${i}::jsonb" for i, c in enumerate(cols, 1))
        row = await self.db.fetchrow(
            f"INSERT INTO virtual_keys ({', '.join(cols)}) VALUES ({placeholders}) RETURNING {', '.join(_COLUMNS)}",
            *args)
        return KeyRecord.from_row(row), cred

    async def get(self, key_id: str) -> tuple[KeyRecord, bytes] | None:
        row = await self.db.fetchrow(
            f"SELECT {', '.join(_COLUMNS)}, secret_hash FROM virtual_keys WHERE key_id = $1", key_id)
        if row is None:
            return None
        return KeyRecord.from_row(row), bytes(row["secret_hash"])

    async def update(self, key_id: str, **fields: Any) -> KeyRecord | None:
        values = _values(fields)
        if not values:
            found = await self.get(key_id)
            return found[0] if found else None
        sets = ", ".join(f"{c} = ${i}" + ("::jsonb" if c == "metadata" else "") for i, c in enumerate(values, 2))
        row = await self.db.fetchrow(
            f"UPDATE virtual_keys SET {sets}, updated_at = now() WHERE key_id = $1 AND revoked_at IS NULL "
            f"RETURNING {', '.join(_COLUMNS)}", key_id, *values.values())
        return KeyRecord.from_row(row) if row else None

    async def revoke(self, key_ids: list[str]) -> list[str]:
        rows = await self.db.fetch(
            "UPDATE virtual_keys SET revoked_at = now(), updated_at = now() "
            "WHERE key_id = ANY($1::text[]) AND revoked_at IS NULL RETURNING key_id", key_ids)
        return [r["key_id"] for r in rows]

    async def list(self, *, team_id: str | None = None, include_revoked: bool = False, page: int = 1,
                   size: int = 100) -> tuple[list[KeyRecord], int]:
        where = ["($1::text IS NULL OR team_id = $1)"]
        if not include_revoked:
            where.append("revoked_at IS NULL")
        cond = " AND ".join(where)
        rows = await self.db.fetch(
            f"SELECT {', '.join(_COLUMNS)}, count(*) OVER () AS total FROM virtual_keys WHERE {cond} "
            f"ORDER BY created_at, key_id LIMIT $2 OFFSET $3", team_id, size, (page - 1) * size)
        if rows:
            return [KeyRecord.from_row(r) for r in rows], int(rows[0]["total"])
        total = await self.db.fetchval(f"SELECT count(*) FROM virtual_keys WHERE {cond}", team_id)
        return [], int(total)
