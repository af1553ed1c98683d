"""`gatehouse up` under faults (issue #12), in this order: Ctrl-C to its whole process group while streams run;
a second `up` on the same data dir (no jobs left over from the first); its embedded Valkey SIGKILLed (restarted by
the supervisor, the gateway and workers carry on); and a clean stop with no traceback after all of it.

`up` runs with its embedded Valkey (it must be the supervisor's own) and the session's PostgreSQL (for speed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import yaml
from conftest import MASTER_KEY, free_port

from bench.fake_upstream import UpstreamThread
from faults.clients import Answer, StreamRecord, chat, is_openai_error, stream_chat, until
from faults.harness import (
    ROOT,
    children,
    cmdline,
    env_without_overrides,
    fault_models,
    group_members,
    proc_stat,
    traceback_excerpts,
    tracebacks,
    upstream_count,
)

QUEUE_MAX_DEPTH = 12  # below 8 leftover jobs + 10 new requests: a restart that kept the old jobs refuses some


@dataclass
class UpConfig:
    config: Path
    env: dict[str, str]
    base_url: str
    dir: Path
    upstream: UpstreamThread


@dataclass
class Up:
    """One `gatehouse up` run, in a session (process group) of its own, as a terminal would start it."""

    proc: subprocess.Popen[bytes]
    log: Path

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def descendants(self) -> list[int]:
        """Every live process started under the supervisor (children in sessions of their own included)."""
        out, todo = [], [self.proc.pid]
        while todo:
            found = children(todo.pop())
            out += found
            todo += found
        return out

    def interrupt(self) -> None:
        os.killpg(self.pgid, signal.SIGINT)  # what a terminal's Ctrl-C does

    def kill_everything(self) -> None:
        pids = [self.proc.pid, *self.descendants()]
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def start_up(cfg: UpConfig, name: str) -> Up:
    log = cfg.dir / f"{name}.log"
    out = log.open("ab")
    proc = subprocess.Popen([sys.executable, "-m", "cli", "up", "-c", str(cfg.config)], env=cfg.env, cwd=ROOT,
                            stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return Up(proc, log)


def wait_up_ready(up: Up, base_url: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if up.proc.poll() is not None:
            raise RuntimeError(f"gatehouse up exited with {up.proc.returncode}:\n{up.output()[-4000:]}")
        try:  # ready, and the supervisor has seen it too (it prints its banner then)
            if httpx.get(base_url + "/health/ready", timeout=2).status_code == 200 and \
                    "Gatehouse is up" in up.output():
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"gatehouse up not ready after {timeout}s:\n{up.output()[-4000:]}")


def new_client() -> httpx.AsyncClient:
    return httpx.AsyncClient(timeout=httpx.Timeout(60), limits=httpx.Limits(max_connections=100))


@pytest.fixture(scope="module")
def up_config(tmp_path_factory: pytest.TempPathFactory, database_url: str,
              fault_upstream: UpstreamThread) -> UpConfig:
    root = tmp_path_factory.mktemp("faults-up")
    port = free_port()
    cfg = {"model_list": fault_models(fault_upstream.base_url),
           "gatehouse": {"workers": 1, "worker_concurrency": 16, "queue_max_depth": QUEUE_MAX_DEPTH,
                         "request_timeout_s": 60}}
    path = root / "gatehouse.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**env_without_overrides(dict(os.environ)), "GATEHOUSE_MASTER_KEY": MASTER_KEY,
           "DATABASE_URL": database_url, "GATEHOUSE_DATA_DIR": str(root / "data"), "GATEHOUSE_PORT": str(port),
           "GATEHOUSE_LOG_LEVEL": "info"}
    return UpConfig(path, env, f"http://127.0.0.1:{port}", root, fault_upstream)


@dataclass
class SecondUp:
    up: Up
    slow_calls_before: int  # the upstream's "slow" count before this run started


@pytest.fixture(scope="module")
def second_up(up_config: UpConfig) -> Iterator[SecondUp]:
    """`up` again on the first run's data dir (after test_sigint_process_group stopped the first)."""
    before = upstream_count(up_config.upstream, "slow")
    up = start_up(up_config, "up-2")
    try:
        wait_up_ready(up, up_config.base_url)
        yield SecondUp(up, before)
    finally:
        if up.proc.poll() is None:
            up.interrupt()
            try:
                up.proc.wait(20)
            except subprocess.TimeoutExpired:
                pass
        up.kill_everything()
        sys.stderr.write("--- up-2 (last lines) ---\n" + "".join(up.output().splitlines(True)[-40:]))


