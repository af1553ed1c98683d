"""PostgreSQL for the gateway and the workers: every call bounded in time, every outage one
``DatabaseUnavailable`` (the gateway's subclass answers ``503 database_unavailable``: gateway/db/database.py).

A stopped server refuses connections at once; a *paused* one (SIGSTOP, a frozen VM, a saturated network) is
the hard case: TCP connects and queries are sent, but nothing ever answers. So each call runs as a task of
its own that the caller waits on for at most ``timeout_s``. asyncpg's own timeouts (connect, command, and the
pool's acquire and release) bound the task, which finishes in the background: it returns its connection to
the pool, or terminates it. After a failure the database counts as down for ``DOWN_FOR_S``: calls fail at
once instead of each waiting out the timeout, and the first call after that probes again.

    connection refused/reset, timeouts, closed connections, server shutting down or out of connections
        → DatabaseUnavailable (503, code database_unavailable, retry-after)
    anything else (a constraint violation, a bad query) → propagates unchanged

The pool is opened (and migrated) lazily when start-up could not reach the server; concurrent callers share
one attempt.

TLS: asyncpg reads libpq's ``sslmode``, ``sslrootcert``, ``sslcert``, ``sslkey`` and ``sslcrl`` from the DSN.
:func:`database_dsn` adds the ``database_ssl_root_cert`` setting to the URL as ``sslrootcert`` and checks both at
start-up (a missing file, an unknown sslmode, a CA that ``sslmode`` would ignore), so a bad one is named then.
A TLS failure at connect time (a server certificate the CA does not sign, a name it does not match) is still an
outage here — a rotated certificate can make it pass again — but its log line says what failed and which
settings to check, instead of a bare exception name.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import asyncpg

log = logging.getLogger("gatehouse.db")
T = TypeVar("T")
TIMEOUT_S = 2.0  # what a caller waits at most, and asyncpg's connect, command, acquire and release timeouts
DOWN_FOR_S = 2.0  # after a failure, calls fail at once for this long
RETRY_AFTER_S = 2
POOL_MIN, POOL_MAX = 0, 8  # no floor: asyncpg would keep reconnecting (and logging tracebacks) during an outage
Op = Callable[[asyncpg.Connection], Awaitable[T]]
Prepare = Callable[[asyncpg.Connection], Awaitable[None]]

# the ways a database can be unreachable (everything else is a real error and propagates)
UNAVAILABLE: tuple[type[BaseException], ...] = (
    OSError, TimeoutError, ConnectionError, asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
    asyncpg.exceptions.OperatorInterventionError,  # shutting down, starting up, query cancelled
    asyncpg.exceptions.InsufficientResourcesError,  # too many connections, disk full
)

# at start-up, also "not reachable yet": the role or the database is still being created
NOT_YET = (asyncpg.InvalidAuthorizationSpecificationError, asyncpg.InvalidCatalogNameError)


SSLMODES = ("disable", "allow", "prefer", "require", "verify-ca", "verify-full")
UNVERIFIED_SSLMODES = ("disable", "allow", "prefer")  # asyncpg checks no certificate in these
SSL_FILES = ("sslrootcert", "sslcert", "sslkey", "sslcrl")  # the DSN parameters that name files
TLS_SETTINGS_HINT = "check database_url's sslmode/sslrootcert and database_ssl_root_cert"


class DatabaseConfigError(ValueError):
    """``database_url`` or ``database_ssl_root_cert`` cannot be used; the message names it (never the URL,
    which may hold a password)."""


def database_dsn(url: str, ssl_root_cert: str | os.PathLike[str] | None = None) -> str:
    """The DSN asyncpg gets: ``url``, with ``ssl_root_cert`` (the ``database_ssl_root_cert`` setting) as its
    ``sslrootcert`` and, when the URL names no ``sslmode``, ``sslmode=verify-full`` (a CA is given to be
    checked against). Raises DatabaseConfigError naming the setting: an unknown scheme or sslmode, a file that
    is missing or unreadable, a CA that disagrees with the URL's or that its sslmode would not check."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as e:
        raise DatabaseConfigError(f"database_url: not a URL ({e})") from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise DatabaseConfigError(f"database_url: unsupported scheme {parts.scheme or 'none'!r}; use "
                                  "postgresql://user:password@host:5432/database")
    query = parse_qsl(parts.query, keep_blank_values=True)
    params = dict(query)
    sslmode = params.get("sslmode")
    if sslmode is not None and sslmode not in SSLMODES:
        raise DatabaseConfigError(f"database_url: sslmode must be one of {', '.join(SSLMODES)}, got {sslmode!r}")
    for name in SSL_FILES:
        if params.get(name):
            _readable_file(params[name], f"database_url's {name}")
    root = os.fspath(ssl_root_cert) if ssl_root_cert is not None else None
    if root is not None:
        _readable_file(root, "database_ssl_root_cert")
        if params.get("sslrootcert") and params["sslrootcert"] != root:
            raise DatabaseConfigError(f"database_ssl_root_cert ({root}) and database_url's sslrootcert "
                                      f"({params['sslrootcert']}) disagree; set one of them")
        if sslmode in UNVERIFIED_SSLMODES:
            raise DatabaseConfigError(f"database_ssl_root_cert is set but database_url's sslmode={sslmode} checks "
                                      "no certificate; use sslmode=verify-full (or verify-ca)")
    ca = root or params.get("sslrootcert")
    if ca:
        try:
            ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT).load_verify_locations(cafile=ca)
        except ssl.SSLError as e:
            where = "database_ssl_root_cert" if root else "database_url's sslrootcert"
            raise DatabaseConfigError(f"{where}: {ca} holds no PEM CA certificate ({e.reason or e})") from None
    if root is None or params.get("sslrootcert"):
        return url
    added = [("sslrootcert", root)] + ([] if sslmode else [("sslmode", "verify-full")])
    return urlunsplit(parts._replace(query=urlencode([*query, *added])))


