"""Services built once at start-up (in the app's lifespan) and reached through ``services(request)``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import asyncpg
from redis.asyncio import BlockingConnectionPool, Redis
from starlette.requests import Request

from gateway.auth import Authenticator
from gateway.config import Config, ModelEntry
from gateway.db.migrate import migrate
from gateway.enqueue import JobQueue
from gateway.errors import ServiceUnavailable
from gateway.keys.cache import KeyCache
from gateway.keys.store import KeyStore

log = logging.getLogger("gatehouse.gateway")


@dataclass
class Services:
    config: Config
    redis: Redis
    queue: JobQueue
    auth: Authenticator
    db: asyncpg.Pool | None
    models: dict[str, ModelEntry]
    keys: KeyCache
    started_at: float = field(default_factory=time.time)

    async def database(self) -> asyncpg.Pool | None:
        """The PostgreSQL pool, (re)trying to open it (and migrate) if start-up could not."""
        if self.db is None and self.config.settings.database_url:
            self.db = await open_db(self.config.settings.database_url)
            if self.db is not None:
                self.keys.store = KeyStore(self.db)
        return self.db

    async def key_store(self) -> KeyStore:
        """The key store, or 503 when PostgreSQL is not reachable."""
        if await self.database() is None or self.keys.store is None:
            raise ServiceUnavailable("The key database is not reachable; try again shortly.",
                                     code="database_unavailable")
        return self.keys.store

    async def aclose(self) -> None:
        await self.keys.aclose()
        await self.redis.aclose()
        if self.db is not None:
            await self.db.close()


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def redis_client(url: str, max_connections: int = 4096) -> Redis:
    """One pool for enqueues and the blocking stream reads (each in-flight read holds a connection)."""
    pool = BlockingConnectionPool.from_url(url, max_connections=max_connections, timeout=10)
    return Redis(connection_pool=pool)


async def open_db(url: str | None) -> asyncpg.Pool | None:
    if not url:
        return None
    try:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=8, command_timeout=5, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        log.warning("PostgreSQL is not reachable yet (%s); readiness will report it", type(e).__name__)
        return None
    async with pool.acquire() as conn:
        await migrate(conn)
    return pool


async def build_services(config: Config, master_key: str) -> Services:
    s = config.settings
    if not s.redis_url:
        raise RuntimeError("redis_url is not set (set REDIS_URL or run `gatehouse up`)")
    redis = redis_client(s.redis_url)
    db = await open_db(s.database_url)
    keys = KeyCache(KeyStore(db) if db is not None else None, redis)
    keys.start()
    return Services(
        config=config,
        redis=redis,
        queue=JobQueue(redis, max_depth=s.queue_max_depth),
        auth=Authenticator(master_key, keys),
        db=db,
        models=config.models(),
        keys=keys,
    )
