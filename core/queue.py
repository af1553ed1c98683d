"""The queue protocol between the gateway and the workers — the one contract both sides import.

Everything the gateway and the workers exchange through Redis is defined here: key names, the job payload,
the output events, the enqueue and claim scripts. (Keys only the gateway uses live beside their use:
gateway/keys/cache.py, gateway/limits.py.)

Flow of one interactive request::

    gateway                                  Redis                                worker
    ───────                                  ─────                                ──────
    pipeline: ENQUEUE (Lua) + XREAD BLOCK ─► arq:job:<id>, ZADD queue, LPUSH wake
                                                    ◄── BLMPOP wake (no poll delay); CLAIM (Lua): due jobs + locks
                                                    ◄── arq run_job: fetch job; backend runs
    (the pipelined XREAD returns) ◄───────── XADD gatehouse:out:<id> ◄── chunks as they come; the last
                                             events ride in arq's end-of-job transaction
    after the response: UNLINK consumed streams (batched)
    on disconnect/timeout: ZREM queue + PUBLISH gatehouse:cancel <id> ──────────► task.cancel()

Jobs are genuine arq jobs (``arq:job:<id>`` holds arq's job dict, serialised with orjson), so arq's worker,
retry and health machinery apply; only the wake-up and the result path differ (see docs/adr/0002).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

# ── key names (arq's own prefixes come from arq.constants) ────────────────────────────────────────────
INTERACTIVE_QUEUE = "gatehouse:queue:interactive"
WAKE_KEY_SUFFIX = ":wake"  # list the gateway LPUSHes a token onto for every job; workers BLPOP it
OUTPUT_STREAM_PREFIX = "gatehouse:out:"  # one Redis Stream of output events per request
CANCEL_CHANNEL = "gatehouse:cancel"  # pub/sub: request ids whose client went away or timed out
WORKERS_KEY = "gatehouse:workers"  # sorted set: worker id -> last heartbeat (unix seconds, Redis's clock)
RUNNING_KEY_PREFIX = "gatehouse:running:"  # hash per worker: job id -> queue score, for the jobs it holds
SCALING_KEY = "gatehouse:scaling"  # hash: worker id -> JSON of its hybrid-scaling report (seed 004)
SCALING_INTERVAL_S = 5.0
BUSY_KEY_PREFIX = "gatehouse:busy:"  # hash per lane: worker id -> jobs it is running (updated each heartbeat)
# the batch lane: batch lines (core.batches) and calls by keys whose metadata says lane "batch", claimed only after
# interactive jobs
BATCH_QUEUE = "gatehouse:queue:batch"
INTERACTIVE_LANE = "interactive"
BATCH_LANE = "batch"
LANES = {INTERACTIVE_LANE: INTERACTIVE_QUEUE, BATCH_LANE: BATCH_QUEUE}  # lane name (a metric label) -> its arq queue
FAIR_KEY_SUFFIX = ":fair"  # hash per queue: the fair-queuing clocks and places (FAIR_SCORE_LUA)
TENANTS_KEY_SUFFIX = ":tenants"  # hash per queue: job id -> job_label, while queued (lane depths per tenant, model)
PRIORITY_BAND = 10**12  # queue score = priority * PRIORITY_BAND + the job's virtual start (see FAIR_SCORE_LUA)
ARQ_JOB_PREFIX = "arq:job:"
# benchmark runs (docs/benchmark-runs-contract.md): what only the worker knows about a call made with a run's key,
# JSON, written with the job's last events so it is there once the client's stream has ended
BENCH_TIMING_PREFIX = "gatehouse:bench:timing:"
BENCH_TIMING_TTL_S = 3600
BENCH_RUN_MAX = 64  # longest run id a key's metadata.bench_run may carry

JOB_FUNCTION = "run_request"  # the arq function name every interactive job calls
OUTPUT_TTL_S = 60  # safety net: a stream nobody consumed (reader gone) expires this long after its last write
HEARTBEAT_INTERVAL_S = 1.0
WORKER_LEASE_S = 3.0  # a worker whose last heartbeat is older than this is dead: its jobs are reaped
HEARTBEAT_FRESH_S = WORKER_LEASE_S  # readiness counts the workers whose lease is current
MAX_TRIES = 2  # a job that produced no output before its worker died runs once more, elsewhere

# what "Redis is unreachable or stalled" looks like to a client, on either side of the queue
REDIS_DOWN = (RedisConnectionError, RedisTimeoutError, OSError)

# responses: POST /v1/responses passed through; embed: POST /v1/embeddings (core.embeddings)
JobKind = Literal["chat", "completion", "generate", "classify", "responses", "embed"]


def wake_key(queue: str) -> str:
    return queue + WAKE_KEY_SUFFIX


def output_key(request_id: str) -> str:
    return OUTPUT_STREAM_PREFIX + request_id


def fair_key(queue: str) -> str:
    return queue + FAIR_KEY_SUFFIX


def tenants_key(queue: str) -> str:
    return queue + TENANTS_KEY_SUFFIX


LABEL_SEP = "\t"  # neither a tenant (team or key id) nor a model name holds a tab


def job_label(tenant: str, model: str) -> str:
    """What the tenants hash holds for a queued job: whose it is and for which model (core.lanes counts both)."""
    return f"{tenant}{LABEL_SEP}{model}"


def split_label(label: str) -> tuple[str, str]:
    """(tenant, model) of a ``job_label``; the model is "" for a label without one (an older gateway's)."""
    tenant, _, model = label.partition(LABEL_SEP)
    return tenant, model


def bench_timing_key(request_id: str) -> str:
    return BENCH_TIMING_PREFIX + request_id


def running_key(worker_id: str) -> str:
    return RUNNING_KEY_PREFIX + worker_id


def busy_key(lane: str) -> str:
    return BUSY_KEY_PREFIX + lane


def lane_of(queue: str) -> str:
    return next((lane for lane, name in LANES.items() if name == queue), queue.rsplit(":", 1)[-1])


# ── job payload ───────────────────────────────────────────────────────────────────────────────────────
@dataclass(slots=True, frozen=True)
class SamplingParams:
    """The sampling parameters as the gateway validated and resolved them (``max_completion_tokens`` beats
    ``max_tokens``; ``stop`` always a tuple), so backends that run the model themselves read typed values
    instead of re-reading the raw body with defaults. None means "the backend's default"."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    n: int = 1
    quantum_profile: str | None = None  # the qgpt seed's extension

    def to_dict(self) -> dict[str, Any]:
        return {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p,
                "seed": self.seed, "stop": self.stop, "n": self.n, "quantum_profile": self.quantum_profile}

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> SamplingParams:
        if not d:
            return DEFAULT_PARAMS
        known = {k: v for k, v in d.items() if k in _PARAM_FIELDS}
        known["stop"] = tuple(known.get("stop") or ())
        return cls(**known)


DEFAULT_PARAMS = SamplingParams()
_PARAM_FIELDS = frozenset(SamplingParams.__slots__)


@dataclass(slots=True)
class JobSpec:
    """What a worker needs to run one request. ``body`` is the validated OpenAI request body (extra fields
    included) so OpenAI-compatible backends can forward it untouched; ``params`` are its sampling parameters,
    typed (core.schemas builds both: ``request.to_job(...)``)."""

    id: str
    kind: JobKind
    model: str
    body: dict[str, Any]
    stream: bool
    deadline: float  # unix seconds; the worker stops at this instant
    params: SamplingParams = DEFAULT_PARAMS
    enqueued_at: float = field(default_factory=time.time)
    trace: dict[str, Any] | None = None  # observability.calls.TraceContext, when tracing is on
    origin: str | None = None  # the gateway whose client waits for the answer (its lease: core.leases)
    tenant: str = ""  # whose job it is (team, else key): jobs are claimed fairly across tenants
    priority: int = 128  # LiteLLM's scale: 0 is claimed first, 255 last
    bench_run: str | None = None  # the benchmark run whose key made this call: the worker writes its timing record

    def to_dict(self) -> dict[str, Any]:
        # explicit rather than dataclasses.asdict, which deep-copies ``body`` (it is on the hot path)
        d: dict[str, Any] = {"id": self.id, "kind": self.kind, "model": self.model, "body": self.body,
                             "stream": self.stream, "deadline": self.deadline, "params": self.params.to_dict(),
                             "enqueued_at": self.enqueued_at, "trace": self.trace, "origin": self.origin,
                             "tenant": self.tenant, "priority": self.priority}
        if self.bench_run is not None:  # rare: only then in the payload
            d["bench_run"] = self.bench_run
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobSpec:
        """Tolerant of a gateway one version apart: unknown fields are ignored, missing params defaulted."""
        return cls(id=d["id"], kind=d["kind"], model=d["model"], body=d["body"], stream=bool(d["stream"]),
                   deadline=float(d["deadline"]), params=SamplingParams.from_dict(d.get("params")),
                   enqueued_at=float(d.get("enqueued_at") or time.time()), trace=d.get("trace"),
                   origin=d.get("origin"), tenant=str(d.get("tenant") or ""),
                   priority=_priority(d.get("priority")), bench_run=bench_run_of(d.get("bench_run")))

    def remaining(self) -> float:
        return self.deadline - time.time()


def bench_run_of(value: Any) -> str | None:
    """A benchmark run id as a job may carry it (a key's ``metadata.bench_run``): a non-empty string of at most
    BENCH_RUN_MAX characters, else None."""
    return value if isinstance(value, str) and 0 < len(value) <= BENCH_RUN_MAX else None


def _priority(value: Any) -> int:
    """A job's priority as the claim script needs it: an integer 0..255, else the default."""
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 255:
        return value
    return 128


def dumps(obj: Any) -> bytes:
    """orjson with a fallback for objects arq may put in job results (exceptions)."""
    return orjson.dumps(obj, default=str)


def loads(data: bytes) -> Any:
    return orjson.loads(data)


def serialize_job(spec: JobSpec, enqueue_time_ms: int) -> bytes:
    """arq's job dict (same keys as ``arq.jobs.serialize_job``) with orjson as serializer."""
    return dumps({"t": 1, "f": JOB_FUNCTION, "a": [spec.to_dict()], "k": {}, "et": enqueue_time_ms})


# ── output events ─────────────────────────────────────────────────────────────────────────────────────
# Stream entries carry one field, b"e", holding one event or a JSON array of events written together (a
# worker's flush: one XADD however many chunks accumulated). An event is orjson of {"k": kind, ...}:
#   chunk  {"k":"chunk","d":{"choices":[...], "usage"?:{...}}}   OpenAI-shaped delta chunk (no id/model)
#   result {"k":"result","d":{"choices":[...], "usage":{...}}}   a whole non-streamed answer
#   error  {"k":"error","status":502,"type":"...","code":"...","message":"...","param":...,"headers"?:{...}}
#   end    {"k":"end"}                                           always last
EVENT_FIELD = b"e"


def pack_events(events: list[bytes]) -> bytes:
    """Several serialised events as one entry's value (a JSON array; no re-serialising)."""
    return events[0] if len(events) == 1 else b"[" + b",".join(events) + b"]"


def unpack_events(value: bytes) -> list[dict[str, Any]]:
    """The events of one stream entry."""
    obj = orjson.loads(value)
    return obj if isinstance(obj, list) else [obj]
END_EVENT = dumps({"k": "end"})


def ends_request(value: bytes) -> bool:
    """Whether a stream entry's value holds the request's last event (``end``), without decoding it."""
    return value == END_EVENT or value.endswith(b"," + END_EVENT + b"]")


def chunk_event(data: dict[str, Any]) -> bytes:
    return dumps({"k": "chunk", "d": data})


def result_event(data: dict[str, Any]) -> bytes:
    return dumps({"k": "result", "d": data})


def error_event(status: int, message: str, type_: str, code: str | None = None, param: str | None = None,
                headers: dict[str, str] | None = None) -> bytes:
    """The one builder of error events: every failure a worker reports (backend errors, timeouts,
    cancellation, internal errors) and the queue-full refusal go through it. ``headers``: HTTP headers the
    client's error response carries (an upstream 429's ``retry-after``), only when there are any."""
    ev: dict[str, Any] = {"k": "error", "status": status, "type": type_, "code": code, "message": message,
                          "param": param}
    if headers:
        ev["headers"] = headers
    return dumps(ev)


# ── fair queuing ──────────────────────────────────────────────────────────────────────────────────────
# Start-time fair queuing, computed where a job is queued. Each tenant's next job starts at the later of the
# lane's virtual clock (the start of the last job claimed) and the end of that tenant's previous job; a job
# costs 1. So a tenant with 5,000 queued jobs holds the 5,000 places after the clock, and a tenant that sends
# 5 now gets places right after the clock too, in between: the queue, ordered by score, interleaves tenants
# and the claim stays a plain range read. Priority bands sit above that: every job of priority 0 comes before
# any of priority 1, and each band has its own clock. Scores are integers below 2^53 (exact as doubles).
FAIR_SCORE_LUA = """
local function fair_score(fair, tenant, prio)
  local vnow = tonumber(redis.call('HGET', fair, 'now:' .. prio) or '0')
  local field = prio .. ':' .. tenant
  local start = math.max(vnow, tonumber(redis.call('HGET', fair, field) or '0'))
  redis.call('HSET', fair, field, start + 1)
  return string.format('%.0f', prio * 1e12 + start)
end
"""

# ── enqueue script ────────────────────────────────────────────────────────────────────────────────────
# KEYS: 1 queue zset, 2 job key, 3 wake list, 4 output stream, 5 the lane's fair hash, 6 its tenants hash
# ARGV: 1 job id, 2 payload, 3 tenant, 4 ttl (ms), 5 max depth, 6 refusal event, 7 output TTL (s), 8 priority,
#       9 the job's label in the tenants hash (``job_label``: tenant and model)
# Returns the queue depth after enqueue, -1 when the queue is full, -2 for a duplicate id (nothing queued).
# One round trip, atomic: depth check + fair place + job + queue entry + its tenant + wake token. Job ids are unique
# request ids, so arq's WATCH-based duplicate check is unnecessary. On refusal the script also writes the
# refusal to the request's output stream, so a read pipelined behind it (gateway/enqueue.py) returns at once.
ENQUEUE_LUA = FAIR_SCORE_LUA + """
if redis.call('EXISTS', KEYS[2]) == 1 or redis.call('EXISTS', KEYS[4]) == 1 then return -2 end
local depth = redis.call('ZCARD', KEYS[1])
if depth >= tonumber(ARGV[5]) then
  redis.call('XADD', KEYS[4], '*', 'e', ARGV[6])
  redis.call('XADD', KEYS[4], '*', 'e', '{"k":"end"}')
  redis.call('EXPIRE', KEYS[4], ARGV[7])
  return -1
end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
redis.call('ZADD', KEYS[1], fair_score(KEYS[5], ARGV[3], tonumber(ARGV[8])), ARGV[1])
redis.call('HSET', KEYS[6], ARGV[1], ARGV[9])
redis.call('LPUSH', KEYS[3], '1')
redis.call('PEXPIRE', KEYS[3], 60000)
return depth + 1
"""
QUEUE_FULL_EVENT = error_event(503, "The gateway's queue is full; retry shortly.", "server_error", "queue_full")

# ── claim script (worker side) ────────────────────────────────────────────────────────────────────────
# KEYS: 1 interactive queue, 2 its fair hash, 3 batch queue, 4 its fair hash
# ARGV: 1 most jobs to claim, 2 in-progress TTL (ms), 3 arq's in-progress key prefix, 4 most batch-lane jobs to
#       claim (within ARGV[1]), 5 most queue entries to look at per lane (read CLAIM_PAGE at a time), 6 arq's job
#       key prefix, 7 arq's retry key prefix, 8 arq's abort zset, 9 retry key TTL (s), 10 this worker's running
#       hash (core.leases reaps it)
# Interactive jobs first, then the batch lane's (batch lines, calls by batch-lane keys) with what is left; each
# lane in score order (priority, then fair share: FAIR_SCORE_LUA), and each lane's clock moves to the start of
# the latest job claimed. For each job not already running elsewhere it takes arq's in-progress lock and does
# what arq's run_job would do next: fetch the job, count the try, take it off the abort set. Each job is
# recorded in the worker's running hash until its end-of-job transaction removes it.
# Returns a flat list [id, score, payload|nil, try, aborted(0|1), lane(CLAIM_INTERACTIVE|CLAIM_BATCH), ...] of
# the jobs this worker now owns: arq's ZRANGEBYSCORE, its per-job WATCH/EXISTS/ZSCORE/MULTI/PSETEX and run_job's
# GET/INCR/EXPIRE/ZREM, in one round trip for both lanes.
CLAIM_FIELDS = 6
# The claim reads each lane a page at a time, from the head, until it has what it wants or has looked at ARGV[5]
# entries: running jobs stay at the head (their entries leave at their end), so the work is the running jobs
# ahead plus what it takes, and the window (workers.assemble: the whole interactive queue) bounds it.
CLAIM_PAGE = 256
CLAIM_INTERACTIVE, CLAIM_BATCH = 0, 1  # a claimed job's last field: the lane it came from
CLAIM_LUA = """
local CLAIM_PAGE = """ + str(CLAIM_PAGE) + """
local out = {}
local function claim(queue, fair, want, lane)
  if want <= 0 then return end
  local taken, clocks, look, from = 0, {}, tonumber(ARGV[5]), 0
  while taken < want and from < look do
  local head = redis.call('ZRANGE', queue, from, math.min(from + CLAIM_PAGE, look) - 1, 'WITHSCORES')
  if #head == 0 then break end
  from = from + CLAIM_PAGE
  for i = 1, #head, 2 do
    if taken >= want then break end
    local id = head[i]
    local lock = ARGV[3] .. id
    if redis.call('EXISTS', lock) == 0 then
      redis.call('SET', lock, '1', 'PX', ARGV[2])
      redis.call('HSET', ARGV[10], id, head[i + 1])
      local tries = redis.call('INCR', ARGV[7] .. id)
      redis.call('EXPIRE', ARGV[7] .. id, ARGV[9])
      out[#out + 1] = id
      out[#out + 1] = head[i + 1]
      out[#out + 1] = redis.call('GET', ARGV[6] .. id)
      out[#out + 1] = tries
      out[#out + 1] = redis.call('ZREM', ARGV[8], id)
      out[#out + 1] = lane
      taken = taken + 1
      local score = tonumber(head[i + 1])
      local band = math.floor(score / 1e12)
      local start = score - band * 1e12
      if clocks[band] == nil or start > clocks[band] then clocks[band] = start end
    end
  end
  end
  for band, start in pairs(clocks) do
    local now = tonumber(redis.call('HGET', fair, 'now:' .. band) or '0')
    if start > now then redis.call('HSET', fair, 'now:' .. band, string.format('%.0f', start)) end
  end
  return taken
end
local want = tonumber(ARGV[1])
local got = claim(KEYS[1], KEYS[2], want, 0) or 0  -- CLAIM_INTERACTIVE
claim(KEYS[3], KEYS[4], math.min(want - got, tonumber(ARGV[4])), 1)  -- CLAIM_BATCH
return out
"""
RETRY_KEY_TTL_S = 88_400  # arq's own TTL for its retry counters
