"""Valkey's MONITOR feed for the bench tools: read it (in a process of its own), parse it into commands, and tell
which of our processes sent each one (by the local port of its connection)."""

from __future__ import annotations

import asyncio
import os
import pathlib
import re
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

_MONITOR_LINE = re.compile(rb'^\+(\d+\.\d+) \[(\d+) ([^\]]+)\] (.*)$')
_ARG = re.compile(rb'"((?:[^"\\]|\\.)*)"')


# ── the MONITOR reader (its own process) ──────────────────────────────────────────────────────────────
def monitor_to_file(host: str, port: int, path: pathlib.Path) -> None:
    """Append Valkey's MONITOR feed to ``path`` until killed."""
    with socket.create_connection((host, port)) as s, path.open("wb", buffering=0) as out:
        s.sendall(b"MONITOR\r\n")
        while data := s.recv(1 << 20):
            out.write(data)


@dataclass
class Cmd:
    t: float  # server time (unix seconds)
    who: str  # gateway / worker / lua / bench / ?
    conn: str  # client port
    args: list[str]

    @property
    def name(self) -> str:
        return self.args[0].upper() if self.args else ""

    def text(self, width: int = 110) -> str:
        parts = []
        for a in self.args:
            if len(a) > 60:  # scripts and job payloads
                a = a[:40].replace("\n", " ") + f"…[{len(a)} chars]"
            parts.append(a)
        s = " ".join(parts)
        return s if len(s) <= width else s[: width - 1] + "…"


def parse_monitor(path: pathlib.Path, who_by_port: dict[str, str]) -> list[Cmd]:
    out = []
    for line in path.read_bytes().split(b"\r\n"):
        m = _MONITOR_LINE.match(line)
        if not m:
            continue
        ts, _db, client, rest = m.groups()
        args = [a.decode("utf-8", "replace").encode().decode("unicode_escape", "replace")
                for a in _ARG.findall(rest)]
        c = client.decode()
        conn = "lua" if c == "lua" else c.rsplit(":", 1)[-1]
        out.append(Cmd(float(ts), "lua" if c == "lua" else who_by_port.get(conn, "?"), conn, args))
    return out


# ── which process owns which connection ───────────────────────────────────────────────────────────────
def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets ``pid`` has open (from /proc)."""
    inodes = set()
    for fd in pathlib.Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def tcp_rows() -> list[list[str]]:
    """The rows of /proc/net/tcp and tcp6, split into columns (1: local address, 2: remote, 3: state, 9: inode)."""
    rows = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows += [line.split() for line in pathlib.Path(table).read_text().splitlines()[1:]]
        except OSError:
            continue
    return rows


def local_ports(pid: int) -> set[str]:
    """Local TCP ports of the sockets ``pid`` has open (from /proc)."""
    inodes = socket_inodes(pid)
    return {str(int(cols[1].rsplit(":", 1)[1], 16)) for cols in tcp_rows() if cols[9] in inodes}


def issuers(gateway_pid: int, worker_pids: list[int]) -> dict[str, str]:
    """Local port -> who sends from it: the gateway, a worker, or this benchmark process."""
    who = dict.fromkeys(local_ports(gateway_pid), "gateway")
    for pid in worker_pids:
        who.update(dict.fromkeys(local_ports(pid), "worker"))
    who.update(dict.fromkeys(local_ports(os.getpid()), "bench"))
    return who


@asynccontextmanager
async def monitoring(redis_url: str, path: pathlib.Path, cwd: pathlib.Path | None = None) -> AsyncIterator[None]:
    """Valkey's MONITOR feed written to ``path`` (by ``bench.redis_trace --monitor`` in a process of its own) while
    the block runs; it has started (the server said +OK) when the block begins."""
    host, port = redis_url.removeprefix("redis://").split("/")[0].split(":")
    mon = await asyncio.create_subprocess_exec(sys.executable, "-m", "bench.redis_trace", "--monitor",
                                               f"{host}:{port}", str(path), cwd=None if cwd is None else str(cwd))
    try:
        deadline = time.time() + 10
        while not (path.exists() and path.read_bytes().startswith(b"+OK")):  # noqa: ASYNC240 - a local file, polled while MONITOR starts
            if time.time() > deadline:
                raise TimeoutError("MONITOR did not start")
            await asyncio.sleep(0.05)
        yield
    finally:
        mon.terminate()
        await mon.wait()
