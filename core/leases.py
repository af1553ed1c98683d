"""Worker leases: heartbeats, and reaping the jobs of a worker that died.

Every worker beats every ``HEARTBEAT_INTERVAL_S`` (``HEARTBEAT_LUA``: its score in ``WORKERS_KEY`` is Redis's
own clock, so hosts with skewed clocks agree). A worker whose beat is older than ``WORKER_LEASE_S`` is dead,
and whoever notices first (a surviving worker or a gateway; ``REAP_LUA`` is atomic, so only one does) settles
each job the dead worker held (``RUNNING_KEY_PREFIX`` + worker id):

* a job that has written nothing to its output stream and has been tried fewer than ``MAX_TRIES`` times goes
  back to the queue with its original score (it keeps its place) and a wake-up token: its client only waits;
* any other job ends for its client with a ``502 worker_lost`` error event and ``end``: output already
  streamed is never produced twice.

A worker that stops on a signal hands its unfinished jobs back the same way (``REAP_LUA`` with its own id).

Gateways hold leases too (``GATEWAYS_KEY``), and every job names the gateway whose client waits for it
(``JobSpec.origin``). When a gateway dies, its client connections die with it: ``REAP_GATEWAYS_LUA`` drops
its queued jobs (they would run for nobody and count against the queue limit) and cancels its running ones.

Leases are only judged while reaping is continuous: every reap notes Redis's time in ``REAPER_KEY``, and after
a gap (Redis paused or unreachable, every reaper gone) reaping resumes only a whole lease later. Otherwise a
reap that waited out a stalled Redis would find every lease stale and reap live workers whose beats were
queued behind it.
"""

from __future__ import annotations

from dataclasses import dataclass

from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix

from core import queue as q

LOST_EVENT = q.error_event(502, "The worker running this request stopped before it finished.", "server_error",
                           "worker_lost")
GATEWAY_LOST_EVENT = q.error_event(503, "The gateway waiting for this answer missed its lease; retry.",
                                   "server_error", "gateway_lost")
STOPPED_EVENT = q.error_event(503, "The worker running this request was stopped before it finished; retry.",
                              "server_error", "worker_stopped")
SWEEP_LIMIT = 100  # queue entries (oldest first) checked per reap for jobs that expired before anyone took them
GATEWAYS_KEY = "gatehouse:gateways"  # sorted set: gateway id -> last beat (Redis's clock)
GATEWAY_LEASE_S = 5.0  # longer than a worker's: a gateway's jobs are only dropped when it is surely gone
GATEWAY_SCAN_LIMIT = 10_000  # queue entries looked at for a dead gateway's jobs
REAPER_KEY = "gatehouse:reaper"  # hash: last = when a reaper last ran, since = when reaping last resumed
REAP_GAP_S = 2.5 * q.HEARTBEAT_INTERVAL_S  # no reap for this long: leases are not judged for one lease

# KEYS: 1 workers zset, then a busy hash per lane.   ARGV: 1 worker id, then jobs running per lane.
# Returns 1 when the worker was not in the set: its first beat, or it had been declared dead meanwhile.
HEARTBEAT_LUA = """
local t = redis.call('TIME')
local added = redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(t[2]) / 1000000, ARGV[1])
for i = 2, #KEYS do
  redis.call('HSET', KEYS[i], ARGV[1], ARGV[i])
  redis.call('EXPIRE', KEYS[i], 60)
end
return added
"""

# KEYS: 1 gateways zset.   ARGV: 1 gateway id.   Returns 1 when the gateway was not listed (see HEARTBEAT_LUA).
GATEWAY_BEAT_LUA = """
local t = redis.call('TIME')
return redis.call('ZADD', KEYS[1], tonumber(t[1]) + tonumber(t[2]) / 1000000, ARGV[1])
"""

