"""Virtual keys, shared by the gateway (which authenticates with them) and the workers (which mint short-lived
keys for benchmark runs): the key format (``tokens``), the PostgreSQL table (``store``) and the contract of the
gateways' key cache, so that whoever changes a key can make every gateway forget it at once."""

from __future__ import annotations

from redis.asyncio import Redis

CACHE_PREFIX = "gatehouse:vkey:"  # Redis copy of a key's record, per key id (gateway/keys/cache.py)
INVALIDATE_CHANNEL = "gatehouse:vkey:invalidate"  # pub/sub: key ids every gateway drops from its local cache


async def forget(redis: Redis, *key_ids: str) -> None:
    """After a key changed in PostgreSQL (revoked, updated): drop its Redis copy and tell every gateway."""
    if not key_ids:
        return
    async with redis.pipeline(transaction=False) as pipe:
        pipe.delete(*(CACHE_PREFIX + k for k in key_ids))
        for k in key_ids:
            pipe.publish(INVALIDATE_CHANNEL, k)
        await pipe.execute()
