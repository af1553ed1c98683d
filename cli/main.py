"""The ``gatehouse`` command."""

from __future__ import annotations

import asyncio
import os
import sys
import urllib.request
from typing import Annotated

import orjson
import typer
from rich.console import Console
from rich.table import Table

from cli.batches import batches_app
from cli.bench import bench_app
from cli.common import BaseUrlOpt, ConfigOpt, api_key, base_url, err_console, fail, load
from cli.embedded import ensure_master_key
from cli.keys import keys_app
from cli.traces import traces_app
from observability.logs import setup_logging

app = typer.Typer(help="Gatehouse: an OpenAI-compatible gateway with a Redis queue, async workers and GPU "
                       "model apps.", no_args_is_help=True, add_completion=False,
                  pretty_exceptions_show_locals=False)  # locals may hold keys: never print them
console = Console(stderr=True)

PortOpt = Annotated[int | None, typer.Option("--port", "-p", help="Gateway port (default 8000, $GATEHOUSE_PORT).")]
HostOpt = Annotated[str | None, typer.Option("--host", help="Interface to bind (default 127.0.0.1).")]


@app.command()
def up(config: ConfigOpt = None, port: PortOpt = None, host: HostOpt = None,
       workers: Annotated[int | None, typer.Option("--workers", "-w", help="Worker processes.")] = None) -> None:
    """Start everything: embedded Valkey + PostgreSQL (unless REDIS_URL / DATABASE_URL are set), the gateway
    and the workers. Prints the base URL and the master key; Ctrl-C stops it all."""
    from cli.supervisor import Supervisor

    cfg = load(config, port=port, host=host, workers=workers)
    setup_logging(cfg.settings.log_level, cfg.settings.log_format, "up")
    raise typer.Exit(Supervisor(cfg, config or os.environ.get("GATEHOUSE_CONFIG"), console).run())


@app.command()
def serve(config: ConfigOpt = None, port: PortOpt = None, host: HostOpt = None) -> None:
    """Run the gateway only (needs REDIS_URL; workers run separately)."""
    import uvicorn

    from gateway.app import create_app
    from gateway.draining import FINISH_S, DrainingServer

    cfg = load(config, port=port, host=host)
    s = cfg.settings
    setup_logging(s.log_level, s.log_format, "gateway")
    master_key = ensure_master_key(s.data_dir, cfg.master_key())
    app = create_app(cfg, master_key)
    server = DrainingServer(uvicorn.Config(
        app, host=s.host, port=s.port, loop="uvloop", http="httptools",
        access_log=False, log_config=None, timeout_graceful_shutdown=int(FINISH_S) + 1, backlog=4096,
        timeout_keep_alive=75, server_header=False), app.state.drain)
    server.run()


@app.command()
def worker(config: ConfigOpt = None,
           burst: Annotated[bool, typer.Option(help="Exit once the queue is empty.")] = False) -> None:
    """Run one worker process (needs REDIS_URL)."""
    import uvloop

    from workers.assemble import build_worker

    cfg = load(config)
    setup_logging(cfg.settings.log_level, cfg.settings.log_format, "worker")
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.set_event_loop(asyncio.new_event_loop())
    build_worker(cfg, burst=burst).run()


@app.command()
def migrate(config: ConfigOpt = None) -> None:
    """Apply the database migrations now and exit (needs DATABASE_URL). Gateways also migrate when they first
    connect, under a PostgreSQL advisory lock; run this before a rollout (the Kubernetes migration Job does) so a
    failing migration shows here, not as gateways that crash-loop. Running it again applies nothing."""
    import asyncpg

    from core.database import database_dsn
    from gateway.db.migrate import migrate as apply_migrations

    cfg = load(config)
    s = cfg.settings
    setup_logging(s.log_level, s.log_format, "migrate")
    if not s.database_url:
        fail("gatehouse migrate: no database_url (set DATABASE_URL or database_url in the config; `gatehouse up` "
             "migrates its embedded PostgreSQL itself)", code=2)

    async def run() -> list[int]:
        conn = await asyncpg.connect(database_dsn(s.database_url or "", s.database_ssl_root_cert), timeout=10)
        try:
            return await apply_migrations(conn)
        finally:
            await conn.close()

    try:
        applied = asyncio.run(run())
    except (OSError, asyncpg.PostgresError, TimeoutError) as e:
        fail(f"gatehouse migrate: {type(e).__name__}: {e}")
    print("applied migrations:", ", ".join(map(str, applied)) if applied else "none, the schema is up to date")


@app.command()
def models(config: ConfigOpt = None,
           url: Annotated[str | None, typer.Option("--base-url", help="Ask this running gateway instead.")] = None
           ) -> None:
    """List the models: asks the running gateway, or reads the config when none answers."""
    cfg = load(config)
    table = Table("model", "backend", "upstream")
    try:
        with urllib.request.urlopen(base_url(cfg, url) + "/health", timeout=3) as r:
            live = {m["id"]: m["backend"] for m in orjson.loads(r.read())["models"]}
        source = "gateway"
    except OSError:
        live, source = {}, "config"
    for name, entry in cfg.models().items():
        if source == "config" or name in live:
            table.add_row(name, entry.backend, entry.litellm_params.model)
    Console().print(table)
    console.print(f"[dim]source: {source}[/dim]")


@app.command()
def chat(model: Annotated[str, typer.Argument(help="Model name, e.g. chargpt.")],
         prompt: Annotated[str, typer.Argument(help="The user message.")],
         config: ConfigOpt = None,
         url: BaseUrlOpt = None,
         key: Annotated[str | None, typer.Option("--api-key", envvar="GATEHOUSE_API_KEY",
                                                 help="API key (default: the master key).")] = None,
         max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
         temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
         seed: Annotated[int | None, typer.Option(help="Seed for reproducible sampling.")] = None) -> None:
    """Stream a reply from MODEL to PROMPT in the terminal, through the gateway."""
    import openai

    cfg = load(config)
    client = openai.OpenAI(base_url=base_url(cfg, url) + "/v1", api_key=api_key(cfg, key, "API key (--api-key)"),
                           max_retries=1)
    try:  # an unset option is omitted from the request, not sent as null
        stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                max_tokens=max_tokens, stream=True,
                                                stream_options={"include_usage": True},
                                                temperature=openai.omit if temperature is None else temperature,
                                                seed=openai.omit if seed is None else seed)
        usage = None
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                sys.stdout.write(chunk.choices[0].delta.content)
                sys.stdout.flush()
            if chunk.usage:
                usage = chunk.usage
        sys.stdout.write("\n")
        if usage:
            console.print(f"[dim]{usage.prompt_tokens} prompt + {usage.completion_tokens} completion tokens[/dim]")
    except openai.APIConnectionError:
        err_console.print(f"[red]cannot reach the gateway at {client.base_url}; is `gatehouse up` running?[/red]")
        raise typer.Exit(1) from None
    except openai.APIStatusError as e:
        err_console.print(f"[red]{e.status_code}: {e.message}[/red]", highlight=False)
        raise typer.Exit(1) from None


app.add_typer(keys_app, name="keys")
app.add_typer(traces_app, name="traces")
app.add_typer(batches_app, name="batches")
app.add_typer(bench_app, name="bench")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
