"""Scoring a benchmark item's output against its ``expected`` value (issue #14).

``score`` handles the plain scorers (``exact``, ``contains``, ``regex``, ``json_valid``): each gives 1.0 or
0.0. A ``judge`` scorer needs a model call, which the runner makes: it sends ``judge_messages(...)`` to the
judging model and reads the answer with ``parse_judge``, whose last ``SCORE: x`` line is the score. Pure."""

from __future__ import annotations

import json
import re
from typing import Any

from core.benchsuite import Scorer

DEFAULT_RUBRIC = "The answer is correct, complete and responsive to the prompt."
_FENCE = re.compile(r"\A```[ \t]*(?:json)?[ \t]*\n?(.*?)\n?[ \t]*```\Z", re.DOTALL | re.IGNORECASE)
_SCORE_LINE = re.compile(
    r"^[\s*_#>`]*score[\s*_`]*[:=][\s*_`]*([+-]?\d+(?:\.\d+)?|[+-]?\.\d+)\s*(%|/\s*(\d+(?:\.\d+)?))?",
    re.IGNORECASE | re.MULTILINE,
)
_JUDGE_SYSTEM = (
    "You grade answers. Read the prompt, the reference answer if one is given, and the answer to grade, and "
    "judge the answer by the rubric. Explain briefly, then end with a final line of the form "
    "'SCORE: <number between 0 and 1>' (1 = fully meets the rubric, 0 = not at all)."
)


def score(scorer: Scorer | None, output: str, expected: Any) -> float | None:
    """1.0 or 0.0 for a plain scorer, None without one; ValueError for ``judge`` (the runner asks the model)."""
    if scorer is None:
        return None
    if scorer.kind == "exact":
        return _bool(output.strip() == _text(expected).strip())
    if scorer.kind == "contains":
        wanted = expected if isinstance(expected, list) else [expected]
        return _bool(all(_text(w) in output for w in wanted))
    if scorer.kind == "regex":
        try:
            return _bool(re.search(_text(expected), output, re.DOTALL) is not None)
        except re.error as e:
            raise ValueError(f"invalid regular expression {_text(expected)!r}: {e}") from None
    if scorer.kind == "json_valid":
        return _bool(_json_matches(output, expected))
    if scorer.kind == "judge":
        raise ValueError("a judge scorer is scored by its model: send judge_messages(...) and read parse_judge(...)")
    raise ValueError(f"unknown scorer kind {scorer.kind!r}")


def judge_messages(rubric: str | None, item_prompt_text: str, expected: Any, output: str) -> list[dict[str, str]]:
    """The chat request for the judging model; its answer's last line is ``SCORE: <0..1>``."""
    parts = [
        f"## Rubric\n{rubric or DEFAULT_RUBRIC}",
        f"## Prompt\n{item_prompt_text}",
    ]
    if expected is not None:
        parts.append(f"## Reference answer\n{_text(expected)}")
    parts.append(f"## Answer to grade\n{output}")
    parts.append("End with the line 'SCORE: <number between 0 and 1>'.")
    return [{"role": "system", "content": _JUDGE_SYSTEM}, {"role": "user", "content": "\n\n".join(parts)}]


def parse_judge(text: str) -> float | None:
    """The last ``SCORE:`` line's number, clamped to [0, 1]; ``7/10`` is 0.7 and ``70%`` is 0.7. None if absent."""
    matches = list(_SCORE_LINE.finditer(text))
    if not matches:
        return None
    number, suffix, denominator = matches[-1].groups()
    value = float(number)
    if suffix == "%":
        value /= 100
    elif denominator is not None:
        if float(denominator) == 0:
            return None
        value /= float(denominator)
    return min(1.0, max(0.0, value))


def prompt_text(messages: list[dict[str, Any]]) -> str:
    """A chat request's messages as plain text for the judge (``role: content`` lines; text parts only)."""
    lines = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, list):
            content = " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
        lines.append(f"{m.get('role', 'user')}: {content or ''}")
    return "\n".join(lines)


def _json_matches(output: str, expected: Any) -> bool:
    text = output.strip()
    fenced = _FENCE.match(text)
    if fenced:
        text = fenced.group(1).strip()
    try:
        parsed = json.loads(text)
    except (ValueError, RecursionError):
        return False
    if isinstance(expected, dict):
        return isinstance(parsed, dict) and all(k in parsed and _same(parsed[k], v) for k, v in expected.items())
    return True


def _same(a: Any, b: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, but ``1`` is ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return bool(a == b)


def _text(value: Any) -> str:
    """A string as itself, anything else as its JSON (``42``, ``true``, ``{"a": 1}``)."""
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, ensure_ascii=False)
    except (TypeError, ValueError):
        return str(value)


def _bool(ok: bool) -> float:
    return 1.0 if ok else 0.0
