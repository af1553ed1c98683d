"""``gatehouse up``: start the embedded servers, the gateway and the workers; stop them all on Ctrl-C.

Children are plain subprocesses (``gatehouse serve`` / ``gatehouse worker``) so each gets its own event loop
and core; one that dies unexpectedly (the embedded Valkey included) is restarted with backoff, and repeated
crashes stop the whole system rather than flapping forever.

Every child runs in its own session, so a Ctrl-C reaches the supervisor alone, which stops them in order:
the gateway first (it refuses new requests and drains those in flight for ``shutdown_grace_s``), then the
workers (their jobs are done or cancelled by then), then Valkey and PostgreSQL, which everything else needed
until the end.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from cli.embedded import EmbeddedPostgres, EmbeddedValkey, ensure_master_key, guarded, own_session
from cli.redis_ops import clear_interactive_jobs, settle_dead_worker
from core.config import WARNED_ENV, Config
from core.redis_client import RedisTarget
from core.redis_client import target as redis_target
from core.redis_url import redis_target as parse_redis_url
from observability.metrics import MULTIPROC_ENV, mark_process_dead

log = logging.getLogger("gatehouse.up")
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(guarded(self.argv), env=self.env, **own_session())

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def crashed_too_often(self) -> bool:
        """Count one more restart; True when there were too many within RESTART_WINDOW_S."""
        now = time.time()
        self.restarts = [t for t in self.restarts if now - t < RESTART_WINDOW_S] + [now]
        return len(self.restarts) > MAX_RESTARTS

    def stop(self, timeout: float) -> None:
        """SIGTERM, then SIGKILL after ``timeout`` seconds."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=max(0.1, timeout))
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s; killing it", self.name, timeout)
            self.proc.kill()
            self.proc.wait()


def port_taken(host: str, port: int) -> bool:
    """Whether the gateway could not listen on ``host:port`` (bound as uvicorn binds: SO_REUSEADDR)."""
    try:
        socket.create_server((host, port)).close()
    except OSError:
        return True
    return False


