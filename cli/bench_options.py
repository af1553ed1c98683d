"""``gatehouse bench run``'s command line → the ``POST /v1/benchmarks`` body; every problem is one line on
stderr and exit 2 (the suite is validated here, before anything is sent)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from cli.bench_api import fail
from cli.common import metadata_pairs


def load_options(suite: Path | None, models: str, synthetic: str | None, parallel: int | None, rate: str | None,
                 sweep: str | None, repeat: int, slo: str | None, metadata: list[str] | None) -> dict[str, Any]:
    """The request body: the suite as JSON, the models and the load options given (the gateway defaults the
    others)."""
    names = _models(models)
    given = [name for name, value in (("--parallel", parallel), ("--rate", rate), ("--sweep", sweep))
             if value is not None]
    if len(given) > 1:
        fail(f"{' and '.join(given)} are exclusive: pick one way to load the models", 2)
    body: dict[str, Any] = {"models": names, "repeat": repeat}
    if parallel is not None:
        body["parallel"] = parallel
    if rate is not None:
        body["rate"] = _rate(rate)
    if sweep is not None:
        body["sweep"] = _sweep(sweep)
    if slo is not None:
        body["slo"] = _slo(slo)
    if metadata:
        body["metadata"] = metadata_pairs(metadata)
    body["suite"] = _suite(suite, synthetic)  # last: the slowest check
    return body


def _models(spec: str) -> list[str]:
    names = [m.strip() for m in spec.split(",") if m.strip()]
    if not names:
        fail("--models is required: the models to run the suite against, e.g. --models chargpt,qgpt", 2)
    seen: set[str] = set()
    for name in names:
        if name in seen:
            fail(f"--models names {name!r} twice", 2)
        seen.add(name)
    return names


def _rate(spec: str) -> float:
    text = spec.strip().lower().removesuffix("/s").strip()
    try:
        value = float(text)
    except ValueError:
        fail(f"--rate wants requests per second, e.g. 2 or 0.5/s, not {spec!r}", 2)
    if not (0 < value < math.inf):
        fail(f"--rate must be more than 0 requests per second, not {spec!r}", 2)
    return value


def _sweep(spec: str) -> list[int]:
    text = spec.strip().removeprefix("[").removesuffix("]")
    parts = [p.strip() for p in text.split(",")]
    if not all(p.isdigit() and int(p) >= 1 for p in parts):
        fail(f"--sweep wants concurrency levels ≥ 1 separated by commas, e.g. 1,2,4,8, not {spec!r}", 2)
    levels = [int(p) for p in parts]
    if len(set(levels)) != len(levels):
        fail(f"--sweep gives a level twice: {spec!r}", 2)
    return levels


def _slo(spec: str) -> dict[str, Any]:
    from core.benchstats import parse_slo

    try:
        return parse_slo(spec)
    except ValueError as e:  # SuiteError is a ValueError
        fail(f"--slo: {e}", 2)


def _suite(path: Path | None, synthetic: str | None) -> dict[str, Any]:
    from core.benchsuite import SuiteError, load_suite, parse_synthetic

    if path is not None and synthetic is not None:
        fail("give a SUITE file or --synthetic, not both", 2)
    if path is None and synthetic is None:
        fail("no suite: give a SUITE file (.json, .jsonl, .yaml) or --synthetic prompt_tokens=N,output_tokens=M,n=K",
             2)
    try:
        if path is not None:
            if path.is_dir():
                fail(f"{path} is a directory, not a suite file", 2)
            suite = load_suite(path)
        else:
            assert synthetic is not None
            suite = parse_synthetic(synthetic)
    except SuiteError as e:
        fail(str(e), 2)
    return suite.to_json()
