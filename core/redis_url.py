"""``redis_url`` and the ``redis_tls_*`` settings, read and checked once: what Redis to reach and how.

This module only parses and validates (the standard library, nothing else), so the config can check it at
start-up cheaply; core.redis_client builds the clients from the :class:`RedisTarget` it returns.

    redis://[[user]:password@]host[:port][/db]          plaintext (as before)
    rediss://[[user]:password@]host[:port][/db]         TLS
    unix:///path/to/valkey.sock[?db=N]                  a Unix socket (as before)
    redis+sentinel://[[user]:password@]host1[:port1][,host2[:port2]...]/service_name[/db]
    rediss+sentinel://...                               Sentinel, TLS to the sentinels and to the master

TLS options are redis-py's own query parameters (``ssl_ca_certs``, ``ssl_certfile``, ``ssl_keyfile``,
``ssl_cert_reqs``, ``ssl_check_hostname``) or the typed settings ``redis_tls_ca_file``, ``redis_tls_cert_file``,
``redis_tls_key_file``, ``redis_tls_cert_reqs``, ``redis_tls_check_hostname``; when both name one option they
must agree. A Sentinel URL's credentials are the master's; the sentinels' own, if they need any, are the query
parameters ``sentinel_username`` / ``sentinel_password``. Redis Cluster is refused (see docs/external-services.md).

Every error is a :class:`RedisConfigError`: one line that names the setting (and the file, for a missing one),
never the URL itself, which may hold a password.
"""

from __future__ import annotations

import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import SplitResult, parse_qsl, unquote, urlencode, urlsplit, urlunsplit

DEFAULT_REDIS_PORT = 6379
DEFAULT_SENTINEL_PORT = 26379
DIRECT_SCHEMES = {"redis": False, "rediss": True, "unix": False}  # scheme -> TLS
SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
CERT_REQS = ("required", "optional", "none")
# option -> (redis-py's query parameter, Gatehouse's setting)
TLS_OPTIONS = {
    "ca_file": ("ssl_ca_certs", "redis_tls_ca_file"),
    "cert_file": ("ssl_certfile", "redis_tls_cert_file"),
    "key_file": ("ssl_keyfile", "redis_tls_key_file"),
    "cert_reqs": ("ssl_cert_reqs", "redis_tls_cert_reqs"),
    "check_hostname": ("ssl_check_hostname", "redis_tls_check_hostname"),
}
TLS_PARAMS = {param: option for option, (param, _) in TLS_OPTIONS.items()}
SENTINEL_PARAMS = ("sentinel_username", "sentinel_password")
# redis-py would take these from the URL and override the timeouts and pool sizes Gatehouse sets per client
TUNING_PARAMS = frozenset({"socket_timeout", "socket_connect_timeout", "socket_keepalive", "retry_on_timeout",
                           "max_connections", "health_check_interval", "timeout"})
SUPPORTED = "redis://, rediss://, unix://, redis+sentinel:// or rediss+sentinel://"
CLUSTER_NOT_SUPPORTED = ("Redis Cluster is not supported: arq keeps each queue in one sorted set on one node and "
                         "Gatehouse's scripts touch several keys at once; use one primary (with Sentinel for "
                         "failover, redis+sentinel://)")
_TRUE, _FALSE = {"1", "true", "yes", "on", "y", "t"}, {"0", "false", "no", "off", "n", "f"}


class RedisConfigError(ValueError):
    """``redis_url`` or a ``redis_tls_*`` setting cannot be used; the message names it."""


class RedisTLSSettings(Protocol):
    """The settings this module reads (core.config.GatehouseSettings has them)."""

    @property
    def redis_url(self) -> str | None: ...
    @property
    def redis_tls_ca_file(self) -> Path | None: ...
    @property
    def redis_tls_cert_file(self) -> Path | None: ...
    @property
    def redis_tls_key_file(self) -> Path | None: ...
    @property
    def redis_tls_cert_reqs(self) -> str | None: ...
    @property
    def redis_tls_check_hostname(self) -> bool | None: ...


