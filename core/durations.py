"""LiteLLM's duration strings (``30s``, ``10m``, ``24h``, ``30d``, ``2w``): budgets, key expiry, team periods."""

from __future__ import annotations

import re
from datetime import timedelta

DURATION_PATTERN = r"^\s*(\d+)\s*([smhdw])\s*$"
_DURATION = re.compile(DURATION_PATTERN)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_duration(text: str) -> timedelta:
    """``30d`` -> 30 days; ValueError naming the accepted forms for anything else."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"invalid duration {text!r}: use a number followed by s, m, h, d or w (e.g. 30d)")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def duration_seconds(text: str | None) -> int | None:
    """The duration in whole seconds, or None when none is given."""
    return int(parse_duration(text).total_seconds()) if text else None
