"""The batch runner: one per deployment at a time (a lease in Redis, taken over within seconds when its worker
dies), running in a worker process beside its jobs.

Each tick it
  1. collects finished lines from ``RESULTS_STREAM`` and writes them to PostgreSQL (one statement per batch,
     only for lines still pending: a result lands once), then deletes the entries;
  2. every second, reads the batches not yet final and moves each on: validates new ones, cancels or expires
     those asked to, finalizes those with nothing left;
  3. feeds pending lines onto the batch lane, round-robin across batches, keeping each model's queued-or-running
     batch lines under its cap; workers claim them only after interactive jobs (core.queue.CLAIM_LUA);
  4. every few seconds, checks that the lines it fed still exist in Redis (a Valkey restart may lose some)
     and feeds lost ones again, up to ``MAX_LINE_TRIES``.

A new runner (after a takeover) starts from what PostgreSQL and Redis hold: results not yet written are read
from the stream's start; lines still queued or running are recognised by their job ids and not fed twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from redis.asyncio import Redis

from core import batches as b
from core import queue as q
from core.batchstore import BatchRecord, BatchStore, PendingLine
from core.config import Config
from core.database import Database, DatabaseUnavailable
from core.files import FileStore
from core.pricing import price_list
from observability.calls import TraceContext
from observability.metrics import BATCH_LINES
from workers.batches import lifecycle
from workers.batches.quota import OUT_OF_BUDGET, Quota
from workers.waiting import Waiting

log = logging.getLogger("gatehouse.batches")
LEASE_MS = 5_000
REFRESH_S = 1.0
RECONCILE_S = 5.0
MAX_LINE_TRIES = 3
FEED_CHUNK = 64
BUFFER = 512  # pending lines read ahead per batch
LEAD_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
return 0
"""
PROBE_LUA = """
local out = {}
for i = 1, #ARGV, 2 do
  if redis.call('EXISTS', ARGV[i]) == 1 or redis.call('HEXISTS', KEYS[1], ARGV[i + 1]) == 1 then out[#out + 1] = 1
  else out[#out + 1] = 0 end
end
return out
"""
RELEASE_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end"
FEED = q.FAIR_SCORE_LUA + b.FEED_LUA


@dataclass(slots=True)
class Fed:
    batch_id: str
    line: int
    custom_id: str
    model: str
    tries: int
    at: float


