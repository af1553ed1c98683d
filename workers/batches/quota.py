"""A batch's lines count against the limits of the key (and team) that created it, as its interactive calls do:
each line's tokens go into their TPM windows and its cost into their budgets (core.usage, the counters the
gateway checks every request against). A batch whose budget is spent stops: its lines not yet running fail
with ``insufficient_quota``. A batch over its TPM limit waits (it is fed again when the window has room).
"""

from __future__ import annotations

from redis.asyncio import Redis

from core import usage
from core.batchstore import BatchRecord, Landed
from core.database import Database

OUT_OF_BUDGET = "insufficient_quota"


class Quota:
    def __init__(self, redis: Redis, db: Database):
        self.redis, self.db = redis, db
        self._scopes: dict[str, tuple[usage.Scope, ...]] = {}

    def scopes(self, batch: BatchRecord) -> tuple[usage.Scope, ...]:
        known = self._scopes.get(batch.id)
        if known is None:
            known = self._scopes[batch.id] = tuple(usage.Scope.from_dict(d) for d in batch.scopes or ())
        return known

    async def charge(self, batch: BatchRecord, landed: Landed) -> None:
        await usage.charge(self.redis, self.scopes(batch), landed.tokens, landed.cost)

    async def blocked(self, batch: BatchRecord) -> str | None:
        """None when the batch may be fed; else what ran out: "budget" or "tpm"."""
        scopes = self.scopes(batch)
        if not scopes:
            return None
        found = await usage.headroom(self.redis, scopes, db=self.db)
        return found[1] if found is not None else None

    @staticmethod
    def message(batch: BatchRecord) -> str:
        return ("The budget of the key that created this batch is spent; this request was not run. Raise the "
                "budget or wait for its next period, then submit the remaining lines again.")

    def forget(self, batch_id: str) -> None:
        self._scopes.pop(batch_id, None)