async def test_sigint_process_group(up_config: UpConfig) -> None:
    """Ctrl-C (SIGINT to the process group) with 8 streams running: each ends with a final event (completed, or
    an error event such as "shutting_down", then [DONE]), never a cut connection; a new request during the drain
    gets 503 shutting_down with retry-after (when it gets an HTTP answer at all); the supervisor and everything it
    started exit within 10 s; no traceback in its output."""
    cfg = up_config
    up = start_up(cfg, "up-1")
    problems: list[str] = []
    during: Answer | None = None
    try:
        await asyncio.to_thread(wait_up_ready, up, cfg.base_url)
        recs = [StreamRecord() for _ in range(8)]
        async with new_client() as c:
            # half end within the gateway's drain grace (5 s by default), half run past it (12 s)
            tasks = [asyncio.create_task(stream_chat(c, cfg.base_url, MASTER_KEY, "slow", r, limit_s=40,
                                                     delay=1.0 if i % 2 else 2.0)) for i, r in enumerate(recs)]
            try:
                started = await until(lambda: all(r.first_content_at is not None for r in recs), 30)
                assert started, "streams did not start:\n" + "\n".join(r.describe() for r in recs)
                started_under = up.descendants()
                up.interrupt()
                interrupted_at = time.monotonic()
                await asyncio.sleep(0.3)  # the signal has landed
                during = await chat(c, cfg.base_url, MASTER_KEY, "fake", limit_s=5)
                await asyncio.wait_for(asyncio.gather(*tasks), 40)
            finally:
                for t in tasks:
                    t.cancel()
        exited = await until(lambda: up.proc.poll() is not None, max(0.1, interrupted_at + 10 - time.monotonic()))
        gone = await until(lambda: not group_members(up.pgid) and all(proc_stat(p) is None for p in started_under),
                           max(0.1, interrupted_at + 10 - time.monotonic()))
        problems += [f"stream did not end with a final event: {r.describe()}" for r in recs if not r.ended_cleanly]
        if during is not None and during.status and (during.status != 503 or during.error.get("code") != "shutting_down"
                              or "retry-after" not in during.headers or not is_openai_error(during.body)):
            problems.append(f"a new request during the drain: expected 503 shutting_down + retry-after, got {during}")
        if not gone:
            left = sorted(set(group_members(up.pgid)) | {p for p in started_under if proc_stat(p) is not None})
            problems.append(f"processes still running 10 s after Ctrl-C: {left} (the supervisor is {up.proc.pid})")
        if not exited:  # how long it did take, for the report
            await until(lambda: up.proc.poll() is not None, 20)
            problems.append(f"the supervisor had not exited 10 s after Ctrl-C (exited {up.proc.returncode} after "
                            f"{time.monotonic() - interrupted_at:.1f}s)")
        output = up.output()
        if tracebacks(output):
            problems.append(f"{tracebacks(output)} traceback(s) in the output:\n{traceback_excerpts(output)}")
        print(f"streams: {Counter(r.error_code or ('completed' if r.finished else r.cut) for r in recs)}; "
              f"during the drain: {during.status} {during.error.get('code') or during.failure}; supervisor exited "
              f"with {up.proc.returncode} {time.monotonic() - interrupted_at:.1f}s after Ctrl-C")
    finally:
        up.kill_everything()
    assert not problems, "\n".join(problems) + f"\n(a new request during the drain got: {during})"


async def test_restart_leaves_no_stale_jobs(up_config: UpConfig, second_up: SecondUp) -> None:
    """`up` again on the same data dir: 10 concurrent requests all answer 200 (none refused queue_full because of
    the first run's jobs), the queue is empty afterwards, and the first run's jobs were not run again."""
    cfg = up_config
    async with new_client() as c:
        answers = await asyncio.gather(*(chat(c, cfg.base_url, MASTER_KEY, "fake", limit_s=30) for _ in range(10)))
        health = (await c.get(cfg.base_url + "/health")).json()
    problems = [f"expected 200, got {a}" for a in answers if a.status != 200]
    if health["queue"]["depth"] != 0:
        problems.append(f"queue depth after the requests: {health['queue']}")
    reruns = upstream_count(cfg.upstream, "slow") - second_up.slow_calls_before
    if reruns:
        problems.append(f"the upstream saw {reruns} 'slow' request(s) since the restart: the first run's jobs ran "
                        "again for clients long gone")
    assert not problems, "\n".join(problems)


