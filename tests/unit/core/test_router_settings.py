"""LiteLLM's routing configuration: several deployments per model_name, the router's deployment keys (never sent
upstream), router_settings typed and checked, and every key of the three LiteLLM sections honoured, ignored with
one warning, or rejected by name."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from core.config import Config, ConfigError, load_config
from core.routing import NO_ORDER

TWO_DEPLOYMENTS = """
model_list:
  - model_name: gpt
    litellm_params: {model: openai/gpt-4o, api_base: "http://a/v1", rpm: 60, weight: 2, order: 1,
                     max_parallel_requests: 4, model_info: {id: east}}
  - model_name: gpt
    litellm_params: {model: openai/gpt-4o, api_base: "http://b/v1", tpm: 1000}
    rpm: 30
  - model_name: small
    litellm_params: {model: openai/gpt-4o-mini}
"""


@pytest.fixture(autouse=True)
def _no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REDIS_URL", "GATEHOUSE_REDIS_URL", "DATABASE_URL", "GATEHOUSE_DATABASE_URL",
                 "GATEHOUSE_UPSTREAM_RETRIES", "GATEHOUSE_UPSTREAM_TIMEOUT_S"):
        monkeypatch.delenv(name, raising=False)


def load(tmp_path: Path, text: str) -> Config:
    p = tmp_path / "gatehouse.yaml"
    p.write_text(text)
    return load_config(p)


def test_every_deployment_of_a_model_is_kept(tmp_path: Path) -> None:
    cfg = load(tmp_path, TWO_DEPLOYMENTS)
    deps = cfg.deployments()
    assert [d.id for d in deps["gpt"]] == ["east", "gpt#1"] and [d.id for d in deps["small"]] == ["small#0"]
    east, second = deps["gpt"]
    assert (east.rpm, east.tpm, east.weight, east.order, east.max_parallel_requests) == (60, None, 2.0, 1, 4)
    assert (second.rpm, second.tpm, second.weight, second.order) == (30, 1000, 1.0, NO_ORDER)  # rpm beside params
    assert east.limited and second.limited and not deps["small"][0].limited
    assert cfg.models()["gpt"].litellm_params.api_base == "http://a/v1"  # the gateway's view: the first one


def test_the_routers_keys_never_reach_the_provider_parameters(tmp_path: Path) -> None:
    cfg = load(tmp_path, TWO_DEPLOYMENTS.replace("order: 1,", "order: 1, temperature: 0.5,"))
    assert cfg.deployments()["gpt"][0].entry.litellm_params.extra_params() == {"temperature": 0.5}


def test_router_settings_are_typed_and_fallbacks_take_litellms_shapes(tmp_path: Path) -> None:
    cfg = load(tmp_path, TWO_DEPLOYMENTS + """
router_settings:
  routing_strategy: simple-shuffle
  allowed_fails: 1
  cooldown_time: 30
  fallbacks: [{gpt: [small]}, {small: gpt}]
  context_window_fallbacks: [{"*": [small]}]
""")
    r = cfg.router_settings
    assert (r.routing_strategy, r.allowed_fails, r.cooldown_time) == ("simple-shuffle", 1, 30.0)
    assert r.fallbacks_of("gpt") == ["small"] and r.fallbacks_of("small") == ["gpt"]
    assert r.context_window_fallbacks_of("gpt") == ["small"] and r.context_window_fallbacks_of("small") == []


def test_defaults_are_litellms_but_the_strategy() -> None:
    r = Config().router_settings
    assert (r.routing_strategy, r.allowed_fails, r.cooldown_time, r.max_fallbacks) == ("least-busy", 3, 5.0, 5)
    assert r.fallbacks_of("chargpt") == []


def test_default_and_wildcard_fallbacks(tmp_path: Path) -> None:
    r = load(tmp_path, TWO_DEPLOYMENTS + "router_settings:\n  default_fallbacks: [small]\n").router_settings
    assert r.fallbacks_of("gpt") == ["small"] and r.fallbacks_of("small") == []  # never to itself
    r = load(tmp_path, TWO_DEPLOYMENTS + "router_settings:\n  fallbacks: [{'*': [gpt]}, {gpt: [small]}]\n"
             ).router_settings
    assert r.fallbacks_of("gpt") == ["small"] and r.fallbacks_of("small") == ["gpt"]


def test_litellm_settings_routing_keys_count_unless_router_settings_sets_them(tmp_path: Path) -> None:
    cfg = load(tmp_path, TWO_DEPLOYMENTS + """
litellm_settings:
  fallbacks: [{gpt: [small]}]
  allowed_fails: 7
  cooldown_time: 9
router_settings:
  allowed_fails: 2
