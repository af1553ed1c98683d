"""Key lookups for the hot path: process-local cache → Redis → PostgreSQL.

- The local tier answers almost every request in microseconds. Entries live at most ``LOCAL_TTL_S`` (1 s),
  which bounds how long a revoked key keeps working on any replica even if a notification is lost.
- Revocations and updates also ``PUBLISH`` the key id on ``INVALIDATE_CHANNEL``; every gateway drops its
  local entry at once, so in practice a revocation takes effect within one Redis round trip. A lookup that
  overlapped such a message does not keep what it read (it may predate the change) as its local entry.
- Redis holds the record (JSON, with the secret's hash) so a cold replica or an expired local entry does not
  hit PostgreSQL: fresh for ``REDIS_TTL_S``, then kept as a stale copy until ``STALE_TTL_S``. Unknown ids are
  cached as misses too (``REDIS_TTL_S``), so random keys cannot hammer the database. A copy read from
  PostgreSQL is written only if the key's version (``core.keys.version_key``, renewed by every change) is the
  one read before PostgreSQL was: a copy that predates a revocation never lands in Redis after it, where every
  replica would take it as fresh for ``REDIS_TTL_S``.
- PostgreSQL down or paused: a key seen before keeps working from its stale copy (Redis's, or this process's
  last entry). Only PostgreSQL can revoke or change a key, and every change deletes the copies, so a stale
  copy is what PostgreSQL would say. An id with no copy gets 503 ``database_unavailable``: it cannot be told
  apart from a wrong one.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time

import orjson
from redis.asyncio import Redis

from core.keys import CACHE_PREFIX, INVALIDATE_CHANNEL, forget, version_key
from core.keys.store import KeyRecord, KeyStore
from gateway.db.database import DatabaseUnavailable

log = logging.getLogger("gatehouse.keys")
LOCAL_TTL_S = 1.0
LOCAL_MAX = 100_000
REDIS_TTL_S = 60
STALE_TTL_S = 86_400
REDIS_PREFIX = CACHE_PREFIX
_MISS = b"-"

Entry = tuple[KeyRecord, bytes] | None
# KEYS: the copy, the key's version; ARGV: the version read before PostgreSQL was ("" for none), the copy, its TTL
WRITE_LUA = """
if (redis.call('GET', KEYS[2]) or '') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


class KeyCache:
    def __init__(self, store: KeyStore | None, redis: Redis, listen_redis: Redis | None = None):
        self.store = store
        self.redis = redis  # bounded command timeouts: lookups never hang on a stalled Redis
        self.listen_redis = listen_redis or redis  # the invalidation subscription blocks: no read timeout there
        self._local: dict[str, tuple[float, Entry]] = {}
        self._changes = 0  # invalidations seen by this process: a lookup that overlapped one keeps nothing locally
        self._listener: asyncio.Task[None] | None = None
        self._write = redis.register_script(WRITE_LUA)

    def start(self) -> None:
        self._listener = asyncio.get_running_loop().create_task(self._listen())

    async def aclose(self) -> None:
        if self._listener is not None:
            self._listener.cancel()

    async def lookup(self, key_id: str) -> Entry:
        now = time.monotonic()
        hit = self._local.get(key_id)
        if hit is not None and now - hit[0] < LOCAL_TTL_S:
            return hit[1]
        changes = self._changes
        fresh, entry, version = await self._from_redis(key_id)
        if not fresh:
            try:
                entry = await self._from_db(key_id, version)
            except DatabaseUnavailable:
                entry = entry or (hit[1] if hit is not None else None)
                if entry is None:
                    raise
                log.debug("key %s authenticated from its cached copy: the key database is not reachable", key_id)
        if self._changes != changes:  # a key changed meanwhile (maybe this one): what was read may predate it
            self._local.pop(key_id, None)
            return entry
        if len(self._local) >= LOCAL_MAX:
            self._local.clear()
        self._local[key_id] = (now, entry)
        return entry

    async def _from_redis(self, key_id: str) -> tuple[bool, Entry, bytes]:
        """(whether the copy is fresh, the entry — None for a cached miss or no copy, the key's version)."""
        raw, version = await self.redis.mget(REDIS_PREFIX + key_id, version_key(key_id))
        version = version or b""
        if raw is None:
            return False, None, version
        if raw == _MISS:
            return True, None, version
        d = orjson.loads(raw)
        entry = (KeyRecord.from_json(d["record"]), base64.b64decode(d["hash"]))
        return time.time() - d.get("at", time.time()) < REDIS_TTL_S, entry, version

    async def _from_db(self, key_id: str, version: bytes) -> Entry:
        """PostgreSQL's answer, copied to Redis unless the key changed since ``version`` was read."""
        if self.store is None:
            raise DatabaseUnavailable()
        found = await self.store.get(key_id)
        if found is None:
            copy, ttl = _MISS, REDIS_TTL_S
        else:
            record, secret_hash = found
            copy, ttl = orjson.dumps({"record": record.to_json(), "hash": base64.b64encode(secret_hash).decode(),
                                      "at": time.time()}), STALE_TTL_S
        await self._write(keys=[REDIS_PREFIX + key_id, version_key(key_id)], args=[version, copy, ttl])
        return found

    async def invalidate(self, *key_ids: str) -> None:
        """After a change in PostgreSQL: forget the keys here, in Redis, and on every other replica."""
        if not key_ids:
            return
        self._changes += 1
        for k in key_ids:
            self._local.pop(k, None)
        await forget(self.redis, *key_ids)

    async def _listen(self) -> None:
        while True:
            pubsub = self.listen_redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(INVALIDATE_CHANNEL)
                async for msg in pubsub.listen():
                    data = msg["data"]
                    self._changes += 1
                    self._local.pop(data.decode() if isinstance(data, bytes) else str(data), None)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the 1 s local TTL still bounds staleness meanwhile
                log.warning("key invalidation listener reconnecting after %s", type(e).__name__)
                self._changes += 1
                self._local.clear()
                await asyncio.sleep(0.5)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py 5 leaves PubSub.aclose unannotated
