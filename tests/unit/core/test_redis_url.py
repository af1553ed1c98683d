"""``redis_url`` / ``database_url`` and their TLS settings (issue #17): the URL forms, the one-line errors that name
the setting (never the URL's password), and the clients core.redis_client builds from them, checked without a
server (tests/test_external_services.py connects them to real ones)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from arq.connections import RedisSettings
from redis.asyncio import BlockingConnectionPool
from redis.asyncio.connection import Connection
from redis.asyncio.sentinel import SentinelManagedSSLConnection

from core.config import ConfigError, load_config
from core.database import DatabaseConfigError, database_dsn
from core.redis_client import arq_settings, async_client
from core.redis_url import RedisConfigError, check_settings, redis_target

# the head of a PEM certificate, cut short: not loadable
TRUNCATED_PEM = """-----BEGIN CERTIFICATE-----
MIIBdzCCAR2gAwIBAgIUQ5pVUhWv9w1RV6ekqWfx1Uj7NXYwCgYIKoZIzj0EAwIw
ETEPMA0GA1UEAwwGdGVzdGNhMB4XDTI1MDEwMTAwMDAwMFoXDTM1MDEwMTAwMDAw
MFowETEPMA0GA1UEAwwGdGVzdGNhMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE
"""


@dataclass
class Opts:
    redis_url: str | None = None
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None
    redis_tls_key_file: Path | None = None
    redis_tls_cert_reqs: str | None = None
    redis_tls_check_hostname: bool | None = None


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real PEM CA certificate (and its key beside it, as client.crt/client.key for the pair checks)."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    d = tmp_path_factory.mktemp("ca")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "unit CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    (d / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "client.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "client.key").write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                     serialization.NoEncryption()))
    (d / "not-pem.crt").write_text(TRUNCATED_PEM)
    return d / "ca.crt"


# ── schemes ───────────────────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("url", ["redis+cluster://:pw@n1:6379,n2:6379", "rediss+cluster://n1:6379",
                                 "redis-cluster://n1:6379"])
def test_redis_cluster_is_refused_with_the_reason(url: str) -> None:
    with pytest.raises(RedisConfigError) as e:
        redis_target(url)
    msg = str(e.value)
    assert msg.startswith("redis_url: Redis Cluster is not supported: arq keeps each queue in one sorted set")
    assert "\n" not in msg and "pw" not in msg


def test_unsupported_scheme_names_the_supported_ones_and_hides_the_password() -> None:
    with pytest.raises(RedisConfigError, match=r"^redis_url: unsupported scheme http://; use redis://, rediss://, "
                                               r"unix://, redis\+sentinel:// or rediss\+sentinel://$") as e:
        redis_target("http://:hunter2@example:6379")
    assert "hunter2" not in str(e.value)


def test_plain_redis_url_is_passed_on_unchanged() -> None:
    t = redis_target("redis://:p%40ss%2Fword@cache.internal:6380/2")
    assert t.url == "redis://:p%40ss%2Fword@cache.internal:6380/2" and t.tls is None and not t.is_sentinel
    assert (t.db, t.password) == (2, "p@ss/word")
    assert t.describe() == "cache.internal:6380, db 2"


def test_plain_redis_keeps_the_gateway_pool_it_had() -> None:
    """redis://: the same BlockingConnectionPool.from_url with the same options as before issue #17."""
    client = async_client(redis_target("redis://127.0.0.1:6379/1"), socket_timeout=0.9, socket_connect_timeout=0.9)
    pool = client.connection_pool
    assert type(pool) is BlockingConnectionPool and pool.connection_class is Connection
    assert (pool.max_connections, pool.timeout) == (4096, 10)
    kw = pool.connection_kwargs
    assert (kw["host"], kw["port"], kw["db"], kw["socket_timeout"], kw["socket_connect_timeout"]) == \
        ("127.0.0.1", 6379, 1, 0.9, 0.9)
    assert not any(k.startswith("ssl") for k in kw)


def test_worker_settings_match_arq_from_dsn_and_decode_the_password() -> None:
    url = "redis://user:p%40ss@cache.internal:6380/3"
    ours, arqs = arq_settings(redis_target(url), max_connections=9), RedisSettings.from_dsn(url)
    for field in ("host", "port", "database", "username", "ssl", "unix_socket_path", "sentinel"):
        assert getattr(ours, field) == getattr(arqs, field), field
    assert (ours.password, arqs.password, ours.max_connections) == ("p@ss", "p%40ss", 9)  # as the gateway reads it


