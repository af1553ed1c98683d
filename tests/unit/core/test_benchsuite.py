"""core.benchsuite: suite files, items, scorers, synthetic suites, and the one-line errors."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from core.benchsuite import (
    DEFAULT_TIMEOUT_S,
    MAX_ITEM_BYTES,
    MAX_ITEMS,
    Scorer,
    Suite,
    SuiteError,
    SuiteItem,
    load_suite,
    parse_synthetic,
    synthetic,
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def item_error(raw: Any) -> str:
    with pytest.raises(SuiteError) as e:
        Suite.from_json([raw])
    return str(e.value)


# --- scorers ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "scorer"), [
    ("exact", Scorer("exact")),
    ("contains", Scorer("contains")),
    (" regex ", Scorer("regex")),
    ("json_valid", Scorer("json_valid")),
    ("judge: qgpt", Scorer("judge", judge="qgpt")),
    ("judge:chargpt", Scorer("judge", judge="chargpt")),
    ({"judge": "qgpt", "rubric": "Polite and correct."}, Scorer("judge", "qgpt", "Polite and correct.")),
    ({"judge": "qgpt"}, Scorer("judge", "qgpt")),
])
def test_scorer_forms(value: Any, scorer: Scorer) -> None:
    assert Scorer.parse(value) == scorer
    assert Scorer.parse(scorer.to_json()) == scorer  # to_json reads back


@pytest.mark.parametrize("value", ["Exact", "judge", "judge:", "judge: ", "bleu", 3, None, ["exact"],
                                   {"judge": ""}, {"judge": "m", "rubric": 5}, {"judge": "m", "extra": 1}])
def test_bad_scorers(value: Any) -> None:
    with pytest.raises(SuiteError, match=r"^bad scorer .*: use exact, contains, regex, json_valid, 'judge: MODEL'"):
        Scorer.parse(value)


def test_scorer_to_json() -> None:
    assert Scorer("exact").to_json() == "exact"
    assert Scorer("judge", "qgpt").to_json() == "judge: qgpt"
    assert Scorer("judge", "qgpt", "R").to_json() == {"judge": "qgpt", "rubric": "R"}


# --- items -----------------------------------------------------------------------------------------------


def test_prompt_item_defaults_and_chat_messages() -> None:
    item = SuiteItem.from_json({"prompt": "Capital of France?", "expected": "Paris", "scorer": "contains"},
                               "item 2", number=2)
    assert item.id == "item-2"
    assert item.max_tokens is None
    assert item.timeout_s == DEFAULT_TIMEOUT_S
    assert not item.is_task
    assert item.scorer == Scorer("contains")
    assert item.chat_messages() == [{"role": "user", "content": "Capital of France?"}]
    assert item.to_json() == {"id": "item-2", "prompt": "Capital of France?", "expected": "Paris",
                              "scorer": "contains"}


def test_messages_item() -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    item = SuiteItem.from_json({"id": "m1", "messages": messages, "max_tokens": 16}, "item 1")
    assert item.chat_messages() == messages
    assert item.max_tokens == 16


def test_task_item_argv() -> None:
    item = SuiteItem.from_json({"id": "t1", "command": ["goat-eval", "--prompt", "{prompt}", "--x={prompt}!"],
                                "prompt": "fix it", "timeout_s": 60}, "item 1")
    assert item.is_task
    assert item.timeout_s == 60.0
    assert item.argv() == ["goat-eval", "--prompt", "fix it", "--x=fix it!"]
    assert item.argv("other") == ["goat-eval", "--prompt", "other", "--x=other!"]
    assert item.to_json()["timeout_s"] == 60.0
    bare = SuiteItem.from_json({"id": "t2", "command": ["run", "{prompt}"]}, "item 2")
    assert bare.argv() == ["run", ""]
    assert bare.to_json() == {"id": "t2", "command": ["run", "{prompt}"], "timeout_s": DEFAULT_TIMEOUT_S}
    with pytest.raises(ValueError, match="'p' is not an agent task"):
        SuiteItem("p", prompt="x").argv()


def test_integer_ids_become_strings() -> None:
    assert SuiteItem.from_json({"id": 7, "prompt": "x"}, "item 1").id == "7"


@pytest.mark.parametrize(("raw", "message"), [
    ("just text", "item 1: an item must be an object, not str"),
    ({"id": "", "prompt": "x"}, "item 1: id must be a non-empty string, not ''"),
    ({"id": True, "prompt": "x"}, "item 1: id must be a non-empty string, not True"),
    ({"id": "a"}, "item 1 (id 'a'): has neither messages nor prompt nor command"),
    ({"expected": "x"}, "item 1 (id 'item-1'): has neither messages nor prompt nor command"),
    ({"id": "a", "prompt": "x", "promt": "y"}, "item 1 (id 'a'): unknown field 'promt' (fields: id, messages,"),
    ({"id": "a", "prompt": "x", "messages": [{"role": "user", "content": "y"}]},
     "item 1 (id 'a'): give messages alone: not with prompt or command"),
    ({"id": "a", "messages": "hi"}, "item 1 (id 'a'): messages must be a non-empty list of {role, content}"),
    ({"id": "a", "messages": []}, "item 1 (id 'a'): messages must be a non-empty list of {role, content}"),
    ({"id": "a", "messages": [{"role": "user"}]}, "messages must be a non-empty list of {role, content}"),
    ({"id": "a", "messages": [{"content": "x"}]}, "messages must be a non-empty list of {role, content}"),
    ({"id": "a", "messages": [{"role": "user", "content": 5}]}, "messages must be a non-empty list of"),
    ({"id": "a", "prompt": 5}, "item 1 (id 'a'): prompt must be a string, not int"),
    ({"id": "a", "command": "ls"}, "item 1 (id 'a'): command must be a non-empty list of strings"),
    ({"id": "a", "command": []}, "item 1 (id 'a'): command must be a non-empty list of strings"),
    ({"id": "a", "command": ["ls", 1]}, "item 1 (id 'a'): command must be a non-empty list of strings"),
    ({"id": "a", "prompt": "x", "max_tokens": 0}, "item 1 (id 'a'): max_tokens must be a positive integer, not 0"),
    ({"id": "a", "prompt": "x", "max_tokens": 2.5}, "max_tokens must be a positive integer, not 2.5"),
    ({"id": "a", "prompt": "x", "max_tokens": "8"}, "max_tokens must be a positive integer, not '8'"),
    ({"id": "a", "prompt": "x", "max_tokens": True}, "max_tokens must be a positive integer, not True"),
    ({"id": "a", "command": ["x"], "timeout_s": 0}, "item 1 (id 'a'): timeout_s must be a number of seconds > 0"),
    ({"id": "a", "command": ["x"], "timeout_s": "5"}, "timeout_s must be a number of seconds > 0, not '5'"),
    ({"id": "a", "command": ["x"], "timeout_s": -1}, "timeout_s must be a number of seconds > 0, not -1"),
    ({"id": "a", "command": ["x"], "timeout_s": float("inf")}, "item 1 (id 'a'): not plain JSON data (ValueError"),
    ({"id": "a", "prompt": "x", "scorer": "bleu"}, "item 1 (id 'a'): bad scorer 'bleu': use exact, contains,"),
    ({"id": "a", "prompt": "x", "scorer": "exact"}, "item 1 (id 'a'): scorer 'exact' needs expected"),
    ({"id": "a", "prompt": "x", "scorer": "contains", "expected": {"k": 1}},
     "item 1 (id 'a'): scorer 'contains' needs expected to be a string or a list of strings"),
    ({"id": "a", "prompt": "x", "scorer": "regex", "expected": 5},
     "item 1 (id 'a'): scorer 'regex' needs expected to be a regular expression string"),
    ({"id": "a", "prompt": "x", "scorer": "regex", "expected": "(unclosed"},
     "item 1 (id 'a'): expected is not a valid regular expression (missing ), unterminated subpattern"),
    ({"id": "a", "prompt": "x", "expected": float("nan")}, "item 1 (id 'a'): not plain JSON data (ValueError"),
])
def test_item_errors_are_one_line_naming_the_item(raw: Any, message: str) -> None:
    text = item_error(raw)
    assert message in text
    assert "\n" not in text


def test_judge_and_json_valid_need_no_expected() -> None:
    suite = Suite.from_json([{"prompt": "x", "scorer": "judge: qgpt"}, {"prompt": "y", "scorer": "json_valid"}])
    assert [i.scorer for i in suite.items] == [Scorer("judge", "qgpt"), Scorer("json_valid")]


def test_item_size_limit() -> None:
    big = "x" * (MAX_ITEM_BYTES - 100)
    assert SuiteItem.from_json({"id": "a", "prompt": big}, "item 1").prompt == big
    assert "item 1 (id 'a'): the item is larger than 1000000 bytes of JSON" in item_error(
        {"id": "a", "prompt": "x" * MAX_ITEM_BYTES})
    # multi-byte characters count as their UTF-8 bytes
    assert "larger than" in item_error({"id": "a", "prompt": "é" * (MAX_ITEM_BYTES // 2 + 1)})


# --- suites ----------------------------------------------------------------------------------------------


def test_suite_round_trips_through_json() -> None:
    data = {"name": "qa", "sandbox": "modal", "items": [
        {"id": "q1", "prompt": "2+2?", "expected": "4", "scorer": "exact", "max_tokens": 4},
        {"id": "q2", "messages": [{"role": "user", "content": "JSON please"}], "scorer": "json_valid",
         "expected": {"ok": True}},
        {"id": "t1", "command": ["agent", "{prompt}"], "prompt": "go", "timeout_s": 30.5,
         "scorer": {"judge": "qgpt", "rubric": "R"}},
    ]}
    suite = Suite.from_json(data)
    assert suite.name == "qa"
    assert suite.sandbox == "modal"
    assert [i.id for i in suite.items] == ["q1", "q2", "t1"]
    assert suite.to_json() == data
    assert Suite.from_json(json.loads(json.dumps(suite.to_json()))) == suite


def test_suite_level_errors() -> None:
    with pytest.raises(SuiteError, match=r"^item 3 \(id 'q1'\): duplicate id \(also item 1\)$"):
        Suite.from_json([{"id": "q1", "prompt": "a"}, {"id": "q2", "prompt": "b"}, {"id": "q1", "prompt": "c"}])
    with pytest.raises(SuiteError, match=r"^item 2 \(id 'item-1'\): duplicate id \(also item 1\)$"):
        Suite.from_json([{"prompt": "a"}, {"id": "item-1", "prompt": "b"}])
    with pytest.raises(SuiteError, match=r"^sandbox must be local or modal, not 'docker'$"):
        Suite.from_json({"sandbox": "docker", "items": [{"prompt": "a"}]})
    with pytest.raises(SuiteError, match=r"^the suite has no items$"):
        Suite.from_json([])
    with pytest.raises(SuiteError, match=r"^the suite's items must be a list$"):
        Suite.from_json({"name": "x"})
    with pytest.raises(SuiteError, match=r"^unknown suite field 'item' \(fields: name, sandbox, items\)$"):
        Suite.from_json({"item": []})
    with pytest.raises(SuiteError, match=r"^the suite's name must be a non-empty string, not 3$"):
        Suite.from_json({"name": 3, "items": [{"prompt": "a"}]})
    with pytest.raises(SuiteError, match=r"^a suite must be a list of items or an object with items, not str$"):
        Suite.from_json("items")
    with pytest.raises(SuiteError, match=rf"^too many items: {MAX_ITEMS + 1} \(at most {MAX_ITEMS}\)$"):
        Suite.from_json([{"prompt": "a"}] * (MAX_ITEMS + 1))
    assert len(Suite.from_json([{"prompt": "a"}] * 3).items) == 3  # default ids differ: item-1..item-3


# --- files -----------------------------------------------------------------------------------------------


def test_load_json_list(tmp_path: Path) -> None:
    path = write(tmp_path, "qa.json", json.dumps([{"id": "q1", "prompt": "hi"}, {"prompt": "there"}]))
    suite = load_suite(path)
    assert suite.name == "qa"
    assert suite.sandbox == "local"
    assert [i.id for i in suite.items] == ["q1", "item-2"]


def test_load_yaml_object(tmp_path: Path) -> None:
    text = """
