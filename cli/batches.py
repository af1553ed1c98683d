"""``gatehouse batches …``: submit, follow, list, cancel and download OpenAI batches through a running gateway.

Every call goes through the official ``openai`` SDK (``/v1/files`` and ``/v1/batches``). ``--json`` prints the
API's own objects on stdout and nothing else; progress, hints and errors go to stderr. An error is one line on
stderr: exit 1 when the gateway refused or could not be reached, 2 for a problem with the command line or a
local file. ``submit --wait`` exits 0 only when the batch completed.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import httpx
import orjson
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cli.common import BaseUrlOpt, ConfigOpt, api_key, base_url, err, fail, load, metadata_pairs, out

if TYPE_CHECKING:
    import openai

batches_app = typer.Typer(help="OpenAI Batch API: submit JSONL files of requests, follow them, download the "
                               "results (needs a running gateway).", no_args_is_help=True)

FINAL = ("completed", "failed", "expired", "cancelled")
TIMEOUT = httpx.Timeout(60.0, connect=10.0)
STAMPS = ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at",
          "cancelling_at", "cancelled_at", "expires_at")


class Endpoint(StrEnum):
    chat = "/v1/chat/completions"
    completions = "/v1/completions"
    embeddings = "/v1/embeddings"


ApiKeyOpt = Annotated[str | None, typer.Option("--api-key", envvar="GATEHOUSE_API_KEY",
                                               help="API key (default: the master key).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the API's JSON object on stdout, nothing else.")]
BatchId = Annotated[str, typer.Argument(help="Batch id (batch_…).", show_default=False)]


# ── talking to the gateway ────────────────────────────────────────────────────────────────────────────
def _client(config: str | None, url: str | None, key: str | None) -> openai.OpenAI:
    import openai  # the SDK takes ~0.8 s to import: only commands that talk to the gateway pay it

    cfg = load(config)
    return openai.OpenAI(base_url=base_url(cfg, url) + "/v1", api_key=api_key(cfg, key, "API key (--api-key)"),
                         max_retries=1, timeout=TIMEOUT)


@contextmanager
def _errors(client: openai.OpenAI) -> Iterator[None]:
    """Any SDK error becomes one line on stderr and exit 1."""
    import openai

    gateway = str(client.base_url).rstrip("/").removesuffix("/v1")
    try:
        yield
    except openai.APITimeoutError:
        fail(f"the gateway at {gateway} did not answer within {TIMEOUT.read:g} s")
    except openai.APIConnectionError:
        fail(f"cannot reach the gateway at {gateway}; is `gatehouse up` running?")
    except openai.APIStatusError as e:
        body = e.body
        message = body.get("message") if isinstance(body, dict) else body
        fail(f"{e.status_code}: {message or e.message}".replace("\n", " ")[:500])
    except (openai.OpenAIError, httpx.HTTPError) as e:  # e.g. the connection broke during a download
        fail(f"{type(e).__name__}: {e}".replace("\n", " ")[:500])


def _raw(call: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    """The JSON object the API answered (``call`` is a ``with_raw_response`` method)."""
    return orjson.loads(call(*args, **kw).content)


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


# ── showing batches ───────────────────────────────────────────────────────────────────────────────────
def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else ""


def _counts(b: dict[str, Any]) -> str:
    c = b.get("request_counts") or {}
    return f"{c.get('completed', 0)}/{c.get('failed', 0)}/{c.get('total', 0)}"


_COLOURS = {"completed": "green", "failed": "red", "expired": "red", "cancelled": "yellow", "cancelling": "yellow"}


def _status(status: str) -> str:
    colour = _COLOURS.get(status)
    return f"[{colour}]{status}[/{colour}]" if colour else status


def _list_table(batches: list[dict[str, Any]]) -> Table:
    t = Table("id", "status", "endpoint", "completed/failed/total", "created")
    for b in batches:
        t.add_row(b["id"], _status(b["status"]), b["endpoint"], _counts(b), _when(b.get("created_at")))
    return t


def _detail(b: dict[str, Any]) -> Table:
    t = Table.grid(padding=(0, 2))
    t.add_column(style="bold")
    t.add_column()
    c = b.get("request_counts") or {}
    rows = [("id", b["id"]), ("status", _status(b["status"])), ("endpoint", b["endpoint"]),
            ("requests", f"{c.get('total', 0)} total, {c.get('completed', 0)} completed, {c.get('failed', 0)} failed"),
            ("input file", b.get("input_file_id") or ""), ("output file", b.get("output_file_id") or "-"),
            ("error file", b.get("error_file_id") or "-")]
    usage = b.get("usage")
    if usage and usage.get("total_tokens"):
        rows.append(("tokens", f"{usage['input_tokens']} in + {usage['output_tokens']} out"))
    rows += [(name.removesuffix("_at").replace("_", " "), _when(b[name])) for name in STAMPS if b.get(name)]
    for label, value in rows:
        t.add_row(label, value)
    for k, v in (b.get("metadata") or {}).items():  # the user's text: no markup
        t.add_row(Text(f"metadata {k}"), Text(v))
    return t


def _validation_errors(b: dict[str, Any], console: Console, most: int = 50) -> None:
    errors = (b.get("errors") or {}).get("data") or []
    for e in errors[:most]:
        line = f"line {e['line']}" if e.get("line") is not None else "batch"
        console.print(f"  {line}: {e.get('code') or 'error'}: {e.get('message') or ''}", markup=False,
                      soft_wrap=True)
    if len(errors) > most:
        console.print(f"  … and {len(errors) - most} more (gatehouse batches show {b['id']} --json)", soft_wrap=True)


def _summary(b: dict[str, Any], waited_s: float, console: Console) -> None:
    c = b.get("request_counts") or {}
    what = (f"{c.get('completed', 0)} completed, {c.get('failed', 0)} failed of {c.get('total', 0)}"
            if c.get("total") or not b.get("errors") else "the input file did not validate")
    console.print(f"batch {b['id']} {_status(b['status'])} after {waited_s:.1f} s: {what}", soft_wrap=True)
    if b.get("errors"):
        console.print("validation errors:", style="red")
        _validation_errors(b, console)
    for what, name, flag in (("output", "output_file_id", ""), ("errors", "error_file_id", " --errors")):
        if b.get(name):
            console.print(f"{what}: {b[name]}  (gatehouse batches download {b['id']}{flag})", soft_wrap=True)


# ── submit ────────────────────────────────────────────────────────────────────────────────────────────
def _read_input(path: Path) -> bytes:
    try:
        content = path.read_bytes()
    except FileNotFoundError:
        fail(f"no such file: {path}", 2)
    except IsADirectoryError:
        fail(f"{path} is a directory, not a JSONL file", 2)
    except OSError as e:
        fail(f"cannot read {path}: {e.strerror or e}", 2)
    if not content.strip():
        fail(f"{path} is empty: a batch file has one JSON request per line", 2)
    return content


def _wait(client: openai.OpenAI, batch: dict[str, Any]) -> dict[str, Any]:
    """Poll the batch (every 0.5 s for the first 10 s, then every second) under a progress bar on stderr."""
    started = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("[red]{task.fields[failed]} failed[/red]"), TimeElapsedColumn())
    with Progress(*columns, console=err) as progress:
        task = progress.add_task(batch["status"], total=None, failed=0)
        while True:
            c = batch.get("request_counts") or {}
            progress.update(task, description=f"{batch['id']} {_status(batch['status'])}",
                            total=c.get("total") or None,
                            completed=c.get("completed", 0) + c.get("failed", 0), failed=c.get("failed", 0))
            if batch["status"] in FINAL:
                return batch
            time.sleep(0.5 if time.monotonic() - started < 10 else 1.0)
            batch = _raw(client.batches.with_raw_response.retrieve, batch["id"])


SUBMIT_HELP = (
    'Upload FILE (purpose "batch") and create a batch from it.\n\n'
    "Example:\n  gatehouse batches submit requests.jsonl --metadata job=nightly --wait\n\n"
    "Each line of FILE is one request: "
    '{"custom_id": "req-1", "method": "POST", "url": "/v1/chat/completions", "body": {"model": …, "messages": …}}. '
    "With --wait it shows (completed + failed) / total and the status while the batch runs, then a summary, "
    "and for a failed batch its validation errors (line, code, message).\n\n"
    "Exit status: 0 submitted (with --wait: completed); 1 the batch failed, expired or was cancelled, or the "
    "gateway refused the request or could not be reached; 2 a missing, empty or unreadable FILE or a bad option.")


@batches_app.command("submit", help=SUBMIT_HELP)
def submit(
    file: Annotated[Path, typer.Argument(help="JSONL file: one request per line, each "
                                         '{"custom_id", "method": "POST", "url", "body"}.', show_default=False)],
    endpoint: Annotated[Endpoint, typer.Option("--endpoint", "-e", help="The endpoint every line calls.")]
    = Endpoint.chat,
    metadata: Annotated[list[str] | None, typer.Option("--metadata", "-m", help="KEY=VALUE to tag the batch "
                                                       "with (repeat).")] = None,
    wait: Annotated[bool, typer.Option("--wait", "-w", help="Follow the batch with a progress bar until it "
                                       "ends; exit 0 only when it completed.")] = False,
    json_: JsonOpt = False, config: ConfigOpt = None, url: BaseUrlOpt = None, key: ApiKeyOpt = None,
) -> None:
    content = _read_input(file)
    tags = metadata_pairs(metadata) if metadata else None
    client = _client(config, url, key)
    with _errors(client):
        uploaded = client.files.create(file=(file.name, content), purpose="batch")
        batch = _raw(client.batches.with_raw_response.create, input_file_id=uploaded.id, endpoint=endpoint.value,
                     completion_window="24h", **({"metadata": tags} if tags is not None else {}))
        if not json_:
            out.print(f"submitted {batch['id']} ({file.name} as {uploaded.id}, {endpoint.value})", soft_wrap=True)
        if not wait:
            if json_:
                _print_json(batch)
            else:
                out.print(f"follow it: gatehouse batches show {batch['id']}", soft_wrap=True)
            return
        started = time.monotonic()
        try:
            batch = _wait(client, batch)
        except KeyboardInterrupt:
            fail(f"stopped waiting; {batch['id']} keeps running (gatehouse batches cancel {batch['id']} stops it)",
                 130)
    if json_:
        _print_json(batch)
        if batch["status"] != "completed":
            _summary(batch, time.monotonic() - started, err)
    else:
        _summary(batch, time.monotonic() - started, out)
    if batch["status"] != "completed":
        raise typer.Exit(1)


# ── list, show, cancel ────────────────────────────────────────────────────────────────────────────────
@batches_app.command("list", help=(
    "List your batches, newest first (the master key and admin keys see everyone's).\n\n"
    "Example:\n  gatehouse batches list --limit 5\n\n"
    "Columns: id, status, endpoint, completed/failed/total requests, created. --after BATCH_ID gives the next "
    'page; --json prints the API\'s list object ({"object": "list", "data": …, "has_more": …}).'))
def list_(
    limit: Annotated[int, typer.Option("--limit", "-n", min=1, max=100, help="Batches per page.")] = 20,
    after: Annotated[str | None, typer.Option("--after", help="Start after this batch id (the next page).")]
    = None,
    json_: JsonOpt = False, config: ConfigOpt = None, url: BaseUrlOpt = None, key: ApiKeyOpt = None,
) -> None:
    client = _client(config, url, key)
    with _errors(client):
        page = _raw(client.batches.with_raw_response.list, limit=limit, **({"after": after} if after else {}))
    if json_:
        _print_json(page)
        return
    if not page["data"]:
        out.print("no batches" + (f" after {after}" if after else ""))
        return
    out.print(_list_table(page["data"]))
    if page.get("has_more"):
        err.print(f"more: gatehouse batches list --after {page['last_id']}", soft_wrap=True)


@batches_app.command("show", help=(
    "Show one batch: status, request counts, files, timestamps, metadata and validation errors.\n\n"
    "Example:\n  gatehouse batches show batch_0193f2c4a1b2c3d4e5f6a7b8\n\n"
    "--json prints the API's Batch object as it is."))
def show(batch_id: BatchId, json_: JsonOpt = False, config: ConfigOpt = None, url: BaseUrlOpt = None,
         key: ApiKeyOpt = None) -> None:
    client = _client(config, url, key)
    with _errors(client):
        batch = _raw(client.batches.with_raw_response.retrieve, batch_id)
    if json_:
        _print_json(batch)
        return
    out.print(_detail(batch))
    if batch.get("errors"):
        out.print("validation errors:", style="red")
        _validation_errors(batch, out)


@batches_app.command("cancel", help=(
    "Cancel a batch that is still running.\n\n"
    "Example:\n  gatehouse batches cancel batch_0193f2c4a1b2c3d4e5f6a7b8\n\n"
    'The batch turns "cancelling" at once and "cancelled" within seconds; lines that already finished keep '
    "their results. A completed, failed or expired batch cannot be cancelled (409, exit 1)."))
def cancel(batch_id: BatchId, json_: JsonOpt = False, config: ConfigOpt = None, url: BaseUrlOpt = None,
           key: ApiKeyOpt = None) -> None:
    client = _client(config, url, key)
    with _errors(client):
        batch = _raw(client.batches.with_raw_response.cancel, batch_id)
    if json_:
        _print_json(batch)
    else:
        out.print(f"{batch['id']}: {_status(batch['status'])} ({_counts(batch)} completed/failed/total)",
                  soft_wrap=True)


# ── download ──────────────────────────────────────────────────────────────────────────────────────────
@batches_app.command("download", help=(
    "Download a batch's output file, or its error file with --errors.\n\n"
    "Example:\n  gatehouse batches download batch_0193f2c4a1b2c3d4e5f6a7b8 -o results.jsonl\n\n"
    "The output file has one result per line that succeeded, the error file one per line that failed, each "
    "with its custom_id. Default path: <batch id>_output.jsonl or <batch id>_error.jsonl in the current "
    "directory (an existing file is overwritten). A batch still running has no file yet (exit 1)."))
def download(
    batch_id: BatchId,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Where to write it (\"-\": stdout). "
                                                "Default: <batch id>_output.jsonl or _error.jsonl.")] = None,
    errors: Annotated[bool, typer.Option("--errors", help="The error file (lines that failed) instead of the "
                                         "output file.")] = False,
    json_: Annotated[bool, typer.Option("--json", help="Print the downloaded file's JSON object (the API's) "
                                        "on stdout, nothing else.")] = False,
    config: ConfigOpt = None, url: BaseUrlOpt = None, key: ApiKeyOpt = None,
) -> None:
    kind, field = ("error", "error_file_id") if errors else ("output", "output_file_id")
    to_stdout = output is not None and str(output) == "-"
    if to_stdout and json_:
        fail("--json and --output - both write to stdout: pick one", 2)
    client = _client(config, url, key)
    with _errors(client):
        batch = _raw(client.batches.with_raw_response.retrieve, batch_id)
        file_id = batch.get(field)
        if not file_id:
            status = batch["status"]
            if status not in FINAL:
                fail(f"{batch_id} is still {status}: its {kind} file is written when it ends "
                     f"(gatehouse batches show {batch_id})")
            why = " (no line failed)" if errors and status == "completed" else ""
            fail(f"{batch_id} ({status}) has no {kind} file{why}")
        meta = _raw(client.files.with_raw_response.retrieve, file_id) if json_ else None
        path = None if to_stdout else output or Path(f"{batch_id}_{kind}.jsonl")
        lines = _save(client, file_id, path)
    if path is not None:
        (err if json_ else out).print(f"wrote {lines} line(s) of {file_id} to {path}", soft_wrap=True)
    if meta is not None:
        _print_json(meta)


def _save(client: openai.OpenAI, file_id: str, path: Path | None) -> int:
    """Stream file ``file_id`` to ``path`` (through ``path``.part, so a broken download leaves no half file) or,
    when None, to stdout. Its number of lines."""
    lines, last = 0, b"\n"
    part = None if path is None else path.with_name(path.name + ".part")
    try:
        with client.files.with_streaming_response.content(file_id) as r:
            sink = sys.stdout.buffer if part is None else part.open("wb")
            try:
                for chunk in r.iter_bytes():
                    sink.write(chunk)
                    lines, last = lines + chunk.count(b"\n"), chunk[-1:] or last
            finally:
                if part is None:
                    sink.flush()
                else:
                    sink.close()
        if part is not None and path is not None:
            part.replace(path)
    except OSError as e:
        fail(f"cannot write {e.filename or path or 'stdout'}: {e.strerror or e}", 2)
    finally:
        if part is not None:
            part.unlink(missing_ok=True)
    return lines + (last != b"\n")