# ── TLS ───────────────────────────────────────────────────────────────────────────────────────────────
def test_rediss_options_from_the_url_or_the_settings(ca: Path) -> None:
    by_url = redis_target(f"rediss://h:6380/0?ssl_ca_certs={ca}&ssl_check_hostname=false")
    assert by_url.url == "rediss://h:6380/0"  # redis-py's from_url gets the options once, as keyword arguments
    assert by_url.tls is not None and (by_url.tls.ca_file, by_url.tls.check_hostname) == (str(ca), False)
    by_settings = redis_target("rediss://h:6380/0", Opts(redis_tls_ca_file=ca))
    assert by_settings.tls is not None
    assert (by_settings.tls.ca_file, by_settings.tls.cert_reqs, by_settings.tls.check_hostname) == \
        (str(ca), "required", True)
    unverified = redis_target("rediss://h:6380/0?ssl_cert_reqs=none")
    assert unverified.tls is not None and not unverified.tls.check_hostname
    mtls = redis_target("rediss://h/0", Opts(redis_tls_ca_file=ca, redis_tls_cert_file=ca.with_name("client.crt"),
                                             redis_tls_key_file=ca.with_name("client.key")))
    assert mtls.tls is not None and mtls.tls.key_file == str(ca.with_name("client.key"))
    s = arq_settings(mtls)
    assert (s.ssl, s.ssl_ca_certs, s.ssl_certfile, s.ssl_keyfile, s.ssl_check_hostname) == \
        (True, str(ca), str(ca.with_name("client.crt")), str(ca.with_name("client.key")), True)


@pytest.mark.parametrize(("url", "opts", "message"), [
    ("rediss://h/0", {"redis_tls_ca_file": Path("/nope/ca.crt")}, r"^redis_tls_ca_file: no such file: /nope/ca\.crt$"),
    ("rediss://h/0?ssl_ca_certs=/nope/ca.crt", {}, r"^redis_url's ssl_ca_certs: no such file: /nope/ca\.crt$"),
    ("redis://h/0", {"redis_tls_ca_file": "CA"}, r"^redis_tls_ca_file is set but redis_url uses redis:// \(no TLS\); "
                                                 r"use rediss://$"),
    ("redis+sentinel://s1/m", {"redis_tls_cert_reqs": "none"}, r"redis_tls_cert_reqs is set but redis_url uses "
                                                              r"redis\+sentinel:// \(no TLS\); use rediss\+sentinel://"),
    ("rediss://h/0?ssl_ca_certs=/a.crt", {"redis_tls_ca_file": Path("/b.crt")}, r"^redis_tls_ca_file \(/b\.crt\) and "
                                                                              r"redis_url's ssl_ca_certs \(/a\.crt\) "
                                                                              r"disagree; set one of them$"),
    ("rediss://h/0", {"redis_tls_cert_file": "CERT"}, r"^redis_tls_cert_file is set without redis_tls_key_file"),
    ("rediss://h/0?ssl_cert_reqs=maybe", {}, r"^redis_url's ssl_cert_reqs: must be one of required, optional, none"),
    ("rediss://h/0?ssl_cert_reqs=none&ssl_check_hostname=true", {}, r"the host name cannot be checked"),
    ("rediss://h/0?ssl_check_hostname=perhaps", {}, r"^redis_url: ssl_check_hostname: must be true or false"),
    ("rediss://h/0", {"redis_tls_ca_file": "NOTPEM"}, r"^redis_tls_ca_file: .*not-pem\.crt holds no PEM CA cert"),
])
def test_tls_errors_name_the_setting(ca: Path, url: str, opts: dict[str, object], message: str) -> None:
    files = {"CA": ca, "CERT": ca.with_name("client.crt"), "NOTPEM": ca.with_name("not-pem.crt")}
    resolved = {k: files.get(v, v) if isinstance(v, str) else v for k, v in opts.items()}
    with pytest.raises(RedisConfigError, match=message):
        redis_target(url, Opts(**resolved))  # type: ignore[arg-type]


