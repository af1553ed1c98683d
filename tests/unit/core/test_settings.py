"""core.settings: the environment-first base and the shared settings sections. (Loading them from a file with
overrides: test_config.py; JWT settings through the verifier: unit/gateway/auth/test_jwt_auth.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError
from pydantic_settings import SettingsConfigDict

from core.settings import (
    ClaimMapping,
    EnvFirstSettings,
    JwtSettings,
    MetricsSettings,
    ModalSettings,
    TeamLimits,
    TracingSettings,
)

LANGFUSE_ENV = ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST",
                "LANGFUSE_TRACING_ENVIRONMENT", "LANGFUSE_RELEASE", "LANGFUSE_SAMPLE_RATE", "GATEHOUSE_TRACE_MASKING",
                # read too, unprefixed (see test_generic_variables_are_not_tracing_settings)
                "PUBLIC_KEY", "SECRET_KEY", "BASE_URL", "ENVIRONMENT", "RELEASE", "MASKING", "SAMPLE_RATE")


@pytest.fixture
def no_langfuse_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in LANGFUSE_ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


class Knobs(EnvFirstSettings):
    model_config = SettingsConfigDict(env_prefix="GH_UNIT_KNOB_")

    size: int = 1
    name: str = "default"


# ── EnvFirstSettings ──────────────────────────────────────────────────────────────────────────────────


def test_environment_beats_init_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GH_UNIT_KNOB_NAME", raising=False)
    monkeypatch.setenv("GH_UNIT_KNOB_SIZE", "5")
    assert Knobs(size=3, name="file") == Knobs.model_construct(size=5, name="file")
    monkeypatch.delenv("GH_UNIT_KNOB_SIZE")
    assert (Knobs(size=3).size, Knobs().size, Knobs().name) == (3, 1, "default")


def test_environment_values_are_validated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GH_UNIT_KNOB_SIZE", "many")
    with pytest.raises(ValidationError, match="size"):
        Knobs(size=3)


def test_no_dotenv_file_is_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GH_UNIT_KNOB_SIZE", raising=False)
    (tmp_path / ".env").write_text("GH_UNIT_KNOB_SIZE=9\n")
    assert Knobs().size == 1


# ── TracingSettings ───────────────────────────────────────────────────────────────────────────────────


@pytest.mark.usefixtures("no_langfuse_env")
def test_tracing_is_enabled_by_both_keys() -> None:
    assert TracingSettings(public_key="pk", secret_key="sk").enabled
    assert not TracingSettings(public_key="pk").enabled
    assert not TracingSettings(secret_key="sk").enabled
    assert not TracingSettings(public_key="", secret_key="sk").enabled
    assert not TracingSettings().enabled


def test_langfuse_environment_beats_the_file(no_langfuse_env: pytest.MonkeyPatch) -> None:
    no_langfuse_env.setenv("LANGFUSE_PUBLIC_KEY", "pk-env")
    no_langfuse_env.setenv("LANGFUSE_SAMPLE_RATE", "0.25")
    no_langfuse_env.setenv("GATEHOUSE_TRACE_MASKING", "hash")
    t = TracingSettings(public_key="pk-file", secret_key="sk-file", sample_rate=1.0, masking="drop")
    assert (t.public_key, t.sample_rate, t.masking) == ("pk-env", 0.25, "hash")
    assert t.secret_key is not None and t.secret_key.get_secret_value() == "sk-file"  # not in the env: the file's
    assert t.enabled


@pytest.mark.usefixtures("no_langfuse_env")
def test_masking_reads_yaml_off() -> None:
    assert TracingSettings(masking=False).masking == "off"  # YAML's bare `off` arrives as False
    assert TracingSettings().masking == "off"
    assert TracingSettings(masking="hash").masking == "hash"
    for bad in (True, "blur", "OFF"):
        with pytest.raises(ValidationError, match="masking"):
            TracingSettings(masking=bad)


@pytest.mark.usefixtures("no_langfuse_env")
def test_tracing_settings_bounds_and_secret() -> None:
    for bad in ({"sample_rate": 1.5}, {"base_url": "langfuse.internal"}, {"environment": "Prod"},
                {"flush_at": 0}, {"max_queue_spans": 8}, {"unknown": 1}):
        with pytest.raises(ValidationError):
            TracingSettings(**bad)
    t = TracingSettings(public_key="pk", secret_key="sk-very-secret")
    assert "sk-very-secret" not in repr(t) and "sk-very-secret" not in str(t.model_dump())
    with pytest.raises(ValidationError) as e:
        TracingSettings(secret_key="sk-very-secret", sample_rate=2)
    assert "sk-very-secret" not in str(e.value)


def test_generic_variables_are_not_tracing_settings(no_langfuse_env: pytest.MonkeyPatch) -> None:
    no_langfuse_env.setenv("SECRET_KEY", "a-web-framework-secret")  # e.g. Django's, in the same environment
    t = TracingSettings(public_key="pk-file")
    assert t.secret_key is None and not t.enabled  # else that secret goes to Langfuse as a credential


def test_an_unrelated_environment_variable_does_not_break_the_config(no_langfuse_env: pytest.MonkeyPatch) -> None:
    no_langfuse_env.setenv("ENVIRONMENT", "Production")
    assert TracingSettings().environment is None


# ── JwtSettings ───────────────────────────────────────────────────────────────────────────────────────


def test_hs256_secret_needs_32_bytes_not_characters() -> None:
    assert JwtSettings(hs256_secret="x" * 32).enabled
    assert JwtSettings(hs256_secret="é" * 16).enabled  # 16 characters, 32 bytes
    for short in ("x" * 31, "é" * 15):
        with pytest.raises(ValidationError, match="hs256_secret must be at least 32 bytes") as e:
            JwtSettings(hs256_secret=short)
        assert short not in str(e.value)  # never echoed


def test_jwt_defaults() -> None:
    j = JwtSettings()
    assert not j.enabled and j.required_claims == ["exp"] and j.leeway_s == 30
    assert j.claims == ClaimMapping() and j.claims.user == ["sub", "user", "email"]
    assert JwtSettings(jwks_url="https://idp.example/jwks").enabled


# ── TeamLimits, ModalSettings, MetricsSettings ────────────────────────────────────────────────────────


@pytest.mark.parametrize("duration", ["30d", "1h", " 2w ", "45s", "10m"])
def test_team_budget_duration_accepts_litellm_durations(duration: str) -> None:
    assert TeamLimits(max_budget=10, budget_duration=duration).budget_duration == duration


@pytest.mark.parametrize("duration", ["30", "1y", "1.5h", "-1d", "monthly", ""])
def test_team_budget_duration_rejects_others(duration: str) -> None:
    with pytest.raises(ValidationError, match="budget_duration"):
        TeamLimits(budget_duration=duration)


def test_team_limits_bounds() -> None:
    assert TeamLimits() == TeamLimits(rpm_limit=None, tpm_limit=None, max_parallel_requests=None, max_budget=None,
                                      budget_duration=None)
    assert TeamLimits(rpm_limit=0).rpm_limit == 0
    for bad in ({"rpm_limit": -1}, {"tpm_limit": -5}, {"max_parallel_requests": -1}, {"max_budget": -0.01},
                {"rpm": 3}):
        with pytest.raises(ValidationError):
            TeamLimits(**bad)


def test_modal_settings() -> None:
    assert ModalSettings(workspace="my-team-2").workspace == "my-team-2"
    assert not ModalSettings().hybrid_scaling and not ModalSettings().scaling_dry_run
    for bad in ("My_Team", "team.name", ""):
        with pytest.raises(ValidationError, match="workspace"):
            ModalSettings(workspace=bad)


def test_metrics_settings() -> None:
    m = MetricsSettings()
    assert (m.enabled, m.worker_port, m.worker_host, m.tenant_labels) == (True, None, "0.0.0.0", False)
    assert MetricsSettings(worker_port=65535).worker_port == 65535
    with pytest.raises(ValidationError, match="worker_port"):
        MetricsSettings(worker_port=65536)
