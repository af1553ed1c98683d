"""Small pieces every benchmark script's report uses: timestamped progress lines on stderr, NaN-free medians,
and the verdict column."""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def med(values: list[float]) -> float:
    """The median, ignoring NaN (a measurement that could not be taken); NaN when nothing is left."""
    values = [v for v in values if v == v]
    return statistics.median(values) if values else float("nan")


def verdict(ok: bool) -> str:
    return "met" if ok else "**not met**"


def run_main(run: Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]],
             args: argparse.Namespace) -> dict[str, Any]:
    """``run(args)`` on uvloop when it is installed; the raw results also written to ``args.json`` when given."""
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    res = asyncio.run(run(args))
    if getattr(args, "json", None):
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(res, indent=2, default=str))
    return res
