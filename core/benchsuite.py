"""Benchmark suites (issue #14, ``docs/benchmark-runs-contract.md``): the items a run sends to each model.

A suite is read from a ``.json`` / ``.yaml`` / ``.yml`` file (a list of items, or ``{"name", "sandbox",
"items"}``) or a ``.jsonl`` file (one item per line), or generated (``parse_synthetic``). An item is a chat
prompt (``messages`` or ``prompt``) or an agent task (``command``, with ``{prompt}`` substituted), with an
optional ``expected`` answer and ``scorer``. Every problem is a ``SuiteError`` whose message is one line
naming the file, the line or item, and what is wrong. Pure: the only I/O is reading the suite file."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

MAX_ITEMS = 10_000
MAX_ITEM_BYTES = 1_000_000  # an item's serialized JSON
MAX_SYNTHETIC_ITEMS = MAX_ITEMS  # a synthetic suite is sent like any other
MAX_SYNTHETIC_TOKENS = 100_000  # prompt words (≈ 0.7 MB) and max_tokens of a synthetic item
DEFAULT_TIMEOUT_S = 300.0
SANDBOXES = ("local", "modal")
PLAIN_SCORERS = ("exact", "contains", "regex", "json_valid")
SUITE_EXTENSIONS = (".json", ".jsonl", ".yaml", ".yml")
ITEM_FIELDS = ("id", "messages", "prompt", "max_tokens", "expected", "scorer", "command", "timeout_s")
_SCORER_FORMS = "exact, contains, regex, json_valid, 'judge: MODEL' or {judge: MODEL, rubric: TEXT}"
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india", "juliett",
          "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo", "sierra", "tango",
          "uniform", "victor", "whiskey", "xray", "yankee", "zulu")


class SuiteError(ValueError):
    """A suite that cannot be run; the message is one line naming where and what."""


@dataclass(frozen=True, slots=True)
class Scorer:
    """How an item's output is scored: a plain kind, or ``judge`` with the judging model and a rubric."""

    kind: str
    judge: str | None = None
    rubric: str | None = None

    @classmethod
    def parse(cls, value: Any) -> Scorer:
        """``"exact"`` … ``"json_valid"``, ``"judge: MODEL"`` or ``{"judge": MODEL, "rubric": TEXT}``."""
        if isinstance(value, str):
            text = value.strip()
            if text in PLAIN_SCORERS:
                return cls(text)
            head, colon, model = text.partition(":")
            if colon and head.strip() == "judge" and model.strip():
                return cls("judge", judge=model.strip())
        elif isinstance(value, dict) and set(value) <= {"judge", "rubric"}:
            judge, rubric = value.get("judge"), value.get("rubric")
            if isinstance(judge, str) and judge.strip() and (rubric is None or isinstance(rubric, str)):
                return cls("judge", judge=judge.strip(), rubric=rubric)
        raise SuiteError(f"bad scorer {_short(value)}: use {_SCORER_FORMS}")

    def to_json(self) -> str | dict[str, Any]:
        if self.kind != "judge":
            return self.kind
        return {"judge": self.judge, "rubric": self.rubric} if self.rubric is not None else f"judge: {self.judge}"


