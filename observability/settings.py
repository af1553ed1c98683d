"""Settings for tracing (Langfuse) and metrics (Prometheus): the ``tracing:`` and ``metrics:`` parts of the
``gatehouse:`` config section.

Langfuse's own environment variables work as they do for its SDK (``LANGFUSE_PUBLIC_KEY``,
``LANGFUSE_SECRET_KEY``, ``LANGFUSE_BASE_URL`` or ``LANGFUSE_HOST``); the file's values win over them only
where the environment sets nothing. Tracing is on when both keys are set.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic_settings import SettingsConfigDict

from gateway.env_first import EnvFirstSettings

Masking = Literal["off", "hash", "drop"]


class TracingSettings(EnvFirstSettings):
    model_config = SettingsConfigDict(extra="forbid", populate_by_name=True, hide_input_in_errors=True)

    public_key: str | None = Field(default=None, validation_alias=AliasChoices("LANGFUSE_PUBLIC_KEY", "public_key"))
    secret_key: SecretStr | None = Field(default=None,
                                         validation_alias=AliasChoices("LANGFUSE_SECRET_KEY", "secret_key"))
    base_url: str = Field(default="https://cloud.langfuse.com", pattern=r"^https?://[^/?#\s]+",
                          validation_alias=AliasChoices("LANGFUSE_BASE_URL", "LANGFUSE_HOST", "base_url"))
    environment: str | None = Field(default=None, pattern=r"^[a-z0-9_\-]{1,40}$",
                                    validation_alias=AliasChoices("LANGFUSE_TRACING_ENVIRONMENT", "environment"))
    release: str | None = Field(default=None, validation_alias=AliasChoices("LANGFUSE_RELEASE", "release"))
    # input/output of generations: sent as is (off), as "sha256:<hex>" (hash), or not at all (drop)
    masking: Masking = Field(default="off", validation_alias=AliasChoices("GATEHOUSE_TRACE_MASKING", "masking"))
    sample_rate: float = Field(default=1.0, ge=0.0, le=1.0,
                               validation_alias=AliasChoices("LANGFUSE_SAMPLE_RATE", "sample_rate"))
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
