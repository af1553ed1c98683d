"""The settings sections of ``gatehouse:`` that more than one side reads: the environment-first base, JWT, teams,
Modal, tracing (Langfuse) and metrics (Prometheus).

Langfuse's own environment variables work as they do for its SDK (``LANGFUSE_PUBLIC_KEY``,
``LANGFUSE_SECRET_KEY``, ``LANGFUSE_BASE_URL`` or ``LANGFUSE_HOST``); the file's values win over them only
where the environment sets nothing. Tracing is on when both keys are set.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from core.durations import DURATION_PATTERN


class EnvFirstSettings(BaseSettings):
    """Values from the environment win over those given at construction (the file's); no .env, no secrets dir."""

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (env_settings, init_settings)


class ClaimMapping(BaseModel):
    """Which claims make the identity. Names may be dotted paths into nested objects (``realm_access.roles``);
    a claim literally named with dots (``https://idp/team``) wins over the nested reading."""

    model_config = ConfigDict(extra="forbid")

    user: list[str] = Field(default_factory=lambda: ["sub", "user", "email"], min_length=1)  # first wins
    team: str = "team_id"
    models: str = "models"  # a list of model names, or one space/comma separated string
    rpm_limit: str = "rpm_limit"
    tpm_limit: str = "tpm_limit"
    max_parallel_requests: str = "max_parallel_requests"
    admin: str | None = None  # admin if this claim is true or holds admin_value (list or string)
    admin_value: str = "gatehouse-admin"


class JwtSettings(BaseModel):
    """JWT config. ``issuer``/``audience`` describe the IdP: with ``jwks_url`` set they are checked on
    RS256/ES256 tokens only (the shared-secret service's HS256 tokens carry no iss/aud); else on HS256."""

    model_config = ConfigDict(extra="forbid", hide_input_in_errors=True)  # never echo the secret

    hs256_secret: SecretStr | None = None
    jwks_url: str | None = Field(None, pattern=r"^https?://[^/?#\s]+")
    issuer: str | None = None
    audience: str | list[str] | None = None
    leeway_s: float = Field(30, ge=0, le=300)
    jwks_cache_ttl_s: float = Field(300, gt=0)
    jwks_min_refresh_interval_s: float = Field(10, ge=0)  # unknown kids: at most one fetch per interval
    jwks_timeout_s: float = Field(5, gt=0)
    required_claims: list[str] = Field(default_factory=lambda: ["exp"])
    claims: ClaimMapping = Field(default_factory=ClaimMapping)

    @field_validator("hs256_secret")
    @classmethod
    def _long_secret(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value().encode()) < 32:
            raise ValueError("hs256_secret must be at least 32 bytes")
        return v

    @property
    def enabled(self) -> bool:
        return self.hs256_secret is not None or self.jwks_url is not None


class TeamLimits(BaseModel):
    """Limits shared by every key (and JWT identity) of a team."""

    model_config = ConfigDict(extra="forbid")

    rpm_limit: int | None = Field(default=None, ge=0)
    tpm_limit: int | None = Field(default=None, ge=0)
    max_parallel_requests: int | None = Field(default=None, ge=0)
    max_budget: float | None = Field(default=None, ge=0)
    budget_duration: str | None = Field(default=None, pattern=DURATION_PATTERN)


class ModalSettings(BaseModel):
    """Where the registry's vLLM apps are deployed; with a workspace set, every registry model is served as
    ``<name>-local`` (gpu_apps/registry.py) in addition to ``model_list``."""

    model_config = ConfigDict(extra="forbid")

    workspace: str | None = Field(default=None, pattern=r"^[a-z0-9\-]+$")
    environment: str | None = None
    # seed 004: workers lengthen a Modal app's scaledown window while it is in use (gpu_apps/scaling.py;
    # MODAL_BASE_WARM_TIME, MODAL_EXTENSION_TIME, MODAL_ACTIVITY_WINDOW, MODAL_MAX_CONTAINERS)
    hybrid_scaling: bool = False
    scaling_dry_run: bool = False  # decide and report, but do not call Modal's API


Masking = Literal["off", "hash", "drop"]


class TracingSettings(EnvFirstSettings):
    """From the file by field name; from the environment only by Langfuse's own variable names (and
    ``GATEHOUSE_TRACING_<FIELD>``), never by a bare field name such as ``SECRET_KEY`` or ``ENVIRONMENT``."""

    model_config = SettingsConfigDict(extra="forbid", populate_by_name=True, hide_input_in_errors=True,
                                      env_prefix="GATEHOUSE_TRACING_")

    public_key: str | None = Field(default=None, validation_alias="LANGFUSE_PUBLIC_KEY")
    secret_key: SecretStr | None = Field(default=None, validation_alias="LANGFUSE_SECRET_KEY")
    base_url: str = Field(default="https://cloud.langfuse.com", pattern=r"^https?://[^/?#\s]+",
                          validation_alias=AliasChoices("LANGFUSE_BASE_URL", "LANGFUSE_HOST"))
    environment: str | None = Field(default=None, pattern=r"^[a-z0-9_\-]{1,40}$",
                                    validation_alias="LANGFUSE_TRACING_ENVIRONMENT")
    release: str | None = Field(default=None, validation_alias="LANGFUSE_RELEASE")
    # input/output of generations: sent as is (off), as "sha256:<hex>" (hash), or not at all (drop)
    masking: Masking = Field(default="off", validation_alias="GATEHOUSE_TRACE_MASKING")
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0, validation_alias="LANGFUSE_SAMPLE_RATE")
    flush_interval_s: float = Field(default=1.0, gt=0, le=60)
    flush_at: int = Field(default=64, ge=1, le=10_000)  # spans per export batch: small batches keep the GIL free
    max_queue_spans: int = Field(default=8192, ge=16)  # spans waiting for export; past it new traces are dropped
    export_timeout_s: float = Field(default=10.0, gt=0, le=120)
    shutdown_timeout_s: float = Field(default=5.0, ge=0, le=60)


    @field_validator("masking", mode="before")
    @classmethod
    def _yaml_off(cls, v: object) -> object:
        return "off" if v is False else v  # YAML reads a bare `off` as false

    @property
    def enabled(self) -> bool:
        return bool(self.public_key and self.secret_key)


class MetricsSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    enabled: bool = True  # GET /metrics on the gateway
    worker_port: int | None = Field(default=None, ge=1, le=65535)  # a worker's own /metrics (other hosts)
    worker_host: str = "0.0.0.0"  # where that port listens (only used when worker_port is set)
    tenant_labels: bool = False  # label spend and tokens by team / key alias (bounded by your key count)
