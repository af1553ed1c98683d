"""Small pieces every benchmark script's report uses: timestamped progress lines on stderr, NaN-free medians,
and the verdict column."""

from __future__ import annotations

import statistics
import sys
import time


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def med(values: list[float]) -> float:
    """The median, ignoring NaN (a measurement that could not be taken); NaN when nothing is left."""
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"
