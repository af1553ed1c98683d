"""Stored Responses in PostgreSQL (migration 0007; ADR 0020): kept for ``GET``/``DELETE /v1/responses/{id}`` and
for ``previous_response_id``. Access is by ``scope`` as for files: None sees every response (the master key,
admin keys), otherwise only those whose ``owner_id`` is the scope.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson

from core.database import Database

COLUMNS = "id, owner_id, model, passthrough, input, response"
MAX_ID = 128


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    owner_id: str | None
    model: str
    passthrough: bool
    input: list[dict[str, Any]]
    response: dict[str, Any]

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> StoredResponse:
        d = dict(row)
        for k in ("input", "response"):
            if isinstance(d[k], str):
                d[k] = orjson.loads(d[k])
        return cls(**d)

    def history(self) -> list[dict[str, Any]]:
        """What a response continuing this one starts from: its input items, then its output items."""
        return [*self.input, *(self.response.get("output") or [])]


def plausible(response_id: str) -> bool:
    return 0 < len(response_id) <= MAX_ID and response_id.isascii() and "\x00" not in response_id


class ResponseStore:
    def __init__(self, db: Database):
        self.db = db

    async def put(self, response: dict[str, Any], *, owner_id: str | None, model: str, passthrough: bool,
                  input_items: list[dict[str, Any]]) -> None:
        """Keep ``response`` (an id already kept is left as it is: ids are unique, an upstream's too)."""
        await self.db.fetchval(
            "INSERT INTO responses (id, owner_id, model, passthrough, input, response) VALUES ($1, $2, $3, $4, "
            "$5::jsonb, $6::jsonb) ON CONFLICT (id) DO NOTHING", str(response["id"]), owner_id, model, passthrough,
            orjson.dumps(input_items).decode(), orjson.dumps(response).decode())

    async def get(self, response_id: str, scope: str | None) -> StoredResponse | None:
        if not plausible(response_id):
            return None
        row = await self.db.fetchrow(f"SELECT {COLUMNS} FROM responses WHERE id = $1 "
                                     "AND ($2::text IS NULL OR owner_id = $2)", response_id, scope)
        return StoredResponse.from_row(row) if row is not None else None

    async def delete(self, response_id: str, scope: str | None) -> bool:
        if not plausible(response_id):
            return False
        gone = await self.db.fetchval("DELETE FROM responses WHERE id = $1 AND ($2::text IS NULL OR owner_id = $2) "
                                      "RETURNING id", response_id, scope)
        return gone is not None
