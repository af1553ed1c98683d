"""The usage counters in Redis that limits are checked against, shared by the gateway's limiter
(gateway/limits.py, per request) and the batch runner (workers/batches/quota.py, per batch line).

A scope is one budget holder (a key, a JWT identity, a team). Per scope: request and token counters per minute
window (sliding: the previous window weighted by its overlap, plus the current one), and a spend counter per
budget period. A spend counter that is missing has not been loaded from PostgreSQL's spend log yet: it is
never created by charging (that would start it at zero and hide what was spent before), only by the loader.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import Any, cast

from redis.asyncio import Redis

from core.database import Database

WINDOW_MS = 60_000
PREFIX = "gatehouse:rl:"
SPEND_PREFIX = "gatehouse:spend:"


@dataclass(frozen=True, slots=True)
class Scope:
    """One budget holder: ``kind`` is "key", "jwt" or "team"."""

    kind: str
    id: str
    rpm: int | None = None
    tpm: int | None = None
    parallel: int | None = None
    budget: float | None = None
    budget_period_s: int | None = None  # None: the budget never resets

    @property
    def limited(self) -> bool:
        return any(v is not None for v in (self.rpm, self.tpm, self.parallel, self.budget))

    def base(self) -> str:
        return f"{PREFIX}{self.kind}:{self.id}:"

    def tpm_keys(self, now: float) -> tuple[str, str]:
        """This minute's and the previous minute's token counters."""
        win = int(now * 1000) // WINDOW_MS
        return f"{self.base()}t:{win}", f"{self.base()}t:{win - 1}"

    def spend_key(self, now: float) -> str:
        period = f":{int(now // self.budget_period_s)}" if self.budget_period_s else ""
        return f"{SPEND_PREFIX}{self.kind}:{self.id}{period}"

    def spend_ttl_s(self) -> int | None:
        return self.budget_period_s + 3600 if self.budget_period_s else None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Scope:
        return cls(str(d["kind"]), str(d["id"]), d.get("rpm"), d.get("tpm"), d.get("parallel"), d.get("budget"),
                   d.get("budget_period_s"))


# KEYS per scope (2): this minute's token counter, the spend counter. ARGV: tokens, cost, window (ms), then per
# scope (2): charge tokens (0/1), charge spend (0/1). A missing spend counter is left missing (see above).
CHARGE_LUA = """
for s = 0, #KEYS / 2 - 1 do
  if tonumber(ARGV[4 + s * 2]) == 1 and tonumber(ARGV[1]) > 0 then
    redis.call('INCRBY', KEYS[s * 2 + 1], ARGV[1])
    redis.call('PEXPIRE', KEYS[s * 2 + 1], tonumber(ARGV[3]) * 2)
  end
  if tonumber(ARGV[5 + s * 2]) == 1 and tonumber(ARGV[2]) > 0 and redis.call('EXISTS', KEYS[s * 2 + 2]) == 1 then
    redis.call('INCRBYFLOAT', KEYS[s * 2 + 2], ARGV[2])
  end
end
"""


async def charge(redis: Redis, scopes: tuple[Scope, ...] | list[Scope], tokens: int, cost: float,
                 now: float | None = None) -> None:
    """Count ``tokens`` against each scope's TPM window and ``cost`` against its budget (one call)."""
    now = time.time() if now is None else now
    keys: list[str] = []
    args: list[Any] = [tokens, repr(float(cost)), WINDOW_MS]
    for sc in scopes:
        keys += [sc.tpm_keys(now)[0], sc.spend_key(now)]
        args += [int(sc.tpm is not None), int(sc.budget is not None)]
    if keys and (tokens > 0 or cost > 0):
        await cast("Awaitable[Any]", redis.eval(CHARGE_LUA, len(keys), *keys, *args))


async def spent_in_period(db: Database, scope: Scope, now: float) -> float:
    """What PostgreSQL's spend log holds for the scope's current budget period: a spend counter's start."""
    if scope.kind not in ("key", "team"):
        return 0.0
    start = datetime.fromtimestamp(now - now % scope.budget_period_s if scope.budget_period_s else 0, tz=UTC)
    column = "key_id" if scope.kind == "key" else "team_id"
    value = await db.fetchval(
        f"SELECT COALESCE(sum(cost), 0) FROM spend_log WHERE {column} = $1 AND created_at >= $2", scope.id, start)
    return float(value)


async def load_spend(redis: Redis, db: Database, scope: Scope, now: float) -> float:
    """Start the scope's spend counter from the spend log, unless another process just did; its value."""
    spent = await spent_in_period(db, scope, now)
    await redis.set(scope.spend_key(now), repr(spent), nx=True, ex=scope.spend_ttl_s())
    value = await redis.get(scope.spend_key(now))
    return float(value) if value is not None else spent


async def headroom(redis: Redis, scopes: tuple[Scope, ...] | list[Scope], now: float | None = None,
                   db: Database | None = None) -> tuple[Scope, str] | None:
    """The first scope with no room left and what ran out ("budget" or "tpm"), else None. A spend counter
    not in Redis yet is loaded from ``db``; without one it counts as room."""
    now = time.time() if now is None else now
    checked = [sc for sc in scopes if sc.tpm is not None or sc.budget is not None]
    if not checked:
        return None
    async with redis.pipeline(transaction=False) as pipe:
        for sc in checked:
            pipe.mget(*sc.tpm_keys(now), sc.spend_key(now))
        replies = await pipe.execute()
    weight = 1 - (now * 1000 % WINDOW_MS) / WINDOW_MS
    for sc, (current, previous, spent) in zip(checked, replies, strict=True):
        if sc.budget is not None and spent is None and db is not None:
            spent = await load_spend(redis, db, sc, now)
        if sc.budget is not None and spent is not None and float(spent) >= sc.budget:
            return sc, "budget"
        if sc.tpm is not None and float(previous or 0) * weight + float(current or 0) >= sc.tpm:
            return sc, "tpm"
    return None
