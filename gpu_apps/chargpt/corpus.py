"""Reproducible training corpus built from the Python standard library's docstrings.

Every Python install ships the same text for a given version, so the corpus can be
rebuilt anywhere without network access.  Modules are visited in sorted order, and
inside each module members are visited in sorted order; identical docstrings are
kept only once.  The text is normalised to printable ASCII plus ``"\\n"``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import inspect
import io
import json
import pkgutil
import subprocess
import sys
import tempfile
import unicodedata
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

#: Top-level modules that must never be imported: side effects on import (opening a
#: browser, printing, touching the terminal), GUI toolkits, test suites, bundled data.
SKIP_MODULES: frozenset[str] = frozenset(
    {
        "antigravity",
        "this",
        "idlelib",
        "tkinter",
        "turtle",
        "turtledemo",
        "test",
        "lib2to3",
        "ensurepip",
        "pydoc_data",
        "readline",
        "rlcompleter",
        "encodings",
    }
)

#: Sub-module name components that mark tests, entry points or platform ports.
SKIP_COMPONENTS: frozenset[str] = frozenset({"test", "tests", "__main__", "idle_test"})

#: Non-ASCII characters with a readable ASCII spelling that NFKD does not produce.
_CHAR_MAP: dict[str, str] = {
    "\t": "    ",
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2013": "-",
    "\u2014": "--",
    "\u2026": "...",
    "\u2022": "*",
    "\u00a0": " ",
    "\u00d7": "x",
    "\u2192": "->",
    "\u2264": "<=",
    "\u2265": ">=",
    "\u2260": "!=",
}


@dataclass(frozen=True)
class CorpusMeta:
    """Facts identifying one built corpus."""

    python_version: str
    num_modules: int
    num_docs: int
    num_chars: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        """Return the metadata as a plain, JSON-serialisable dict."""
        return asdict(self)


def normalize_text(text: str) -> str:
    """Map *text* to printable ASCII plus newlines, dropping anything unmappable."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    out: list[str] = []
    for ch in text:
        if ch == "\n" or " " <= ch <= "~":
            out.append(ch)
        elif ch in _CHAR_MAP:
            out.append(_CHAR_MAP[ch])
        else:
            decomposed = unicodedata.normalize("NFKD", ch)
            out.append("".join(c for c in decomposed if " " <= c <= "~"))
    lines = [line.rstrip() for line in "".join(out).split("\n")]
    return "\n".join(lines).strip("\n")


def _is_public(name: str) -> bool:
    return not name.startswith("_")


def _safe_import(name: str) -> ModuleType | None:
    """Import *name* silently; return ``None`` if it fails for any reason."""
    sink = io.StringIO()
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            warnings.simplefilter("ignore")
            return importlib.import_module(name)
    except BaseException:  # noqa: BLE001 - ImportError, SystemExit, platform errors...
        return None


def default_modules() -> list[str]:
    """Public, importable-looking top-level stdlib module names, sorted."""
    return [n for n in sorted(sys.stdlib_module_names) if _is_public(n) and n not in SKIP_MODULES]


def _walk_modules(top: str) -> Iterator[ModuleType]:
    """Yield *top* and, for packages, its public sub-modules in sorted depth-first order."""
    module = _safe_import(top)
    if module is None:
        return
    yield module
    path = getattr(module, "__path__", None)
    if path is None:
        return
    children = sorted(info.name for info in pkgutil.iter_modules(path))
    for child in children:
        if _is_public(child) and child not in SKIP_COMPONENTS:
            yield from _walk_modules(f"{top}.{child}")


def _member_docs(module: ModuleType) -> Iterator[tuple[str, str | None]]:
    """Yield ``(qualified_name, docstring)`` for a module, its classes and functions."""
    modname = module.__name__
    yield modname, inspect.getdoc(module)
    try:
        members = sorted(vars(module).items())
    except TypeError:
        return
    for name, obj in members:
        if not _is_public(name):
            continue
        if inspect.isclass(obj):
            yield f"{modname}.{name}", _getdoc(obj)
            for attr, member in sorted(vars(obj).items()):
                if _is_public(attr) and (inspect.isroutine(member) or isinstance(member, property)):
                    yield f"{modname}.{name}.{attr}", _getdoc(member)
        elif inspect.isroutine(obj):
            yield f"{modname}.{name}", _getdoc(obj)