class Supervisor:
    def __init__(self, config: Config, config_path: str | None, console: Console):
        self.config = config
        self.config_path = config_path
        self.console = console
        self.valkey: EmbeddedValkey | None = None
        self.postgres: EmbeddedPostgres | None = None
        self.children: list[Child] = []
        self.stopping = False
        self.metrics_dir = Path(".gatehouse/metrics")
        self.valkey_restarts = Child("valkey", [], {})  # restart bookkeeping for the embedded Valkey
        # where dead workers' jobs are settled: the embedded Valkey, or redis_url with its TLS settings
        self.redis: RedisTarget | None = None

    def _start_servers(self, data_dir: Path) -> tuple[str, str]:
        s = self.config.settings
        redis_url, db_url = s.redis_url, s.database_url
        if not redis_url:
            self.valkey = EmbeddedValkey(data_dir)
            redis_url = self.valkey.start()
            self.redis = parse_redis_url(redis_url)
            clear_interactive_jobs(self.redis)  # their clients left with the previous run
        else:
            self.redis = redis_target(s)
        if not db_url:
            self.postgres = EmbeddedPostgres(data_dir)
            db_url = self.postgres.start()
        return redis_url, db_url

    def _child_env(self, redis_url: str, db_url: str, master_key: str) -> dict[str, str]:
        s = self.config.settings
        env = dict(os.environ)
        env.update(REDIS_URL=redis_url, DATABASE_URL=db_url, GATEHOUSE_MASTER_KEY=master_key,
                   GATEHOUSE_PORT=str(s.port), GATEHOUSE_HOST=s.host, GATEHOUSE_DATA_DIR=str(s.data_dir))
        if self.config_path:
            env["GATEHOUSE_CONFIG"] = str(Path(self.config_path).resolve())
        env[WARNED_ENV] = "1"  # the supervisor has shown the config's warnings; its children need not repeat them
        # gateway and workers share metric files, so the gateway's /metrics shows every process
        env[MULTIPROC_ENV] = str(self.metrics_dir)
        return env

    def run(self) -> int:
        s = self.config.settings
        if port_taken(s.host, s.port):  # say so now rather than after starting everything else
            self.console.print(f"[red]port {s.port} on {s.host} is already in use (another gateway?); choose another "
                               "with --port or GATEHOUSE_PORT[/red]", highlight=False)
            return 1
        data_dir = s.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        master_key = ensure_master_key(data_dir, self.config.master_key())
        self.metrics_dir = (data_dir / "metrics").resolve()
        shutil.rmtree(self.metrics_dir, ignore_errors=True)  # totals from an earlier run must not count again
        self.metrics_dir.mkdir(parents=True)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        try:
            try:
                with self.console.status("starting Valkey and PostgreSQL…"):
                    redis_url, db_url = self._start_servers(data_dir)
            except Exception as e:  # noqa: BLE001 - one clear line, not a traceback
                self.console.print(f"[red]could not start the embedded servers: {type(e).__name__}: {e}[/red]",
                                   highlight=False)
                return 1
            env = self._child_env(redis_url, db_url, master_key)
            exe = [sys.executable, "-m", "cli"]
            self.children = [Child("gateway", [*exe, "serve"], env)]
            self.children += [Child(f"worker-{i + 1}", [*exe, "worker"], env) for i in range(s.workers)]
            for c in self.children:
                c.start()
            base = f"http://{s.host}:{s.port}"
            with self.console.status("waiting for the gateway and a worker to be ready…"):
                ready = self._wait_ready(base, timeout=120)
            if self.stopping:  # Ctrl-C during start-up
                return 0
            if not ready:
                dead = [c.name for c in self.children if not c.alive()]
                why = (f"{', '.join(dead)} exited during start-up (is port {s.port} free? see the log above)" if dead
                       else "the gateway did not become ready within 120 s; see the log above")
                self.console.print(f"[red]{why}[/red]", highlight=False)
                return 1
            self._banner(base, master_key)
            return self._watch()
        finally:
            self._shutdown()

    def _wait_ready(self, base: str, timeout: float) -> bool:
        deadline = time.time() + timeout
        while time.time() < deadline and not self.stopping:
            if not all(c.alive() for c in self.children) or not self._keep_valkey():
                return False
            try:
                with urllib.request.urlopen(base + "/health/ready", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.25)
        return False

    def _banner(self, base: str, master_key: str) -> None:
        models = ", ".join(self.config.models())
        t = self.config.settings.tracing
        tracing = f"\n  traces     {t.base_url} (Langfuse)" if t.enabled else ""
        self.console.print(f"\n[bold green]Gatehouse is up[/bold green]\n"
                           f"  base URL   [bold]{base}/v1[/bold]\n"
                           f"  console    [bold]{base}/ui[/bold]  (sign in with the master key)\n"
                           f"  master key [bold]{master_key}[/bold]\n"
                           f"  models     {models}\n"
                           f"  health     {base}/health\n"
                           f"  metrics    {base}/metrics{tracing}\n\n"
                           f"  try: curl {base}/v1/chat/completions -H 'Authorization: Bearer {master_key}' "
                           f"-H 'Content-Type: application/json' -d '{{\"model\":\"chargpt\",\"messages\":"
                           f"[{{\"role\":\"user\",\"content\":\"def \"}}],\"max_tokens\":60,\"seed\":1}}'\n"
                           f"  Ctrl-C stops everything.\n", highlight=False, soft_wrap=True)

    def _keep_valkey(self) -> bool:
        """Restart the embedded Valkey if it died (on its port, with its data); False when it keeps dying."""
        if self.valkey is None or self.valkey.alive() or self.stopping:
            return True
        code = self.valkey.proc.returncode if self.valkey.proc else None
        if self.valkey_restarts.crashed_too_often():
            log.error("Valkey exited (%s) %d times within %ds; stopping", code, MAX_RESTARTS, RESTART_WINDOW_S)
            return False
        log.warning("the embedded Valkey exited with %s; restarting it on port %d", code, self.valkey.port)
        try:
            self.valkey.start()
        except RuntimeError as e:
            log.error("could not restart Valkey: %s", e)
        return True

    def _watch(self) -> int:
        while not self.stopping:
            if not self._keep_valkey():
                return 1
            for c in self.children:
                if c.alive() or self.stopping:
                    continue
                code = c.proc.returncode if c.proc else None
                if c.crashed_too_often():
                    log.error("%s exited (%s) %d times within %ds; stopping", c.name, code, MAX_RESTARTS,
                              RESTART_WINDOW_S)
                    return 1
                if c.proc is not None:
                    mark_process_dead(c.proc.pid, str(self.metrics_dir))
                    if c.name != "gateway" and self.redis is not None:  # its clients need not wait for its lease
                        done = settle_dead_worker(self.redis, c.proc.pid)
                        if done is not None and (done.requeued or done.ended):
                            log.warning("%s's jobs: %d re-queued, %d ended (worker_lost)", c.name, done.requeued,
                                        done.ended)
                log.warning("%s exited with %s; restarting", c.name, code)
                time.sleep(min(5.0, 0.5 * len(c.restarts)))
                c.start()
            time.sleep(0.2)
        return 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        if self.stopping:  # second Ctrl-C: stop waiting for drains
            for c in self.children:
                if c.alive() and c.proc:
                    c.proc.kill()
            return
        self.stopping = True
        self.console.print("\nstopping… (Ctrl-C again to force)")

    def _shutdown(self) -> None:
        """In order: the gateway (drains), then the workers, then the servers they all used."""
        self.stopping = True
        grace = self.config.settings.shutdown_grace_s
        gateway = [c for c in self.children if c.name == "gateway"]
        workers = [c for c in self.children if c.name != "gateway"]
        for c in gateway:
            c.stop(grace + 5)
        for c in workers:  # signal them all first: they drain in parallel
            if c.alive() and c.proc:
                c.proc.send_signal(signal.SIGTERM)
        deadline = time.time() + grace + 5
        for c in workers:
            c.stop(deadline - time.time())
        if self.valkey:
            self.valkey.stop()
        if self.postgres:
            self.postgres.stop()
        self.console.print("stopped.")
