"""The arq worker: picks interactive jobs without a polling delay and runs them on their backend.

arq's own loop sleeps ``poll_delay`` between queue reads. ``GatehouseWorker`` replaces that sleep: it
blocks on the queue's wake list (BLMPOP, which also drains up to the number of free slots in one round
trip) and falls back to arq's poll on timeout, so a lost wake-up costs at most ``poll_delay``. Two more
round-trip savings: due jobs are read and locked in one Lua call, and a job's last output events ride in
arq's end-of-job transaction. Running a job (``run_job``: timeouts, abort, bookkeeping) follows arq's
semantics. Leases, reaping and the shutdown hand-back are ADR 0014's; a Redis outage is waited out with
backoff rather than ending the process. See docs/adr/0002-worker-wake-up.md; the arq internals it relies on
are listed in arq_compat.py.
The job function itself is ``workers.runner.run_request``.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, NamedTuple

from arq.constants import abort_jobs_ss, in_progress_key_prefix, job_key_prefix, retry_key_prefix
from arq.worker import Worker
from redis.commands.core import AsyncScript
from redis.exceptions import ResponseError

from core import leases, recent
from core import queue as q
from core.batches import RESULTS_STREAM, done_key, parse_line_job
from core.redis_client import arq_pool
from workers.events import EventWriter
from workers.runner import run_request
from workers.state import STATE_KEY, WorkerState, state_of

if TYPE_CHECKING:
    from gpu_apps.scaling import HybridScaler

log = logging.getLogger("gatehouse.worker")
BUSY_HOLD_S = 0.5  # a worker counts as busy with interactive calls this long after its last one
BATCH_TRICKLE_S = 1.0  # a busy worker still starts a batch line this often


class Claimed(NamedTuple):
    """What the claim script fetched for one job (arq's run_job would fetch it in a round trip of its own)."""

    payload: bytes | None
    tries: int
    aborted: bool


class GatehouseWorker(Worker):
    """arq's Worker with a wake-driven main loop, a lease (heartbeats, and reaping the jobs of dead workers and
    gateways: core.leases), cancellation by pub/sub, and a shutdown that hands unfinished jobs back."""

    worker_id: str
    _slot_freed: asyncio.Event
    _claim: AsyncScript
    _beat: AsyncScript
    _reap: AsyncScript
    _reap_gateways: AsyncScript
    _claimed: dict[str, Claimed]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.worker_id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._claimed = {}  # job id -> what the claim script fetched for it, until run_job takes it
        self._handed_back: set[str] = set()  # jobs cut short by shutdown: settled by hand_back, not finish_job
        self._unfinished: list[str] = []  # jobs whose end-of-job bookkeeping met a Redis outage
        self._redis_down_since: float | None = None
        self.batch_queue = q.BATCH_QUEUE
        self._lanes = [q.INTERACTIVE_QUEUE, q.fair_key(q.INTERACTIVE_QUEUE), self.batch_queue,
                       q.fair_key(self.batch_queue)]
        self._batch_jobs: set[str] = set()  # jobs this worker claimed from the batch lane, until their end is written
        self._batch_running = 0  # of them, those running (batch lines and calls by batch-lane keys alike)
        self._interactive_running = 0  # jobs from the interactive lane running here
        self._interactive_at = -BUSY_HOLD_S  # monotonic time this worker last claimed or ended an interactive job
        self._batch_at = 0.0  # and last claimed a job from the batch lane
        self.batch_share = 1.0  # of max_jobs, at most, for batch lines (set by workers.assemble)
        self.batch_busy_slots = 0  # batch lines at most while interactive calls run here (set by workers.assemble)

    @property
    def state(self) -> WorkerState:
        return state_of(self.ctx)

    async def main(self) -> None:
        if self._pool is None:  # arq's create_pool, or through Sentinel core.redis_client's (TLS and all)
            self._pool = await arq_pool(self.redis_settings, job_deserializer=self.job_deserializer,
                                        job_serializer=self.job_serializer, default_queue_name=self.queue_name,
                                        expires_extra_ms=self.expires_extra_ms)
        self.ctx["redis"] = self.pool
        self._claim = self.pool.register_script(q.CLAIM_LUA)
        self._beat = self.pool.register_script(leases.HEARTBEAT_LUA)
        self._reap = self.pool.register_script(leases.REAP_LUA)
        self._reap_gateways = self.pool.register_script(leases.REAP_GATEWAYS_LUA)
        if self.on_startup:
            await self.on_startup(self.ctx)
        gc.collect()
        gc.freeze()  # models and clients live as long as the process: keep the collector off them
        gc.set_threshold(20_000, 50, 100)  # fewer young-generation passes under load
        self._slot_freed = asyncio.Event()
        side_tasks = [asyncio.create_task(self._keep_lease()), asyncio.create_task(self._listen_cancels())]
        if self.state.backends.scaler is not None:
            side_tasks.append(asyncio.create_task(self._scale(self.state.backends.scaler)))
        log.info("worker %s ready on %s (max %d concurrent jobs)", self.worker_id, self.queue_name, self.max_jobs)
        try:
            wake = q.wake_key(self.queue_name)
            use_lmpop = True
            while True:
                try:
                    await self._poll_iteration()
                    if self.burst and not self.tasks and await self.pool.zcard(self.queue_name) == 0:
                        return
                    free = self.max_jobs - self.job_counter
                    if free <= 0 or not self.allow_pick_jobs:
                        self._slot_freed.clear()
                        with contextlib.suppress(TimeoutError):
                            await asyncio.wait_for(self._slot_freed.wait(), self.poll_delay_s)
                        continue
                    try:
                        if use_lmpop:
                            await self._command("BLMPOP", self.poll_delay_s, 1, wake, "LEFT", "COUNT", free)
                        else:
                            await self._command("BLPOP", wake, self.poll_delay_s)
                    except ResponseError:  # Redis < 7 has no BLMPOP
                        use_lmpop = False
                    self._redis_back()
                except q.REDIS_DOWN as e:
                    await self._redis_lost(e)
        finally:
            for t in side_tasks:
                t.cancel()

    def _batch_room(self, free: int) -> int:
        """How many batch lines to claim now: within ``batch_share`` of the slots, so interactive calls always
        find some free. While interactive calls run on this worker (or did within ``BUSY_HOLD_S``), batch lines
        share its CPU and event loop with them, and the lane only works if they yield: then at most
        ``batch_busy_slots`` run, and one more starts each ``BATCH_TRICKLE_S`` so batches never stall."""
        now = time.monotonic()
        cap = int(self.max_jobs * self.batch_share)
        if self._interactive_running or now - self._interactive_at < BUSY_HOLD_S:
            cap = min(cap, self.batch_busy_slots)
            if self._batch_running >= cap and now - self._batch_at >= BATCH_TRICKLE_S:
                cap = self._batch_running + 1
        return max(0, min(free, cap - self._batch_running))

    async def _redis_lost(self, e: BaseException) -> None:
        """Redis is unreachable: say so once, keep running jobs, and try again with a growing pause."""
        now = time.monotonic()
        if self._redis_down_since is None:
            self._redis_down_since = now
            log.error("Redis is unreachable (%s); retrying until it is back", type(e).__name__)
        await asyncio.sleep(min(2.0, 0.25 + (now - self._redis_down_since) / 4))

    def _redis_back(self) -> None:
        if self._redis_down_since is not None:
            log.warning("Redis is reachable again after %.1f s", time.monotonic() - self._redis_down_since)
            self._redis_down_since = None

    async def _command(self, *args: Any) -> Any:
        """A raw Redis command: BLMPOP has no redis-py method, and its BLPOP stub takes whole seconds only
        (Redis accepts a fractional timeout, and the wait is ``poll_delay_s``, 0.5 s)."""
        execute: Callable[..., Awaitable[Any]] = self.pool.execute_command
        return await execute(*args)

    async def _poll_iteration(self) -> None:
        """arq's poll iteration, with the queue read and the per-job locks in one Lua call (CLAIM_LUA)."""
        free = self.max_jobs - self.job_counter
        if self.allow_pick_jobs and free > 0:
            claimed = await self._claim(keys=self._lanes,
                                        args=[free, int(self.in_progress_timeout_s * 1000), in_progress_key_prefix,
                                              self._batch_room(free), self.queue_read_limit, job_key_prefix,
                                              retry_key_prefix, abort_jobs_ss, q.RETRY_KEY_TTL_S,
                                              q.running_key(self.worker_id)])
            for i in range(0, len(claimed), q.CLAIM_FIELDS):
                job_id, score, payload, tries, aborted, lane = claimed[i:i + q.CLAIM_FIELDS]
                job_id = job_id.decode()
                if lane == q.CLAIM_BATCH:
                    self._batch_jobs.add(job_id)
                    self._batch_running += 1
                    self._batch_at = time.monotonic()
                else:
                    self._interactive_running += 1
                    self._interactive_at = time.monotonic()
                self._claimed[job_id] = Claimed(payload, int(tries), bool(aborted))
                await self.sem.acquire()  # never blocks: at most `free` jobs were claimed
                self.job_counter += 1
                task = self.loop.create_task(self.run_job(job_id, int(float(score))))
                task.add_done_callback(lambda _: self._release_sem_dec_counter_on_complete())
                self.tasks[job_id] = task
            if claimed:
                await asyncio.sleep(0)  # let the jobs start (up to their upstream call) before waiting again
        if self.allow_abort_jobs:
            await self._cancel_aborted_jobs()
        for job_id, t in list(self.tasks.items()):
            if t.done():
                del self.tasks[job_id]
                t.result()  # surface errors raised by run_job itself
        await self.heart_beat()

    async def run_job(self, job_id: str, score: int) -> None:
        """arq's run_job for Gatehouse's one job function, with what the claim already fetched: no second round
        trip for the job, no per-job context copy or argument repr, and the job function runs in this task (no
        second task per job). Timeouts, abort and counters as arq's."""
        claim = self._claimed.pop(job_id, None) or Claimed(None, 1, False)
        batch = job_id in self._batch_jobs
        try:
            args = self._job_args(job_id, claim)
            if args is None:
                self.jobs_failed += 1
                return
            this = asyncio.current_task()
            assert this is not None
            self.job_tasks[job_id] = this  # what the cancel listener and arq's abort cancel
            try:
                async with asyncio.timeout(self.job_timeout_s):
                    await run_request(self.ctx, args[0], q.BATCH_LANE if batch else q.INTERACTIVE_LANE)
                self.jobs_complete += 1
            except asyncio.CancelledError:
                self.jobs_failed += 1
                if job_id not in self.aborting_tasks:  # the worker is stopping: hand_back settles the job
                    self.state.final_events.pop(job_id, None)
                    self.state.bench_timings.pop(job_id, None)
                    self._handed_back.add(job_id)
                    log.info("job %s stopped before it finished; handed back", job_id)
                    return
                self.aborting_tasks.discard(job_id)
                log.info("job %s aborted", job_id)
            except TimeoutError:
                self.jobs_failed += 1
                log.warning("job %s passed the worker's job timeout (%.0f s)", job_id, self.job_timeout_s)
            except q.REDIS_DOWN as e:
                self.jobs_failed += 1
                log.warning("job %s lost Redis while running (%s)", job_id, type(e).__name__)
            except Exception:
                self.jobs_failed += 1
                log.exception("job %s failed", job_id)  # run_request handles its own errors: this is a bug
            finally:
                self.job_tasks.pop(job_id, None)
        finally:
            if batch:
                self._batch_running -= 1
            else:
                self._interactive_running -= 1
                self._interactive_at = time.monotonic()
            if job_id in self._handed_back:
                self._handed_back.discard(job_id)
                self._batch_jobs.discard(job_id)
            else:
                try:
                    await asyncio.shield(self.finish_job(job_id, True, None, 0, False, None, None))
                except q.REDIS_DOWN:  # its client has lost Redis too: clean up once Redis is back
                    self._unfinished.append(job_id)

    def _job_args(self, job_id: str, claim: Claimed) -> list[Any] | None:
        """The job's arguments, or None (and why, logged) when it cannot run."""
        if claim.payload is None:
            log.warning("job %s expired before a worker took it", job_id)
            return None
        if claim.aborted:
            log.info("job %s was cancelled before it started", job_id)
            return None
        if claim.tries > self.max_tries:
            log.warning("job %s was already tried %d time(s); not running it again", job_id, claim.tries - 1)
            self.state.final_events[job_id] = [leases.LOST_EVENT, q.END_EVENT]  # its client is still waiting
            return None
        job = q.loads(claim.payload)
        if job.get("f") != q.JOB_FUNCTION:
            log.warning("job %s names an unknown function %r", job_id, job.get("f"))
            return None
        return list(job["a"])

    async def finish_job(self, job_id: str, finish: bool, result_data: bytes | None,
                         result_timeout_s: float | None, keep_result_forever: bool, incr_score: int | None,
                         keep_in_progress: float | None) -> None:
        """arq's end-of-job bookkeeping, with the request's last output events in the same transaction."""
        state = self.state
        events = state.final_events.pop(job_id, None)
        timing = state.bench_timings.pop(job_id, None) if state.bench_timings else None
        failure = state.failures.pop(job_id, None) if state.failures else None
        try:
            await self._finish_job(job_id, events, finish, result_data, result_timeout_s, keep_result_forever,
                                   incr_score, keep_in_progress, timing, failure)
            self._batch_jobs.discard(job_id)
        except q.REDIS_DOWN:
            if events is not None:  # kept for the retry once Redis is back (run_job: _unfinished), not dropped
                state.final_events[job_id] = events
            if timing is not None:
                state.bench_timings[job_id] = timing
            if failure is not None:
                state.failures[job_id] = failure
            raise
        finally:
            call = state.finished_calls.pop(job_id, None)
            if call is not None:
                state.observer.trace(call)

    async def _finish_job(self, job_id: str, events: list[bytes] | None, finish: bool, result_data: bytes | None,
                          result_timeout_s: float | None, keep_result_forever: bool, incr_score: int | None,
                          keep_in_progress: float | None, timing: bytes | None = None,
                          failure: bytes | None = None) -> None:
        running = q.running_key(self.worker_id)
        if not finish or result_data is not None or keep_in_progress is not None:
            if timing is not None:
                await self.pool.set(q.bench_timing_key(job_id), timing, ex=q.BENCH_TIMING_TTL_S)
            if failure is not None:
                await recent.note(self.pool, failure)
            if events:
                await EventWriter(self.pool, job_id).write(events)
            await super().finish_job(job_id, finish, result_data, result_timeout_s, keep_result_forever,
                                     incr_score, keep_in_progress)
            await self._command("HDEL", running, job_id)
            return
        line = parse_line_job(job_id)
        queue = self.batch_queue if job_id in self._batch_jobs else self.queue_name
        async with self.pool.pipeline(transaction=True) as tr:
            if timing is not None:  # a benchmark call's timing record: there before its client reads the end
                tr.set(q.bench_timing_key(job_id), timing, ex=q.BENCH_TIMING_TTL_S)
            if failure is not None:  # for operators: the recent-errors list (core.recent)
                recent.push(tr, failure)
            if line is not None:  # a batch line: its result goes to the batch runner, with the line marked done
                if events:
                    tr.xadd(RESULTS_STREAM, {b"j": job_id, q.EVENT_FIELD: q.pack_events(events)})
                    tr.hset(done_key(line[0]), str(line[1]), "1")
                tr.zrem(self.batch_queue, job_id)
                tr.hdel(q.tenants_key(self.batch_queue), job_id)
            else:
                if events:
                    out = q.output_key(job_id)
                    tr.xadd(out, {q.EVENT_FIELD: q.pack_events(events)})
                    tr.expire(out, q.OUTPUT_TTL_S)
                tr.zrem(queue, job_id)
                tr.hdel(q.tenants_key(queue), job_id)
            tr.delete(in_progress_key_prefix + job_id, retry_key_prefix + job_id, job_key_prefix + job_id)
            tr.hdel(running, job_id)
            tr.zrem(abort_jobs_ss, job_id)
            await tr.execute()

    def _release_sem_dec_counter_on_complete(self) -> None:
        super()._release_sem_dec_counter_on_complete()
        self._slot_freed.set()

    async def _keep_lease(self) -> None:
        """Beat every HEARTBEAT_INTERVAL_S, then reap the jobs of workers whose lease ran out (core.leases)."""
        busy = [q.busy_key(lane) for lane in q.LANES]
        first = True
        while True:
            try:
                added = await self._beat(keys=[q.WORKERS_KEY, *busy], args=[
                    self.worker_id, self._interactive_running, self._batch_running])
                if added and not first:
                    self._declared_dead()
                first = False
                while self._unfinished:
                    await self.finish_job(self._unfinished[-1], True, None, 0, False, None, None)
                    self._unfinished.pop()
                done = leases.reaped(await self._reap(keys=leases.reap_keys(self.queue_name), args=leases.reap_args()))
                if done:
                    log.warning("reaped: %s", done.describe())
                    if done.ended:
                        await recent.note(self.pool, recent.reaped_record(done.describe(), self.worker_id))
                gone = leases.gateways_reaped(await self._reap_gateways(
                    keys=leases.gateway_reap_keys(self.queue_name), args=leases.gateway_reap_args()))
                if gone:
                    log.warning("reaped: %s", gone.describe())
            except Exception as e:  # noqa: BLE001 - keep beating through Redis blips (the main loop reports them)
                log.debug("heartbeat failed: %s", type(e).__name__)
            self.state.observer.sample_pool(self.state.backends.entropy_pool)
            await asyncio.sleep(q.HEARTBEAT_INTERVAL_S)

    def _declared_dead(self) -> None:
        """Another process reaped this worker (its beats stopped for a whole lease: a stall, a network split):
        its jobs were re-queued or ended for their clients, so stop them without writing anything more."""
        log.error("this worker missed its lease and was declared dead; dropping its %d running job(s)",
                  len(self.job_tasks))
        for job_id, task in list(self.job_tasks.items()):
            self._handed_back.add(job_id)
            self.aborting_tasks.discard(job_id)
            task.cancel()

    async def hand_back(self) -> None:
        """At shutdown: jobs cut short go back to the queue (no output yet) or end with ``worker_stopped``."""
        done = leases.reaped(await self._reap(keys=leases.reap_keys(self.queue_name),
                                              args=leases.reap_args(worker_id=self.worker_id,
                                                                    event=leases.STOPPED_EVENT)))
        if done.requeued or done.ended:
            log.info("handed back %d job(s) to the queue; %d ended with worker_stopped", done.requeued, done.ended)

    async def _scale(self, scaler: HybridScaler) -> None:
        """Hybrid scaling: apply changed scaledown windows, publish the report for the gateway's /health."""
        last_error = None
        while True:
            await asyncio.sleep(q.SCALING_INTERVAL_S)
            try:
                await asyncio.wait_for(scaler.reconcile(), 30)
                last_error = None
            except Exception as e:  # noqa: BLE001 - Modal unreachable or refusing: keep serving, say it once
                if type(e).__name__ != last_error:
                    log.warning("hybrid scaling could not update Modal: %s", type(e).__name__)
                last_error = type(e).__name__
            try:
                async with self.pool.pipeline(transaction=False) as pipe:
                    pipe.hset(q.SCALING_KEY, self.worker_id, q.dumps(scaler.health()).decode())
                    pipe.expire(q.SCALING_KEY, int(q.SCALING_INTERVAL_S * 6))
                    await pipe.execute()
            except Exception as e:  # noqa: BLE001
                log.warning("could not publish the scaling report: %s", type(e).__name__)

    async def _listen_cancels(self) -> None:
        failing = False
        while True:
            pubsub = self.pool.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(q.CANCEL_CHANNEL)
                failing = False
                async for msg in pubsub.listen():
                    rid = msg["data"].decode() if isinstance(msg["data"], bytes) else str(msg["data"])
                    task = self.job_tasks.get(rid)
                    if task is not None and not task.done():
                        log.info("cancelling %s: client gone or timed out", rid)
                        self.aborting_tasks.add(rid)
                        task.cancel()
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - reconnect; said once per outage
                if not failing:
                    log.warning("cancel listener reconnecting after %s", type(e).__name__)
                failing = True
                await asyncio.sleep(0.5)
            finally:
                await pubsub.aclose()  # type: ignore[no-untyped-call]  # redis-py leaves PubSub.aclose unannotated

    async def close(self) -> None:
        """arq's shutdown, tolerating a Redis that is already gone (e.g. Ctrl-C reached it first)."""
        try:
            await super().close()
        except q.REDIS_DOWN as e:
            log.warning("Redis was unreachable during shutdown (%s); nothing left to clean up there",
                        type(e).__name__)
            if STATE_KEY in self.ctx:
                await self.state.backends.aclose()
