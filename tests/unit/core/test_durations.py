"""core.durations: LiteLLM's duration strings."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from core.durations import DURATION_PATTERN, duration_seconds, parse_duration


@pytest.mark.parametrize(("text", "seconds"), [
    ("30s", 30),
    ("10m", 600),
    ("24h", 86_400),
    ("30d", 2_592_000),
    ("2w", 1_209_600),
    ("0s", 0),
    (" 7 d ", 604_800),  # spaces around and between are fine
    ("007m", 420),
])
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == timedelta(seconds=seconds)
    assert duration_seconds(text) == seconds
    assert re.match(DURATION_PATTERN, text)  # the pattern the settings validate with agrees


@pytest.mark.parametrize("text", ["30", "d", "1y", "1.5h", "-1d", "30D", "1 day", "1h30m", "", "30dd"])
def test_invalid_durations_name_the_accepted_forms(text: str) -> None:
    with pytest.raises(ValueError, match=r"invalid duration .*: use a number followed by s, m, h, d or w"):
        parse_duration(text)
    assert not re.match(DURATION_PATTERN, text)


def test_no_duration() -> None:
    assert duration_seconds(None) is None
    assert duration_seconds("") is None
    with pytest.raises(ValueError, match="invalid duration '5y'"):
        duration_seconds("5y")


@pytest.mark.parametrize("text", ["36501d", "99999999d", "5300w", "9" * 5000 + "s", "3153600001s"])
def test_durations_past_100_years_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"is too long: at most 36500d \(100 years\)"):
        parse_duration(text)


def test_the_longest_duration() -> None:
    assert parse_duration("36500d") == timedelta(days=36_500)
    assert parse_duration("0000000000000000000030s") == timedelta(seconds=30)
