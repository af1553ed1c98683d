"""Redis clients built from the settings: the one place the gateway, the workers and the CLI get theirs.

``target(settings)`` reads and checks ``redis_url`` with the ``redis_tls_*`` settings (core.redis_url); then

- :func:`async_client`: the gateway's client, a BlockingConnectionPool (each caller waits for a free connection
  rather than failing). A plain ``redis://`` URL gets exactly the pool it always had (``from_url`` with the same
  options); ``rediss://`` adds the TLS options.
- :func:`sync_client`: the CLI's (``gatehouse up`` settling a dead worker's jobs), closed on leaving the block.
- :func:`arq_settings` / :func:`arq_pool`: the worker's. A direct URL goes through arq's own ``create_pool``
  with RedisSettings' TLS fields. For Sentinel, arq 0.28's ``create_pool`` hands the Sentinel only
  ``ssl=True`` (no CA, client certificate, sentinel credentials or timeouts), so :func:`arq_pool` builds that
  pool itself, with arq's retry-and-ping start-up.

Through Sentinel, every new connection asks the sentinels for the master first (redis-py's
SentinelManagedConnection), and a connection that finds its server demoted (READONLY) is dropped: after a
failover the clients reconnect to the new master on their own, and the calls that were in flight on the old
one fail as a Redis outage does (503 at the gateway, retried by the worker).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import redis
import redis.sentinel
from arq.connections import ArqRedis, RedisSettings, create_pool
from arq.jobs import Deserializer, Serializer
from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import RedisError

from core.redis_url import RedisConfigError, RedisTarget, RedisTLS, RedisTLSSettings, redis_target

log = logging.getLogger("gatehouse.redis")
POOL_WAIT_S = 10  # the gateway's callers wait this long for a free connection
SENTINEL_TIMEOUT_S = 2.0  # one question to one sentinel (the next one is asked after it)

__all__ = ["GatehouseRedisSettings", "RedisConfigError", "RedisTarget", "arq_pool", "arq_settings", "async_client",
           "sync_client", "target"]


def target(s: RedisTLSSettings) -> RedisTarget:
    """The Redis the settings name (RedisConfigError when there is none or it cannot be used)."""
    if not s.redis_url:
        raise RedisConfigError("redis_url is not set (set REDIS_URL or run `gatehouse up`)")
    return redis_target(s.redis_url, s)


class _SentinelPool(SentinelConnectionPool):
    """redis-py's Sentinel pool, which also closes its own connections to the sentinels when it is closed."""

    async def disconnect(self, inuse_connections: bool = True) -> None:
        await super().disconnect(inuse_connections)
        if inuse_connections:  # a full close (the client's aclose), not the idle sweep after a master change
            for s in self.sentinel_manager.sentinels:
                await s.connection_pool.disconnect()


class _BlockingSentinelPool(_SentinelPool, BlockingConnectionPool):
    """The gateway's pool through Sentinel: waits for a free connection like its direct pool does."""


def async_client(t: RedisTarget, *, max_connections: int = 4096, socket_timeout: float | None,
                 socket_connect_timeout: float, pool_wait_s: float = POOL_WAIT_S) -> Redis:
    """A client over a BlockingConnectionPool of at most ``max_connections``; connecting is bounded by
    ``socket_connect_timeout``, and every reply by ``socket_timeout`` unless it is None."""
    if not t.is_sentinel:
        tls = t.tls.connection_kwargs() if t.tls else {}
        pool = BlockingConnectionPool.from_url(t.url, max_connections=max_connections, timeout=pool_wait_s,
                                               socket_timeout=socket_timeout,
                                               socket_connect_timeout=socket_connect_timeout, **tls)
        return Redis(connection_pool=pool)
    sentinel = Sentinel(  # type: ignore[no-untyped-call]
        t.sentinels, sentinel_kwargs=_sentinel_kwargs(t, socket_connect_timeout), **_master_kwargs(t),
        socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout)
    client: Redis = sentinel.master_for(t.service_name, redis_class=Redis,
                                        connection_pool_class=_BlockingSentinelPool,
                                        max_connections=max_connections, timeout=pool_wait_s)
    return client


@contextmanager
def sync_client(t: RedisTarget, *, socket_timeout: float,
                socket_connect_timeout: float | None = None) -> Iterator[redis.Redis]:
    """A blocking client for the CLI, closed (with any connections to sentinels) when the block ends."""
    if not t.is_sentinel:
        tls = t.tls.connection_kwargs() if t.tls else {}
        client = redis.Redis.from_url(t.url, socket_timeout=socket_timeout,
                                      socket_connect_timeout=socket_connect_timeout, **tls)
        try:
            yield client
        finally:
            client.close()
        return
    sentinel = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        t.sentinels, sentinel_kwargs=_sentinel_kwargs(t, socket_connect_timeout or SENTINEL_TIMEOUT_S),
        **_master_kwargs(t), socket_timeout=socket_timeout, socket_connect_timeout=socket_connect_timeout)
    master: redis.Redis = sentinel.master_for(t.service_name)  # type: ignore[no-untyped-call]
    try:
        yield master
    finally:
        master.close()
        for s in sentinel.sentinels:
            s.close()