""")
    assert cfg.router_settings.fallbacks_of("gpt") == ["small"]
    assert (cfg.router_settings.allowed_fails, cfg.router_settings.cooldown_time) == (2, 9.0)


@pytest.mark.parametrize("section, message", [
    ("router_settings:\n  fallbacks: [{gpt: [nope]}]\n",
     "router_settings.fallbacks[0].gpt: 'nope' is not a model_name in model_list"),
    ("router_settings:\n  fallbacks: [{nope: [gpt]}]\n", "router_settings.fallbacks[0]: 'nope' is not a model_name"),
    ("router_settings:\n  context_window_fallbacks: [{gpt: [big]}]\n", "'big' is not a model_name"),
    ("router_settings:\n  default_fallbacks: [nope]\n", "router_settings.default_fallbacks: 'nope'"),
    ("router_settings:\n  routing_strategy: latency-based-routing\n",
     "router_settings.routing_strategy: Value error, latency-based-routing is not supported"),
    ("router_settings:\n  routing_strategy: fastest\n", "unknown routing strategy 'fastest'"),
    ("router_settings:\n  model_group_alias: {gpt-4: gpt}\n", "router_settings.model_group_alias: not supported"),
    ("router_settings:\n  alowed_fails: 3\n", "router_settings.alowed_fails: not supported"),
    ("litellm_settings:\n  max_budget: 10\n", "litellm_settings.max_budget: not supported (set budgets"),
    ("general_settings:\n  allowed_ips: [10.0.0.1]\n", "general_settings.allowed_ips: not supported"),
    ("router_settings:\n  allowed_fails: -1\n", "router_settings.allowed_fails: Input should be greater than"),
    ("litellm_settings:\n  num_retries: 99\n", "num_retries: Input should be less than or equal to 10"),
])
def test_what_is_not_honoured_stops_start_up_with_its_name(tmp_path: Path, section: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, TWO_DEPLOYMENTS + section)
    assert message in str(e.value)


def test_a_deployment_key_of_the_wrong_type_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model_list\[0\]\.litellm_params\.rpm: Input should be greater"):
        load(tmp_path, TWO_DEPLOYMENTS.replace("rpm: 60", "rpm: 0"))
    with pytest.raises(ConfigError, match=r"model_info\.id 'east' is given to more than one deployment"):
        load(tmp_path, TWO_DEPLOYMENTS.replace("tpm: 1000}", "tpm: 1000, model_info: {id: east}}"))


def test_harmless_keys_are_listed_in_one_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="gatehouse.config"):
        load(tmp_path, TWO_DEPLOYMENTS + """
router_settings: {enable_pre_call_checks: true, num_retries: 1}
litellm_settings: {drop_params: true, success_callback: [langfuse], set_verbose: false}
general_settings: {alerting: [slack], master_key: sk-general-master-key}
""")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "ignored" in warnings[0]
    for key in ("router_settings.enable_pre_call_checks", "litellm_settings.success_callback",
                "litellm_settings.set_verbose", "general_settings.alerting"):
        assert key in warnings[0]
    assert "drop_params" not in warnings[0] and "num_retries" not in warnings[0] and "master_key" not in warnings[0]


def test_litellm_retries_and_timeouts_apply_where_gatehouse_sets_none(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    base = TWO_DEPLOYMENTS + "litellm_settings: {num_retries: 4, request_timeout: 20, drop_params: true}\n"
    cfg = load(tmp_path, base)
    assert (cfg.settings.upstream_retries, cfg.settings.upstream_timeout_s, cfg.drop_params()) == (4, 20.0, True)
    cfg = load(tmp_path, base + "router_settings: {num_retries: 1, timeout: 5}\n")
    assert (cfg.settings.upstream_retries, cfg.settings.upstream_timeout_s) == (1, 5.0)  # router_settings first
    cfg = load(tmp_path, base + "gatehouse: {upstream_retries: 0}\n")
    assert (cfg.settings.upstream_retries, cfg.settings.upstream_timeout_s) == (0, 20.0)  # gatehouse: first
    monkeypatch.setenv("GATEHOUSE_UPSTREAM_TIMEOUT_S", "7")
    assert load(tmp_path, base).settings.upstream_timeout_s == 7.0  # the environment before all


def test_database_and_redis_of_a_litellm_config_are_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    text = TWO_DEPLOYMENTS + """
general_settings: {database_url: "postgresql://u:p@db:5432/litellm"}
router_settings: {redis_host: cache.internal, redis_port: 6380, redis_password: "p@ss/word"}
"""
    cfg = load(tmp_path, text)
    assert cfg.settings.database_url == "postgresql://u:p@db:5432/litellm"
    assert cfg.settings.redis_url == "redis://:p%40ss%2Fword@cache.internal:6380/0"
    monkeypatch.setenv("DATABASE_URL", "postgresql://env/db")
    monkeypatch.setenv("REDIS_URL", "redis://env:6379/0")
    cfg = load(tmp_path, text)
    assert (cfg.settings.database_url, cfg.settings.redis_url) == ("postgresql://env/db", "redis://env:6379/0")
    monkeypatch.delenv("REDIS_URL")
    assert load(tmp_path, TWO_DEPLOYMENTS + "router_settings: {redis_url: 'redis://r:1/2'}\n"
                ).settings.redis_url == "redis://r:1/2"
