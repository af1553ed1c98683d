"""What Gatehouse honours of LiteLLM's routing configuration, typed: ``router_settings``, the deployment keys the
router reads (``rpm``, ``tpm``, ``weight``, ``order``, ``max_parallel_requests``, ``model_info``; they are never sent
upstream), and for every key of ``router_settings`` / ``litellm_settings`` / ``general_settings`` whether it is
honoured, accepted but ignored (one start-up warning lists those), or rejected (start-up stops, naming it).

A model group is every ``model_list`` entry with one ``model_name``; each entry is a :class:`Deployment` with an id
that is the same on every replica (``model_info.id``, else ``<model_name>#<n>``). The worker side is
``workers.routing`` (fallbacks, retries) and ``workers.balancer`` (picks and cooldowns shared in Redis);
docs/adr/0013-routing.md says why it is built that way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

if TYPE_CHECKING:
    from core.config import ModelEntry

# deployment keys read by the router, not by the provider: stripped from what backends send upstream
ROUTER_KEYS = frozenset({"rpm", "tpm", "weight", "order", "max_parallel_requests", "model_info"})
STRATEGIES = ("least-busy", "simple-shuffle", "usage-based-routing", "usage-based-routing-v2")
_NOT_SUPPORTED_STRATEGIES = {"latency-based-routing": "least-busy follows the fastest deployments",
                             "cost-based-routing": "give the cheaper model group the name clients call, and the "
                                                   "dearer one as its fallback"}
NO_ORDER = 1 << 30  # a deployment without ``order`` comes after every one that has one (as in LiteLLM)

# Keys of LiteLLM's sections that Gatehouse honours; the router_settings ones are RouterSettings' fields.
_ROUTING_IN_LITELLM_SETTINGS = ("fallbacks", "context_window_fallbacks", "default_fallbacks", "allowed_fails",
                                "cooldown_time")
HONOURED = {
    "litellm_settings": frozenset({"num_retries", "request_timeout", "drop_params", *_ROUTING_IN_LITELLM_SETTINGS}),
    "general_settings": frozenset({"master_key", "database_url"}),
}
# Keys accepted with a warning: they tune logging, caching, alerting or UI, not what is served or to whom.
IGNORED = {
    "router_settings": frozenset({
        "cache_responses", "caching_groups", "cache_kwargs", "client_ttl", "polling_interval", "set_verbose",
        "debug_level", "enable_pre_call_checks", "optional_pre_call_checks", "retry_after", "stream_timeout",
        "routing_strategy_args", "allowed_fails_policy", "retry_policy", "model_group_retry_policy",
        "content_policy_fallbacks", "alerting_config"}),
    "litellm_settings": frozenset({
        "set_verbose", "json_logs", "success_callback", "failure_callback", "callbacks", "service_callback",
        "telemetry", "cache", "cache_params", "turn_off_message_logging", "redact_messages_in_exceptions",
        "redact_user_api_key_info", "modify_params", "return_response_headers", "ssl_verify", "force_ipv4",
        "suppress_debug_info", "log_raw_request_response", "content_policy_fallbacks",
        "enable_json_schema_validation"}),
    "general_settings": frozenset({
        "alerting", "alerting_threshold", "alert_types", "proxy_batch_write_at", "database_connection_pool_limit",
        "database_connection_timeout", "disable_spend_logs", "disable_error_logs", "background_health_checks",
        "health_check_interval", "health_check_details", "store_prompts_in_spend_logs",
        "maximum_spend_logs_retention_period", "use_redis_transaction_buffer", "ui_access_mode"}),
}
# Why a known key is rejected: Gatehouse does not do what it asks, and serving without it would change what is
# served or who may call. Any key in none of these tables is rejected too (a typo must not pass unnoticed).
_REJECT_HINTS = {
    "model_group_alias": "name the deployments as clients call them",
    "routing_groups": "one routing strategy applies to every model group",
    "default_litellm_params": "put the parameters in each deployment's litellm_params",
    "provider_budget_config": "set budgets on keys or teams (gatehouse.teams)",
    "max_budget": "set budgets on keys or teams (gatehouse.teams)",
    "enable_tag_filtering": "tag-based routing is not supported",
    "store_model_in_db": "models come from model_list only",
    "custom_auth": "see gatehouse.jwt and virtual keys",
    "enable_jwt_auth": "configure gatehouse.jwt",
    "allowed_routes": "route access is fixed by the credential kind",
    "allowed_ips": "restrict client addresses in front of the gateway",
}


def _as_groups(v: Any) -> Any:
    """LiteLLM's ``[{"group": ["fallback", ...]}, ...]``; a bare name or one mapping is accepted too."""
    if isinstance(v, dict):
        v = [v]
    if isinstance(v, list):
        return [{k: [t] if isinstance(t, str) else t for k, t in item.items()} if isinstance(item, dict) else item
                for item in v]
    return v


