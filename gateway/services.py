"""Services built once at start-up (in the app's lifespan) and reached through ``services(request)``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import asyncpg
from redis.asyncio import BlockingConnectionPool, Redis
from starlette.requests import Request

from core.config import Config, ModelEntry
from core.durations import duration_seconds
from core.pricing import FREE, Price, price_list
from core.settings import TeamLimits
from gateway.auth import Authenticator, Principal
from gateway.auth.jwt_auth import JwtVerifier
from gateway.db.migrate import migrate
from gateway.enqueue import JobQueue
from gateway.errors import ServiceUnavailable
from gateway.keys.cache import KeyCache
from gateway.keys.store import KeyStore
from gateway.limits import Limiter, Scope
from gateway.spend import PgSpendLoader, SpendRecorder

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
    limiter: Limiter
    spend: SpendRecorder
    prices: dict[str, Price]
    team_scopes: dict[str, Scope]  # from the config's gatehouse.teams, built once
    tracing: bool = False  # Langfuse configured: jobs carry a trace context for the worker's trace
    started_at: float = field(default_factory=time.time)

    def scopes(self, principal: Principal) -> tuple[Scope, ...]:
        """The budgets a request by ``principal`` counts against: its own, then its team's."""
        out = []
        if principal.kind != "master":
            out.append(Scope(principal.kind, principal.id, principal.rpm_limit, principal.tpm_limit,
                             principal.max_parallel_requests, principal.max_budget, principal.budget_period_s))
        if principal.team_id is not None and principal.team_id in self.team_scopes:
            out.append(self.team_scopes[principal.team_id])
        return tuple(out)

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        return self.prices.get(model, FREE).cost(prompt_tokens, completion_tokens)

    async def database(self) -> asyncpg.Pool | None:
        """The PostgreSQL pool, (re)trying to open it (and migrate) if start-up could not."""
        if self.db is None and self.config.settings.database_url:
            self.db = await open_db(self.config.settings.database_url)
            if self.db is not None:
                self.keys.store = KeyStore(self.db)
                self.spend.pool = self.db
        return self.db

    async def key_store(self) -> KeyStore:
        """The key store, or 503 when PostgreSQL is not reachable."""
        if await self.database() is None or self.keys.store is None:
            raise ServiceUnavailable("The key database is not reachable; try again shortly.",
                                     code="database_unavailable")
        return self.keys.store

    async def aclose(self) -> None:
        if self.auth.jwt is not None:
            await self.auth.jwt.aclose()
        await self.spend.aclose()
        await self.keys.aclose()
        await self.redis.aclose()
        if self.db is not None:
            await self.db.close()


def services(request: Request) -> Services:
    svc: Services = request.app.state.services  # set by the app's lifespan
    return svc


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
    spend = SpendRecorder()
    spend.start(db)
    models = config.models()
    jwt = JwtVerifier(s.jwt) if s.jwt.enabled else None
    svc = Services(
        config=config,
        redis=redis,
        queue=JobQueue(redis, max_depth=s.queue_max_depth),
        auth=Authenticator(master_key, keys, jwt),
        db=db,
        models=models,
        keys=keys,
        limiter=Limiter(redis, inflight_ttl_s=s.request_timeout_s + 30),
        tracing=s.tracing.enabled,
        spend=spend,
        prices=price_list(models),
        team_scopes={team_id: _team_scope(team_id, t) for team_id, t in s.teams.items()},
    )
    svc.limiter.spend_loader = PgSpendLoader(svc.database)
    return svc


def _team_scope(team_id: str, t: TeamLimits) -> Scope:
    return Scope("team", team_id, t.rpm_limit, t.tpm_limit, t.max_parallel_requests, t.max_budget,
                 duration_seconds(t.budget_duration))
