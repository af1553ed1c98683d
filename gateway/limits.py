"""Rate limits and budgets, enforced atomically in Redis so every gateway replica shares one budget.

Per scope (the key, and its team when the team has limits): requests per minute, tokens per minute, requests
in flight, and spend per budget period. One Lua call per request checks every scope and, only if all pass,
counts the request and registers it as in flight; after the response, ``settle`` adds the tokens and the
cost and releases the in-flight slot (one pipelined call, off the response path).

Windows are sliding-window counters (the previous minute's count, weighted by how much of it still overlaps,
plus the current minute's): exact for bursts inside a minute, within a few percent across boundaries, and two
small keys per scope instead of a log of every request. In-flight requests are a sorted set scored by expiry,
so a replica that dies mid-request cannot leak a slot for longer than the request timeout.

A principal without limits (the master key, an unlimited key) costs nothing here: no Redis call at all.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from redis.asyncio import Redis

from core.usage import PREFIX, WINDOW_MS, Scope, charge
from gateway.errors import RateLimited

__all__ = ["Admission", "Limiter", "Scope", "SpendLoader"]


# KEYS, per scope (6): rpm current, rpm previous, tpm current, tpm previous, in-flight zset, spend counter
# ARGV: now_ms, window_ms, request id, in-flight ttl_ms, then per scope (4): rpm, tpm, parallel, budget (-1 = none)
# Returns {0, 0, 0, remaining requests, remaining tokens} or {code, scope index, retry-after ms, remaining
# requests, remaining tokens} with code 1 rpm, 2 tpm, 3 parallel, 4 budget; 5 means a budget counter is missing
# (the caller loads it and retries). The remaining counts are the first scope's (the caller's own), as they
# would be after this request: the same x-ratelimit-* headers go on a 429 as on a 200.
LIMIT_LUA = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local weight = 1 - (now % window) / window
local scopes = #KEYS / 6
local remaining_r, remaining_t = -1, -1
local function used(current, previous)
  return tonumber(redis.call('GET', previous) or '0') * weight + tonumber(redis.call('GET', current) or '0')
end
if tonumber(ARGV[5]) >= 0 then remaining_r = math.max(0, math.floor(tonumber(ARGV[5]) - used(KEYS[1], KEYS[2]) - 1)) end
if tonumber(ARGV[6]) >= 0 then remaining_t = math.max(0, math.floor(tonumber(ARGV[6]) - used(KEYS[3], KEYS[4]))) end
for s = 0, scopes - 1 do
  local k, a = s * 6, 5 + s * 4
  local rpm, tpm, par, budget = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if rpm >= 0 and used(KEYS[k + 1], KEYS[k + 2]) + 1 > rpm then
    return {1, s, window - now % window, remaining_r, remaining_t}
  end
  if tpm >= 0 and used(KEYS[k + 3], KEYS[k + 4]) >= tpm then
    return {2, s, window - now % window, remaining_r, remaining_t}
  end
  if par >= 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[k + 5], '-inf', now)
    if redis.call('ZCARD', KEYS[k + 5]) >= par then return {3, s, 1000, remaining_r, remaining_t} end
  end
  if budget >= 0 then
    local spent = redis.call('GET', KEYS[k + 6])
    if not spent then return {5, s, 0, remaining_r, remaining_t} end
    if tonumber(spent) >= budget then return {4, s, 0, remaining_r, remaining_t} end
  end
end
for s = 0, scopes - 1 do
  local k, a = s * 6, 5 + s * 4
  if tonumber(ARGV[a]) >= 0 then
    redis.call('INCR', KEYS[k + 1])
    redis.call('PEXPIRE', KEYS[k + 1], window * 2)
  end
  if tonumber(ARGV[a + 2]) >= 0 then
    redis.call('ZADD', KEYS[k + 5], now + tonumber(ARGV[4]), ARGV[3])
    redis.call('PEXPIRE', KEYS[k + 5], tonumber(ARGV[4]) + window)
  end
end
return {0, 0, 0, remaining_r, remaining_t}
"""


@dataclass(frozen=True, slots=True)
class Admission:
    """A request let through: what to release afterwards, and the headers to send."""

    request_id: str
    scopes: tuple[Scope, ...]
    headers: dict[str, str]


def _reset(ms: float) -> str:
    """OpenAI's duration format for x-ratelimit-reset-*: "20ms", "1s", "6m0s"."""
    if ms < 1000:
        return f"{int(ms)}ms"
    s = math.ceil(ms / 1000)
    return f"{s // 60}m{s % 60}s" if s >= 60 else f"{s}s"