async def test_valkey_killed(up_config: UpConfig, second_up: SecondUp) -> None:
    """SIGKILL of the embedded Valkey: requests get 503 quickly (no hang, no 500); the supervisor restarts Valkey on
    the same port and requests succeed again within ~10 s, with the same gateway and worker processes."""
    cfg, up = up_config, second_up.up
    valkeys = children(up.proc.pid, "valkey-server")
    assert len(valkeys) == 1, f"expected one valkey-server child of the supervisor, found {valkeys}"
    old = valkeys[0]
    old_cmdline = cmdline(old)
    others = sorted(set(children(up.proc.pid)) - {old})
    problems: list[str] = []
    async with new_client() as c:
        os.kill(old, signal.SIGKILL)
        killed_at = time.monotonic()
        first = await chat(c, cfg.base_url, MASTER_KEY, "fake", limit_s=10)
        seen: list[int] = []
        recovered: float | None = None
        while time.monotonic() - killed_at < 15:
            a = await chat(c, cfg.base_url, MASTER_KEY, "fake", limit_s=5)
            seen.append(a.status)
            if a.status == 200:
                recovered = time.monotonic() - killed_at
                break
            await asyncio.sleep(0.25)
    print(f"after the kill: {first.status} {first.error.get('code')} in {first.elapsed:.2f}s; statuses "
          f"{Counter(seen)}; 200 again after {recovered}s")
    if first.status != 503 or not is_openai_error(first.body) or first.elapsed > 2:
        problems.append(f"first request after the kill: expected 503 + OpenAI error within 2 s, got {first}")
    if set(seen) - {200, 503}:
        problems.append(f"statuses while Valkey was down: {Counter(seen)} (only 503 then 200 expected)")
    if recovered is None or recovered > 12:
        problems.append(f"no 200 within 12 s of the kill (statuses: {Counter(seen)})")
    now = children(up.proc.pid, "valkey-server")
    if len(now) != 1 or now[0] == old:
        problems.append(f"Valkey was not restarted by the supervisor (valkey-server children: {now})")
    elif cmdline(now[0]) != old_cmdline:
        problems.append(f"the restarted Valkey does not listen where the old one did: {cmdline(now[0])!r} vs "
                        f"{old_cmdline!r}")
    if up.proc.poll() is not None:
        problems.append(f"the supervisor exited ({up.proc.returncode})")
    after = sorted(set(children(up.proc.pid)) - set(now))
    if after != others:
        problems.append(f"gateway/worker processes changed: {others} -> {after}")
    assert not problems, "\n".join(problems)


async def test_worker_killed_under_up_is_settled_at_once(up_config: UpConfig, second_up: SecondUp) -> None:
    """`gatehouse up` sees its worker die the instant it does: the streams it was serving end (worker_lost, then
    [DONE]) without waiting for the worker's lease to run out, and a new worker serves again."""
    cfg, up = up_config, second_up.up
    workers = [p for p in children(up.proc.pid) if "cli worker" in cmdline(p)]
    assert len(workers) == 1, f"expected one worker under the supervisor, found {workers}"
    recs = [StreamRecord() for _ in range(4)]
    async with new_client() as c:
        tasks = [asyncio.create_task(stream_chat(c, cfg.base_url, MASTER_KEY, "slow", r, limit_s=40, delay=1.0))
                 for r in recs]
        started = await until(lambda: all(r.first_content_at is not None for r in recs), 30)
        assert started, "streams did not start:\n" + "\n".join(r.describe() for r in recs)
        os.kill(workers[0], signal.SIGKILL)
        killed_at = time.monotonic()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        ended_after = max((r.ended_at or killed_at) for r in recs) - killed_at
        recovered = await until(lambda: "cli worker" in " ".join(cmdline(p) for p in children(up.proc.pid)), 20)
        after = await chat(c, cfg.base_url, MASTER_KEY, "fake", limit_s=30) if recovered else None
    print(f"under up: streams ended {ended_after:.1f}s after the worker's SIGKILL "
          f"({Counter(r.error_code for r in recs)})")
    problems = [f"stream did not end with worker_lost and [DONE]: {r.describe()}" for r in recs
                if r.error_code != "worker_lost" or not r.ended_cleanly]
    if ended_after > 2.5:
        problems.append(f"streams ended {ended_after:.1f}s after the kill: the supervisor should settle them at once")
    if after is None or after.status != 200:
        problems.append(f"no new worker served after the kill: {after}")
    assert not problems, "\n".join(problems)


async def test_up_stops_cleanly_after_faults(second_up: SecondUp) -> None:
    """After the faults above, Ctrl-C stops the second run within 10 s, with no traceback in its output."""
    up = second_up.up
    assert up.proc.poll() is None, "the second `up` is no longer running"
    started_under = up.descendants()
    up.interrupt()
    interrupted_at = time.monotonic()
    gone = await until(lambda: up.proc.poll() is not None and not group_members(up.pgid)
                       and all(proc_stat(p) is None for p in started_under), 10)
    output = up.output()
    assert gone, f"still running {time.monotonic() - interrupted_at:.1f}s after Ctrl-C"
    assert not tracebacks(output), traceback_excerpts(output)
