"""``gatehouse traces …``: check that requests through the gateway arrive in Langfuse as traces.

``verify`` sends one chat completion through the running gateway, takes the trace id from the answer's
``x-request-id`` header (Gatehouse's trace id is the request id) and polls Langfuse's public API until the trace
is there with its generation. The logic lives in ``verify`` / ``wait_for_trace`` so tests call it without the
CLI.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Annotated, Any

import httpx
import typer

from cli.common import BaseUrlOpt, api_key, base_url, err, load, out
from core.settings import TracingSettings

traces_app = typer.Typer(help="Langfuse traces: check that requests through the gateway arrive as traces.",
                         no_args_is_help=True)

VERIFY_PROMPT = "Gatehouse trace check: say hello."


@dataclass
class VerifyResult:
    """What ``verify`` found. ``ok`` is True once the trace and its generation are readable in Langfuse."""

    ok: bool
    trace_id: str
    message: str  # one line: what happened
    request_id: str | None = None
    session_id: str | None = None
    trace_name: str | None = None
    observations: list[dict[str, Any]] = field(default_factory=list)  # as the API returned them
    queue_wait_ms: float | None = None
    time_to_first_token_ms: float | None = None
    source: str | None = None  # the API that showed the trace: "traces" or "observations"
    waited_s: float = 0.0  # from the request's end to the trace being readable
    url: str | None = None  # the trace in Langfuse's UI, when the API says where

    @property
    def generation(self) -> dict[str, Any] | None:
        return next((o for o in self.observations if o.get("type") == "GENERATION"), None)


class VerifyError(Exception):
    """Verification could not start: ``exit_code`` 2 when tracing is not configured or the gateway is not
    reachable, 1 when the gateway refused the test request."""

    def __init__(self, message: str, exit_code: int = 2):
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code


def verify(gateway_url: str, api_key: str, settings: TracingSettings, model: str = "chargpt",
           timeout_s: float = 60.0, *, poll_interval_s: float = 1.0) -> VerifyResult:
    """Send one streamed chat completion through the gateway (in a ``gatehouse-verify-…`` session) and wait up
    to ``timeout_s`` for its trace in Langfuse. Raises VerifyError when it cannot even try."""
    if not settings.enabled:
        raise VerifyError("tracing is not configured: set LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY (or "
                          "gatehouse.tracing.public_key / secret_key in the config)", 2)
    session_id = f"gatehouse-verify-{secrets.token_hex(8)}"
    request_id = send_test_request(gateway_url, api_key, model, session_id, timeout_s)
    from observability.tracing import trace_id_for

    result = wait_for_trace(trace_id_for(request_id), settings, timeout_s, poll_interval_s=poll_interval_s)
    result.request_id, result.session_id = request_id, session_id
    return result


def send_test_request(gateway_url: str, api_key: str, model: str, session_id: str, timeout_s: float) -> str:
    """Stream one short chat completion to the end (the job is traced when it ends); its ``x-request-id``."""
    url = gateway_url.rstrip("/") + "/v1/chat/completions"
    body = {"model": model, "messages": [{"role": "user", "content": VERIFY_PROMPT}], "max_tokens": 16,
            "stream": True, "stream_options": {"include_usage": True}}
    headers = {"authorization": f"Bearer {api_key}", "x-session-id": session_id}
    try:
        with httpx.Client(timeout=httpx.Timeout(timeout_s, connect=10.0)) as client, \
                client.stream("POST", url, json=body, headers=headers) as r:
            if r.status_code >= 400:
                r.read()
                raise VerifyError(f"the gateway answered {r.status_code}: {_error_message(r)}", 1)
            for _ in r.iter_lines():
                pass
            request_id: str | None = r.headers.get("x-request-id")
    except (httpx.ConnectError, httpx.ConnectTimeout):
        raise VerifyError(f"cannot reach the gateway at {gateway_url}; is `gatehouse up` running?", 2) from None
    except httpx.HTTPError as e:
        raise VerifyError(f"the test request to {url} failed: {type(e).__name__}: {e}", 1) from None
    if not request_id:
        raise VerifyError("the gateway's answer has no x-request-id header", 1)
    return request_id


def wait_for_trace(trace_id: str, settings: TracingSettings, timeout_s: float = 60.0, *,
                   poll_interval_s: float = 1.0) -> VerifyResult:
    """Poll Langfuse until trace ``trace_id`` is readable with a generation: ``GET /api/public/traces/{id}``,
    then ``GET /api/public/v2/observations?traceId=`` (Langfuse's real-time read path) each round. Returns
    ok=False with the reason when ``timeout_s`` passes or Langfuse refuses the keys."""
    from observability.tracing import langfuse_headers

    base = settings.base_url.rstrip("/")
    secret = settings.secret_key.get_secret_value() if settings.secret_key else ""
    started = time.monotonic()
    deadline = started + timeout_s
    problem = ""
    with httpx.Client(base_url=base, headers=langfuse_headers(settings.public_key or "", secret),
                      timeout=max(1.0, min(10.0, timeout_s))) as client:
        while True:
            for source, fetch in (("traces", _via_traces), ("observations", _via_observations)):
                try:
                    found = fetch(client, trace_id)
                except httpx.HTTPError as e:
                    problem = f"cannot reach Langfuse at {base}: {type(e).__name__}"
                    continue
                except _Refused as e:
                    return VerifyResult(False, trace_id, f"Langfuse at {base} refused the keys ({e}); check "
                                        "LANGFUSE_PUBLIC_KEY / LANGFUSE_SECRET_KEY", waited_s=_since(started))
                if found is not None:
                    return _summary(trace_id, source, found, base, _since(started))
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                hint = problem or ("is tracing on in the workers (same Langfuse keys), and can they reach "
                                   f"{base}?")
                return VerifyResult(False, trace_id, f"trace {trace_id} did not arrive in Langfuse at {base} "
                                    f"within {timeout_s:g} s; {hint}", waited_s=_since(started))
            time.sleep(min(poll_interval_s, remaining))


class _Refused(Exception):
    pass


def _via_traces(client: httpx.Client, trace_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    r = client.get(f"/api/public/traces/{trace_id}")
    _check(r)
    if r.status_code != 200:
        return None
    trace = r.json()
    observations = trace.get("observations") or []
    if not all(isinstance(o, dict) for o in observations):
        return None
    return (trace, observations) if _has_generation(observations) else None


def _via_observations(client: httpx.Client, trace_id: str) -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    r = client.get("/api/public/v2/observations", params={
        "traceId": trace_id, "limit": 100, "fields": "core,basic,time,metadata,metrics,trace_context"})
    _check(r)
    if r.status_code != 200:
        return None
    observations = r.json().get("data") or []
    return ({}, observations) if _has_generation(observations) else None


def _check(r: httpx.Response) -> None:
    if r.status_code in (401, 403):
        raise _Refused(f"HTTP {r.status_code}")


def _has_generation(observations: list[dict[str, Any]]) -> bool:
    return any(o.get("type") == "GENERATION" for o in observations)


def _summary(trace_id: str, source: str, found: tuple[dict[str, Any], list[dict[str, Any]]], base: str,
             waited_s: float) -> VerifyResult:
    trace, observations = found
    observations = sorted(observations, key=lambda o: str(o.get("startTime") or ""))
    root = next((o for o in observations if not o.get("parentObservationId")), None)
    name = trace.get("name") or (root or {}).get("traceName") or (root or {}).get("name")
    queue = next((o for o in observations if o.get("name") == "queue wait"), None)
    queue_ms = _between_ms(queue.get("startTime"), queue.get("endTime")) if queue else None
    if queue_ms is None:
        queue_ms = _number((trace.get("metadata") or {}).get("queue_wait_ms"))
    generation = next(o for o in observations if o.get("type") == "GENERATION")
    ttft_ms = _number(generation.get("timeToFirstToken"))
    ttft_ms = ttft_ms * 1000 if ttft_ms is not None else _between_ms(generation.get("startTime"),
                                                                      generation.get("completionStartTime"))
    url = base + trace["htmlPath"] if trace.get("htmlPath") else None
    return VerifyResult(True, trace_id, f"trace {trace_id} arrived in Langfuse after {waited_s:.1f} s",
                        trace_name=name, observations=observations, queue_wait_ms=queue_ms,
                        time_to_first_token_ms=ttft_ms, source=source, waited_s=waited_s, url=url)


def _between_ms(start: Any, end: Any) -> float | None:
    try:
        return (datetime.fromisoformat(str(end)) - datetime.fromisoformat(str(start))).total_seconds() * 1000
    except (TypeError, ValueError):
        return None


def _number(value: Any) -> float | None:
    try:
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None


def _since(started: float) -> float:
    return time.monotonic() - started


def _error_message(r: httpx.Response) -> str:
    try:
        return str(r.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return r.text[:200]


# ── the command ───────────────────────────────────────────────────────────────────────────────────────
@traces_app.command("verify")
def verify_command(
    config: Annotated[str | None, typer.Option("--config", "-c", help="YAML config file (default: "
                                                  "$GATEHOUSE_CONFIG or ./gatehouse.yaml); its gatehouse.tracing "
                                                  "and the LANGFUSE_* variables give the Langfuse keys.")] = None,
    url: BaseUrlOpt = None,
    key: Annotated[str | None, typer.Option("--api-key", envvar="GATEHOUSE_API_KEY",
                                            help="API key (default: the master key).")] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model for the test request.")] = "chargpt",
    timeout: Annotated[float, typer.Option("--timeout", min=1, help="Seconds to wait for the answer, then "
                                           "again for the trace.")] = 60.0,
) -> None:
    """Send one chat completion through the gateway and wait for its trace in Langfuse.

    Exit status: 0 the trace arrived with its generation; 1 it did not (or the gateway refused the request);
    2 tracing is not configured (no Langfuse keys) or the gateway is not reachable.
    """
    cfg = load(config)
    settings = cfg.settings.tracing
    if not settings.enabled:
        err.print("[red]tracing is not configured: set LANGFUSE_PUBLIC_KEY and LANGFUSE_SECRET_KEY (or "
                  "gatehouse.tracing in the config)[/red]")
        raise typer.Exit(2)
    key = api_key(cfg, key, "API key (--api-key)")
    gateway = base_url(cfg, url)
    err.print(f"[dim]sending one {model} request through {gateway}, then waiting for its trace in "
              f"{settings.base_url}…[/dim]")
    try:
        result = verify(gateway, key, settings, model, timeout)
    except VerifyError as e:
        err.print(f"[red]{e.message}[/red]")
        raise typer.Exit(e.exit_code) from None
    if not result.ok:
        err.print(f"[red]{result.message}[/red]")
        raise typer.Exit(1)
    out.print(f"[green]✓[/green] {result.message} (via /api/public/{'v2/' if result.source == 'observations' else ''}"
              f"{result.source})")
    out.print(f"  trace name:    {result.trace_name}")
    out.print("  observations:  " + ", ".join(f"{o.get('name')} ({o.get('type')})" for o in result.observations))
    timings = [f"queue wait {result.queue_wait_ms:.1f} ms" if result.queue_wait_ms is not None else None,
               f"time to first token {result.time_to_first_token_ms:.1f} ms"
               if result.time_to_first_token_ms is not None else None]
    out.print("  timings:       " + (", ".join(t for t in timings if t) or "-"))
    out.print(f"  session:       {result.session_id}")
    if result.url:
        out.print(f"  open:          {result.url}")
