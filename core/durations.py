"""LiteLLM's duration strings (``30s``, ``10m``, ``24h``, ``30d``, ``2w``): budgets, key expiry, team periods.

Durations are bounded (``MAX_DURATION``, 100 years): a longer one is a typo or a probe, and would overflow
date arithmetic (``now + 99999999d`` is past year 9999)."""

from __future__ import annotations

import re
from datetime import timedelta

DURATION_PATTERN = r"^\s*(\d+)\s*([smhdw])\s*$"
_DURATION = re.compile(DURATION_PATTERN)
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
MAX_DURATION = timedelta(days=36_500)
_MAX_SECONDS = int(MAX_DURATION.total_seconds())


def parse_duration(text: str) -> timedelta:
    """``30d`` -> 30 days; ValueError naming the accepted forms for anything else, or the limit past 100 years."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(f"invalid duration {text!r}: use a number followed by s, m, h, d or w (e.g. 30d)")
    digits = m.group(1).lstrip("0") or "0"
    if len(digits) > len(str(_MAX_SECONDS)) or int(digits) * _UNITS[m.group(2)] > _MAX_SECONDS:
        raise ValueError(f"duration {text.strip()[:40]!r} is too long: at most {MAX_DURATION.days}d (100 years)")
    return timedelta(seconds=int(digits) * _UNITS[m.group(2)])


def duration_seconds(text: str | None) -> int | None:
    """The duration in whole seconds, or None when none is given."""
    return int(parse_duration(text).total_seconds()) if text else None