def test_client_key_that_does_not_match_is_named(ca: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    other = tmp_path / "other.key"
    other.write_bytes(ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with pytest.raises(RedisConfigError, match=r"^redis_tls_cert_file / redis_tls_key_file: cannot load the client "
                                               r"certificate"):
        redis_target("rediss://h/0", Opts(redis_tls_cert_file=ca.with_name("client.crt"), redis_tls_key_file=other))


def test_tls_settings_without_a_url_are_an_error(ca: Path) -> None:
    assert check_settings(Opts()) is None
    with pytest.raises(RedisConfigError, match=r"^redis_tls_ca_file is set but redis_url is not"):
        check_settings(Opts(redis_tls_ca_file=ca))


@pytest.mark.parametrize(("url", "message"), [
    ("redis://h/0?socket_timeout=5", r"query parameter 'socket_timeout' is not supported \(Gatehouse sets its own"),
    ("redis://h/0?colour=blue", r"unknown query parameter 'colour' \(accepted: db, ssl_ca_certs"),
    ("redis://h/0?sentinel_password=x", r"sentinel_password is only for redis\+sentinel:// URLs"),
    ("redis://h:99999/0", r"the port must be a number from 1 to 65535"),
    ("redis://h/zero", r"redis_url: the database \(the URL's path\) must be a number, got 'zero'"),
    ("redis:///0", r"redis_url: no host"),
])
def test_url_errors(url: str, message: str) -> None:
    with pytest.raises(RedisConfigError, match=message):
        redis_target(url)


# ── Sentinel ──────────────────────────────────────────────────────────────────────────────────────────
def test_sentinel_url_forms() -> None:
    t = redis_target("redis+sentinel://app:s%3Acret@s1,s2:26380,[::1]:26381/primary/4?sentinel_password=sp")
    assert t.sentinels == (("s1", 26379), ("s2", 26380), ("::1", 26381))
    assert (t.service_name, t.db, t.username, t.password) == ("primary", 4, "app", "s:cret")
    assert (t.sentinel_username, t.sentinel_password, t.tls) == (None, "sp", None)
    assert t.describe() == "Sentinel master 'primary' via s1:26379,s2:26380,[::1]:26381, db 4"
    assert redis_target("redis+sentinel://s1/primary").db == 0
    s = arq_settings(t, max_connections=7)
    assert (s.sentinel, s.sentinel_master, s.host, s.database, s.password, s.sentinel_password) == \
        (True, "primary", [("s1", 26379), ("s2", 26380), ("::1", 26381)], 4, "s:cret", "sp")


@pytest.mark.parametrize(("url", "message"), [
    ("redis+sentinel://s1:26379", r"names the master's service after the hosts"),
    ("redis+sentinel://s1:26379/m/0/extra", r"path is /service_name\[/db\]"),
    ("redis+sentinel://s1:port/m", r"sentinel s1's port must be a number"),
    ("redis+sentinel://s1,,s2/m", r"an empty sentinel host"),
])
def test_sentinel_url_errors(url: str, message: str) -> None:
    with pytest.raises(RedisConfigError, match=message):
        redis_target(url)


async def test_tls_sentinel_client_carries_tls_to_the_sentinels_and_the_master(ca: Path) -> None:
    """rediss+sentinel:// (not run live: the test Valkey has no TLS): the master's connections and the
    sentinels' both get the CA, each with its own credentials; the gateway's pool still waits for a free one."""
    t = redis_target("rediss+sentinel://app:pw@s1:26379/primary/2?sentinel_password=sp",
                     Opts(redis_tls_ca_file=ca))
    client = async_client(t, socket_timeout=None, socket_connect_timeout=0.9)
    try:
        pool = client.connection_pool
        assert isinstance(pool, BlockingConnectionPool) and pool.connection_class is SentinelManagedSSLConnection
        kw = pool.connection_kwargs
        assert (kw["ssl_ca_certs"], kw["ssl_check_hostname"], kw["password"], kw["db"]) == (str(ca), True, "pw", 2)
        assert (pool.max_connections, kw["socket_timeout"]) == (4096, None)
        sentinel_kw = pool.sentinel_manager.sentinels[0].connection_pool.connection_kwargs  # type: ignore[attr-defined]
        assert (sentinel_kw["ssl_ca_certs"], sentinel_kw["password"], sentinel_kw["socket_timeout"]) == \
            (str(ca), "sp", 0.9)
    finally:
        await client.aclose()


# ── PostgreSQL ────────────────────────────────────────────────────────────────────────────────────────
def test_database_root_cert_becomes_sslrootcert_with_verify_full(ca: Path) -> None:
    dsn = database_dsn("postgresql://u:p@db.internal:5432/gh", ca)
    assert dsn == f"postgresql://u:p@db.internal:5432/gh?sslrootcert={str(ca).replace('/', '%2F')}&sslmode=verify-full"
    kept = database_dsn("postgresql://u:p@db/gh?sslmode=verify-ca", ca)
    assert kept.endswith("sslmode=verify-ca&sslrootcert=" + str(ca).replace("/", "%2F"))
    assert database_dsn("postgresql://u:p@db/gh?sslmode=require") == "postgresql://u:p@db/gh?sslmode=require"
    assert database_dsn(f"postgres://db/gh?sslrootcert={ca}", ca) == f"postgres://db/gh?sslrootcert={ca}"


@pytest.mark.parametrize(("url", "root", "message"), [
    ("mysql://db/gh", None, r"^database_url: unsupported scheme 'mysql'; use postgresql://"),
    ("postgresql://db/gh?sslmode=strict", None, r"^database_url: sslmode must be one of disable, allow, prefer"),
    ("postgresql://db/gh?sslrootcert=/nope/root.crt", None, r"^database_url's sslrootcert: no such file: "
                                                            r"/nope/root\.crt$"),
    ("postgresql://db/gh", "/nope/root.crt", r"^database_ssl_root_cert: no such file: /nope/root\.crt$"),
    ("postgresql://db/gh?sslmode=prefer", "CA", r"^database_ssl_root_cert is set but database_url's sslmode=prefer "
                                                r"checks no certificate"),
    ("postgresql://db/gh?sslrootcert=NOTPEM", None, r"database_url's sslrootcert: .* holds no PEM CA certificate"),
])
def test_database_errors_name_the_setting(ca: Path, url: str, root: str | None, message: str) -> None:
    url = url.replace("NOTPEM", str(ca.with_name("not-pem.crt")))
    with pytest.raises(DatabaseConfigError, match=message):
        database_dsn(url, ca if root == "CA" else root)


def test_database_url_and_setting_must_agree(ca: Path) -> None:
    other = ca.with_name("client.crt")
    with pytest.raises(DatabaseConfigError, match=r"database_ssl_root_cert \(.*ca\.crt\) and database_url's "
                                                  r"sslrootcert \(.*client\.crt\) disagree"):
        database_dsn(f"postgresql://db/gh?sslrootcert={other}", ca)


# ── at start-up ───────────────────────────────────────────────────────────────────────────────────────
@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for name in list(os.environ):
        if name.startswith("GATEHOUSE_") or name in ("REDIS_URL", "DATABASE_URL"):
            monkeypatch.delenv(name)
    return monkeypatch


def test_load_config_refuses_cluster_and_names_missing_files(tmp_path: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gatehouse.yaml"
    path.write_text("gatehouse: {port: 8001}\n")
    clean_env.setenv("REDIS_URL", "redis+cluster://n1:6379")
    with pytest.raises(ConfigError, match=r": redis_url: Redis Cluster is not supported"):
        load_config(path)
    clean_env.setenv("REDIS_URL", "rediss://cache:6380/0")
    clean_env.setenv("GATEHOUSE_REDIS_TLS_CA_FILE", "/etc/gatehouse/missing-ca.pem")
    with pytest.raises(ConfigError, match=r"redis_tls_ca_file: no such file: /etc/gatehouse/missing-ca\.pem$"):
        load_config(path)
    clean_env.setenv("GATEHOUSE_REDIS_TLS_CA_FILE", "")  # compose's ${VAR:-}: unset
    clean_env.setenv("DATABASE_URL", "postgresql://db/gh")
    clean_env.setenv("GATEHOUSE_DATABASE_SSL_ROOT_CERT", "/etc/gatehouse/missing-root.crt")
    with pytest.raises(ConfigError, match=r"database_ssl_root_cert: no such file: /etc/gatehouse/missing-root\.crt$"):
        load_config(path)


def test_load_config_takes_the_tls_settings(tmp_path: Path, ca: Path, clean_env: pytest.MonkeyPatch) -> None:
    path = tmp_path / "gatehouse.yaml"
    path.write_text(f"gatehouse:\n  redis_url: rediss://cache:6380/0\n  redis_tls_ca_file: {ca}\n"
                    f"  redis_tls_check_hostname: false\n  database_url: postgresql://db/gh\n"
                    f"  database_ssl_root_cert: {ca}\n")
    s = load_config(path).settings
    assert (s.redis_tls_ca_file, s.redis_tls_check_hostname, s.database_ssl_root_cert) == (ca, False, ca)
