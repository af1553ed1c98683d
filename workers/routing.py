"""Routing a job across its model group's deployments and, when they fail it, across fallback model groups.

    job for G ─► G balanced? ─no──► G's one backend (its own retries and cold-start waits, as without routing)
                    │yes
                    └─► Balancer.acquire (shared in Redis) ─► backend ─► release (tokens, failures, cooldown)
                              ▲  failed it, nothing sent yet: another deployment (num_retries)  │
                              └────────────────────────────────────────────────────────────────┘
    G failed the job before any output went out (5xx, timeout, unreachable, rate limited, every deployment busy
    or cooling down; a context-window error) ─► the next fallback group, whose name the answer carries.

A group is *balanced* when it has several deployments or one with limits (rpm, tpm, max_parallel_requests).
A model with one unlimited deployment and no fallbacks gets no Route at all: the runner calls its backend
directly, with no Redis round trip added (``Backends.route`` is None).
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from redis.asyncio import Redis

from core.queue import JobSpec
from core.routing import Deployment, RouterSettings
from workers.backends import Backend, BackendError
from workers.balancer import Balancer, fails_deployment

log = logging.getLogger("gatehouse.worker")
_CONTEXT_PHRASES = ("context length", "context window", "context_length_exceeded", "maximum context")


class Attempts(Protocol):
    """The runner's side of a routed job."""

    async def run(self, backend: Backend, answered_by: str | None) -> list[bytes]:
        """Run the job on ``backend`` (its output naming ``answered_by`` when set); the last events."""

    def sent(self) -> bool:
        """Whether any output has gone to the client (then nothing may be tried again)."""

    def tokens(self) -> int:
        """Tokens the finished attempt used."""


@dataclass(frozen=True, slots=True)
class Group:
    """A model group: its deployments and, in the same order, their backends."""

    name: str
    deployments: tuple[Deployment, ...]
    backends: tuple[Backend, ...]

    @property
    def balanced(self) -> bool:
        return len(self.deployments) > 1 or self.deployments[0].limited


def is_context_window(e: BackendError) -> bool:
    """The prompt does not fit the model (OpenAI's code, or vLLM's / LiteLLM's words for it)."""
    if e.code == "context_length_exceeded":
        return True
    return e.status == 400 and any(p in e.message.lower() for p in _CONTEXT_PHRASES)


class Route:
    """How a job for one model group is answered: by the group, then by its fallbacks in order."""

    def __init__(self, group: Group, fallbacks: list[Group], context_window: list[Group], balancer: Balancer, *,
                 retries: int, max_fallbacks: int):
        self.group = group
        self.fallbacks = fallbacks
        self.context_window = context_window  # tried first on a context-window error, then ``fallbacks``
        self.balancer = balancer
        self.retries = retries  # a balanced group's tries on other deployments after a failure
        self.max_fallbacks = max_fallbacks

    def _next(self, tried: list[str], context: bool) -> Group | None:
        if len(tried) > self.max_fallbacks:
            return None
        candidates = [*self.context_window, *self.fallbacks] if context else self.fallbacks
        return next((g for g in candidates if g.name not in tried), None)

    async def run(self, job: JobSpec, redis: Redis, attempts: Attempts) -> list[bytes]:
        group, tried = self.group, [self.group.name]
        while True:
            try:
                return await self._on(group, job, redis, attempts,
                                      may_fall_back=self._next(tried, context=False) is not None)
            except BackendError as e:
                if attempts.sent():
                    raise
                context = is_context_window(e)
                nxt = self._next(tried, context) if context or fails_deployment(e) else None
                if nxt is None:
                    raise
                log.warning("%s failed (%d %s): falling back to %s", group.name, e.status, e.code or e.type,
                            nxt.name)
                group = nxt
                tried.append(group.name)

    async def _on(self, group: Group, job: JobSpec, redis: Redis, attempts: Attempts, *,
                  may_fall_back: bool) -> list[bytes]:
        """The job on one group: straight on its backend, or balanced over its deployments with retries."""
        answered_by = None if group is self.group else group.name
        if not group.balanced:
            return await attempts.run(group.backends[0], answered_by)
        tried: set[int] = set()
        several = len(group.deployments) > 1  # a group of one waits for its deployment rather than cooling it
        n = 0
        while True:
            holder = f"{job.id}#{n}"
            i = await self.balancer.acquire(redis, group.name, group.deployments, job, holder,
                                            exclude=frozenset(tried), may_fall_back=may_fall_back)
            deployment = group.deployments[i]
            try:
                out = await attempts.run(group.backends[i], answered_by)
            except BackendError as e:
                self.balancer.release(redis, deployment, holder, failure=e, counts_failures=several)
                if attempts.sent() or not fails_deployment(e) or n >= self.retries:
                    raise
                n += 1
                tried.add(i)
                if len(tried) >= len(group.deployments) and not await _backoff(n, e, job):
                    raise
                log.info("%s: deployment %s failed (%d); trying again (%d of %d)", group.name, deployment.id,
                         e.status, n, self.retries)
                continue
            except BaseException:
                self.balancer.release(redis, deployment, holder)
                raise
            self.balancer.release(redis, deployment, holder, tokens=attempts.tokens())
            return out


async def _backoff(n: int, e: BackendError, job: JobSpec) -> bool:
    """Wait before trying a deployment that already failed this job; False when the deadline does not allow it."""
    delay = min(8.0, 0.25 * 2 ** (n - 1)) * (0.5 + random.random())
    if e.retry_after is not None:
        delay = max(delay, e.retry_after)
    if delay >= job.remaining():
        return False
    await asyncio.sleep(delay)
    return True


def build_routes(settings: RouterSettings, groups: Mapping[str, Group], retries: int) -> dict[str, Route]:
    """A Route for every group that needs one: balanced, or with fallbacks."""
    balancer = Balancer(settings)
    num_retries = settings.num_retries if settings.num_retries is not None else retries
    routes = {}
    for name, group in groups.items():
        fallbacks = [groups[g] for g in settings.fallbacks_of(name) if g in groups]
        context = [groups[g] for g in settings.context_window_fallbacks_of(name) if g in groups]
        if group.balanced or fallbacks or context:
            routes[name] = Route(group, fallbacks, context, balancer, retries=num_retries,
                                 max_fallbacks=settings.max_fallbacks)
    return routes