@dataclass(frozen=True)
class RedisTLS:
    """How to speak TLS to Redis: the CA that signs the server's certificate (None: the system's CAs), the
    client certificate and key (both or neither), and how strictly the server's certificate is checked."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    cert_reqs: str = "required"
    check_hostname: bool = True

    def connection_kwargs(self) -> dict[str, str | bool | None]:
        """redis-py's SSLConnection keyword arguments."""
        return {"ssl_ca_certs": self.ca_file, "ssl_certfile": self.cert_file, "ssl_keyfile": self.key_file,
                "ssl_cert_reqs": self.cert_reqs, "ssl_check_hostname": self.check_hostname}


@dataclass(frozen=True)
class RedisTarget:
    """One Redis, as core.redis_client connects to it. ``url`` is what redis-py's ``from_url`` gets for a
    direct connection (the TLS parameters taken out: ``tls`` holds them); a Sentinel target has ``sentinels``
    and ``service_name`` instead, and its credentials and database here."""

    url: str
    tls: RedisTLS | None
    db: int = 0
    username: str | None = None
    password: str | None = None
    sentinels: tuple[tuple[str, int], ...] = ()
    service_name: str = ""
    sentinel_username: str | None = None
    sentinel_password: str | None = None

    @property
    def is_sentinel(self) -> bool:
        return bool(self.sentinels)

    def describe(self) -> str:
        """Where it connects, for logs (no credentials)."""
        tls = " over TLS" if self.tls else ""
        if self.is_sentinel:
            hosts = ",".join(f"{_host_text(h)}:{p}" for h, p in self.sentinels)
            return f"Sentinel master {self.service_name!r} via {hosts}, db {self.db}{tls}"
        parts = urlsplit(self.url)
        if parts.scheme == "unix":
            return f"unix socket {parts.path}{tls}"
        return f"{parts.hostname or 'localhost'}:{parts.port or DEFAULT_REDIS_PORT}, db {self.db}{tls}"


def tls_settings_named(s: RedisTLSSettings) -> list[str]:
    """The ``redis_tls_*`` settings that are set."""
    return [setting for option, (_, setting) in TLS_OPTIONS.items() if getattr(s, setting) is not None]


def check_settings(s: RedisTLSSettings) -> RedisTarget | None:
    """Validate ``redis_url`` with the TLS settings (None when no URL is set: `gatehouse up` starts its own
    Valkey, which has no TLS, so TLS settings without a URL are an error too)."""
    if s.redis_url:
        return redis_target(s.redis_url, s)
    named = tls_settings_named(s)
    if named:
        raise RedisConfigError(f"{named[0]} is set but redis_url is not (the embedded Valkey speaks no TLS); "
                               "set redis_url to a rediss:// URL")
    return None


def redis_target(url: str, s: RedisTLSSettings | None = None) -> RedisTarget:
    """Parse and check ``url`` (with the TLS settings of ``s``). Raises RedisConfigError."""
    try:
        parts = urlsplit(url.strip())
    except ValueError as e:
        raise RedisConfigError(f"redis_url: not a URL ({e})") from None
    scheme = parts.scheme.lower()
    if "cluster" in scheme:
        raise RedisConfigError(f"redis_url: {CLUSTER_NOT_SUPPORTED}")
    if scheme not in DIRECT_SCHEMES and scheme not in SENTINEL_SCHEMES:
        shown = f"{scheme}://" if scheme else "none"
        raise RedisConfigError(f"redis_url: unsupported scheme {shown}; use {SUPPORTED}")
    query = _query(parts)
    unknown = sorted(set(query) - {"db", *TLS_PARAMS, *SENTINEL_PARAMS})
    for name in unknown:
        if name in TUNING_PARAMS:
            raise RedisConfigError(f"redis_url: query parameter {name!r} is not supported (Gatehouse sets its "
                                   "own timeouts and pool sizes per client)")
        raise RedisConfigError(f"redis_url: unknown query parameter {name!r} (accepted: db, "
                               f"{', '.join(TLS_PARAMS)}, and with Sentinel {', '.join(SENTINEL_PARAMS)})")
    sentinel = scheme in SENTINEL_SCHEMES
    if not sentinel and any(p in query for p in SENTINEL_PARAMS):
        raise RedisConfigError(f"redis_url: {next(p for p in SENTINEL_PARAMS if p in query)} is only for "
                               "redis+sentinel:// URLs")
    uses_tls = SENTINEL_SCHEMES[scheme] if sentinel else DIRECT_SCHEMES[scheme]
    tls = _tls(scheme, uses_tls, query, s)
    db = _db(parts, query, sentinel)
    if sentinel:
        return _sentinel_target(parts, query, tls, db)
    return _direct_target(parts, query, tls, db)


