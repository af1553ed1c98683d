"""What every ``gatehouse`` subcommand shares: loading the config (exit 2 on a bad one), the gateway's URL and
the admin key to call it with, the consoles (pipes and CI logs get whole rows), one-line errors, and
``--metadata KEY=VALUE`` pairs."""

from __future__ import annotations

import sys
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

from cli.embedded import read_master_key
from core.config import Config, ConfigError, load_config

err_console = Console(stderr=True)
_width = None if sys.stdout.isatty() else 200  # pipes and CI logs get whole rows
out = Console(highlight=False, width=_width)
err = Console(stderr=True, highlight=False, width=_width)

ConfigOpt = Annotated[str | None, typer.Option("--config", "-c", help="YAML config file (LiteLLM-compatible "
                                               "model_list). Default: $GATEHOUSE_CONFIG or ./gatehouse.yaml.")]
BaseUrlOpt = Annotated[str | None, typer.Option("--base-url", help="Gateway URL (default: the configured one).")]


def load(config: str | None, **overrides: Any) -> Config:
    """The validated config with command-line ``overrides`` applied; a bad one exits 2 with one line."""
    try:
        return load_config(config, overrides)
    except ConfigError as e:
        err_console.print(f"[bold red]config error:[/bold red] {e}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None


def base_url(cfg: Config, explicit: str | None) -> str:
    return (explicit or f"http://{cfg.settings.host}:{cfg.settings.port}").rstrip("/")


def api_key(cfg: Config, explicit: str | None, what: str = "API key") -> str:
    """``explicit``, else the master key (configured or kept by ``gatehouse up``); exit 2 when there is none."""
    key = explicit or read_master_key(cfg.settings.data_dir, cfg.master_key())
    if not key:
        err_console.print(f"[red]no {what}: pass it as an option or run where `gatehouse up` keeps "
                          ".gatehouse/[/red]", soft_wrap=True)
        raise typer.Exit(2)
    return key


def fail(message: str, code: int = 1) -> NoReturn:
    """``message`` as one line on stderr, then exit ``code``."""
    err.print(message.replace("\n", " "), style="red", markup=False, soft_wrap=True)
    raise typer.Exit(code)


def metadata_pairs(pairs: list[str]) -> dict[str, str]:
    """``--metadata KEY=VALUE`` options as a dict; exit 2 on a pair without ``=`` or without a key."""
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--metadata wants KEY=VALUE, not {pair!r}", 2)
        metadata[key] = value
    return metadata