@dataclass(frozen=True, slots=True)
class SuiteItem:
    """One prompt (``messages`` or ``prompt``) or agent task (``command``) of a suite."""

    id: str
    messages: list[dict[str, Any]] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    expected: Any = None
    scorer: Scorer | None = None
    command: list[str] | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_task(self) -> bool:
        """An agent task: a command run in a sandbox rather than one chat request."""
        return self.command is not None

    def chat_messages(self) -> list[dict[str, Any]]:
        """The chat request's messages: the item's own, or its prompt as one user message."""
        if self.messages is not None:
            return self.messages
        return [{"role": "user", "content": self.prompt or ""}]

    def argv(self, prompt: str | None = None) -> list[str]:
        """The task's command with ``{prompt}`` replaced (by ``prompt``, else the item's own) in each element."""
        if self.command is None:
            raise ValueError(f"item {self.id!r} is not an agent task (it has no command)")
        text = (self.prompt or "") if prompt is None else prompt
        return [part.replace("{prompt}", text) for part in self.command]

    def to_json(self) -> dict[str, Any]:
        """The item as suite JSON (only the fields that are set); ``from_json`` reads it back equal."""
        out: dict[str, Any] = {"id": self.id}
        for name in ("messages", "prompt", "max_tokens", "expected", "command"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        if self.scorer is not None:
            out["scorer"] = self.scorer.to_json()
        if self.is_task or self.timeout_s != DEFAULT_TIMEOUT_S:
            out["timeout_s"] = self.timeout_s
        return out

    @classmethod
    def from_json(cls, d: Any, where: str, number: int = 1) -> SuiteItem:
        """Validate one item; ``where`` (``"item 3"``, ``"line 4"``) starts every error, ``number`` makes the
        default id ``item-<number>``."""
        if not isinstance(d, dict):
            raise SuiteError(f"{where}: an item must be an object, not {type(d).__name__}")
        item_id = d.get("id", f"item-{number}")
        if isinstance(item_id, int) and not isinstance(item_id, bool):
            item_id = str(item_id)
        if not isinstance(item_id, str) or not item_id.strip():
            raise SuiteError(f"{where}: id must be a non-empty string, not {_short(item_id)}")
        try:
            return cls._validated(d, item_id)
        except SuiteError as e:
            raise SuiteError(f"{where} (id {_short(item_id)}): {e}") from None

    @classmethod
    def _validated(cls, d: dict[str, Any], item_id: str) -> SuiteItem:
        unknown = sorted(str(k) for k in d if k not in ITEM_FIELDS)
        if unknown:
            raise SuiteError(f"unknown field {unknown[0]!r} (fields: {', '.join(ITEM_FIELDS)})")
        _check_size(d)
        messages, prompt, command = d.get("messages"), d.get("prompt"), d.get("command")
        if messages is None and prompt is None and command is None:
            raise SuiteError("has neither messages nor prompt nor command")
        if messages is not None and (prompt is not None or command is not None):
            raise SuiteError("give messages alone: not with prompt or command")
        if messages is not None and not _is_messages(messages):
            raise SuiteError("messages must be a non-empty list of {role, content} objects")
        if prompt is not None and not isinstance(prompt, str):
            raise SuiteError(f"prompt must be a string, not {type(prompt).__name__}")
        if command is not None and not (
            isinstance(command, list) and command and all(isinstance(a, str) for a in command)
        ):
            raise SuiteError("command must be a non-empty list of strings")
        max_tokens = d.get("max_tokens")
        if max_tokens is not None and (type(max_tokens) is not int or max_tokens < 1):
            raise SuiteError(f"max_tokens must be a positive integer, not {_short(max_tokens)}")
        timeout_s = d.get("timeout_s", DEFAULT_TIMEOUT_S)
        if type(timeout_s) not in (int, float) or not (0 < timeout_s < math.inf):
            raise SuiteError(f"timeout_s must be a number of seconds > 0, not {_short(timeout_s)}")
        expected = d.get("expected")
        scorer = None if d.get("scorer") is None else Scorer.parse(d["scorer"])
        if scorer is not None:
            _check_expected(scorer, expected)
        return cls(item_id, messages, prompt, max_tokens, expected, scorer, command, float(timeout_s))


@dataclass(frozen=True, slots=True)
class Suite:
    """A named list of items and where agent tasks run (``local`` subprocess or ``modal`` sandbox)."""

    name: str
    items: list[SuiteItem]
    sandbox: str = "local"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "sandbox": self.sandbox, "items": [item.to_json() for item in self.items]}

    @classmethod
    def from_json(cls, data: Any, default_name: str = "suite") -> Suite:
        """A list of items or ``{"name", "sandbox", "items"}`` (as submitted to ``POST /v1/benchmarks``)."""
        if isinstance(data, list):
            data = {"items": data}
        if not isinstance(data, dict):
            raise SuiteError(f"a suite must be a list of items or an object with items, not {type(data).__name__}")
        unknown = sorted(str(k) for k in data if k not in ("name", "sandbox", "items"))
        if unknown:
            raise SuiteError(f"unknown suite field {unknown[0]!r} (fields: name, sandbox, items)")
        items = data.get("items")
        if not isinstance(items, list):
            raise SuiteError("the suite's items must be a list")
        raws = [(f"item {n}", raw) for n, raw in enumerate(items, 1)]
        return _suite(data.get("name", default_name), data.get("sandbox", "local"), raws)


def load_suite(path: Path) -> Suite:
    """Read and validate a suite file; the name defaults to the file's stem."""
    try:
        return _load(path)
    except SuiteError as e:
        raise SuiteError(f"{path}: {e}") from None


def _load(path: Path) -> Suite:
    suffix = path.suffix.lower()
    if suffix not in SUITE_EXTENSIONS:
        raise SuiteError(f"unknown suite extension {path.suffix or '(none)'!r}: use {', '.join(SUITE_EXTENSIONS)}")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SuiteError("no such file") from None
    except UnicodeDecodeError:
        raise SuiteError("not UTF-8 text") from None
    except OSError as e:
        raise SuiteError(f"cannot read: {e.strerror or e}") from None
    if suffix == ".jsonl":
        raws: list[tuple[str, Any]] = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if line.strip():
                if len(raws) >= MAX_ITEMS:
                    raise SuiteError(f"line {lineno}: too many items (at most {MAX_ITEMS})")
                raws.append((f"line {lineno}", _json(line, lineno)))
        return _suite(path.stem, "local", raws)
    if suffix == ".json":
        data = _json(text, None)
    else:
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            line = f"line {mark.line + 1}: " if mark is not None else ""
            raise SuiteError(f"{line}invalid YAML ({getattr(e, 'problem', None) or e})") from None
    if data is None:
        raise SuiteError("the suite has no items")
    return Suite.from_json(data, default_name=path.stem)


