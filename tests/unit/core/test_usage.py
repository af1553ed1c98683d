"""core.usage: the shared usage counters, against a real Valkey."""

from __future__ import annotations

import uuid

import redis.asyncio as aioredis

from core import usage
from core.usage import Scope
from tests.unit.core.test_queue import r  # noqa: F401 - the Valkey client fixture


def scope(**limits: object) -> Scope:
    return Scope("key", f"unit-{uuid.uuid4().hex}", **limits)  # type: ignore[arg-type]


async def test_charge_counts_tokens_and_only_a_loaded_budget(r: aioredis.Redis) -> None:  # noqa: F811
    now = 1_700_000_030.0
    sc = scope(tpm=1_000, budget=1.0)
    await usage.charge(r, [sc], 120, 0.25, now)
    assert await r.get(sc.tpm_keys(now)[0]) == b"120"
    assert await r.exists(sc.spend_key(now)) == 0  # never started at zero: the loader starts it from PostgreSQL
    await r.set(sc.spend_key(now), "0.5")
    await usage.charge(r, [sc], 30, 0.25, now)
    assert float(await r.get(sc.spend_key(now))) == 0.75 and await r.get(sc.tpm_keys(now)[0]) == b"150"
    plain = scope()  # no limits: nothing is counted for it
    await usage.charge(r, [plain], 50, 1.0, now)
    assert await r.exists(plain.tpm_keys(now)[0], plain.spend_key(now)) == 0


async def test_headroom_names_what_ran_out(r: aioredis.Redis) -> None:  # noqa: F811
    now = 1_700_000_010.0  # half way through its minute: the previous minute counts half
    sc = scope(tpm=100, budget=2.0)
    assert await usage.headroom(r, [sc], now) is None  # nothing used, budget not loaded: room
    await r.set(sc.tpm_keys(now)[1], 120)  # previous minute: 120 × 0.5 = 60
    await r.set(sc.tpm_keys(now)[0], 39)
    assert await usage.headroom(r, [sc], now) is None
    await r.incr(sc.tpm_keys(now)[0])
    assert await usage.headroom(r, [sc], now) == (sc, "tpm")
    await r.set(sc.spend_key(now), "2.0")
    assert await usage.headroom(r, [scope(), sc], now) == (sc, "budget")  # the budget is checked first


def test_a_scope_round_trips_as_stored_with_a_batch() -> None:
    sc = Scope("team", "ml", rpm=10, tpm=None, parallel=2, budget=5.5, budget_period_s=86_400)
    assert Scope.from_dict(sc.to_dict()) == sc
    assert sc.spend_key(86_400 * 3 + 5) == "gatehouse:spend:team:ml:3"
