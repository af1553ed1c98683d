"""Key lookups for the hot path: process-local cache → Redis → PostgreSQL.

- The local tier answers almost every request in microseconds. Entries live at most ``LOCAL_TTL_S`` (1 s),
  which bounds how long a revoked key keeps working on any replica even if a notification is lost.
- Revocations and updates also ``PUBLISH`` the key id on ``INVALIDATE_CHANNEL``; every gateway drops its
  local entry at once, so in practice a revocation takes effect within one Redis round trip.
- Redis holds the record (JSON, with the secret's hash) for ``REDIS_TTL_S`` so a cold replica or an expired
  local entry does not hit PostgreSQL; unknown ids are cached as misses too, so random keys cannot hammer
  the database.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time

import asyncpg
import orjson
from redis.asyncio import Redis

from gateway.errors import ServiceUnavailable
from gateway.keys.store import KeyRecord, KeyStore

log = logging.getLogger("gatehouse.keys")
LOCAL_TTL_S = 1.0
LOCAL_MAX = 100_000
REDIS_TTL_S = 60
REDIS_PREFIX = "gatehouse:vkey:"
INVALIDATE_CHANNEL = "gatehouse:vkey:invalidate"
_MISS = b"-"
DB_DOWN = "The key database is not reachable; try again shortly."

Entry = tuple[KeyRecord, bytes] | None


class KeyCache:
    def __init__(self, store: KeyStore | None, redis: Redis):
        self.store = store
        self.redis = redis
        self._local: dict[str, tuple[float, Entry]] = {}
        self._listener: asyncio.Task[None] | None = None

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
        cached, entry = await self._from_redis(key_id)
        if not cached:
            entry = await self._from_db(key_id)
        if len(self._local) >= LOCAL_MAX:
            self._local.clear()
        self._local[key_id] = (now, entry)
        return entry

    async def _from_redis(self, key_id: str) -> tuple[bool, Entry]:
        """(whether Redis knew the id, the entry — None for a cached miss)."""
        raw = await self.redis.get(REDIS_PREFIX + key_id)
        if raw is None:
            return False, None
        if raw == _MISS:
            return True, None
        d = orjson.loads(raw)
        return True, (KeyRecord.from_json(d["record"]), base64.b64decode(d["hash"]))

    async def _from_db(self, key_id: str) -> Entry:
        if self.store is None:
            raise ServiceUnavailable(DB_DOWN, code="database_unavailable")
        try:
            found = await self.store.get(key_id)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as e:
            raise ServiceUnavailable(DB_DOWN, code="database_unavailable") from e
        if found is None:
            await self.redis.set(REDIS_PREFIX + key_id, _MISS, ex=REDIS_TTL_S)
            return None
        record, secret_hash = found
        await self.redis.set(REDIS_PREFIX + key_id, orjson.dumps(
            {"record": record.to_json(), "hash": base64.b64encode(secret_hash).decode()}), ex=REDIS_TTL_S)
        return found

    async def invalidate(self, *key_ids: str) -> None:
        """After a change in PostgreSQL: forget the keys here, in Redis, and on every other replica."""
        if not key_ids:
            return
        for k in key_ids:
            self._local.pop(k, None)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.delete(*(REDIS_PREFIX + k for k in key_ids))
            for k in key_ids:
                pipe.publish(INVALIDATE_CHANNEL, k)
            await pipe.execute()

    async def _listen(self) -> None:
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(INVALIDATE_CHANNEL)
                async for msg in pubsub.listen():
                    data = msg["data"]
                    self._local.pop(data.decode() if isinstance(data, bytes) else str(data), None)
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the 1 s local TTL still bounds staleness meanwhile
                log.warning("key invalidation listener reconnecting after %s", type(e).__name__)
                self._local.clear()
                await asyncio.sleep(0.5)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py 5 leaves PubSub.aclose unannotated
