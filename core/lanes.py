"""Lane depths per tenant and per model, read from the queues themselves (for ``/health`` and Prometheus).

Each queue has a tenants hash (job id -> ``core.queue.job_label``: tenant and model) that the enqueue and feed
scripts fill and the end of a job
empties (core.queue.tenants_key). Counting walks the queue's entries (bounded by ``look``) and names each
one's tenant, so a count can never drift from what is queued: a hash entry whose job left the queue by
another path (a cancel, the reaper) only costs memory, and the same script sweeps a few such entries on every
read (a cursor kept next to the hash) and drops the whole hash when its queue is empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from arq.constants import in_progress_key_prefix
from redis.asyncio import Redis
from redis.asyncio.client import Pipeline

from core import queue as q

LOOK = 20_000  # most queue entries counted per lane (the interactive lane is bounded by queue_max_depth)
SWEEP = 200  # tenants-hash entries checked for a departed job per lane and read
UNKNOWN = "-"  # a queued job without a recorded tenant (queued by an older gateway)

# KEYS: per lane three: queue zset, tenants hash, sweep cursor
# ARGV: 1 arq's in-progress key prefix, 2 most entries to count per lane, 3 hash entries to sweep per lane
# Returns per lane a flat list [label, waiting, running, ...], the lists in KEYS order.
TENANT_DEPTHS_LUA = """
local result = {}
for k = 1, #KEYS, 3 do
  local queue, tenants, cursor = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local counts, order = {}, {}
  local ids = redis.call('ZRANGE', queue, 0, tonumber(ARGV[2]) - 1)
  if #ids == 0 then
    redis.call('DEL', tenants, cursor)
  else
    for i = 1, #ids, 1000 do
      local chunk = {unpack(ids, i, math.min(i + 999, #ids))}
      local names = redis.call('HMGET', tenants, unpack(chunk))
      for j, id in ipairs(chunk) do
        local t = names[j] or '""" + UNKNOWN + """'
        if counts[t] == nil then counts[t] = {0, 0}; order[#order + 1] = t end
        local slot = 1
        if redis.call('EXISTS', ARGV[1] .. id) == 1 then slot = 2 end
        counts[t][slot] = counts[t][slot] + 1
      end
    end
    local scan = redis.call('HSCAN', tenants, redis.call('GET', cursor) or '0', 'COUNT', ARGV[3])
    for i = 1, #scan[2], 2 do
      if not redis.call('ZSCORE', queue, scan[2][i]) then redis.call('HDEL', tenants, scan[2][i]) end
    end
    redis.call('SET', cursor, scan[1], 'EX', 3600)
  end
  local lane = {}
  for _, t in ipairs(order) do
    lane[#lane + 1] = t
    lane[#lane + 1] = counts[t][1]
    lane[#lane + 1] = counts[t][2]
  end
  result[#result + 1] = lane
end
return result
"""


@dataclass
class TenantDepth:
    waiting: int = 0  # queued, not yet taken by a worker
    running: int = 0  # taken by a worker (its entry stays queued until the job ends)


@dataclass
class LaneTenants:
    """Per lane, per tenant and per model: what is waiting and running."""

    lanes: dict[str, dict[str, TenantDepth]] = field(default_factory=dict)
    models: dict[str, dict[str, TenantDepth]] = field(default_factory=dict)  # lane -> model ("": unrecorded)

    def of_model(self, model: str) -> TenantDepth:
        """A model's jobs over every lane."""
        out = TenantDepth()
        for by_model in self.models.values():
            d = by_model.get(model)
            if d is not None:
                out.waiting += d.waiting
                out.running += d.running
        return out

    def waiting(self, lane: str) -> int:
        return sum(d.waiting for d in self.lanes.get(lane, {}).values())


def _keys(lanes: Mapping[str, str]) -> list[str]:
    keys: list[str] = []
    for queue in lanes.values():
        tenants = q.tenants_key(queue)
        keys += [queue, tenants, tenants + ":sweep"]
    return keys


def queue_tenant_depths(pipe: Pipeline, lanes: Mapping[str, str] = q.LANES, look: int = LOOK,
                        lock_prefix: str = in_progress_key_prefix) -> None:
    """Add the read to ``pipe``; ``parse`` its reply. A job is running while it holds arq's in-progress lock."""
    keys = _keys(lanes)
    pipe.eval(TENANT_DEPTHS_LUA, len(keys), *keys, lock_prefix, str(look), str(SWEEP))


def _add(into: dict[str, TenantDepth], name: str, waiting: int, running: int) -> None:
    d = into.setdefault(name, TenantDepth())
    d.waiting += waiting
    d.running += running


def parse(reply: list[Any], lanes: Mapping[str, str] = q.LANES) -> LaneTenants:
    out = LaneTenants()
    for lane, flat in zip(lanes, reply, strict=True):
        by_tenant = out.lanes[lane] = {}
        by_model = out.models[lane] = {}
        for i in range(0, len(flat), 3):
            label = flat[i].decode() if isinstance(flat[i], bytes) else str(flat[i])
            tenant, model = q.split_label(label)
            waiting, running = int(flat[i + 1]), int(flat[i + 2])
            _add(by_tenant, tenant, waiting, running)
            _add(by_model, model, waiting, running)
    return out


async def tenant_depths(redis: Redis, lanes: Mapping[str, str] = q.LANES, look: int = LOOK,
                        lock_prefix: str = in_progress_key_prefix) -> LaneTenants:
    async with redis.pipeline(transaction=False) as pipe:
        queue_tenant_depths(pipe, lanes, look, lock_prefix)
        (reply,) = await pipe.execute()
    return parse(reply, lanes)
