"""Services built once at start-up (in the app's lifespan) and reached through ``services(request)``."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from redis.asyncio import Redis
from starlette.requests import Request

from core import capabilities
from core import queue as q
from core.capabilities import Features
from core.config import Config, ModelEntry
from core.database import database_dsn
from core.durations import duration_seconds
from core.keys.store import KeyStore
from core.pricing import FREE, Price, price_list
from core.redis_client import RedisTarget, async_client
from core.redis_client import target as redis_target
from core.routing import Deployment
from core.settings import TeamLimits
from gateway.auth import Authenticator, Principal
from gateway.auth.jwt_auth import JwtVerifier
from gateway.console.session import SessionStore
from gateway.db.database import Database, DatabaseUnavailable
from gateway.draining import Drain
from gateway.enqueue import JobQueue
from gateway.keys.cache import KeyCache
from gateway.limits import Limiter, Scope
from gateway.reaper import Reaper
from gateway.spend import PgSpendLoader, SpendRecorder

log = logging.getLogger("gatehouse.gateway")
REDIS_TIMEOUT_S = 0.9  # one command (or the enqueue's pipelined first read) waits at most this long


@dataclass
class Services:
    config: Config
    redis: Redis  # commands, each bounded by REDIS_TIMEOUT_S: a stalled Redis costs a 503, not a hang
    streams: Redis  # blocking reads (output streams, pub/sub): no socket timeout, each read bounds itself
    queue: JobQueue  # the interactive lane
    batch_queue: JobQueue  # the batch lane, for keys whose metadata says lane "batch"
    auth: Authenticator
    db: Database | None
    models: dict[str, ModelEntry]
    deployments: dict[str, list[Deployment]]  # model name -> its deployments (ids for /health's routing state)
    keys: KeyCache
    limiter: Limiter
    spend: SpendRecorder
    prices: dict[str, Price]
    team_scopes: dict[str, Scope]  # from the config's gatehouse.teams, built once
    reaper: Reaper
    drain: Drain
    tracing: bool = False  # Langfuse configured: jobs carry a trace context for the worker's trace
    # model name -> what its backends support (core.capabilities): the gateway refuses the rest, or drops it
    features: dict[str, Features] = field(default_factory=dict)
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

    async def database(self) -> Database | None:
        """PostgreSQL (None when none is configured). Its calls are bounded and answer 503
        database_unavailable while it is unreachable; it connects (and migrates) once it is back."""
        return self.db

    async def key_store(self) -> KeyStore:
        """The key store, or 503 when there is no database to keep keys in."""
        if self.keys.store is None:
            raise DatabaseUnavailable("No key database is configured (set DATABASE_URL).")
        return self.keys.store

    async def aclose(self) -> None:
        if self.auth.jwt is not None:
            await self.auth.jwt.aclose()
        await self.spend.aclose()
        await self.keys.aclose()
        await self.reaper.aclose()
        await self.queue.aclose()
        await self.batch_queue.aclose()
        await self.redis.aclose()
        await self.streams.aclose()
        if self.db is not None:
            await self.db.close()


def services(request: Request) -> Services:
    svc: Services = request.app.state.services  # set by the app's lifespan
    return svc


def redis_client(target: RedisTarget, max_connections: int = 4096,
                 socket_timeout: float | None = REDIS_TIMEOUT_S) -> Redis:
    """A pool of connections (each in-flight blocking read holds one); connecting is bounded by
    REDIS_TIMEOUT_S, and so is every reply when ``socket_timeout`` is set. Direct, TLS or through Sentinel, as
    ``redis_url`` says (core.redis_client)."""
    return async_client(target, max_connections=max_connections, socket_timeout=socket_timeout,
                        socket_connect_timeout=REDIS_TIMEOUT_S)


async def open_db(url: str | None) -> Database | None:
    """The database (None without a URL), connected and migrated now if the server answers, else later."""
    if not url:
        return None
    db = Database(url)
    await db.open()
    return db


async def build_services(config: Config, master_key: str, drain: Drain | None = None) -> Services:
    s = config.settings
    target = redis_target(s)  # RedisConfigError (one line naming the setting) when it cannot be used
    redis = redis_client(target)
    streams = redis_client(target, socket_timeout=None)
    db = await open_db(database_dsn(s.database_url, s.database_ssl_root_cert) if s.database_url else None)
    keys = KeyCache(KeyStore(db) if db is not None else None, redis, listen_redis=streams)
    keys.start()
    reaper = Reaper(redis)
    reaper.start()
    spend = SpendRecorder()
    spend.start(db)
    models = config.models()
    jwt = JwtVerifier(s.jwt) if s.jwt.enabled else None
    svc = Services(
        config=config,
        redis=redis,
        streams=streams,
        reaper=reaper,
        drain=drain or Drain(s.shutdown_grace_s),
        queue=JobQueue(redis, max_depth=s.queue_max_depth),
        batch_queue=JobQueue(redis, name=q.BATCH_QUEUE, max_depth=s.queue_max_depth, wake=q.INTERACTIVE_QUEUE),
        auth=Authenticator(master_key, keys, jwt, SessionStore(redis)),
        db=db,
        models=models,
        deployments=config.deployments(),
        keys=keys,
        limiter=Limiter(redis, inflight_ttl_s=s.request_timeout_s + 30),
        tracing=s.tracing.enabled,
        features=capabilities.by_model(config),
        spend=spend,
        prices=price_list(models),
        team_scopes={team_id: _team_scope(team_id, t) for team_id, t in s.teams.items()},
    )
    svc.limiter.spend_loader = PgSpendLoader(svc.database)
    return svc


def _team_scope(team_id: str, t: TeamLimits) -> Scope:
    return Scope("team", team_id, t.rpm_limit, t.tpm_limit, t.max_parallel_requests, t.max_budget,
                 duration_seconds(t.budget_duration))