def _getdoc(obj: object) -> str | None:
    try:
        return inspect.getdoc(obj)
    except Exception:  # noqa: BLE001 - exotic descriptors can raise
        return None


def iter_docs(modules: Iterable[str] | None = None) -> Iterator[tuple[str, str]]:
    """Yield de-duplicated ``(qualified_name, normalised_docstring)`` pairs in a fixed order."""
    seen: set[str] = set()
    visited: set[str] = set()
    for top in modules if modules is not None else default_modules():
        for module in _walk_modules(top):
            if module.__name__ in visited:
                continue
            visited.add(module.__name__)
            for qualname, doc in _member_docs(module):
                if not doc:
                    continue
                text = normalize_text(doc)
                if len(text) < 20 or text in seen:
                    continue
                seen.add(text)
                yield qualname, text


def build_corpus(modules: Iterable[str] | None = None, *, isolated: bool = True) -> tuple[str, CorpusMeta]:
    """Build the corpus text and its metadata.

    Args:
        modules: top-level module names to visit (default: the whole public stdlib
            minus :data:`SKIP_MODULES`).  Packages are walked recursively.
        isolated: do the importing in a fresh ``python -S -s -P`` child process with
            ``PYTHONHASHSEED=0``.  The result then cannot depend on what the caller
            already imported (third-party packages monkeypatch stdlib functions) or
            on site-packages hooks, and the caller is spared the import side effects.

    Returns:
        ``(text, meta)`` where every document is ``"<qualified name>:\\n<doc>\\n\\n"``.
    """
    module_list = list(modules) if modules is not None else None
    if isolated:
        return _build_in_subprocess(module_list)
    parts: list[str] = []
    tops: set[str] = set()
    for qualname, doc in iter_docs(module_list):
        tops.add(qualname.split(".", 1)[0])
        parts.append(f"{qualname}:\n{doc}\n\n")
    text = "".join(parts)
    meta = CorpusMeta(
        python_version=".".join(map(str, sys.version_info[:3])),
        num_modules=len(tops),
        num_docs=len(parts),
        num_chars=len(text),
        sha256=hashlib.sha256(text.encode("ascii")).hexdigest(),
    )
    return text, meta


def _build_in_subprocess(modules: list[str] | None) -> tuple[str, CorpusMeta]:
    """Run this file as a script in a clean interpreter and read back its JSON output."""
    with tempfile.TemporaryDirectory(prefix="chargpt-corpus-") as tmp:
        out = Path(tmp) / "corpus.json"
        cmd = [sys.executable, "-S", "-s", "-P", str(Path(__file__).resolve()), "--output", str(out)]
        if modules is not None:
            cmd += ["--modules", *modules]
        env = {"PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}
        proc = subprocess.run(cmd, env=env, cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True, timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"corpus builder failed ({proc.returncode}): {proc.stderr[-2000:]}")
        data = json.loads(out.read_text(encoding="ascii"))
    return data["text"], CorpusMeta(**data["meta"])


def main(argv: list[str] | None = None) -> None:
    """Script entry point: print the corpus metadata, or (as the isolated child) write JSON."""
    parser = argparse.ArgumentParser(description="Build the chargpt docstring corpus.")
    parser.add_argument("--output", type=Path, help="write {text, meta} JSON here instead of printing meta")
    parser.add_argument("--modules", nargs="*", default=None, help="top-level modules (default: all)")
    args = parser.parse_args(argv)
    text, meta = build_corpus(args.modules, isolated=args.output is None)
    if args.output is not None:
        args.output.write_text(json.dumps({"text": text, "meta": meta.to_dict()}), encoding="ascii")
    else:
        print(json.dumps(meta.to_dict()))


if __name__ == "__main__":
    main()