class BatchRunner:
    def __init__(self, redis: Redis, db: Database, config: Config, worker_id: str):
        self.redis = redis
        self.store = BatchStore(db)
        self.files = FileStore(db)
        self.quota = Quota(redis, db)
        self.config = config
        self.settings = config.settings
        self.worker_id = worker_id
        self.models = config.models()
        self.prices = price_list(self.models)
        self.leading = False
        self.batches: dict[str, BatchRecord] = {}
        self.fed: dict[str, Fed] = {}  # job id -> the line it runs
        self.per_model: Counter[str] = Counter()
        self.buffers: dict[str, deque[PendingLine]] = {}
        self.cursors: dict[str, int] = {}
        self.last_id = "0-0"
        self._refreshed = 0.0
        self._reconciled = time.monotonic()
        self._turn = 0
        self._waiting = Waiting(log, "batch runner")
        self._expiring: set[str] = set()  # batches past their window, being stopped as expired
        self._lead = redis.register_script(LEAD_LUA)
        self._probe = redis.register_script(PROBE_LUA)
        self._feed = redis.register_script(FEED)
        self._release = redis.register_script(RELEASE_LUA)

    def cap(self, model: str) -> int:
        return self.settings.batch_model_concurrency.get(model, self.settings.batch_max_concurrent)

    # ── the loop ──────────────────────────────────────────────────────────────────────────────────────
    async def run(self) -> None:
        while True:
            try:
                lead = await self._lead(keys=[b.RUNNER_KEY], args=[self.worker_id, LEASE_MS])
                if not lead:
                    self._drop_state()
                    await asyncio.sleep(1.0)
                    continue
                if lead == 2 or not self.leading:
                    self._drop_state()
                    self.leading = True
                    log.info("this worker runs the batches now")
                await self.tick()
                self._waiting.ok()
            except asyncio.CancelledError:
                raise
            except (*q.REDIS_DOWN, DatabaseUnavailable) as e:
                self._waiting.trouble(type(e).__name__)
                await asyncio.sleep(1.0)
            except asyncpg.UndefinedTableError:  # a worker may start before the gateway's first migration
                self._waiting.trouble("the batch tables do not exist yet (the gateway creates them when it starts)")
                await asyncio.sleep(1.0)
            except Exception:  # a bug must not end the runner: log it, try again
                log.exception("batch runner tick failed")
                await asyncio.sleep(1.0)

    async def aclose(self) -> None:
        if self.leading:
            try:
                await self._release(keys=[b.RUNNER_KEY], args=[self.worker_id])
            except q.REDIS_DOWN:
                pass

    async def tick(self) -> None:
        await self.collect(block_ms=200 if self.fed else 50)
        now = time.monotonic()
        if now - self._refreshed >= REFRESH_S:
            self._refreshed = now
            await self.refresh()
        await self.feed()
        if now - self._reconciled >= RECONCILE_S:
            self._reconciled = now
            await self.reconcile()
        if not self.fed and not any(self.buffers.values()):
            await asyncio.sleep(0.2)

    def _drop_state(self) -> None:
        self.leading = False
        self.batches.clear()
        self.fed.clear()
        self.per_model.clear()
        self.buffers.clear()
        self.cursors.clear()
        self.last_id = "0-0"

    # ── 1. results ────────────────────────────────────────────────────────────────────────────────────
    async def collect(self, block_ms: int) -> None:
        # block=0 would be XREAD BLOCK 0: wait until an entry arrives, however long; 0 here means do not wait
        reply = await self.redis.xread({b.RESULTS_STREAM: self.last_id}, count=2_000, block=block_ms or None)
        if not reply:
            return
        entries = reply[0][1] if isinstance(reply, list) else next(iter(reply.values()))[0]
        per_batch: dict[str, list[tuple[int, list[dict[str, Any]]]]] = {}
        for _entry_id, fields in entries:
            parsed = b.parse_line_job(fields[b"j"].decode())
            if parsed is None:
                continue
            job_id = fields[b"j"].decode()
            fed = self.fed.pop(job_id, None)
            if fed is not None:
                self.per_model[fed.model] -= 1
            per_batch.setdefault(parsed[0], []).append((parsed[1], q.unpack_events(fields[q.EVENT_FIELD])))
        for batch_id, done in per_batch.items():
            await self._record(batch_id, done)
        ids = [e[0] for e in entries]
        await self.redis.xdel(b.RESULTS_STREAM, *ids)
        self.last_id = ids[-1].decode() if isinstance(ids[-1], bytes) else ids[-1]

    async def _record(self, batch_id: str, done: list[tuple[int, list[dict[str, Any]]]]) -> None:
        batch = self.batches.get(batch_id) or await self.store.get(batch_id)
        if batch is None:
            return
        known = await self.store.custom_ids(batch_id, [line for line, _ in done])
        kind = b.kind_of(batch.endpoint)
        results, costs = [], []
        for line, events in done:
            if line not in known:
                continue
            custom_id, model = known[line]
            result = b.answered(line, custom_id, kind, model, events)
            results.append(result)
            price = self.prices.get(model)
            costs.append(price.cost(result.prompt_tokens, result.completion_tokens) if price and result.ok else 0.0)
        landed = await self.store.record(batch, results, costs)
        await self.quota.charge(batch, landed)
        ok = sum(1 for r in results if r.ok)
        BATCH_LINES.labels("completed").inc(min(ok, landed.lines))
        BATCH_LINES.labels("failed").inc(max(0, landed.lines - ok))

    # ── 2. batches ────────────────────────────────────────────────────────────────────────────────────
    async def refresh(self) -> None:
        for batch_id in await self.store.expired():
            # stopped like a cancel (below), but stamped as what it is: an expired batch has no cancelling_at
            await self.store.set_status(batch_id, "cancelling", stamp="expired_at", where=["in_progress"])
            self._expiring.add(batch_id)
        active = await self.store.active()
        self.batches = {x.id: x for x in active}
        for batch in active:
            if batch.status == "validating":
                if await lifecycle.validate(self.store, self.files, batch, self.models,
                                            self.settings.max_tokens_limit):
                    self.batches[batch.id] = (await self.store.get(batch.id)) or batch
            elif batch.status == "cancelling":
                await self._stop(batch)
            elif batch.status == "finalizing" or (batch.status == "in_progress" and not self._running(batch.id)
                                                   and await self.store.pending_count(batch.id) == 0):
                await self.store.set_status(batch.id, "finalizing", stamp="finalizing_at", where=["in_progress"])
                await lifecycle.finish(self.store, self.files, batch, "completed", "completed_at")
                await self._forget(batch.id)
        for gone in set(self.buffers) - set(self.batches):
            await self._forget(gone)
        for batch in self.batches.values():  # nothing in flight or read ahead: read pending lines from the start
            if batch.status == "in_progress" and not self._running(batch.id):
                self.cursors[batch.id] = 0

    def _running(self, batch_id: str) -> bool:
        return any(f.batch_id == batch_id for f in self.fed.values()) or bool(self.buffers.get(batch_id))

    async def _stop(self, batch: BatchRecord) -> None:
        """Cancel (or expire) a batch: drop its queued lines, stop its running ones, close the rest."""
        expires_at = batch.stamps.get("expires_at")
        expired = batch.id in self._expiring or (expires_at is not None and expires_at.timestamp() <= time.time())
        # lines that finished so far keep their results; collected before the running ones are cancelled, so that
        # those (whose results arrive as 499 "cancelled") are closed below as not run, not counted as failed
        await self.collect(block_ms=0)
        queued = [m.decode() for m in await self.redis.zrange(q.BATCH_QUEUE, 0, -1)]
        mine = sorted({j for j in (*queued, *self.fed) if j.startswith(batch.id + ":")})
        if mine:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.zrem(q.BATCH_QUEUE, *mine)
                pipe.hdel(q.tenants_key(q.BATCH_QUEUE), *mine)
                pipe.delete(*(q.ARQ_JOB_PREFIX + j for j in mine))
                for j in mine:
                    pipe.publish(q.CANCEL_CHANNEL, j)
                await pipe.execute()
        code, message = (("batch_expired", "The batch expired before this request ran.") if expired
                         else ("batch_cancelled", "The batch was cancelled before this request ran."))
        closed = await lifecycle.close_unfinished(self.store, batch, code, message)
        BATCH_LINES.labels("expired" if expired else "cancelled").inc(closed)
        for j in mine:
            f = self.fed.pop(j, None)
            if f is not None:
                self.per_model[f.model] -= 1
        if expired:
            await lifecycle.finish(self.store, self.files, batch, "expired", "expired_at")
        else:
            await lifecycle.finish(self.store, self.files, batch, "cancelled", "cancelled_at")
        self._expiring.discard(batch.id)
        await self._forget(batch.id)

    async def _out_of_budget(self, batch: BatchRecord) -> None:
        """Fail the batch's lines not yet fed (those running finish); the batch then completes as usual."""
        self.buffers.pop(batch.id, None)
        cursor = 0
        while page := await self.store.pending(batch.id, cursor, 2_000):
            cursor = page[-1].line
            results = [b.not_run(ln.line, ln.custom_id, OUT_OF_BUDGET, self.quota.message(batch)) for ln in page
                       if b.line_job_id(batch.id, ln.line) not in self.fed]
            landed = await self.store.record(batch, results, [0.0] * len(results))
            BATCH_LINES.labels("failed").inc(landed.lines)
        log.warning("batch %s: the budget of its key is spent; its remaining lines fail (%s)", batch.id,
                    OUT_OF_BUDGET)

    async def _forget(self, batch_id: str) -> None:
        self.quota.forget(batch_id)
        self.buffers.pop(batch_id, None)
        self.cursors.pop(batch_id, None)
        await self.redis.delete(b.done_key(batch_id))

    # ── 3. feeding ────────────────────────────────────────────────────────────────────────────────────
    async def feed(self) -> None:
        running = [x for x in self.batches.values() if x.status == "in_progress"]
        if not running:
            return
        self._turn = (self._turn + 1) % len(running)
        order = running[self._turn:] + running[:self._turn]
        progress = True
        while progress:
            progress = False
            for batch in order:
                blocked = await self.quota.blocked(batch)
                if blocked == "budget":
                    await self._out_of_budget(batch)
                if blocked:
                    continue
                chunk = await self._take(batch)
                if chunk:
                    await self._send(batch, chunk)
                    progress = True

    async def _take(self, batch: BatchRecord) -> list[PendingLine]:
        """Up to FEED_CHUNK of the batch's pending lines whose model has room under its cap."""
        buf = self.buffers.setdefault(batch.id, deque())
        if not buf:
            page = await self.store.pending(batch.id, self.cursors.get(batch.id, 0), BUFFER)
            if not page:
                return []
            self.cursors[batch.id] = page[-1].line
            buf.extend(ln for ln in page if b.line_job_id(batch.id, ln.line) not in self.fed)
        out: list[PendingLine] = []
        kept: deque[PendingLine] = deque()
        while buf and len(out) < FEED_CHUNK:
            ln = buf.popleft()
            if self.per_model[ln.model] + sum(1 for x in out if x.model == ln.model) < self.cap(ln.model):
                out.append(ln)
            else:
                kept.append(ln)
                if len(kept) > FEED_CHUNK:
                    break
        buf.extendleft(reversed(kept))
        return out

    async def _send(self, batch: BatchRecord, lines: list[PendingLine]) -> None:
        now = time.time()
        deadline = now + self.settings.request_timeout_s
        args: list[Any] = []
        for ln in lines:
            job_id = b.line_job_id(batch.id, ln.line)
            args += [job_id, q.ARQ_JOB_PREFIX + job_id, self._payload(batch, ln, job_id, deadline, now),
                     int(self.settings.request_timeout_s * 1000), batch.tenant, batch.priority, ln.line,
                     q.job_label(batch.tenant, ln.model)]
        keys = [q.BATCH_QUEUE, q.wake_key(q.INTERACTIVE_QUEUE), q.fair_key(q.BATCH_QUEUE), b.done_key(batch.id),
                q.tenants_key(q.BATCH_QUEUE)]
        await self._feed(keys=keys, args=args)
        for ln in lines:
            self.fed[b.line_job_id(batch.id, ln.line)] = Fed(batch.id, ln.line, ln.custom_id, ln.model, ln.tries,
                                                             time.monotonic())
            self.per_model[ln.model] += 1

    def _payload(self, batch: BatchRecord, ln: PendingLine, job_id: str, deadline: float, now: float) -> bytes:
        body = orjson.loads(ln.body)
        req = b.ENDPOINTS[batch.endpoint].model_validate(body)
        trace = None
        if self.settings.tracing.enabled:
            trace = TraceContext(route=f"POST {batch.endpoint} (batch)", received_at=now,
                                 user_id=batch.key_id or batch.user_id or "master", session_id=batch.id,
                                 team_id=batch.team_id).to_dict()
        spec = req.to_job(body, request_id=job_id, deadline=deadline, trace=trace)
        spec.tenant, spec.priority = batch.tenant, batch.priority
        return q.serialize_job(spec, int(now * 1000))

    # ── 4. lost lines ─────────────────────────────────────────────────────────────────────────────────
    async def reconcile(self) -> None:
        """Lines fed a while ago whose job is gone from Redis without a result (a Valkey restart lost it, or it
        expired in the queue) are fed again; after MAX_LINE_TRIES they fail with ``worker_lost``."""
        old = [(j, f) for j, f in self.fed.items() if time.monotonic() - f.at > RECONCILE_S]
        by_batch: dict[str, list[tuple[str, Fed]]] = {}
        for j, f in old:
            by_batch.setdefault(f.batch_id, []).append((j, f))
        for batch_id, items in by_batch.items():
            args: list[Any] = []
            for j, f in items:
                args += [q.ARQ_JOB_PREFIX + j, f.line]
            alive = await self._probe(keys=[b.done_key(batch_id)], args=args)
            lost = [(j, f) for (j, f), ok in zip(items, alive, strict=True) if not ok]
            if not lost:
                continue
            await self._collect_then_refeed(batch_id, lost)

    async def _collect_then_refeed(self, batch_id: str, lost: list[tuple[str, Fed]]) -> None:
        batch = self.batches.get(batch_id)
        for j, f in lost:
            self.fed.pop(j, None)
            self.per_model[f.model] -= 1
        if batch is None or batch.status != "in_progress":
            return
        log.warning("batch %s: %d line(s) lost from the queue; feeding them again", batch_id, len(lost))
        await self.store.lost(batch_id, [f.line for _, f in lost])
        given_up = [f for _, f in lost if f.tries + 1 >= MAX_LINE_TRIES]
        if given_up:
            results = [b.not_run(f.line, f.custom_id, "worker_lost", "The request was lost with its workers "
                                 f"{MAX_LINE_TRIES} times; not running it again.") for f in given_up]
            await self.store.record(batch, results, [0.0] * len(results))
        retry = {f.line for _, f in lost if f.tries + 1 < MAX_LINE_TRIES}
        if retry:
            buf = self.buffers.setdefault(batch_id, deque())
            pending = await self.store.pending(batch_id, min(retry) - 1, len(retry) + BUFFER)
            buf.extendleft(reversed([ln for ln in pending if ln.line in retry]))
