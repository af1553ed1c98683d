"""The benchmark runner (docs/adr/0018-benchmark-runs.md): one per deployment at a time (the Redis lease
``gatehouse:bench:runner``, renewed every tick and taken over within seconds when its worker dies), running in
a worker process beside its jobs.

Every second it reads the runs that are not final (core.benchstore) and moves each on:
  * ``queued`` → ``running``, and a task that drives it (load.py) through the gateway the run was submitted to;
  * ``running`` without a task here (a runner before this one died, or the task crashed: logged, tried again
    after a pause) → a task that resumes it: what has a result is skipped;
  * ``cancelling`` → its task cancelled (results so far are kept), its keys revoked, ``cancelled``.
A task that has every result recorded revokes the run's keys and finishes it ``completed``; a suite that cannot
be read (or a run whose task keeps failing) finishes ``failed``. Losing the lease (or Redis for longer than it)
stops every task at once: the next runner resumes them.

PostgreSQL missing, down or not migrated yet, or Redis down: the runner waits, quietly, and never ends the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter

import asyncpg
from redis.asyncio import Redis

from core import queue as q
from core import usage
from core.benchstats import levels_of
from core.benchstore import BenchRecord, BenchStore
from core.benchsuite import Suite, SuiteError
from core.config import Config
from core.database import Database, DatabaseUnavailable
from workers.benchmarks import load
from workers.benchmarks.client import BenchClient
from workers.benchmarks.keys import KEYS_PREFIX, RunKeys, revoke_all
from workers.benchmarks.recorder import Recorder
from workers.benchmarks.sandbox import sandbox_for
from workers.waiting import Waiting

log = logging.getLogger("gatehouse.benchmarks")
RUNNER_KEY = "gatehouse:bench:runner"
LEASE_MS = 5_000
TICK_S = 1.0
SWEEP_KEYS_S = 30.0  # how often key sets of runs that are no longer driven are revoked (after a crash)
CLOSE_WAIT_S = 5.0
MAX_FAILURES = 5  # a run whose task fails this many times in a row (not counting outages) fails
LEAD_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 2 end
return 0
"""
RELEASE_LUA = "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end"
TRANSIENT = (*q.REDIS_DOWN, DatabaseUnavailable, asyncpg.UndefinedTableError)


