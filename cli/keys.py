"""``gatehouse keys …``: manage virtual keys through a running gateway's admin API."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from cli.common import BaseUrlOpt, api_key, base_url, load

keys_app = typer.Typer(help="Create, list, inspect and revoke virtual API keys (needs a running gateway).",
                       no_args_is_help=True)
out = Console(width=None if sys.stdout.isatty() else 200)  # pipes and CI logs get whole rows
err = Console(stderr=True)

BaseUrl = BaseUrlOpt
AdminKey = Annotated[str | None, typer.Option("--admin-key", envvar="GATEHOUSE_ADMIN_KEY",
                                                 help="Master or admin key (default: the master key).")]


def _client(url: str | None, admin_key: str | None) -> httpx.Client:
    cfg = load(None)
    key = api_key(cfg, admin_key, "admin key (--admin-key)")
    return httpx.Client(base_url=base_url(cfg, url), headers={"authorization": f"Bearer {key}"}, timeout=30)


def _call(client: httpx.Client, method: str, path: str, **kw: Any) -> Any:
    try:
        r = client.request(method, path, **kw)
    except httpx.HTTPError:
        err.print(f"[red]cannot reach the gateway at {client.base_url}; is `gatehouse up` running?[/red]")
        raise typer.Exit(1) from None
    if r.status_code >= 400:
        message = r.json().get("error", {}).get("message", r.text) if r.headers.get("content-type", "").startswith(
            "application/json") else r.text
        err.print(f"[red]{r.status_code}: {message}[/red]", highlight=False)
        raise typer.Exit(1)
    return r.json()


def _table(rows: list[dict[str, Any]]) -> Table:
    t = Table("key id", "alias", "team", "models", "rpm", "tpm", "parallel", "budget", "expires", "admin")
    for k in rows:
        t.add_row(k["key_id"], k.get("key_alias") or "", k.get("team_id") or "",
                  ", ".join(k["models"]) if k.get("models") else "all", str(k.get("rpm_limit") or ""),
                  str(k.get("tpm_limit") or ""), str(k.get("max_parallel_requests") or ""),
                  "" if k.get("max_budget") is None else f"{k['max_budget']} / {k.get('budget_duration') or 'total'}",
                  (k.get("expires") or "never")[:19], "yes" if k.get("is_admin") else "")
    return t


@keys_app.command("create")
def create(alias: Annotated[str | None, typer.Option(help="A name for the key.")] = None,
           model: Annotated[list[str] | None, typer.Option("--model", "-m", help="Allowed model (repeat); "
                                                               "default: all.")] = None,
           team: Annotated[str | None, typer.Option(help="Team id.")] = None,
           user: Annotated[str | None, typer.Option(help="User id.")] = None,
           rpm: Annotated[int | None, typer.Option(help="Requests per minute.")] = None,
           tpm: Annotated[int | None, typer.Option(help="Tokens per minute.")] = None,
           parallel: Annotated[int | None, typer.Option(help="Max parallel requests.")] = None,
           budget: Annotated[float | None, typer.Option(help="Max budget (USD).")] = None,
           budget_duration: Annotated[str | None, typer.Option(help="Budget period, e.g. 30d.")] = None,
           duration: Annotated[str | None, typer.Option(help="Expire after, e.g. 90d.")] = None,
           base_url: BaseUrl = None, admin_key: AdminKey = None) -> None:
    """Create a key; its secret is shown once."""
    body = {k: v for k, v in {"key_alias": alias, "models": model, "team_id": team, "user_id": user,
                              "rpm_limit": rpm, "tpm_limit": tpm, "max_parallel_requests": parallel,
                              "max_budget": budget, "budget_duration": budget_duration,
                              "duration": duration}.items() if v is not None}
    with _client(base_url, admin_key) as c:
        k = _call(c, "POST", "/key/generate", json=body)
    out.print(_table([k]))
    out.print(f"key (shown once):  [bold]{k['key']}[/bold]\nBasic auth pair:   {k['key_id']}:{k['key_secret']}",
              highlight=False, soft_wrap=True)
    for warning in k.get("warnings") or ():
        err.print(f"warning: {warning}", style="yellow", markup=False, highlight=False)


@keys_app.command("list")
def list_(team: Annotated[str | None, typer.Option(help="Only this team's keys.")] = None,
          revoked: Annotated[bool, typer.Option(help="Include revoked keys.")] = False,
          base_url: BaseUrl = None, admin_key: AdminKey = None) -> None:
    """List keys."""
    params: dict[str, Any] = {"return_full_object": "true", "size": 1000, "include_revoked": str(revoked).lower()}
    if team:
        params["team_id"] = team
    with _client(base_url, admin_key) as c:
        page = _call(c, "GET", "/key/list", params=params)
    out.print(_table(page["keys"]))
    out.print(f"{page['total_count']} key(s)")


@keys_app.command("info")
def info(key: Annotated[str, typer.Argument(help="Key id (ak-…) or the key itself.")],
         base_url: BaseUrl = None, admin_key: AdminKey = None) -> None:
    """Show one key."""
    with _client(base_url, admin_key) as c:
        k = _call(c, "GET", "/key/info", params={"key": key})
    out.print(_table([k["info"]]))


@keys_app.command("revoke")
def revoke(key: Annotated[list[str], typer.Argument(help="Key ids (ak-…) or keys.")],
           base_url: BaseUrl = None, admin_key: AdminKey = None) -> None:
    """Revoke keys (effective on every gateway within a second)."""
    with _client(base_url, admin_key) as c:
        res = _call(c, "POST", "/key/delete", json={"keys": key})
    out.print(f"revoked: {', '.join(res['deleted_keys']) or 'nothing (unknown or already revoked)'}")


@keys_app.command("spend")
def spend(key: Annotated[str | None, typer.Argument(help="Key id (ak-…) or key; default: every key.")] = None,
          team: Annotated[str | None, typer.Option(help="Only this team.")] = None,
          days: Annotated[int, typer.Option(help="How many days back.")] = 30,
          base_url: BaseUrl = None, admin_key: AdminKey = None) -> None:
    """Spend per key, model and day."""
    params: dict[str, Any] = {"days": days}
    if key:
        params["key"] = key
    if team:
        params["team_id"] = team
    with _client(base_url, admin_key) as c:
        res = _call(c, "GET", "/spend/daily", params=params)
    t = Table("day", "key id", "team", "model", "requests", "prompt tok", "completion tok", "cost (USD)")
    for r in res["data"]:
        t.add_row(r["day"], r["key_id"] or "", r["team_id"] or "", r["model"], str(r["requests"]),
                  str(r["prompt_tokens"]), str(r["completion_tokens"]), f"{r['cost']:.6f}")
    out.print(t)
    out.print(f"total: ${res['total_cost']:.6f}")