def _readable_file(path: str, where: str) -> None:
    p = Path(path)
    if not p.is_file():
        raise DatabaseConfigError(f"{where}: no such file: {path}")
    if not os.access(p, os.R_OK):
        raise DatabaseConfigError(f"{where}: cannot read {path}")


def why_unavailable(e: BaseException) -> str:
    """A log line's reason for a failed connect: a TLS failure spelled out with the settings to check; else the
    exception's name (the outage's usual causes need no more)."""
    if isinstance(e, ssl.SSLCertVerificationError):
        return f"TLS: the server's certificate was refused ({e.verify_message}); {TLS_SETTINGS_HINT}"
    if isinstance(e, ssl.SSLError):
        return f"TLS failed ({e.reason or e}); {TLS_SETTINGS_HINT}"
    if isinstance(e, asyncpg.exceptions.ClientConfigurationError):
        return f"{e}; {TLS_SETTINGS_HINT}"
    if isinstance(e, ConnectionError) and "rejected SSL upgrade" in str(e):
        return f"the server does not speak TLS (it refused the SSL request); {TLS_SETTINGS_HINT}"
    return type(e).__name__


class DatabaseUnavailable(Exception):
    """The database did not answer (refused, reset, timed out, shutting down, out of connections)."""

    def __init__(self, message: str = "The database (PostgreSQL) is not reachable; try again shortly."):
        super().__init__(message)
        self.message = message


