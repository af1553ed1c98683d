"""Fixtures of the fault-injection suite (issue #12): a gateway and two workers on a Valkey of their own, which
the tests kill, pause and restart; a fake upstream of the module's own, so its request counts are the module's."""

from __future__ import annotations

import time
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest
from conftest import MASTER_KEY, admin_sql, free_port, wait_http

from bench.fake_upstream import UpstreamThread
from faults.harness import WORKER_CONCURRENCY, FaultStack, launch


@pytest.fixture(scope="module")
def database_url(database_url: str) -> Iterator[str]:
    """A database of the module's own on the session's server: every batch or benchmark runner on a database
    drives its batches and runs, so the session's stack (when a test before started it) must not see this
    module's, nor this module's stack the session's."""
    name = f"faults_{int(time.time() * 1000)}"
    admin_sql(database_url, f"CREATE DATABASE {name}")
    yield urlunsplit(urlsplit(database_url)._replace(path="/" + name))
    admin_sql(database_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(scope="module")
def fault_upstream() -> Iterator[UpstreamThread]:
    up = UpstreamThread(free_port()).start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def fault_stack(tmp_path_factory: pytest.TempPathFactory, database_url: str,
                fault_upstream: UpstreamThread) -> Iterator[FaultStack]:
    stack = launch(tmp_path_factory.mktemp("faults"), database_url, fault_upstream, MASTER_KEY, workers=2,
                   request_timeout_s=20, worker_concurrency=WORKER_CONCURRENCY, upstream_retries=0)
    try:
        wait_http(stack.base_url + "/health/ready", timeout=90, procs=[stack.gateway, *stack.workers])
        yield stack
    finally:
        stack.shut_down("faults")


@pytest.fixture
def faults(fault_stack: FaultStack) -> FaultStack:
    """The module's stack, repaired (processes restarted, Valkey resumed) and ready before each test."""
    fault_stack.ensure_healthy()
    return fault_stack
