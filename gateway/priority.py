"""Which priority a job gets (LiteLLM's scale: 0 is claimed first, 255 last; core.queue orders by it).

A key may carry ``metadata.priority``: the most urgent priority its requests may use, and their default. A
request may ask for its own (LiteLLM's ``priority`` field) but never for more than its key allows; a key
without one may only ask for the configured default or less. The master key and admin keys may ask for any.
"""

from __future__ import annotations

from typing import Any

from gateway.auth import Principal
from gateway.errors import InvalidRequest

LOWEST, HIGHEST = 255, 0


def key_priority(principal: Principal) -> int | None:
    value = (principal.metadata or {}).get("priority")
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return min(LOWEST, max(HIGHEST, value))


def priority_for(principal: Principal, requested: Any, default: int) -> int:
    """The job's priority; 400 for a ``priority`` that is not an integer from 0 to 255."""
    own = key_priority(principal)
    if requested is None:
        return own if own is not None else default
    if isinstance(requested, bool) or not isinstance(requested, int) or not HIGHEST <= requested <= LOWEST:
        raise InvalidRequest("priority must be an integer from 0 (most urgent) to 255.", param="priority",
                             code="invalid_value")
    if principal.is_admin:
        return int(requested)
    return max(int(requested), own if own is not None else default)


def tenant_of(principal: Principal) -> str:
    """Whose turn a job takes in fair queuing: the team's, else the key's (or the JWT subject's), named with
    its kind so that a team and a key of the same name stay apart (``team:ml``, ``key:…``, ``jwt:…``)."""
    if principal.team_id:
        return f"team:{principal.team_id}"
    if principal.key_id:
        return f"key:{principal.key_id}"
    if principal.kind == "master" or principal.id.startswith(principal.kind + ":"):
        return principal.id  # "master", or a JWT subject's id ("jwt:alice") already named with its kind
    return f"{principal.kind}:{principal.id}"
