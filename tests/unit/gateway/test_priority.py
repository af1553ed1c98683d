"""gateway/priority.py: a job's priority (bounded by the key's ``metadata.priority``, any for admins, 400 for a
bad value) and its fair-queuing tenant. Principals are built as gateway.auth builds them."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.auth import MASTER, Principal
from gateway.errors import InvalidRequest
from gateway.priority import HIGHEST, LOWEST, key_priority, priority_for, tenant_of

DEFAULT = 128


def key(metadata: dict[str, Any] | None = None, *, admin: bool = False, team: str | None = None,
        key_id: str = "k-1a2b3c") -> Principal:
    """A virtual key's principal (gateway.auth._virtual_key)."""
    return Principal(id=key_id, kind="key", is_admin=admin, key_id=key_id, user_id="u-1", team_id=team,
                     metadata=metadata or {})


def jwt(subject: str = "alice", *, admin: bool = False, team: str | None = None) -> Principal:
    """A JWT's principal (gateway.auth._from_jwt): no key, no metadata."""
    return Principal(id=f"jwt:{subject}", kind="jwt", is_admin=admin, user_id=subject, team_id=team)


# ── priority_for: nothing asked ───────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("default", [0, DEFAULT, 255])
def test_no_request_and_no_key_priority_is_the_default(default: int) -> None:
    for principal in (MASTER, key(), key(admin=True), jwt(), jwt(admin=True)):
        assert priority_for(principal, None, default) == default


def test_no_request_takes_the_keys_priority() -> None:
    assert priority_for(key({"priority": 40}), None, DEFAULT) == 40
    assert priority_for(key({"priority": 200}), None, DEFAULT) == 200  # less urgent than the default: its own
    assert priority_for(key({"priority": 40}, admin=True), None, DEFAULT) == 40


@pytest.mark.parametrize(("stored", "bound"), [(-5, HIGHEST), (0, 0), (255, 255), (300, LOWEST), (10**9, LOWEST)])
def test_a_keys_priority_out_of_range_is_clamped(stored: int, bound: int) -> None:
    assert key_priority(key({"priority": stored})) == bound
    assert priority_for(key({"priority": stored}), None, DEFAULT) == bound


@pytest.mark.parametrize("stored", [True, False, "10", 10.0, None, [1], {"v": 1}])
def test_a_keys_priority_that_is_not_an_integer_is_ignored(stored: Any) -> None:
    principal = key({"priority": stored})
    assert key_priority(principal) is None
    assert priority_for(principal, None, DEFAULT) == DEFAULT
    assert priority_for(principal, 5, DEFAULT) == DEFAULT  # bounded by the default, as a key without one


# ── priority_for: bounds ──────────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize(("asked", "got"), [(0, 40), (39, 40), (40, 40), (41, 41), (200, 200), (255, 255)])
def test_a_key_may_not_ask_for_more_than_its_priority(asked: int, got: int) -> None:
    assert priority_for(key({"priority": 40}), asked, DEFAULT) == got


@pytest.mark.parametrize(("asked", "got"), [(0, DEFAULT), (DEFAULT - 1, DEFAULT), (DEFAULT, DEFAULT),
                                             (DEFAULT + 1, DEFAULT + 1), (255, 255)])
def test_without_a_key_priority_the_default_is_the_bound(asked: int, got: int) -> None:
    assert priority_for(key(), asked, DEFAULT) == got
    assert priority_for(jwt(), asked, DEFAULT) == got  # a non-admin JWT has no metadata: the default bounds it
    assert priority_for(key({"other": "x"}, team="ml"), asked, DEFAULT) == got


@pytest.mark.parametrize("asked", [0, 1, 40, DEFAULT, 254, 255])
def test_admins_may_ask_for_anything(asked: int) -> None:
    for principal in (MASTER, key(admin=True), key({"priority": 200}, admin=True), jwt(admin=True)):
        assert priority_for(principal, asked, DEFAULT) == asked
    assert priority_for(MASTER, asked, 255) == asked


# ── priority_for: bad values ──────────────────────────────────────────────────────────────────────────
@pytest.mark.parametrize("asked", [-1, 256, 10**6, True, False, "5", "high", 5.0, 0.5, [1], {"p": 1}])
def test_an_invalid_priority_is_a_400_naming_priority(asked: Any) -> None:
    for principal in (MASTER, key({"priority": 40}), key(), jwt(admin=True)):
        with pytest.raises(InvalidRequest) as e:
            priority_for(principal, asked, DEFAULT)
        err = e.value
        assert (err.status, err.param, err.code) == (400, "priority", "invalid_value")
        assert err.body()["error"]["type"] == "invalid_request_error" and "0" in err.message


def test_bool_is_not_an_integer_priority() -> None:
    """True == 1 and False == 0 in Python: they must not pass as priorities 1 and 0 (not even for an admin)."""
    for asked in (True, False):
        with pytest.raises(InvalidRequest):
            priority_for(MASTER, asked, DEFAULT)
        with pytest.raises(InvalidRequest):
            priority_for(key({"priority": 40}), asked, DEFAULT)


# ── tenant_of ─────────────────────────────────────────────────────────────────────────────────────────
def test_a_teams_keys_and_tokens_share_the_teams_turn() -> None:
    assert tenant_of(key(team="ml")) == "team:ml"
    assert tenant_of(key(team="ml", key_id="k-other")) == "team:ml"
    assert tenant_of(jwt(team="ml")) == "team:ml"
    assert tenant_of(key(team="ml", admin=True)) == "team:ml"


def test_a_key_without_a_team_has_its_own_turn() -> None:
    assert tenant_of(key(key_id="k-1a2b3c")) == "key:k-1a2b3c"
    assert tenant_of(key(key_id="k-9")) != tenant_of(key(key_id="k-1a2b3c"))


def test_a_token_without_a_team_is_its_subjects() -> None:
    tenant = tenant_of(jwt("alice"))
    assert tenant == "jwt:alice", tenant
    assert tenant != tenant_of(jwt("bob"))


def test_master() -> None:
    assert tenant_of(MASTER) == "master"


def test_kinds_stay_apart_under_the_same_name() -> None:
    """A team, a key and a JWT subject all named "x" are three tenants (and none is the master's)."""
    named = {tenant_of(key(team="x", key_id="k")), tenant_of(key(key_id="x")), tenant_of(jwt("x")),
             tenant_of(MASTER)}
    assert len(named) == 4, named
    assert tenant_of(key(key_id="master")) != tenant_of(MASTER)
