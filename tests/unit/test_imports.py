"""The house's import rules, read from the code's own imports (module level and inside functions):

    cli ──► gateway ──► core ◄── workers ◄── cli
             │    └──► observability ◄──┘│
             └──────────► gpu_apps ◄──────┘

core imports none of the others (but the vLLM registry's data, gpu_apps.registry, which the config expands
into model_list entries); gateway and workers never import each other (they meet through
core.queue); observability imports neither; nothing imports cli; no import cycles between modules; no
private name (``_x``) imported from another module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "gateway", "workers", "observability", "gpu_apps", "cli")
FORBIDDEN = {
    "core": {"gateway", "workers", "observability", "gpu_apps", "cli"},
    "gateway": {"workers", "cli"},
    "workers": {"gateway", "cli"},
    "observability": {"gateway", "workers", "gpu_apps", "cli"},
    "gpu_apps": {"gateway", "workers", "observability", "cli"},
    "cli": set(),
}
ALLOWED = {("core", "gpu_apps.registry")}  # (package, module) exceptions to FORBIDDEN


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}


def imports_of(name: str, path: Path, *, top_level_only: bool = False) -> Iterator[tuple[str, list[str], int]]:
    """(imported module, names taken from it, line) for every import in the file."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            yield base, [a.name for a in node.names], node.lineno


def test_packages_import_only_downwards() -> None:
    bad = []
    for name, path in project_modules().items():
        top = name.split(".")[0]
        for target, _, line in imports_of(name, path):
            if target.split(".")[0] in FORBIDDEN[top] and (top, target) not in ALLOWED:
                bad.append(f"{path.relative_to(ROOT)}:{line} imports {target}")
    assert not bad, "imports against the house rules:\n" + "\n".join(bad)


def test_no_private_names_across_modules() -> None:
    modules = project_modules()
    bad = []
    for name, path in modules.items():
        for target, names, line in imports_of(name, path):
            if target.split(".")[0] not in PACKAGES:
                continue
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{path.relative_to(ROOT)}:{line} takes {n} from {target}")
    assert not bad, "\n".join(bad)


def test_no_import_cycles() -> None:
    """Module-level imports form no cycle (function-level imports are deliberate lazy loads)."""
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        deps = set()
        for target, names, _ in imports_of(name, path, top_level_only=True):
            for candidate in (*(f"{target}.{n}" for n in names), target):
                if candidate in modules and candidate != name:
                    deps.add(candidate)
                    break
        graph[name] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for dep in sorted(graph[node]):
            # a package's __init__ importing its own submodules is how packages expose them, not a cycle
            if node == dep.rpartition(".")[0]:
                continue
            if state.get(dep) == 1:
                return [*stack[stack.index(dep):], dep]
            if state.get(dep) is None and (cycle := visit(dep)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for mod in sorted(graph):
        if state.get(mod) is None:
            cycle = visit(mod)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_rules_see_real_imports() -> None:
    """The checker itself reads the tree: core is imported by both sides."""
    modules = project_modules()
    seen = {target for name, path in modules.items() if name.startswith(("gateway", "workers"))
            for target, _, _ in imports_of(name, path)}
    assert "core.queue" in seen and "core.config" in seen
    assert len(modules) > 60