# ── internals ─────────────────────────────────────────────────────────────────────────────────────────
def _query(parts: SplitResult) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name in out and out[name] != value:
            raise RedisConfigError(f"redis_url: query parameter {name!r} is given twice")
        out[name] = value
    return out


def _db(parts: SplitResult, query: dict[str, str], sentinel: bool) -> int:
    if "db" in query:
        text, where = query["db"], "redis_url: db"
    elif sentinel:
        segments = [p for p in parts.path.split("/") if p]
        text, where = (segments[1] if len(segments) > 1 else "0"), "redis_url: the database after the service name"
    elif parts.scheme.lower() != "unix" and parts.path.strip("/"):
        text, where = unquote(parts.path.strip("/")), "redis_url: the database (the URL's path)"
    else:
        return 0
    try:
        db = int(text)
    except ValueError:
        raise RedisConfigError(f"{where} must be a number, got {text!r}") from None
    if db < 0:
        raise RedisConfigError(f"{where} must be 0 or more, got {db}")
    return db


def _direct_target(parts: SplitResult, query: dict[str, str], tls: RedisTLS | None, db: int) -> RedisTarget:
    if parts.scheme.lower() == "unix":
        if not parts.path:
            raise RedisConfigError("redis_url: a unix:// URL needs the socket's path (unix:///path/to/valkey.sock)")
    else:
        if not parts.hostname:
            raise RedisConfigError("redis_url: no host (redis://host:6379/0)")
        try:
            parts.port  # noqa: B018 — urlsplit checks the port only when it is read
        except ValueError:
            raise RedisConfigError("redis_url: the port must be a number from 1 to 65535") from None
    url = parts.geturl()
    if any(p in query for p in TLS_PARAMS):  # tls holds them: redis-py's from_url must not see them twice
        rest = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k not in TLS_PARAMS]
        url = urlunsplit(parts._replace(query=urlencode(rest)))
    return RedisTarget(url=url, tls=tls, db=db, username=unquote(parts.username) if parts.username else None,
                       password=unquote(parts.password) if parts.password else None)


def _sentinel_target(parts: SplitResult, query: dict[str, str], tls: RedisTLS | None, db: int) -> RedisTarget:
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    username = password = None
    if userinfo:
        user, colon, secret = userinfo.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon and secret else None
    sentinels = tuple(_host_port(h) for h in hostlist.split(","))
    segments = [p for p in parts.path.split("/") if p]
    if not segments:
        raise RedisConfigError("redis_url: a Sentinel URL names the master's service after the hosts "
                               "(redis+sentinel://host:26379/mymaster/0)")
    if len(segments) > 2:
        raise RedisConfigError("redis_url: a Sentinel URL's path is /service_name[/db]")
    return RedisTarget(url="", tls=tls, db=db, username=username, password=password, sentinels=sentinels,
                       service_name=unquote(segments[0]), sentinel_username=query.get("sentinel_username") or None,
                       sentinel_password=query.get("sentinel_password") or None)


def _host_port(text: str) -> tuple[str, int]:
    text = text.strip()
    if not text:
        raise RedisConfigError("redis_url: an empty sentinel host (hosts are separated by commas)")
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        port_text = rest.removeprefix(":") if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise RedisConfigError(f"redis_url: bad sentinel address {text!r}")
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise RedisConfigError(f"redis_url: bad sentinel address {text!r}")
    if not port_text:
        return unquote(host), DEFAULT_SENTINEL_PORT
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        raise RedisConfigError(f"redis_url: sentinel {host}'s port must be a number from 1 to 65535")
    return unquote(host), int(port_text)


