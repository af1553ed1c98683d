"""The gateway's PostgreSQL: core.database's bounded calls, migrated on connect, and an outage answered as
``503 database_unavailable`` with ``retry-after``."""

from __future__ import annotations

from typing import Any

import asyncpg

from core import database as core_db
from gateway.db.migrate import migrate
from gateway.errors import ServiceUnavailable

RETRY_AFTER_S = core_db.RETRY_AFTER_S


class DatabaseUnavailable(ServiceUnavailable, core_db.DatabaseUnavailable):
    code = "database_unavailable"

    def __init__(self, message: str = "The key database (PostgreSQL) is not reachable; try again shortly."):
        ServiceUnavailable.__init__(self, message, headers={"retry-after": str(RETRY_AFTER_S)})


class Database(core_db.Database):
    unavailable = DatabaseUnavailable

    def __init__(self, url: str | None = None, *, pool: asyncpg.Pool | None = None, **kw: Any):
        kw.setdefault("prepare", migrate)
        super().__init__(url, pool=pool, **kw)
