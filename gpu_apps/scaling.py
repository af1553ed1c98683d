"""Hybrid scaling for scale-to-zero Modal apps (seed 004).

    no recent activity → scaledown_window = base warm time
    recent activity    → scaledown_window = base warm time + extension time

"Recent" means a request within the activity window; activity is tracked per experiment (here: per model,
i.e. per Modal app). The workers record every request they send to a Modal-hosted model; a
:class:`HybridScaler` turns that into each app's desired scaledown window and applies a change through a
callback — in production ``modal.Function.from_name(app, "serve").update_autoscaler(scaledown_window=…)``.
``health()`` reports the current windows, activity statistics, known models and the configuration.

Settings come from the environment as in the seed (``MODAL_BASE_WARM_TIME``, ``MODAL_EXTENSION_TIME``,
``MODAL_ACTIVITY_WINDOW``, ``MODAL_MAX_CONTAINERS``) or from the config.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from typing import Any

Apply = Callable[[str, int, int], Awaitable[None]]  # (app name, scaledown window s, max containers)


@dataclass(frozen=True)
class ScalingSettings:
    base_warm_time: int = 900
    extension_time: int = 900
    activity_window: int = 300
    max_containers: int = 10

    def __post_init__(self) -> None:
        for name in ("base_warm_time", "extension_time", "activity_window"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0")
        if self.base_warm_time < 2:
            raise ValueError("base_warm_time must be at least 2 s (Modal's minimum scaledown window)")
        if self.max_containers < 1:
            raise ValueError("max_containers must be >= 1")

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> ScalingSettings:
        env = dict(os.environ if env is None else env)
        names = {"base_warm_time": "MODAL_BASE_WARM_TIME", "extension_time": "MODAL_EXTENSION_TIME",
                 "activity_window": "MODAL_ACTIVITY_WINDOW", "max_containers": "MODAL_MAX_CONTAINERS"}
        kw = {}
        for field_name, var in names.items():
            if env.get(var):
                try:
                    kw[field_name] = int(env[var])
                except ValueError:
                    raise ValueError(f"{var} must be a whole number of seconds, got {env[var]!r}") from None
        return cls(**kw)


@dataclass
class _Activity:
    times: deque[float] = field(default_factory=deque)
    total: int = 0
    last: float | None = None
    applied_window: int | None = None


class HybridScaler:
    def __init__(self, settings: ScalingSettings, apply: Apply, clock: Callable[[], float] = time.monotonic):
        self.settings = settings
        self.apply = apply
        self.clock = clock
        self._apps: dict[str, _Activity] = {}

    def record(self, app: str) -> None:
        """A request is about to go to ``app``."""
        a = self._apps.setdefault(app, _Activity())
        a.last = self.clock()
        a.times.append(a.last)
        a.total += 1

    def _recent(self, a: _Activity, now: float) -> int:
        while a.times and now - a.times[0] > self.settings.activity_window:
            a.times.popleft()
        return len(a.times)

    def desired_window(self, app: str) -> int:
        a = self._apps.get(app)
        active = a is not None and self._recent(a, self.clock()) > 0
        s = self.settings
        return s.base_warm_time + (s.extension_time if active else 0)

    async def reconcile(self) -> dict[str, int]:
        """Apply every app whose desired window changed; returns what was applied."""
        changed = {}
        for app, a in self._apps.items():
            want = self.desired_window(app)
            if want != a.applied_window:
                await self.apply(app, want, self.settings.max_containers)
                a.applied_window = want
                changed[app] = want
        return changed

    def health(self) -> dict[str, Any]:
        now = self.clock()
        return {
            "strategy": "hybrid",
            "configuration": asdict(self.settings),
            "models": sorted(self._apps),
            "scaling": {app: {"scaledown_window": a.applied_window if a.applied_window is not None
                              else self.desired_window(app),
                              "recent_requests": self._recent(a, now), "total_requests": a.total,
                              "seconds_since_last_request": round(now - a.last, 1) if a.last is not None else None}
                        for app, a in self._apps.items()},
        }


async def modal_apply(app: str, scaledown_window: int, max_containers: int, function: str = "serve") -> None:
    """Production ``apply``: update the deployed function's autoscaler (needs Modal credentials)."""
    import modal

    fn = modal.Function.from_name(app, function)
    await fn.update_autoscaler.aio(scaledown_window=scaledown_window, max_containers=max_containers)


def modal_app_of(api_base: str) -> str | None:
    """The Modal app behind a web endpoint URL: ``https://ws-env--<app>-<function>.modal.run/v1`` → ``<app>``."""
    host = api_base.split("://", 1)[-1].split("/", 1)[0]
    if not host.endswith(".modal.run") or "--" not in host:
        return None
    label = host[: -len(".modal.run")].split("--", 1)[1]
    return label.rsplit("-", 1)[0] if "-" in label else label