def _host_text(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _tls(scheme: str, uses_tls: bool, query: dict[str, str], s: RedisTLSSettings | None) -> RedisTLS | None:
    """The TLS options from the URL's parameters and the settings (which must agree where both are set)."""
    chosen: dict[str, tuple[str | bool, str]] = {}  # option -> (value, where it came from)
    for option, (param, setting) in TLS_OPTIONS.items():
        from_url: str | bool | None = None
        if param in query:
            from_url = _bool(query[param], f"redis_url: {param}") if option == "check_hostname" else query[param]
        raw = getattr(s, setting, None) if s is not None else None
        from_setting: str | bool | None = str(raw) if isinstance(raw, Path) else raw
        if from_url is not None and from_setting is not None and from_url != from_setting:
            raise RedisConfigError(f"{setting} ({from_setting}) and redis_url's {param} ({from_url}) disagree; "
                                   "set one of them")
        if from_url is not None:
            chosen[option] = (from_url, f"redis_url's {param}")
        elif from_setting is not None:
            chosen[option] = (from_setting, setting)
    if not uses_tls:
        if chosen:
            option = next(iter(chosen))
            tls_scheme = "rediss+sentinel://" if scheme in SENTINEL_SCHEMES else "rediss://"
            raise RedisConfigError(f"{chosen[option][1]} is set but redis_url uses {scheme}:// (no TLS); "
                                   f"use {tls_scheme}")
        return None
    cert_reqs = str(chosen.get("cert_reqs", ("required", ""))[0]).lower()
    if cert_reqs not in CERT_REQS:
        raise RedisConfigError(f"{chosen['cert_reqs'][1]}: must be one of {', '.join(CERT_REQS)}, "
                               f"got {chosen['cert_reqs'][0]!r}")
    check_hostname = bool(chosen["check_hostname"][0]) if "check_hostname" in chosen else cert_reqs != "none"
    if check_hostname and cert_reqs == "none":
        raise RedisConfigError(f"{chosen['check_hostname'][1]}: the host name cannot be checked with "
                               "ssl_cert_reqs none (nothing is verified)")
    files: dict[str, str | None] = {}
    for option in ("ca_file", "cert_file", "key_file"):
        value, where = chosen.get(option, (None, ""))
        files[option] = _readable(str(value), where) if value else None
    if bool(files["cert_file"]) != bool(files["key_file"]):
        have, missing = ("cert_file", "key_file") if files["cert_file"] else ("key_file", "cert_file")
        raise RedisConfigError(f"{chosen[have][1]} is set without {TLS_OPTIONS[missing][1]} (or redis_url's "
                               f"{TLS_OPTIONS[missing][0]}): a client certificate needs both")
    _loadable(files, chosen)
    return RedisTLS(ca_file=files["ca_file"], cert_file=files["cert_file"], key_file=files["key_file"],
                    cert_reqs=cert_reqs, check_hostname=check_hostname)


def _readable(path: str, where: str) -> str:
    p = Path(path)
    if not p.exists():
        raise RedisConfigError(f"{where}: no such file: {path}")
    if not p.is_file():
        raise RedisConfigError(f"{where}: not a file: {path}")
    if not os.access(p, os.R_OK):
        raise RedisConfigError(f"{where}: cannot read {path}")
    return path


def _loadable(files: dict[str, str | None], chosen: dict[str, tuple[str | bool, str]]) -> None:
    """Load the files as the client will, so a wrong one is named now rather than at the first connection."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if files["ca_file"]:
        try:
            ctx.load_verify_locations(cafile=files["ca_file"])
        except ssl.SSLError as e:
            raise RedisConfigError(f"{chosen['ca_file'][1]}: {files['ca_file']} holds no PEM CA certificate "
                                   f"({e.reason or e})") from None
    if files["cert_file"] and files["key_file"]:
        try:
            # no password: redis-py cannot pass one, so an encrypted key fails here, named, not at connect
            ctx.load_cert_chain(files["cert_file"], files["key_file"], password=lambda: "")
        except ssl.SSLError as e:
            raise RedisConfigError(f"{chosen['cert_file'][1]} / {chosen['key_file'][1]}: cannot load the client "
                                   f"certificate {files['cert_file']} with its key {files['key_file']} "
                                   f"({e.reason or e})") from None


def _bool(text: str, where: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise RedisConfigError(f"{where}: must be true or false, got {text!r}")