class Database:
    """An asyncpg pool behind bounded calls. ``url`` (opened lazily) or an open ``pool``; ``prepare`` runs once
    on the first connection (the gateway migrates there). A subclass may raise its own ``unavailable``."""

    unavailable: type[DatabaseUnavailable] = DatabaseUnavailable

    def __init__(self, url: str | None = None, *, pool: asyncpg.Pool | None = None, timeout_s: float = TIMEOUT_S,
                 down_for_s: float = DOWN_FOR_S, prepare: Prepare | None = None):
        if url is None and pool is None:
            raise ValueError("a Database needs a URL or a pool")
        self.url = url
        self.pool = pool
        self.timeout_s = timeout_s
        self.down_for_s = down_for_s
        self.prepare = prepare
        self._opening: asyncio.Future[asyncpg.Pool] | None = None
        self._down_until = 0.0
        self._failing = False  # the last call failed (logged once per outage)
        self._background: set[asyncio.Task[Any]] = set()

    @property
    def down(self) -> bool:
        """Whether a recent call failed (calls fail at once until ``DOWN_FOR_S`` has passed)."""
        return time.monotonic() < self._down_until

    async def open(self) -> bool:
        """Connect and migrate now (at start-up); False when the server is not reachable. A migration error
        propagates: the schema and the code disagree, and serving would fail later in worse ways."""
        try:
            await self._pool()
        except (*UNAVAILABLE, *NOT_YET) as e:
            log.warning("PostgreSQL is not reachable yet (%s); readiness will report it", why_unavailable(e))
            self._mark_down(e)
            return False
        return True

    # ── calls ─────────────────────────────────────────────────────────────────────────────────────────
    async def fetch(self, query: str, *args: Any) -> list[asyncpg.Record]:
        return await self.run(lambda conn: conn.fetch(query, *args, timeout=self.timeout_s))

    async def fetchrow(self, query: str, *args: Any) -> asyncpg.Record | None:
        return await self.run(lambda conn: conn.fetchrow(query, *args, timeout=self.timeout_s))

    async def fetchval(self, query: str, *args: Any) -> Any:
        return await self.run(lambda conn: conn.fetchval(query, *args, timeout=self.timeout_s))

    async def copy_records(self, table: str, records: Sequence[tuple[Any, ...]], columns: Sequence[str]) -> None:
        """COPY rows in. Waits for the outcome rather than abandoning it after ``timeout_s``: a caller that
        keeps rows for a retry must know whether they were written (asyncpg's timeouts still bound it)."""
        await self.run(lambda conn: conn.copy_records_to_table(table, records=records, columns=columns,
                                                               timeout=self.timeout_s), abandon=False)

    async def ping(self) -> bool:
        try:
            return bool(await self.fetchval("SELECT 1") == 1)
        except self.unavailable:
            return False

    async def run(self, op: Op[T], *, abandon: bool = True) -> T:
        """``op(connection)`` on a pooled connection; DatabaseUnavailable within ``timeout_s`` when the server
        does not answer (``abandon`` False: within asyncpg's own timeouts, up to about three times that)."""
        if self.down:
            raise self.unavailable()
        task = asyncio.ensure_future(self._on_connection(op))
        try:
            done, _ = await asyncio.wait({task}, timeout=self.timeout_s if abandon else None)
        finally:
            if not task.done():  # timed out, or the caller was cancelled: let it finish on its own
                self._background.add(task)
                task.add_done_callback(self._forget)
        if not done:
            self._mark_down()
            raise self.unavailable()
        try:
            result = task.result()
        except UNAVAILABLE as e:
            self._mark_down(e)
            raise self.unavailable() from e
        if self._failing:
            self._failing = False
            log.info("PostgreSQL is answering again")
        return result

    async def close(self) -> None:
        pool, self.pool = self.pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), self.timeout_s * 2)
        except UNAVAILABLE:  # TimeoutError among them
            pool.terminate()

    # ── internals ─────────────────────────────────────────────────────────────────────────────────────
    async def _on_connection(self, op: Op[T]) -> T:
        pool = await self._pool()
        # the acquire timeout also bounds the release (asyncpg reuses it), which waits for a cancelled query
        async with pool.acquire(timeout=self.timeout_s) as conn:
            return await op(conn)

    async def _pool(self) -> asyncpg.Pool:
        if self.pool is not None:
            return self.pool
        if self._opening is None:
            self._opening = asyncio.ensure_future(self._connect())
            self._opening.add_done_callback(self._opened)
        return await asyncio.shield(self._opening)

    async def _connect(self) -> asyncpg.Pool:
        pool = await asyncpg.create_pool(self.url, min_size=POOL_MIN, max_size=POOL_MAX, timeout=self.timeout_s,
                                         command_timeout=self.timeout_s)
        try:
            if self.prepare is not None:
                async with pool.acquire(timeout=self.timeout_s) as conn:
                    await self.prepare(conn)
        except BaseException:
            pool.terminate()
            raise
        return pool

    def _opened(self, fut: asyncio.Future[asyncpg.Pool]) -> None:
        self._opening = None
        if not fut.cancelled() and fut.exception() is None:
            self.pool = fut.result()
            log.info("PostgreSQL connected")

    def _forget(self, task: asyncio.Task[Any]) -> None:
        self._background.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.debug("an abandoned database call failed: %s", type(task.exception()).__name__)

    def _mark_down(self, e: BaseException | None = None) -> None:
        if not self._failing:
            log.warning("PostgreSQL is not answering%s; database calls answer 503 database_unavailable until it "
                        "does", f" ({why_unavailable(e)})" if e is not None else "")
        self._failing = True
        self._down_until = time.monotonic() + self.down_for_s
