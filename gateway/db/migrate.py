"""Versioned SQL migrations, applied at start-up.

Files ``migrations/NNNN_name.sql`` run in order, each in its own transaction, and are recorded in
``gatehouse_migrations`` with a checksum. A session-level advisory lock serialises concurrent start-ups
(several gateway replicas), so each migration runs exactly once; running again is a no-op. A recorded
migration whose file changed afterwards is refused: migrations are append-only.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path

import asyncpg

log = logging.getLogger("gatehouse.db")
MIGRATIONS_DIR = Path(__file__).parent / "migrations"
LOCK_ID = 0x6761_7465  # "gate": the advisory lock every Gatehouse process uses for migrations


class MigrationError(Exception):
    """The database's migration history does not match the code's."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    found = []
    for path in sorted(directory.glob("*.sql")):
        number, _, name = path.stem.partition("_")
        if not number.isdigit():
            raise MigrationError(f"migration file {path.name} must start with a number")
        found.append(Migration(int(number), name, path.read_text(encoding="utf-8")))
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise MigrationError("two migration files share a version number")
    return found


async def migrate(conn: asyncpg.Connection, migrations: list[Migration] | None = None) -> list[int]:
    """Apply what is missing; returns the versions applied now."""
    migrations = discover() if migrations is None else migrations
    await conn.execute("SELECT pg_advisory_lock($1)", LOCK_ID)
    try:
        await conn.execute("""CREATE TABLE IF NOT EXISTS gatehouse_migrations (
            version integer PRIMARY KEY, name text NOT NULL, checksum text NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now())""")
        applied = {r["version"]: r["checksum"] for r in await conn.fetch(
            "SELECT version, checksum FROM gatehouse_migrations")}
        done = []
        for m in migrations:
            if m.version in applied:
                if applied[m.version] != m.checksum:
                    raise MigrationError(f"migration {m.version} ({m.name}) was changed after it was applied")
                continue
            async with conn.transaction():
                await conn.execute(m.sql)
                await conn.execute("INSERT INTO gatehouse_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                                   m.version, m.name, m.checksum)
            log.info("applied migration %04d_%s", m.version, m.name)
            done.append(m.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", LOCK_ID)
