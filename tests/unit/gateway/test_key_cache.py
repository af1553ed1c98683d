"""gateway.keys.cache against a real Valkey, with PostgreSQL replaced by a store whose answers the test holds back:
a lookup that overlaps a revocation must not leave its pre-revocation copy behind, neither in Redis (every
replica would then accept the key until the copy's freshness ran out, a minute) nor in the process's own tier.
Key ids are random, so nothing here meets a running gateway's keys."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis

import gateway.keys.cache as cache_module
from core.keys import INVALIDATE_CHANNEL, forget
from core.keys.store import KeyRecord
from gateway.keys.cache import KeyCache

HASH = b"\x01" * 32


@pytest.fixture
async def r(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


class FakeStore:
    """PostgreSQL's virtual_keys: ``get`` reads the row when called and, while ``gate`` is closed, answers later."""

    def __init__(self, record: KeyRecord):
        self.record = record
        self.calls = 0
        self.gate = asyncio.Event()
        self.gate.set()

    async def get(self, key_id: str) -> tuple[KeyRecord, bytes] | None:
        self.calls += 1
        found = (self.record, HASH) if self.record.key_id == key_id else None
        await self.gate.wait()
        return found

    def revoke(self) -> None:
        self.record = replace(self.record, revoked_at=datetime.now(UTC))


class GatedRedis:
    """A Redis client whose reads of key copies (GET/MGET) complete, then wait for ``gate`` before returning."""

    def __init__(self, inner: aioredis.Redis):
        self.inner = inner
        self.gate = asyncio.Event()
        self.gate.set()
        self.reads = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def get(self, *args: Any) -> Any:
        out = await self.inner.get(*args)
        self.reads += 1
        await self.gate.wait()
        return out

    async def mget(self, *args: Any) -> Any:
        out = await self.inner.mget(*args)
        self.reads += 1
        await self.gate.wait()
        return out


async def eventually(condition: Any, within: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + within
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.005)


def new_key() -> KeyRecord:
    return KeyRecord(key_id="ak-" + secrets.token_hex(8))


async def test_lookups_are_cached_and_a_change_is_seen_at_once(r: aioredis.Redis) -> None:
    """The ordinary path: a second lookup is the process's own; a third process finds the Redis copy; after a
    change (forget), the next lookup reads PostgreSQL again and writes the new copy for the others."""
    store = FakeStore(new_key())
    key_id = store.record.key_id
    a, b, c = KeyCache(store, r), KeyCache(store, r), KeyCache(store, r)  # type: ignore[arg-type]
    assert (await a.lookup(key_id)) == (store.record, HASH)
    await a.lookup(key_id)
    await b.lookup(key_id)
    assert store.calls == 1
    store.revoke()
    await a.invalidate(key_id)
    found = await a.lookup(key_id)
    assert found is not None and found[0].revoked_at is not None and store.calls == 2
    found = await c.lookup(key_id)  # from the copy a wrote after the change
    assert found is not None and found[0].revoked_at is not None and store.calls == 2


async def test_a_copy_read_before_a_revocation_is_not_written_to_redis_after_it(r: aioredis.Redis) -> None:
    """Replica B reads the key from PostgreSQL; A revokes it (PostgreSQL, then forget) before B writes the Redis
    copy. B's copy predates the revocation: it must not land in Redis, where C (and B, once its own entry is
    older than a second) would take it as fresh."""
    store = FakeStore(new_key())
    key_id = store.record.key_id
    b, c = KeyCache(store, r), KeyCache(store, r)  # type: ignore[arg-type]
    store.gate.clear()
    lookup = asyncio.create_task(b.lookup(key_id))
    await eventually(lambda: store.calls == 1)
    store.revoke()
    await forget(r, key_id)
    store.gate.set()
    before = await lookup  # B's own request started before the revocation: it may pass
    assert before is not None and before[0].revoked_at is None
    found = await c.lookup(key_id)
    assert found is not None and found[0].revoked_at is not None, "a replica accepts the key after its revocation"


async def test_a_lookup_overlapping_an_invalidation_is_not_cached_locally(r: aioredis.Redis,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """B's entry is due for a refresh; B reads the (not yet revoked) Redis copy, and before the read returns, A
    revokes the key and B's listener gets the message. What B read must not become its local entry for the next
    second."""
    store = FakeStore(new_key())
    key_id = store.record.key_id
    gated = GatedRedis(r)
    b = KeyCache(store, gated, listen_redis=r)  # type: ignore[arg-type]
    subscribers = (await r.pubsub_numsub(INVALIDATE_CHANNEL))[0][1]
    b.start()
    try:
        deadline = asyncio.get_running_loop().time() + 5
        while (await r.pubsub_numsub(INVALIDATE_CHANNEL))[0][1] <= subscribers:
            assert asyncio.get_running_loop().time() < deadline, "the listener did not subscribe"
            await asyncio.sleep(0.01)
        await b.lookup(key_id)  # the Redis copy exists from here on
        monkeypatch.setattr(cache_module, "LOCAL_TTL_S", 0.0)  # B's entry is due for a refresh now
        gated.gate.clear()
        reads = gated.reads
        refresh = asyncio.create_task(b.lookup(key_id))
        await eventually(lambda: gated.reads > reads)  # B has read the copy: not revoked yet
        store.revoke()
        await forget(r, key_id)
        await eventually(lambda: key_id not in b._local)  # B's listener dropped its entry
        monkeypatch.setattr(cache_module, "LOCAL_TTL_S", 1.0)
        gated.gate.set()
        await refresh  # the request that started before the revocation: either answer is acceptable
        found = await b.lookup(key_id)
        assert found is not None and found[0].revoked_at is not None, "B keeps a pre-revocation entry"
    finally:
        await b.aclose()