class RouterSettings(BaseModel):
    """``router_settings``: what LiteLLM's Router takes and Gatehouse honours (defaults are LiteLLM's, but the
    strategy: least-busy, the in-flight count shared across replicas)."""

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)  # extras: sorted by unhonoured_keys

    routing_strategy: str = "least-busy"
    num_retries: int | None = Field(default=None, ge=0, le=10)  # else gatehouse.upstream_retries
    timeout: float | None = Field(default=None, gt=0)  # seconds per upstream call; else gatehouse.upstream_timeout_s
    allowed_fails: int = Field(default=3, ge=0)  # failures in a minute a deployment may have; one more cools it down
    cooldown_time: float = Field(default=5.0, ge=0)  # seconds a cooled-down deployment is left out of picks
    disable_cooldowns: bool = False
    fallbacks: list[dict[str, list[str]]] = Field(default_factory=list)
    context_window_fallbacks: list[dict[str, list[str]]] = Field(default_factory=list)
    default_fallbacks: list[str] = Field(default_factory=list)
    max_fallbacks: int = Field(default=5, ge=0, le=50)
    default_max_parallel_requests: int | None = Field(default=None, ge=1)
    redis_url: str | None = None
    redis_host: str | None = None
    redis_port: int = Field(default=6379, ge=1, le=65535)
    redis_password: SecretStr | None = None

    @field_validator("fallbacks", "context_window_fallbacks", mode="before")
    @classmethod
    def _fallback_maps(cls, v: Any) -> Any:
        return _as_groups(v)

    @field_validator("default_fallbacks", mode="before")
    @classmethod
    def _a_name_is_a_list(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("routing_strategy")
    @classmethod
    def _supported(cls, v: str) -> str:
        if v in _NOT_SUPPORTED_STRATEGIES:
            raise ValueError(f"{v} is not supported ({_NOT_SUPPORTED_STRATEGIES[v]}); use one of "
                             f"{', '.join(STRATEGIES)}")
        if v not in STRATEGIES:
            raise ValueError(f"unknown routing strategy {v!r}; use one of {', '.join(STRATEGIES)}")
        return v

    def fallbacks_of(self, group: str) -> list[str]:
        """The groups a failing ``group`` falls back to: its own entry, else ``*``'s, else default_fallbacks."""
        own = _lookup(self.fallbacks, group)
        if own is None:
            own = _lookup(self.fallbacks, "*")
        return [g for g in (own if own is not None else self.default_fallbacks) if g != group]

    def context_window_fallbacks_of(self, group: str) -> list[str]:
        own = _lookup(self.context_window_fallbacks, group)
        if own is None:
            own = _lookup(self.context_window_fallbacks, "*")
        return [g for g in own or () if g != group]

    def redis_dsn(self) -> str | None:
        """The Redis this section names (``redis_url``, or ``redis_host``/``redis_port``/``redis_password``)."""
        if self.redis_url:
            return self.redis_url
        if not self.redis_host:
            return None
        password = self.redis_password.get_secret_value() if self.redis_password is not None else ""
        auth = f":{quote(password, safe='')}@" if password else ""
        return f"redis://{auth}{self.redis_host}:{self.redis_port}/0"

    def named_groups(self) -> list[tuple[str, str]]:
        """(where, group name) for every group the fallbacks name, to check against model_list."""
        out: list[tuple[str, str]] = []
        for key in ("fallbacks", "context_window_fallbacks"):
            for i, item in enumerate(getattr(self, key)):
                for group, targets in item.items():
                    if group != "*":
                        out.append((f"router_settings.{key}[{i}]", group))
                    out.extend((f"router_settings.{key}[{i}].{group}", t) for t in targets)
        out.extend(("router_settings.default_fallbacks", g) for g in self.default_fallbacks)
        return out


def _lookup(maps: list[dict[str, list[str]]], group: str) -> list[str] | None:
    found: list[str] | None = None
    for item in maps:
        if group in item:
            found = [*(found or ()), *item[group]]
    return found


def router_section(router: dict[str, Any] | None, litellm: dict[str, Any] | None) -> dict[str, Any]:
    """``router_settings`` with the routing keys LiteLLM also reads from ``litellm_settings`` (router_settings
    wins where both set one)."""
    merged = {k: v for k, v in (litellm or {}).items() if k in _ROUTING_IN_LITELLM_SETTINGS}
    return {**merged, **(router or {})}


def unhonoured_keys(router: RouterSettings, litellm: dict[str, Any],
                    general: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(rejected, ignored): the keys of LiteLLM's three sections Gatehouse does not honour, as messages naming the
    key (rejected) or as dotted names (ignored)."""
    sections = {"router_settings": list(router.model_extra or {}), "litellm_settings": list(litellm),
                "general_settings": list(general)}
    rejected, ignored = [], []
    for section, keys in sections.items():
        for key in keys:
            if key in HONOURED.get(section, ()):
                continue
            if key in IGNORED[section]:
                ignored.append(f"{section}.{key}")
                continue
            hint = _REJECT_HINTS.get(key, "not a setting Gatehouse knows; remove it or fix its name")
            rejected.append(f"{section}.{key}: not supported ({hint})")
    return rejected, ignored


@dataclass(frozen=True, slots=True)
class Deployment:
    """One ``model_list`` entry as the router sees it."""

    group: str  # the model_name
    id: str  # model_info.id, else "<model_name>#<n>" (n: its place among the group's entries)
    entry: ModelEntry
    rpm: int | None = None
    tpm: int | None = None
    weight: float = 1.0
    order: int = NO_ORDER
    max_parallel_requests: int | None = None

    @property
    def limited(self) -> bool:
        return self.rpm is not None or self.tpm is not None or self.max_parallel_requests is not None


def deployment_of(entry: ModelEntry, n: int, default_max_parallel: int | None = None) -> Deployment:
    """The entry's router keys, from ``litellm_params`` or (LiteLLM accepts both) the entry itself."""
    lp = entry.litellm_params
    info = {**(lp.model_info or {}), **entry.model_info}
    return Deployment(
        group=entry.model_name, id=str(info.get("id") or f"{entry.model_name}#{n}"), entry=entry,
        rpm=lp.rpm if lp.rpm is not None else entry.rpm, tpm=lp.tpm if lp.tpm is not None else entry.tpm,
        weight=lp.weight if lp.weight is not None else 1.0,
        order=lp.order if lp.order is not None else NO_ORDER,
        max_parallel_requests=lp.max_parallel_requests if lp.max_parallel_requests is not None
        else default_max_parallel)