class Limiter:
    def __init__(self, redis: Redis, spend_loader: SpendLoader | None = None, inflight_ttl_s: float = 600):
        self.redis = redis
        self.spend_loader = spend_loader
        self.inflight_ttl_ms = int(inflight_ttl_s * 1000)
        self._script = redis.register_script(LIMIT_LUA)

    def _keys(self, scopes: tuple[Scope, ...], now: float) -> list[str]:
        win = int(now * 1000) // WINDOW_MS
        keys = []
        for sc in scopes:
            base = f"{PREFIX}{sc.kind}:{sc.id}:"
            keys += [f"{base}r:{win}", f"{base}r:{win - 1}", f"{base}t:{win}", f"{base}t:{win - 1}", f"{base}p",
                     sc.spend_key(now)]
        return keys

    async def admit(self, request_id: str, scopes: tuple[Scope, ...]) -> Admission | None:
        """Count the request against every scope, or raise RateLimited (429) naming the limit hit."""
        scopes = tuple(s for s in scopes if s.limited)
        if not scopes:
            return None
        for _ in range(2):
            now = time.time()
            args: list[int | float | str] = [int(now * 1000), WINDOW_MS, request_id, self.inflight_ttl_ms]
            for sc in scopes:
                args += [_or(sc.rpm), _or(sc.tpm), _or(sc.parallel), _or(sc.budget)]
            code, a, b, remaining_r, remaining_t = await self._script(keys=self._keys(scopes, now), args=args)
            if code == 5:  # a budget counter is not in Redis yet (new period, or Redis restarted)
                await self._load_spend(scopes[int(a)], now)
                continue
            headers = _headers(scopes[0], int(remaining_r), int(remaining_t), now)
            if code:
                err = _refusal(int(code), scopes[int(a)], float(b))
                err.headers = {**headers, **err.headers}
                raise err
            return Admission(request_id, scopes, headers)
        raise RateLimited("The spend counter could not be loaded; retry shortly.", headers={"retry-after": "1"})

    async def _load_spend(self, scope: Scope, now: float) -> None:
        spent = await self.spend_loader.spent(scope, now) if self.spend_loader is not None else 0.0
        await self.redis.set(scope.spend_key(now), repr(spent), nx=True, ex=scope.spend_ttl_s())

    async def settle(self, admission: Admission, tokens: int, cost: float) -> None:
        """After the response: tokens into the TPM windows, cost into the budgets, the in-flight slot freed."""
        await charge(self.redis, admission.scopes, tokens, cost)
        parallel = [sc for sc in admission.scopes if sc.parallel is not None]
        if parallel:
            async with self.redis.pipeline(transaction=False) as pipe:
                for sc in parallel:
                    pipe.zrem(f"{sc.base()}p", admission.request_id)
                await pipe.execute()


class SpendLoader:
    """Where a missing budget counter comes from (PostgreSQL's spend log); see gateway/spend.py."""

    async def spent(self, scope: Scope, now: float) -> float:  # pragma: no cover - interface
        raise NotImplementedError


def _or(v: float | None) -> float:
    return -1 if v is None else v


def _refusal(code: int, scope: Scope, retry_ms: float) -> RateLimited:
    who = f"this {scope.kind}" if scope.kind != "key" else "this API key"
    retry = str(max(1, math.ceil(retry_ms / 1000)))
    if code == 4:
        period = " for this period" if scope.budget_period_s else ""
        err = RateLimited(f"You exceeded your current quota{period}: {who} has spent its budget of "
                          f"${scope.budget:g}.", type_="insufficient_quota", code="insufficient_quota")
    else:
        what = {1: f"requests per minute (limit {scope.rpm})", 2: f"tokens per minute (limit {scope.tpm})",
                3: f"requests in flight (limit {scope.parallel})"}[code]
        err = RateLimited(f"Rate limit reached for {who}: {what}. Please try again in {retry}s.",
                          headers={"retry-after": retry}, code="rate_limit_exceeded")
    err.scope_kind, err.limit = scope.kind, ("rpm", "tpm", "parallel", "budget")[code - 1]
    return err


def _headers(scope: Scope, remaining_r: int, remaining_t: int, now: float) -> dict[str, str]:
    reset = _reset(WINDOW_MS - (now * 1000) % WINDOW_MS)
    h: dict[str, str] = {}
    if scope.rpm is not None:
        h.update({"x-ratelimit-limit-requests": str(scope.rpm),
                  "x-ratelimit-remaining-requests": str(max(0, remaining_r)), "x-ratelimit-reset-requests": reset})
    if scope.tpm is not None:
        h.update({"x-ratelimit-limit-tokens": str(scope.tpm),
                  "x-ratelimit-remaining-tokens": str(max(0, remaining_t)), "x-ratelimit-reset-tokens": reset})
    return h