def parse_synthetic(spec: str) -> Suite:
    """``prompt_tokens=N,output_tokens=M,n=K``: K items, each a prompt of N words (distinct per item) and
    ``max_tokens`` M."""
    limits = {"prompt_tokens": MAX_SYNTHETIC_TOKENS, "output_tokens": MAX_SYNTHETIC_TOKENS,
              "n": MAX_SYNTHETIC_ITEMS}
    values: dict[str, int] = {}
    for part in (p.strip() for p in spec.split(",")):
        key, eq, raw = (s.strip() for s in part.partition("="))
        if not eq or key not in limits:
            raise SuiteError(f"bad synthetic spec part {part!r}: use prompt_tokens=N,output_tokens=M,n=K")
        if key in values:
            raise SuiteError(f"synthetic spec gives {key} twice")
        if not raw.isdigit() or not 1 <= int(raw) <= limits[key]:
            raise SuiteError(f"synthetic {key} must be an integer from 1 to {limits[key]}, not {raw!r}")
        values[key] = int(raw)
    missing = [k for k in limits if k not in values]
    if missing:
        raise SuiteError(f"synthetic spec lacks {', '.join(missing)}: use prompt_tokens=N,output_tokens=M,n=K")
    p, o, n = values["prompt_tokens"], values["output_tokens"], values["n"]
    items = [SuiteItem(f"item-{i}", prompt=_synthetic_prompt(i, p), max_tokens=o) for i in range(1, n + 1)]
    return Suite(f"synthetic-p{p}-o{o}-n{n}", items)


synthetic = parse_synthetic  # the name the contract uses


def _synthetic_prompt(number: int, words: int) -> str:
    """``words`` words: the item number, then the word list cycled from an offset that depends on it."""
    return " ".join([str(number), *(_WORDS[(number + j) % len(_WORDS)] for j in range(words - 1))])


def _suite(name: Any, sandbox: Any, raws: list[tuple[str, Any]]) -> Suite:
    if not isinstance(name, str) or not name.strip():
        raise SuiteError(f"the suite's name must be a non-empty string, not {_short(name)}")
    if sandbox not in SANDBOXES:
        raise SuiteError(f"sandbox must be local or modal, not {_short(sandbox)}")
    if not raws:
        raise SuiteError("the suite has no items")
    if len(raws) > MAX_ITEMS:
        raise SuiteError(f"too many items: {len(raws)} (at most {MAX_ITEMS})")
    items: list[SuiteItem] = []
    seen: dict[str, str] = {}
    for number, (where, raw) in enumerate(raws, 1):
        item = SuiteItem.from_json(raw, where, number)
        if item.id in seen:
            raise SuiteError(f"{where} (id {_short(item.id)}): duplicate id (also {seen[item.id]})")
        seen[item.id] = where
        items.append(item)
    return Suite(name, items, sandbox)


def _json(text: str, lineno: int | None) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise SuiteError(f"line {lineno or e.lineno}: invalid JSON ({e.msg})") from None
    except (ValueError, RecursionError) as e:
        raise SuiteError(f"line {lineno or 1}: invalid JSON ({type(e).__name__})") from None


def _check_size(d: dict[str, Any]) -> None:
    """Serialize incrementally and stop past the limit, so YAML aliases cannot make the check itself huge."""
    size = 0
    try:
        for chunk in json.JSONEncoder(ensure_ascii=False, allow_nan=False).iterencode(d):
            size += len(chunk.encode())
            if size > MAX_ITEM_BYTES:
                break
    except (TypeError, ValueError, RecursionError) as e:
        raise SuiteError(f"not plain JSON data ({type(e).__name__}: {str(e)[:80]})") from None
    if size > MAX_ITEM_BYTES:
        raise SuiteError(f"the item is larger than {MAX_ITEM_BYTES} bytes of JSON")


def _is_messages(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and m["role"]
        and "content" in m and (m["content"] is None or isinstance(m["content"], str | list))
        for m in value
    )


def _check_expected(scorer: Scorer, expected: Any) -> None:
    if scorer.kind in ("exact", "contains", "regex") and expected is None:
        raise SuiteError(f"scorer {scorer.kind!r} needs expected")
    if scorer.kind == "contains" and not (
        isinstance(expected, str | int | float)
        or (isinstance(expected, list) and all(isinstance(s, str) for s in expected))
    ):
        raise SuiteError("scorer 'contains' needs expected to be a string or a list of strings")
    if scorer.kind == "regex":
        if not isinstance(expected, str):
            raise SuiteError("scorer 'regex' needs expected to be a regular expression string")
        try:
            re.compile(expected, re.DOTALL)
        except re.error as e:
            raise SuiteError(f"expected is not a valid regular expression ({e})") from None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
