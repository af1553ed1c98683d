"""Fixtures of the fault-injection suite (issue #12): a gateway and two workers on a Valkey of their own, which
the tests kill, pause and restart; a fake upstream of the module's own, so its request counts are the module's."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import yaml
from conftest import MASTER_KEY, free_port, show_logs, start_processes, wait_http

from bench.fake_upstream import UpstreamThread
from faults.harness import WORKER_CONCURRENCY, FaultStack, Valkey, env_without_overrides, fault_models


@pytest.fixture(scope="module")
def database_url(database_url: str) -> Iterator[str]:
    """A database of the module's own on the session's server: every batch or benchmark runner on a database
    drives its batches and runs, so the session's stack (when a test before started it) must not see this
    module's, nor this module's stack the session's."""
    name = f"faults_{int(time.time() * 1000)}"
    asyncio.run(_admin_sql(database_url, f"CREATE DATABASE {name}"))
    yield urlunsplit(urlsplit(database_url)._replace(path="/" + name))
    asyncio.run(_admin_sql(database_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"))


async def _admin_sql(database_url: str, sql: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def fault_upstream() -> Iterator[UpstreamThread]:
    up = UpstreamThread(free_port()).start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory, database_url: str,
                fault_upstream: UpstreamThread) -> Iterator[FaultStack]:
    root = tmp_path_factory.mktemp("faults")
    valkey = Valkey(free_port(), root / "valkey")
    valkey.start()
    port = free_port()
    cfg = {"model_list": fault_models(fault_upstream.base_url),
           "gatehouse": {"port": port, "data_dir": str(root / "data"), "request_timeout_s": 20,
                         "worker_concurrency": WORKER_CONCURRENCY, "upstream_retries": 0}}
    path = root / "gatehouse.yaml"
    path.write_text(yaml.safe_dump(cfg))
    metrics_dir = root / "metrics"
    metrics_dir.mkdir()
    env = {**env_without_overrides(dict(os.environ)), "REDIS_URL": valkey.url, "DATABASE_URL": database_url,
           "GATEHOUSE_MASTER_KEY": MASTER_KEY, "GATEHOUSE_LOG_LEVEL": "info",
           "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    logs = root / "logs"
    procs = start_processes(path, env, logs, workers=2)
    base = f"http://127.0.0.1:{port}"
    stack = FaultStack(base, MASTER_KEY, path, env, logs, fault_upstream, valkey, procs[0], procs[1:],
                       {0: "worker0.log", 1: "worker1.log"})
    try:
        wait_http(base + "/health/ready", timeout=90, procs=procs)
        yield stack
    finally:
        stack.stop()
        valkey.stop()
        show_logs(Path(logs), "faults", lines=25)


@pytest.fixture
def faults(fault_stack: FaultStack) -> FaultStack:
    """The module's stack, repaired (processes restarted, Valkey resumed) and ready before each test."""
    fault_stack.ensure_healthy()
    return fault_stack