# KEYS: 1 workers zset, 2 queue zset, 3 wake list, 4 busy hash, 5 reaper hash, 6 batch queue zset
# (batch lines, ids starting "batch_", go back to the batch lane; one that cannot run again is only removed:
# the batch runner notices it is gone and feeds it again or fails it, core.batches. Any other job queued on the
# batch lane — a call by a batch-lane key — goes back there too, and ends for its client as an interactive one)
# ARGV: 1 lease (s), 2 a worker id to settle now ("" = every worker past its lease), 3 arq's in-progress
#       prefix, 4 arq's retry prefix, 5 arq's job prefix, 6 running prefix, 7 output prefix, 8 the event
#       ending a job that cannot run again, 9 output TTL (s), 10 max tries, 11 arq's abort zset,
#       12 end event, 13 sweep limit, 14 reap gap (s)
# Returns {workers settled, jobs re-queued, jobs ended, expired queue entries removed}.
REAP_LUA = """
local dead
if ARGV[2] ~= '' then
  dead = {ARGV[2]}
else
  local t = redis.call('TIME')
  local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
  local last = tonumber(redis.call('HGET', KEYS[5], 'last') or '0')
  local since = tonumber(redis.call('HGET', KEYS[5], 'since') or '0')
  if now - last > tonumber(ARGV[14]) then since = now end
  redis.call('HSET', KEYS[5], 'last', tostring(now), 'since', tostring(since))
  if now - since < tonumber(ARGV[1]) then
    dead = {}
  else
    dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
  end
end
local requeued, ended, swept = 0, 0, 0
for _, w in ipairs(dead) do
  local running = ARGV[6] .. w
  local held = redis.call('HGETALL', running)
  for i = 1, #held, 2 do
    local id, score = held[i], held[i + 1]
    local out = ARGV[7] .. id
    local line = string.sub(id, 1, 6) == 'batch_'
    local queue = KEYS[2]
    if line or (KEYS[6] and redis.call('ZSCORE', KEYS[6], id)) then queue = KEYS[6] end
    if redis.call('EXISTS', ARGV[5] .. id) == 0 then
      redis.call('DEL', ARGV[3] .. id)
      redis.call('ZREM', queue, id)
    elseif redis.call('XLEN', out) == 0 and (tonumber(redis.call('GET', ARGV[4] .. id)) or 0) < tonumber(ARGV[10]) then
      redis.call('DEL', ARGV[3] .. id)
      redis.call('ZADD', queue, score, id)
      redis.call('LPUSH', KEYS[3], '1')
      redis.call('PEXPIRE', KEYS[3], 60000)
      requeued = requeued + 1
    else
      if not line then
        redis.call('XADD', out, '*', 'e', ARGV[8])
        redis.call('XADD', out, '*', 'e', ARGV[12])
        redis.call('EXPIRE', out, ARGV[9])
      end
      redis.call('DEL', ARGV[3] .. id, ARGV[4] .. id, ARGV[5] .. id)
      redis.call('ZREM', queue, id)
      redis.call('ZREM', ARGV[11], id)
      ended = ended + 1
    end
  end
  redis.call('DEL', running)
  redis.call('ZREM', KEYS[1], w)
  redis.call('HDEL', KEYS[4], w)
end
for _, queue in ipairs({KEYS[2], KEYS[6]}) do
  for _, id in ipairs(redis.call('ZRANGE', queue, 0, tonumber(ARGV[13]) - 1)) do
    if redis.call('EXISTS', ARGV[5] .. id) == 0 then
      redis.call('ZREM', queue, id)
      redis.call('DEL', ARGV[3] .. id)
      swept = swept + 1
    end
  end
end
return {#dead, requeued, ended, swept}
"""


