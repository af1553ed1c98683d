"""Virtual keys, shared by the gateway (which authenticates with them) and the workers (which mint short-lived
keys for benchmark runs): the key format (``tokens``), the PostgreSQL table (``store``) and the contract of the
gateways' key cache, so that whoever changes a key can make every gateway forget it at once."""

from __future__ import annotations

import secrets

from redis.asyncio import Redis

CACHE_PREFIX = "gatehouse:vkey:"  # Redis copy of a key's record, per key id (gateway/keys/cache.py)
INVALIDATE_CHANNEL = "gatehouse:vkey:invalidate"  # pub/sub: key ids every gateway drops from its local cache
# per key id: a new random token at every change. A gateway reads it with the copy and writes a copy it read from
# PostgreSQL only if the token is still the same: a copy read before a change never lands in Redis after it.
VERSION_PREFIX = "gatehouse:vkey-version:"
VERSION_TTL_S = 86_400  # far beyond any lookup (PostgreSQL calls are bounded to seconds)


def version_key(key_id: str) -> str:
    return VERSION_PREFIX + key_id


async def forget(redis: Redis, *key_ids: str) -> None:
    """After a key changed in PostgreSQL (revoked, updated): a new version, its Redis copy dropped, every gateway
    told (in this order, one round trip)."""
    if not key_ids:
        return
    async with redis.pipeline(transaction=False) as pipe:
        for k in key_ids:
            pipe.set(version_key(k), secrets.token_hex(8), ex=VERSION_TTL_S)
        pipe.delete(*(CACHE_PREFIX + k for k in key_ids))
        for k in key_ids:
            pipe.publish(INVALIDATE_CHANNEL, k)
        await pipe.execute()