@dataclass
class GatehouseRedisSettings(RedisSettings):
    """arq's RedisSettings with what its Sentinel support lacks: the sentinels' own credentials, and the
    TLS options for the sentinels and the master (arq passes neither; :func:`arq_pool` does)."""

    sentinel_username: str | None = None
    sentinel_password: str | None = None


def arq_settings(t: RedisTarget, *, max_connections: int | None = None) -> GatehouseRedisSettings:
    """The worker's RedisSettings: host, port, database and credentials as the gateway reads them (percent-
    decoded, which arq's ``from_dsn`` does not do), with the TLS options, or the sentinels and the master's
    service name."""
    tls = t.tls
    common: dict[str, Any] = {"max_connections": max_connections, "ssl": tls is not None}
    if tls is not None:
        common.update(ssl_ca_certs=tls.ca_file, ssl_certfile=tls.cert_file, ssl_keyfile=tls.key_file,
                      ssl_cert_reqs=tls.cert_reqs, ssl_check_hostname=tls.check_hostname)
    if t.is_sentinel:
        return GatehouseRedisSettings(host=list(t.sentinels), sentinel=True, sentinel_master=t.service_name,
                                      database=t.db, username=t.username, password=t.password,
                                      sentinel_username=t.sentinel_username,
                                      sentinel_password=t.sentinel_password, **common)
    kw: dict[str, Any] = dict(parse_url(t.url))
    return GatehouseRedisSettings(host=kw.get("host", "localhost"), port=kw.get("port", 6379),
                                  unix_socket_path=kw.get("path"), database=t.db, username=t.username,
                                  password=t.password, **common)


async def arq_pool(settings: RedisSettings | None, *, job_serializer: Serializer | None = None,
                   job_deserializer: Deserializer | None = None, default_queue_name: str,
                   expires_extra_ms: int) -> ArqRedis:
    """arq's pool for ``settings``: arq's ``create_pool`` for a direct connection; through Sentinel, built
    here (with the TLS options and the sentinels' credentials arq does not pass), retried as arq does. None:
    arq's defaults (localhost), as ``create_pool`` takes them."""
    if settings is None or not settings.sentinel:
        pool: ArqRedis = await create_pool(settings, job_serializer=job_serializer,
                                           job_deserializer=job_deserializer, default_queue_name=default_queue_name,
                                           expires_extra_ms=expires_extra_ms)
        return pool
    t = _target_of(settings)
    retry = 0
    while True:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            t.sentinels, sentinel_kwargs=_sentinel_kwargs(t, max(float(settings.conn_timeout), 0.1)),
            **_master_kwargs(t), socket_connect_timeout=settings.conn_timeout)
        pool = sentinel.master_for(t.service_name, redis_class=ArqRedis,
                                   connection_pool_class=_SentinelPool, max_connections=settings.max_connections)
        pool.job_serializer = job_serializer
        pool.job_deserializer = job_deserializer
        pool.default_queue_name = default_queue_name
        pool.expires_extra_ms = expires_extra_ms
        try:
            await pool.ping()
        except (TimeoutError, ConnectionError, OSError, RedisError) as e:
            await pool.aclose()
            if retry >= settings.conn_retries:
                raise
            log.warning("Redis (%s) is not reachable: %s %s; %d retries remaining", t.describe(),
                        type(e).__name__, e, settings.conn_retries - retry)
            await asyncio.sleep(settings.conn_retry_delay)
            retry += 1
        else:
            if retry:
                log.info("Redis (%s) reachable", t.describe())
            return pool


# ── internals ─────────────────────────────────────────────────────────────────────────────────────────
def _master_kwargs(t: RedisTarget) -> dict[str, Any]:
    """The master's connection options through Sentinel (database, credentials, TLS)."""
    kw: dict[str, Any] = {"db": t.db, "username": t.username, "password": t.password}
    if t.tls is not None:
        kw.update(ssl=True, **t.tls.connection_kwargs())
    return kw


def _sentinel_kwargs(t: RedisTarget, timeout_s: float) -> dict[str, Any]:
    """The sentinels' connection options: their own credentials, the same TLS, every question bounded."""
    kw: dict[str, Any] = {"username": t.sentinel_username, "password": t.sentinel_password,
                          "socket_timeout": timeout_s, "socket_connect_timeout": timeout_s}
    if t.tls is not None:
        kw.update(ssl=True, **t.tls.connection_kwargs())
    return kw


def _target_of(settings: RedisSettings) -> RedisTarget:
    """A Sentinel RedisTarget back from arq's settings (TLS options and sentinel credentials included)."""
    if isinstance(settings.host, str):
        raise RedisConfigError("arq's settings: with sentinel=True, host must list the sentinels' (host, port)")
    tls = None
    if settings.ssl:
        tls = RedisTLS(ca_file=settings.ssl_ca_certs, cert_file=settings.ssl_certfile,
                       key_file=settings.ssl_keyfile, cert_reqs=settings.ssl_cert_reqs,
                       check_hostname=settings.ssl_check_hostname)
    return RedisTarget(url="", tls=tls, db=settings.database, username=settings.username,
                       password=settings.password, sentinels=tuple((h, int(p)) for h, p in settings.host),
                       service_name=settings.sentinel_master,
                       sentinel_username=getattr(settings, "sentinel_username", None),
                       sentinel_password=getattr(settings, "sentinel_password", None))