# KEYS: 1 gateways zset, 2 queue zset, 3 reaper hash, 4 (optional) batch queue zset: calls by batch-lane keys
# ARGV: 1 gateway lease (s), 2 arq's job prefix, 3 arq's in-progress prefix, 4 output prefix, 5 the event
#       ending a dropped job, 6 end event, 7 output TTL (s), 8 cancel channel, 9 scan limit, 10 reap gap (s)
# Judged only while reaping is continuous (REAP_LUA, run just before, keeps the reaper hash). Each queue is
# scanned up to ARGV[9] entries.
# Returns {gateways gone, queued jobs dropped, running jobs cancelled}.
REAP_GATEWAYS_LUA = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local since = tonumber(redis.call('HGET', KEYS[3], 'since') or now)
local last = tonumber(redis.call('HGET', KEYS[3], 'last') or '0')
if now - since < tonumber(ARGV[1]) or now - last > tonumber(ARGV[10]) then return {0, 0, 0} end
local dead = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[1]))
if #dead == 0 then return {0, 0, 0} end
local marks = {}
for i, g in ipairs(dead) do marks[i] = '"origin":"' .. g .. '"' end
local dropped, cancelled = 0, 0
for _, queue in ipairs({KEYS[2], KEYS[4]}) do
  for _, id in ipairs(redis.call('ZRANGE', queue, 0, tonumber(ARGV[9]) - 1)) do
    local payload = redis.call('GET', ARGV[2] .. id)
    if payload then
      for _, mark in ipairs(marks) do
        if string.find(payload, mark, 1, true) then
          if redis.call('EXISTS', ARGV[3] .. id) == 1 then
            redis.call('PUBLISH', ARGV[8], id)
            cancelled = cancelled + 1
          else
            redis.call('ZREM', queue, id)
            redis.call('DEL', ARGV[2] .. id)
            local out = ARGV[4] .. id
            redis.call('XADD', out, '*', 'e', ARGV[5])
            redis.call('XADD', out, '*', 'e', ARGV[6])
            redis.call('EXPIRE', out, ARGV[7])
            dropped = dropped + 1
          end
          break
        end
      end
    end
  end
end
redis.call('ZREM', KEYS[1], unpack(dead))
return {#dead, dropped, cancelled}
"""


@dataclass(frozen=True, slots=True)
class GatewaysReaped:
    gateways: int = 0
    dropped: int = 0
    cancelled: int = 0

    def __bool__(self) -> bool:
        return bool(self.gateways)

    def describe(self) -> str:
        return (f"{self.gateways} gateway(s) gone: {self.dropped} queued job(s) of theirs dropped, "
                f"{self.cancelled} running one(s) cancelled")


@dataclass(frozen=True, slots=True)
class Reaped:
    """What one reap did."""

    workers: int = 0
    requeued: int = 0
    ended: int = 0
    swept: int = 0

    def __bool__(self) -> bool:
        return bool(self.workers or self.requeued or self.ended or self.swept)

    def __add__(self, other: Reaped) -> Reaped:
        return Reaped(self.workers + other.workers, self.requeued + other.requeued, self.ended + other.ended,
                      self.swept + other.swept)

    def describe(self) -> str:
        return (f"{self.workers} worker(s) gone: {self.requeued} job(s) re-queued, {self.ended} ended "
                f"(worker_lost); {self.swept} expired queue entr(ies) removed")


def reap_keys(queue: str) -> list[str]:
    return [q.WORKERS_KEY, queue, q.wake_key(queue), q.busy_key(q.lane_of(queue)), REAPER_KEY, q.BATCH_QUEUE]


def reap_args(*, worker_id: str = "", event: bytes = LOST_EVENT) -> list[str | bytes | float | int]:
    """REAP_LUA's arguments: every worker past its lease, or ``worker_id`` now (ending jobs with ``event``)."""
    return [q.WORKER_LEASE_S, worker_id, in_progress_key_prefix, retry_key_prefix, job_key_prefix,
            q.RUNNING_KEY_PREFIX, q.OUTPUT_STREAM_PREFIX, event, q.OUTPUT_TTL_S, q.MAX_TRIES, abort_jobs_ss,
            q.END_EVENT, SWEEP_LIMIT, REAP_GAP_S]


def reaped(reply: list[int]) -> Reaped:
    return Reaped(*(int(x) for x in reply))


def gateway_reap_keys(queue: str) -> list[str]:
    return [GATEWAYS_KEY, queue, REAPER_KEY, q.BATCH_QUEUE]


def gateway_reap_args() -> list[str | bytes | float | int]:
    return [GATEWAY_LEASE_S, job_key_prefix, in_progress_key_prefix, q.OUTPUT_STREAM_PREFIX, GATEWAY_LOST_EVENT,
            q.END_EVENT, q.OUTPUT_TTL_S, q.CANCEL_CHANNEL, GATEWAY_SCAN_LIMIT, REAP_GAP_S]


def gateways_reaped(reply: list[int]) -> GatewaysReaped:
    return GatewaysReaped(*(int(x) for x in reply))
