"""Offline check of the Modal apps: ``python -m gpu_apps.check``.

Imports every app (the vLLM app once per registry model), and verifies that each defines what it says
(``app``, ``SETTINGS``, the ``FUNCTIONS`` it registers), uses GPU strings Modal 1.x accepts, mounts the
volumes and secrets it declares, has sane scaling settings, and uses none of the names Modal removed
(``keep_warm``, ``container_idle_timeout``, ``concurrency_limit``, ``allow_concurrent_inputs``, ``modal.gpu.*``,
``modal.Stub``, ``web_endpoint``). Exit code 1 when anything is wrong. Nothing is deployed.
"""

from __future__ import annotations

import ast
import importlib
import os
import sys
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gpu_apps.modal_apps.common import AppSettings

APPS_DIR = Path(__file__).parent / "modal_apps"
REMOVED = {"keep_warm", "container_idle_timeout", "concurrency_limit", "allow_concurrent_inputs", "Stub",
           "web_endpoint"}


def removed_names(path: Path) -> list[str]:
    """Uses of names Modal 1.x removed: keyword arguments, attributes, and ``modal.gpu.X``."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.keyword) and node.arg in REMOVED:
            found.append(f"{path.name}:{node.value.lineno}: {node.arg}=")
        elif isinstance(node, ast.Attribute) and (node.attr in REMOVED or (
                isinstance(node.value, ast.Name) and node.value.id == "modal" and node.attr == "gpu")):
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
    return found


def check_module(name: str) -> list[str]:
    """Problems with one imported app module (empty when it is fine)."""
    import modal

    from gpu_apps.modal_apps.common import AppSettings

    mod = importlib.reload(importlib.import_module(name)) if name in sys.modules else importlib.import_module(name)
    problems = []
    app, settings, functions = (getattr(mod, a, None) for a in ("app", "SETTINGS", "FUNCTIONS"))
    if not isinstance(app, modal.App):
        return [f"{name}: no modal.App named `app`"]
    if not isinstance(settings, AppSettings):
        return [f"{name}: no AppSettings named `SETTINGS`"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        registered: dict[str, Any] = {**app.registered_functions, **app.registered_classes}
    for fn in functions or ():
        if fn not in registered:
            problems.append(f"{name}: declares {fn} but registers {sorted(registered)}")
    return problems + settings_problems(name, settings) + deployed_problems(name, settings, registered)


def settings_problems(name: str, settings: AppSettings) -> list[str]:
    """Problems with an app's ``SETTINGS`` on their own: its GPU string and scaling bounds."""
    from gpu_apps.registry import parse_gpu

    problems = []
    if settings.gpu is not None:
        try:
            parse_gpu(settings.gpu)
        except ValueError as e:
            problems.append(f"{name}: {e}")
    if not settings.min_containers <= settings.max_containers:
        problems.append(f"{name}: min_containers > max_containers")
    if settings.scaledown_window < 2:
        problems.append(f"{name}: scaledown_window below Modal's minimum (2 s)")
    return problems


def deployed_problems(name: str, settings: AppSettings, registered: dict[str, Any]) -> list[str]:
    """Where what Modal will deploy for the registered functions and classes differs from ``SETTINGS``."""
    problems = []
    for obj in registered.values():
        spec = getattr(obj, "_spec_", None)  # what Modal will deploy (a private record: best effort)
        if spec is None:
            continue
        if getattr(spec, "gpus", None) != settings.gpu:
            problems.append(f"{name}: Modal sees gpu={spec.gpus!r}, SETTINGS says {settings.gpu!r}")
        if len(getattr(spec, "secrets", ())) != len(settings.secrets):
            problems.append(f"{name}: {len(spec.secrets)} secrets attached, {len(settings.secrets)} declared")
        if set(getattr(spec, "volumes", {})) != set(settings.volumes):
            problems.append(f"{name}: volumes {sorted(spec.volumes)} != declared {sorted(settings.volumes)}")
    return problems


def main() -> int:
    from rich.console import Console
    from rich.table import Table

    from gpu_apps.registry import load_registry

    console = Console()
    table = Table("app module", "variant", "result")
    problems: list[str] = []
    saved = os.environ.get("VLLM_MODEL")
    for path in sorted(APPS_DIR.glob("*.py")):
        problems += removed_names(path)
    for path in sorted(APPS_DIR.glob("*_app.py")):
        module = f"gpu_apps.modal_apps.{path.stem}"
        variants = list(load_registry()) if path.stem == "vllm_app" else [""]
        for variant in variants:
            if variant:
                os.environ["VLLM_MODEL"] = variant
            found = check_module(module)
            problems += found
            table.add_row(path.name, variant or "-", "[green]ok[/green]" if not found else "[red]" + "; ".join(found))
    if saved is None:
        os.environ.pop("VLLM_MODEL", None)
    else:
        os.environ["VLLM_MODEL"] = saved
    console.print(table)
    for p in problems:
        console.print(f"[red]✗[/red] {p}", highlight=False)
    console.print("all apps check out" if not problems else f"{len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