name: agents
sandbox: modal
items:
  - id: fix
    command: [goat-eval, --prompt, "{prompt}"]
    prompt: Fix the bug
    timeout_s: 120
  - prompt: Say hi
    scorer: "judge: qgpt"
"""
    for name in ("s.yaml", "s.YML"):
        suite = load_suite(write(tmp_path, name, text))
        assert suite.name == "agents"
        assert suite.sandbox == "modal"
        assert suite.items[0].argv() == ["goat-eval", "--prompt", "Fix the bug"]
        assert suite.items[1].scorer == Scorer("judge", "qgpt")


def test_load_jsonl_skips_blank_lines_and_numbers_items(tmp_path: Path) -> None:
    path = write(tmp_path, "lines.jsonl", '{"prompt": "a"}\n\n   \n{"id": "b", "prompt": "b"}\n{"prompt": "c"}\n')
    suite = load_suite(path)
    assert suite.name == "lines"
    assert [i.id for i in suite.items] == ["item-1", "b", "item-3"]


def test_jsonl_errors_name_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "bad.jsonl", '{"prompt": "a"}\n\n{"prompt": \n')
    with pytest.raises(SuiteError, match=r"bad\.jsonl: line 3: invalid JSON \(Expecting value\)$"):
        load_suite(path)
    path = write(tmp_path, "bad2.jsonl", '{"prompt": "a"}\n{"id": "x", "max_tokens": 5}\n')
    with pytest.raises(SuiteError, match=r"bad2\.jsonl: line 2 \(id 'x'\): has neither messages nor prompt nor comm"):
        load_suite(path)
    path = write(tmp_path, "dup.jsonl", '{"id": "a", "prompt": "a"}\n\n{"id": "a", "prompt": "b"}\n')
    with pytest.raises(SuiteError, match=r"dup\.jsonl: line 3 \(id 'a'\): duplicate id \(also line 1\)$"):
        load_suite(path)
    path = write(tmp_path, "many.jsonl", '{"prompt": "a"}\n' * (MAX_ITEMS + 1))
    with pytest.raises(SuiteError, match=rf"many\.jsonl: line {MAX_ITEMS + 1}: too many items \(at most {MAX_ITEMS}\)"):
        load_suite(path)


def test_file_errors(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(SuiteError, match=rf"^{re.escape(str(missing))}: no such file$"):
        load_suite(missing)
    with pytest.raises(SuiteError, match=r"prompts\.txt: unknown suite extension '\.txt': use \.json, \.jsonl, \.yaml"):
        load_suite(write(tmp_path, "prompts.txt", "hi"))
    with pytest.raises(SuiteError, match=r"bad\.json: line 2: invalid JSON \(Expecting ',' delimiter\)$"):
        load_suite(write(tmp_path, "bad.json", '[{"prompt": "a"}\n {"prompt": "b"}]'))
    with pytest.raises(SuiteError, match=r"bad\.yaml: line 2: invalid YAML \(found character '\\t' that cannot start"):
        load_suite(write(tmp_path, "bad.yaml", "items:\n\t- prompt: a\n"))
    with pytest.raises(SuiteError, match=r"empty\.yaml: the suite has no items$"):
        load_suite(write(tmp_path, "empty.yaml", ""))
    with pytest.raises(SuiteError, match=r"empty\.jsonl: the suite has no items$"):
        load_suite(write(tmp_path, "empty.jsonl", "\n\n"))
    with pytest.raises(SuiteError, match=r"s\.yaml: sandbox must be local or modal, not 'k8s'$"):
        load_suite(write(tmp_path, "s.yaml", "sandbox: k8s\nitems: [{prompt: a}]\n"))
    with pytest.raises(SuiteError, match=r"r\.yaml: item 1 \(id 'r'\): expected is not a valid regular expression"):
        load_suite(write(tmp_path, "r.yaml", "- {id: r, prompt: a, scorer: regex, expected: '[a-'}\n"))
    with pytest.raises(SuiteError, match=r"bin\.json: not UTF-8 text$"):
        path = tmp_path / "bin.json"
        path.write_bytes(b"\xff\xfe[]")
        load_suite(path)
    with pytest.raises(SuiteError, match=r"d\.yaml: item 1 \(id 'a'\): not plain JSON data \(TypeError"):
        load_suite(write(tmp_path, "d.yaml", "- {id: a, prompt: x, expected: 2024-01-01}\n"))


def test_yaml_alias_bomb_is_stopped_by_the_size_limit(tmp_path: Path) -> None:
    # 5**30 copies once expanded: the check must stop at the limit, not build the whole JSON
    levels = ["    - &a0 [xxxxxxxxxx, xxxxxxxxxx]"]
    levels += [f"    - &a{n} [{', '.join([f'*a{n - 1}'] * 5)}]" for n in range(1, 31)]
    text = "- id: bomb\n  prompt: x\n  expected:\n" + "\n".join(levels) + "\n"
    with pytest.raises(SuiteError, match=r"bomb\.yaml: item 1 \(id 'bomb'\): the item is larger than 1000000 bytes"):
        load_suite(write(tmp_path, "bomb.yaml", text))


# --- synthetic -------------------------------------------------------------------------------------------


def test_synthetic_suite() -> None:
    suite = parse_synthetic("prompt_tokens=5,output_tokens=7,n=3")
    assert synthetic is parse_synthetic
    assert suite.name == "synthetic-p5-o7-n3"
    assert suite.sandbox == "local"
    assert [i.id for i in suite.items] == ["item-1", "item-2", "item-3"]
    assert all(i.max_tokens == 7 for i in suite.items)
    prompts = [i.prompt or "" for i in suite.items]
    assert [len(p.split()) for p in prompts] == [5, 5, 5]
    assert len(set(prompts)) == 3
    assert prompts[0] == "1 bravo charlie delta echo"
    assert parse_synthetic(" n=3 , output_tokens=7,prompt_tokens=5 ") == suite  # deterministic, any order
    assert len({i.prompt for i in parse_synthetic("prompt_tokens=2,output_tokens=1,n=60").items}) == 60


@pytest.mark.parametrize(("spec", "message"), [
    ("prompt_tokens=5,output_tokens=7", "synthetic spec lacks n: use prompt_tokens=N,output_tokens=M,n=K"),
    ("", "bad synthetic spec part '': use prompt_tokens=N,output_tokens=M,n=K"),
    ("prompt_tokens=5,output_tokens=7,n=3,x=1", "bad synthetic spec part 'x=1'"),
    ("prompt_tokens,output_tokens=7,n=3", "bad synthetic spec part 'prompt_tokens'"),
    ("prompt_tokens=0,output_tokens=7,n=3", "synthetic prompt_tokens must be an integer from 1 to 100000, not '0'"),
    ("prompt_tokens=5,output_tokens=-7,n=3", "synthetic output_tokens must be an integer from 1 to 100000, not '-7'"),
    ("prompt_tokens=5,output_tokens=7,n=1.5", "synthetic n must be an integer from 1 to 10000, not '1.5'"),
    ("prompt_tokens=5,output_tokens=7,n=10001", "synthetic n must be an integer from 1 to 10000, not '10001'"),
    ("n=1,n=2,prompt_tokens=5,output_tokens=7", "synthetic spec gives n twice"),
])
def test_synthetic_errors(spec: str, message: str) -> None:
    with pytest.raises(SuiteError) as e:
        parse_synthetic(spec)
    assert str(e.value) == message or str(e.value).startswith(message)
