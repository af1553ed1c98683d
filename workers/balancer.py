"""The pick that reads a model group's shared routing state in Redis, and the release that writes it (the key
layout: ``core.routestate``).

In-flight counts are leases, not counters: a worker that dies mid-job cannot leave a deployment looking busy
forever, its leases end at the job's deadline. One Lua call picks and acquires (no two replicas can both take a
deployment's last free slot); one more releases, counts the tokens and, past ``allowed_fails`` failures in a minute,
cools the deployment down. The release is not awaited by the job: it never delays an answer.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Sequence

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

from core.queue import JobSpec
from core.routestate import busy_key, cooldown_key, fails_key, rpm_key, tpm_key
from core.routing import Deployment, RouterSettings
from workers.backends import BackendError

log = logging.getLogger("gatehouse.worker")

FAIL_WINDOW_MS = 60_000
MINUTE_KEY_TTL_MS = 120_000
LEASE_MARGIN_S = 30.0  # a lease outlives its job's deadline by this much
WAIT_S = (0.05, 0.1)  # every deployment at its limits: pick again after a random delay in this range
STRATEGY_CODES = {"least-busy": 1, "simple-shuffle": 2, "usage-based-routing": 3, "usage-based-routing-v2": 3}
# pick outcomes (second value of the script's answer)
PICKED, PICKED_AGAIN, PICKED_COOLED, SATURATED, ALL_COOLED = 1, 2, 3, 0, -1

# KEYS: 4 per deployment: leases, requests this minute, tokens this minute, cooldown.
# ARGV: now ms, lease end ms, holder (job id and attempt), strategy code, random number in [0, 1), strict (1: never
# a cooled-down one), then 6 per deployment: max parallel, rpm, tpm (0: no limit), weight, order, excluded (1: this
# job tried it).
# A deployment at a limit is never picked; of the rest, fresh ones beat ones this job tried, which beat cooled-down
# ones; then the lowest order; then the strategy. Returns {index (1-based, 0: none), outcome}.
PICK_LUA = """
local now, strategy, rnd = tonumber(ARGV[1]), tonumber(ARGV[4]), tonumber(ARGV[5])
local strict = ARGV[6] == '1'
local n = #KEYS / 4
local rank, order, cands, score, any_cooled = 99, nil, {}, {}, false
for i = 1, n do
  local k, a = (i - 1) * 4, 6 + (i - 1) * 6
  redis.call('ZREMRANGEBYSCORE', KEYS[k + 1], '-inf', now)
  local busy = redis.call('ZCARD', KEYS[k + 1])
  local reqs = tonumber(redis.call('GET', KEYS[k + 2]) or '0')
  local toks = tonumber(redis.call('GET', KEYS[k + 3]) or '0')
  local maxp, rpm, tpm = tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2]), tonumber(ARGV[a + 3])
  if not ((maxp > 0 and busy >= maxp) or (rpm > 0 and reqs >= rpm) or (tpm > 0 and toks >= tpm)) then
    local r, o = 1, tonumber(ARGV[a + 5])
    if ARGV[a + 6] == '1' then r = 2 end
    if redis.call('EXISTS', KEYS[k + 4]) == 1 then r = 3; any_cooled = true end
    if not (strict and r == 3) then
      if r < rank or (r == rank and o < order) then
        rank, order, cands = r, o, {i}
      elseif r == rank and o == order then
        cands[#cands + 1] = i
      end
      if strategy == 3 then score[i] = toks + reqs / 1000000 else score[i] = busy / tonumber(ARGV[a + 4]) end
    end
  end
end
if #cands == 0 then
  if any_cooled then return {0, -1} end
  return {0, 0}
end
local pick = cands[#cands]
if strategy == 2 then
  local total = 0
  for _, i in ipairs(cands) do total = total + tonumber(ARGV[6 + (i - 1) * 6 + 4]) end
  local left = rnd * total
  for _, i in ipairs(cands) do
    left = left - tonumber(ARGV[6 + (i - 1) * 6 + 4])
    if left < 0 then pick = i; break end
  end
else
  local low, ties = nil, {}
  for _, i in ipairs(cands) do
    if low == nil or score[i] < low then low, ties = score[i], {i}
    elseif score[i] == low then ties[#ties + 1] = i end
  end
  pick = ties[math.floor(rnd * #ties) + 1]
end
local k = (pick - 1) * 4
redis.call('ZADD', KEYS[k + 1], ARGV[2], ARGV[3])
redis.call('PEXPIRE', KEYS[k + 1], tonumber(ARGV[2]) - now)
if redis.call('INCR', KEYS[k + 2]) == 1 then redis.call('PEXPIRE', KEYS[k + 2], 120000) end
return {pick, rank}
"""

# KEYS: leases, tokens this minute, failures, cooldown.
# ARGV: holder, tokens, failure (0: none, 1: counts, 2: cools down at once), allowed fails, cooldown ms, window ms.
# Returns 1 when this release cooled the deployment down.
RELEASE_LUA = """
redis.call('ZREM', KEYS[1], ARGV[1])
local tokens = tonumber(ARGV[2])
if tokens > 0 and redis.call('INCRBY', KEYS[2], tokens) == tokens then redis.call('PEXPIRE', KEYS[2], 120000) end
local failure = tonumber(ARGV[3])
if failure == 0 then return 0 end
local fails = redis.call('INCR', KEYS[3])
if fails == 1 then redis.call('PEXPIRE', KEYS[3], ARGV[6]) end
if failure == 2 or fails > tonumber(ARGV[4]) then
  redis.call('SET', KEYS[4], '1', 'PX', ARGV[5])
  redis.call('DEL', KEYS[3])
  return 1
end
return 0
"""


def fails_deployment(e: BackendError) -> bool:
    """Whether a failure is the deployment's (5xx, timeout, unreachable, rate limited), not the request's."""
    return e.status >= 500 or e.status in (408, 429) or e.code in ("timeout", "upstream_unreachable")


def busy_error(group: str) -> BackendError:
    return BackendError(429, f"Every deployment of `{group}` is at its rpm/tpm/max_parallel_requests limit.",
                        type_="rate_limit_error", code="deployments_busy", retryable=True)


def cooling_error(group: str) -> BackendError:
    return BackendError(503, f"Every deployment of `{group}` is cooling down after failures.",
                        type_="server_error", code="deployments_cooling_down", retryable=True)


class Balancer:
    """Picks deployments by ``routing_strategy`` within their limits, and cools failing ones down."""

    def __init__(self, settings: RouterSettings):
        self.strategy = STRATEGY_CODES[settings.routing_strategy]
        self.allowed_fails = settings.allowed_fails
        self.cooldown_ms = 0 if settings.disable_cooldowns else int(settings.cooldown_time * 1000)
        self._scripts: tuple[Redis, AsyncScript, AsyncScript] | None = None
        self._releases: set[asyncio.Task[None]] = set()

    def _script(self, redis: Redis) -> tuple[AsyncScript, AsyncScript]:
        if self._scripts is None or self._scripts[0] is not redis:
            self._scripts = (redis, redis.register_script(PICK_LUA), redis.register_script(RELEASE_LUA))
        return self._scripts[1], self._scripts[2]

    async def pick(self, redis: Redis, deployments: Sequence[Deployment], job: JobSpec, holder: str, *,
                   exclude: frozenset[int] = frozenset(), strict: bool = False) -> tuple[int, int]:
        """One pick-and-acquire for ``holder`` (one attempt of a job): (index into ``deployments``, outcome), index
        -1 when nothing could be taken."""
        pick, _ = self._script(redis)
        now = time.time()
        minute = int(now // 60)
        keys: list[str] = []
        lease_end = now + max(0.0, job.remaining()) + LEASE_MARGIN_S
        args: list[str | int | float] = [int(now * 1000), int(lease_end * 1000), holder, self.strategy,
                                         random.random(), int(strict)]
        for i, d in enumerate(deployments):
            keys += [busy_key(d.id), rpm_key(d.id, minute), tpm_key(d.id, minute), cooldown_key(d.id)]
            args += [d.max_parallel_requests or 0, d.rpm or 0, d.tpm or 0, d.weight, d.order, int(i in exclude)]
        index, outcome = await pick(keys=keys, args=args)
        return int(index) - 1, int(outcome)

    async def acquire(self, redis: Redis, group: str, deployments: Sequence[Deployment], job: JobSpec, holder: str,
                      *, exclude: frozenset[int] = frozenset(), may_fall_back: bool = False) -> int:
        """A deployment of ``group`` for ``job``, held by ``holder`` until ``release``. With every deployment at its
        limits the job waits for a free one (until its deadline: TimeoutError), unless it may fall back: then
        ``busy_error``. Cooled-down deployments are tried rather than failing, unless it may fall back:
        then ``cooling_error``."""
        while True:
            index, outcome = await self.pick(redis, deployments, job, holder, exclude=exclude, strict=may_fall_back)
            if index >= 0:
                return index
            if may_fall_back:
                raise cooling_error(group) if outcome == ALL_COOLED else busy_error(group)
            delay = random.uniform(*WAIT_S)
            if job.remaining() <= delay:
                raise TimeoutError
            await asyncio.sleep(delay)

    def release(self, redis: Redis, deployment: Deployment, holder: str, *, tokens: int = 0,
                failure: BackendError | None = None, counts_failures: bool = True) -> None:
        """End ``holder``'s hold on ``deployment`` in the background, counting its tokens and, when the deployment
        failed it (and the group has others to go to), its failure."""
        code = 0
        if failure is not None and counts_failures and self.cooldown_ms > 0 and fails_deployment(failure):
            code = 2 if failure.status == 429 else 1  # an upstream that says it is overloaded cools down at once
        task = asyncio.get_running_loop().create_task(self._release(redis, deployment, holder, tokens, code))
        self._releases.add(task)
        task.add_done_callback(self._releases.discard)

    async def _release(self, redis: Redis, d: Deployment, holder: str, tokens: int, code: int) -> None:
        _, release = self._script(redis)
        minute = int(time.time() // 60)
        try:
            cooled = await release(keys=[busy_key(d.id), tpm_key(d.id, minute), fails_key(d.id), cooldown_key(d.id)],
                                   args=[holder, tokens, code, self.allowed_fails, self.cooldown_ms, FAIL_WINDOW_MS])
        except Exception as e:  # noqa: BLE001  # the lease ends at the deadline anyway
            log.warning("could not release deployment %s (%s)", d.id, type(e).__name__)
            return
        if cooled:
            log.warning("deployment %s of %s cooled down for %.1fs after failures", d.id, d.group,
                        self.cooldown_ms / 1000)

    async def settle(self) -> None:
        """Wait for the releases in flight (tests; shutdown)."""
        while self._releases:
            await asyncio.gather(*list(self._releases), return_exceptions=True)
