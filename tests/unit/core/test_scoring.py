"""core.scoring: the plain scorers, the judge's request and the reading of its SCORE line."""

from __future__ import annotations

from typing import Any

import pytest

from core.benchsuite import Scorer
from core.scoring import DEFAULT_RUBRIC, judge_messages, parse_judge, prompt_text, score

EXACT, CONTAINS, REGEX, JSON_VALID = Scorer("exact"), Scorer("contains"), Scorer("regex"), Scorer("json_valid")


def test_no_scorer_gives_no_score() -> None:
    assert score(None, "anything", "x") is None


@pytest.mark.parametrize(("output", "expected", "value"), [
    ("Paris", "Paris", 1.0),
    ("  Paris\n", " Paris ", 1.0),  # both stripped
    ("paris", "Paris", 0.0),        # case matters
    ("Paris.", "Paris", 0.0),
    ("42", 42, 1.0),                # a number compares as its text
    ("4.5", 4.5, 1.0),
    ("true", True, 1.0),            # JSON spelling, not Python's
    ('{"a": 1}', {"a": 1}, 1.0),
])
def test_exact(output: str, expected: Any, value: float) -> None:
    assert score(EXACT, output, expected) == value


@pytest.mark.parametrize(("output", "expected", "value"), [
    ("The capital is Paris.", "Paris", 1.0),
    ("The capital is paris.", "Paris", 0.0),
    ("red, green and blue", ["red", "blue"], 1.0),
    ("red and green", ["red", "blue"], 0.0),  # every one must appear
    ("answer: 42", 42, 1.0),
    ("anything", [], 1.0),
])
def test_contains(output: str, expected: Any, value: float) -> None:
    assert score(CONTAINS, output, expected) == value


@pytest.mark.parametrize(("output", "expected", "value"), [
    ("The answer is 42.", r"\b42\b", 1.0),
    ("The answer is 420.", r"\b42\b", 0.0),
    ("first line\nsecond line", r"first.*second", 1.0),  # DOTALL: . crosses lines
    ("x = 7", r"^x = \d$", 1.0),
    ("say x = 7", r"^x = \d$", 0.0),                       # search, but ^ anchors at the start
])
def test_regex(output: str, expected: str, value: float) -> None:
    assert score(REGEX, output, expected) == value


def test_invalid_regex_is_a_value_error() -> None:
    with pytest.raises(ValueError, match=r"invalid regular expression '\(x'"):
        score(REGEX, "x", "(x")


@pytest.mark.parametrize(("output", "expected", "value"), [
    ('{"a": 1}', None, 1.0),
    ("[1, 2, 3]", None, 1.0),
    ("  42  ", None, 1.0),
    ("not json", None, 0.0),
    ('{"a": 1', None, 0.0),
    ("", None, 0.0),
    ('```json\n{"a": 1}\n```', None, 1.0),           # a fenced block
    ('```\n{"a": 1}\n```', None, 1.0),
    ('  ```JSON\n  {"a": 1}\n  ```  ', None, 1.0),
    ('Here it is: ```json\n{"a": 1}\n```', None, 0.0),  # prose around the fence is not JSON
    ('{"name": "x", "age": 3, "extra": true}', {"name": "x", "age": 3}, 1.0),
    ('{"name": "x", "age": 4}', {"name": "x", "age": 3}, 0.0),
    ('{"name": "x"}', {"name": "x", "age": 3}, 0.0),      # a key missing
    ('{"age": 3.0}', {"age": 3}, 1.0),                    # 3 and 3.0 are the same JSON number
    ('{"ok": 1}', {"ok": True}, 0.0),                     # but 1 is not true
    ('{"ok": null}', {"ok": None}, 1.0),
    ('{"tags": ["a", "b"]}', {"tags": ["a", "b"]}, 1.0),
    ('{"tags": ["b", "a"]}', {"tags": ["a", "b"]}, 0.0),
    ('{"o": {"k": [1, true]}}', {"o": {"k": [1, True]}}, 1.0),
    ('{"o": {"k": [1, 1]}}', {"o": {"k": [1, True]}}, 0.0),
    ("[1, 2]", {"a": 1}, 0.0),                            # expected keys need an object
    ("[1, 2]", [9], 1.0),                                 # a non-object expected only asks for valid JSON
    ("[" * 100_000, None, 0.0),                           # too deep for the parser: not valid
])
def test_json_valid(output: str, expected: Any, value: float) -> None:
    assert score(JSON_VALID, output, expected) == value


def test_judge_and_unknown_kinds_raise() -> None:
    with pytest.raises(ValueError, match="a judge scorer is scored by its model"):
        score(Scorer("judge", "qgpt"), "x", None)
    with pytest.raises(ValueError, match="unknown scorer kind 'bleu'"):
        score(Scorer("bleu"), "x", None)


def test_judge_messages() -> None:
    messages = judge_messages("Must mention Paris.", "user: Capital of France?", "Paris", "It is Paris.")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "SCORE: <number between 0 and 1>" in messages[0]["content"]
    user = messages[1]["content"]
    assert "## Rubric\nMust mention Paris." in user
    assert "## Prompt\nuser: Capital of France?" in user
    assert "## Reference answer\nParis" in user
    assert "## Answer to grade\nIt is Paris." in user
    assert user.rstrip().endswith("End with the line 'SCORE: <number between 0 and 1>'.")
    bare = judge_messages(None, "Say hi", None, "hi")[1]["content"]
    assert f"## Rubric\n{DEFAULT_RUBRIC}" in bare
    assert "Reference answer" not in bare
    assert '## Reference answer\n{"k": [1, 2]}' in judge_messages(None, "p", {"k": [1, 2]}, "o")[1]["content"]


@pytest.mark.parametrize(("text", "value"), [
    ("Good answer.\nSCORE: 0.8", 0.8),
    ("SCORE: 1", 1.0),
    ("SCORE: 0", 0.0),
    ("score = .25", 0.25),
    ("Reasoning...\n**SCORE:** 0.6\n", 0.6),
    ("SCORE: 7/10", 0.7),
    ("SCORE: 7 / 10", 0.7),
    ("SCORE: 85%", 0.85),
    ("SCORE: 1.5", 1.0),            # clamped
    ("SCORE: -0.2", 0.0),
    ("SCORE: 12/10", 1.0),
    ("SCORE: 3/0", None),
    ("SCORE: 0.2\nOn reflection...\nSCORE: 0.9", 0.9),  # the last line counts
    ("SCORE: 0.9\nSCORE: high", 0.9),                   # a line without a number is not a score line
    ("My score is 0.5", None),
    ("No verdict.", None),
    ("", None),
])
def test_parse_judge(text: str, value: float | None) -> None:
    result = parse_judge(text)
    if value is None:
        assert result is None
    else:
        assert result == pytest.approx(value)


def test_prompt_text() -> None:
    messages = [{"role": "system", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "What is"}, {"type": "text", "text": "2+2?"}]},
                {"role": "assistant", "content": None}]
    assert prompt_text(messages) == "system: Be brief.\nuser: What is 2+2?\nassistant: "