class BenchRunner:
    def __init__(self, redis: Redis, db: Database, config: Config, worker_id: str | None = None):
        self.redis = redis
        self.db = db
        self.store = BenchStore(db)
        self.settings = config.settings
        self.worker_id = worker_id or f"bench-{uuid.uuid4().hex}"
        self.leading = False
        self.tasks: dict[str, asyncio.Task[str]] = {}
        self.failures: Counter[str] = Counter()
        self.retry_at: dict[str, float] = {}
        self._renewed = 0.0
        self._swept = 0.0
        self._waiting = Waiting(log, "benchmark runner")
        self._lead = redis.register_script(LEAD_LUA)
        self._release = redis.register_script(RELEASE_LUA)

    # ── the loop ──────────────────────────────────────────────────────────────────────────────────────
    async def run(self) -> None:
        while True:
            try:
                if await self._keep_lease():
                    await self.tick()
                    self._waiting.ok()
            except asyncio.CancelledError:
                raise
            except (*q.REDIS_DOWN, DatabaseUnavailable) as e:
                self._waiting.trouble(type(e).__name__)
            except asyncpg.UndefinedTableError:  # a worker may start before the gateway's migration 0006
                self._waiting.trouble("the benchmark tables do not exist yet (the gateway creates them when it starts)")
            except Exception:  # a bug must not end the runner (nor the worker): log it, try again
                log.exception("benchmark runner tick failed")
            if self.leading and time.monotonic() - self._renewed > LEASE_MS / 1000:
                await self._stop_all("could not renew the lease")  # another worker may drive the runs by now
            await asyncio.sleep(TICK_S)

    async def _keep_lease(self) -> bool:
        lead = await self._lead(keys=[RUNNER_KEY], args=[self.worker_id, LEASE_MS])
        if not lead:
            if self.leading:
                await self._stop_all("another worker holds the lease")
            return False
        self._renewed = time.monotonic()
        if lead == 2 or not self.leading:
            if self.tasks:  # the lease lapsed and came back: whatever ran meanwhile may have moved on
                await self._stop_all("the lease lapsed")
            self.leading = True
            log.info("this worker runs the benchmarks now")
        return True

    async def aclose(self) -> None:
        """Stop driving (the next runner resumes the runs) and hand the lease back. The results that ended are
        written first, for at most ``CLOSE_WAIT_S`` (what is not, runs again)."""
        tasks = list(self.tasks.values())
        self.tasks.clear()
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=CLOSE_WAIT_S)
        if self.leading:
            self.leading = False
            try:
                await self._release(keys=[RUNNER_KEY], args=[self.worker_id])
            except q.REDIS_DOWN:
                pass

    async def _stop_all(self, why: str) -> None:
        if self.tasks:
            log.warning("benchmark runner stops driving %d run(s): %s", len(self.tasks), why)
        self.leading = False
        await self._cancel_tasks(list(self.tasks))

    async def _cancel_tasks(self, run_ids: list[str]) -> None:
        tasks = [t for r in run_ids if (t := self.tasks.pop(r, None)) is not None]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # ── runs ──────────────────────────────────────────────────────────────────────────────────────────
    async def tick(self) -> None:
        runs = await self.store.active()
        active = {run_id for run_id, _ in runs}
        gone = [r for r in {*self.tasks, *self.failures, *self.retry_at} if r not in active]  # finished, or deleted
        await self._cancel_tasks(gone)
        for run_id in gone:
            self._forget(run_id)
        for run_id, status in runs:
            if status == "cancelling":
                await self._cancel(run_id)
                continue
            task = self.tasks.get(run_id)
            if task is not None:
                if not task.done():
                    continue
                del self.tasks[run_id]
                if await self._ended(run_id, task):
                    continue
            if time.monotonic() < self.retry_at.get(run_id, 0.0):
                continue
            if status == "queued" and not await self.store.mark_running(run_id):
                continue  # cancelled (or taken) in the meantime: the next tick sees it as it is
            run = await self.store.get(run_id)
            if run is None:
                continue
            self.tasks[run_id] = asyncio.get_running_loop().create_task(self._drive(run), name=f"bench {run_id}")
        now = time.monotonic()
        if now - self._swept >= SWEEP_KEYS_S:
            self._swept = now
            await self._sweep_keys(active)

    async def _cancel(self, run_id: str) -> None:
        await self._cancel_tasks([run_id])
        revoked = await revoke_all(self.db, self.redis, run_id)
        await self.store.finish(run_id, "cancelled")
        self._forget(run_id)
        log.info("benchmark run %s cancelled (%d key(s) revoked)", run_id, revoked)

    async def _ended(self, run_id: str, task: asyncio.Task[str]) -> bool:
        """A run's task ended: True when the run is final now, False to start it again (after a pause)."""
        error = task.exception() if not task.cancelled() else None
        outcome = task.result() if error is None and not task.cancelled() else None
        if outcome in ("completed", "failed"):
            self._forget(run_id)
            return True
        if isinstance(error, TRANSIENT):
            log.warning("benchmark run %s paused (%s); resuming it shortly", run_id, type(error).__name__)
            self.retry_at[run_id] = time.monotonic() + 2.0
            return False
        self.failures[run_id] += 1
        n = self.failures[run_id]
        if error is not None:
            log.error("benchmark run %s: its task failed (%d of %d)", run_id, n, MAX_FAILURES, exc_info=error)
        else:
            log.warning("benchmark run %s: not every result was recorded (%d of %d); going on", run_id, n,
                        MAX_FAILURES)
        if n < MAX_FAILURES:
            self.retry_at[run_id] = time.monotonic() + min(2.0 ** n, 30.0)
            return False
        message = f"{type(error).__name__}: {error}" if error is not None else "not every result could be recorded"
        await revoke_all(self.db, self.redis, run_id)
        await self.store.finish(run_id, "failed", [{"code": "runner_error", "message": message[:500]}])
        self._forget(run_id)
        return True

    def _forget(self, run_id: str) -> None:
        self.failures.pop(run_id, None)
        self.retry_at.pop(run_id, None)

    async def _sweep_keys(self, active: set[str]) -> None:
        """Revoke the keys of runs that are final or gone but whose keys were not revoked (a runner died)."""
        orphans = []
        async for name in self.redis.scan_iter(match=KEYS_PREFIX + "*", count=500):
            run_id = (name.decode() if isinstance(name, bytes) else str(name))[len(KEYS_PREFIX):]
            if run_id not in active:
                orphans.append(run_id)
        for run_id in orphans:
            if await revoke_all(self.db, self.redis, run_id):
                log.info("revoked the keys left behind by benchmark run %s", run_id)

    # ── one run ───────────────────────────────────────────────────────────────────────────────────────
    async def _drive(self, run: BenchRecord) -> str:
        """Drive the run until every request has a result: ``completed``, ``failed`` (a suite that cannot be
        read) or ``incomplete`` (to be tried again)."""
        try:
            suite = Suite.from_json(run.suite)
        except SuiteError as e:
            await self.store.finish(run.id, "failed", [{"code": "invalid_suite", "message": str(e)[:500]}])
            return "failed"
        levels = levels_of(run.options)
        repeat = int(run.options.get("repeat") or 1)
        done = await self.store.done_keys(run.id)
        judges = {i.scorer.judge for i in suite.items if i.scorer is not None and i.scorer.judge is not None}
        client = BenchClient(run.gateway_url, timeout_s=float(self.settings.request_timeout_s) + 60)
        # the calls run under minted keys of the submitter's team (the gateway charges the team); the submitter's
        # own key (or JWT subject) is charged here, as its batches are
        own = tuple(sc for sc in (usage.Scope.from_dict(d) for d in run.scopes or ()) if sc.kind != "team")
        recorder = Recorder(self.store, self.redis, run.id, own)
        ctx = load.RunContext(run=run, suite=suite, db=self.db, redis=self.redis, client=client,
                              keys=RunKeys(self.db, self.redis, run, judges), recorder=recorder,
                              sandbox=sandbox_for(suite.sandbox), done=done)
        if done:
            log.info("benchmark run %s resumes: %d of %d results recorded", run.id, len(done), run.total)
        recorder.start()
        try:
            await load.drive(ctx, levels, repeat)
        finally:
            try:
                await recorder.close()  # results that ended are kept, also when the run is cancelled
            finally:
                await client.aclose()
        missing = load.expected_keys(run, suite, levels, repeat) - await self.store.done_keys(run.id)
        if missing:
            return "incomplete"
        revoked = await revoke_all(self.db, self.redis, run.id)
        await self.store.finish(run.id, "completed")
        log.info("benchmark run %s completed (%d results; %d key(s) revoked)", run.id, run.total, revoked)
        return "completed"
