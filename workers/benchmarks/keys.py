"""The virtual keys a benchmark run's calls carry (docs/adr/0018-benchmark-runs.md): one per model of the run
(its models: that model and the judges the suite names), and one per agent task (that model alone, expiring
with the task). Their metadata ``{"bench_run", "bench_task"?, "lane": "batch"}`` puts the calls on the batch lane
and makes the worker write their timing records; their team is the submitter's, so spend lands where it would.

Every key minted is added to the Redis set ``gatehouse:bench:keys:<run>`` before it is used, so whoever finishes
the run — this runner, or the next one after a crash — revokes them all (``revoke_all``), and every gateway forgets
them at once (core.keys.forget)."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from redis.asyncio import Redis

from core.benchstore import BenchRecord
from core.database import Database
from core.keys import forget
from core.keys.store import KeyStore

KEYS_PREFIX = "gatehouse:bench:keys:"
RUN_KEY_TTL = timedelta(hours=24)
RENEW_AFTER_S = 12 * 3600.0  # a run longer than that gets fresh keys (the old ones expire on their own)
SET_TTL_S = 48 * 3600


def keys_set(run_id: str) -> str:
    return KEYS_PREFIX + run_id


@dataclass(frozen=True, slots=True)
class Minted:
    key_id: str
    bearer: str
    at: float  # time.monotonic() when minted


class RunKeys:
    def __init__(self, db: Database, redis: Redis, run: BenchRecord, judges: Iterable[str] = ()):
        self.store = KeyStore(db)
        self.redis = redis
        self.run = run
        self.judges = sorted(set(judges))
        self.per_model: dict[str, Minted] = {}
        self._minting: dict[str, asyncio.Lock] = {}

    async def for_model(self, model: str) -> str:
        """The bearer token of the run's key for ``model`` (minted on first use, once however many ask)."""
        have = self.per_model.get(model)
        if have is not None and time.monotonic() - have.at <= RENEW_AFTER_S:
            return have.bearer
        async with self._minting.setdefault(model, asyncio.Lock()):
            have = self.per_model.get(model)
            if have is None or time.monotonic() - have.at > RENEW_AFTER_S:
                have = await self._mint(
                    f"bench {self.run.id} {model}", models=[model, *(j for j in self.judges if j != model)],
                    metadata={"bench_run": self.run.id, "lane": "batch"}, expires_at=datetime.now(UTC) + RUN_KEY_TTL)
                self.per_model[model] = have
        return have.bearer

    async def for_task(self, model: str, task_id: str, timeout_s: float) -> Minted:
        """A key for one agent task on ``model``: revoke it (``revoke``) as soon as the task ends."""
        return await self._mint(
            f"bench {self.run.id} {model} {task_id[:100]}", models=[model],
            metadata={"bench_run": self.run.id, "bench_task": task_id, "lane": "batch"},
            expires_at=datetime.now(UTC) + timedelta(seconds=timeout_s + 60))

    async def _mint(self, alias: str, **fields: object) -> Minted:
        # aliases are unique among live keys: a resumed run (or a task run twice at once) mints more than one
        record, cred = await self.store.create(key_alias=f"{alias} {secrets.token_hex(3)}", team_id=self.run.team_id,
                                               **fields)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.sadd(keys_set(self.run.id), record.key_id)
            pipe.expire(keys_set(self.run.id), SET_TTL_S)
            await pipe.execute()
        return Minted(record.key_id, cred.bearer, time.monotonic())

    async def revoke(self, key_ids: list[str]) -> None:
        """Revoke these keys of the run now (every gateway forgets them) and drop them from its set."""
        await revoke_keys(self.store, self.redis, key_ids)
        await self.redis.srem(keys_set(self.run.id), *key_ids)  # type: ignore[misc]  # redis-py's union type


async def revoke_keys(store: KeyStore, redis: Redis, key_ids: list[str]) -> None:
    if key_ids:
        await store.revoke(key_ids)
        await forget(redis, *key_ids)


async def revoke_all(db: Database, redis: Redis, run_id: str) -> int:
    """Revoke every key minted for the run (by any runner) and forget the set; how many there were."""
    members = await redis.smembers(keys_set(run_id))  # type: ignore[misc]  # redis-py's union return type
    ids = sorted(m.decode() if isinstance(m, bytes) else str(m) for m in members)
    await revoke_keys(KeyStore(db), redis, ids)
    await redis.delete(keys_set(run_id))
    return len(ids)
