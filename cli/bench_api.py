"""What the ``gatehouse bench`` commands share: the gateway's ``/v1/benchmarks`` API over httpx, the consoles,
and the one-line errors (exit 1: the gateway refused or could not be reached; exit 2: the command line or a
local file)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Annotated, Any

import httpx
import orjson
import typer

from cli.common import BaseUrlOpt, ConfigOpt, api_key, base_url, err, fail, load, out

__all__ = ["ApiKeyOpt", "BaseUrlOpt", "ConfigOpt", "Gateway", "JsonOpt", "RunId", "err", "fail", "out",
           "print_json"]


TIMEOUT = httpx.Timeout(60.0, connect=10.0)
PAGE = 1000  # results per page when reading a run's results (the API's most)

ApiKeyOpt = Annotated[str | None, typer.Option("--api-key", envvar="GATEHOUSE_API_KEY",
                                               help="API key (default: the master key).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON on stdout (a stable contract), nothing else.")]
RunId = Annotated[str, typer.Argument(help="Benchmark run id (bench_…).", show_default=False)]


def print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")
    sys.stdout.flush()


def _message(r: httpx.Response) -> str:
    """What an error response says: the OpenAI error's message, else its text."""
    try:
        body = r.json()
    except ValueError:
        return r.text.strip() or r.reason_phrase
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
        if body.get("detail"):
            return str(body["detail"])
    return r.text.strip()


class Gateway:
    """The ``/v1/benchmarks`` endpoints of one gateway; every failure is one line on stderr and exit 1."""

    def __init__(self, base: str, key: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=TIMEOUT)

    @classmethod
    def connect(cls, config: str | None, url: str | None, key: str | None) -> Gateway:
        cfg = load(config)
        return cls(base_url(cfg, url), api_key(cfg, key, "API key (--api-key)"))

    def request(self, method: str, path: str, *, json: Any = None, params: dict[str, Any] | None = None) -> Any:
        try:
            r = self.http.request(method, path, json=json,
                                  params={k: v for k, v in (params or {}).items() if v is not None})
        except httpx.TimeoutException:
            fail(f"the gateway at {self.base} did not answer within {TIMEOUT.read:g} s")
        except httpx.ConnectError:
            fail(f"cannot reach the gateway at {self.base}; is `gatehouse up` running?")
        except httpx.HTTPError as e:
            fail(f"{type(e).__name__}: {e}"[:500])
        if r.status_code >= 400:
            fail(f"{r.status_code}: {_message(r)}"[:500])
        try:
            return r.json()
        except ValueError:
            fail(f"the gateway at {self.base} answered {method} {path} with something that is not JSON")

    # ── the endpoints ─────────────────────────────────────────────────────────────────────────────────
    def create(self, body: dict[str, Any]) -> dict[str, Any]:
        run: dict[str, Any] = self.request("POST", "/v1/benchmarks", json=body)
        return run

    def run(self, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.request("GET", f"/v1/benchmarks/{run_id}")
        return run

    def runs(self, limit: int, after: str | None) -> dict[str, Any]:
        page: dict[str, Any] = self.request("GET", "/v1/benchmarks", params={"limit": limit, "after": after})
        return page

    def cancel(self, run_id: str) -> dict[str, Any]:
        run: dict[str, Any] = self.request("POST", f"/v1/benchmarks/{run_id}/cancel")
        return run

    def results(self, run_id: str) -> Iterator[dict[str, Any]]:
        """Every RESULT of the run, page by page (``after`` = the previous page's ``last_id``)."""
        after: str | None = None
        while True:
            page = self.request("GET", f"/v1/benchmarks/{run_id}/results", params={"limit": PAGE, "after": after})
            yield from page.get("data") or []
            if not page.get("has_more") or not page.get("last_id") or page.get("last_id") == after:
                return
            after = page["last_id"]

    def close(self) -> None:
        self.http.close()


def results_object(run: dict[str, Any]) -> dict[str, Any]:
    """``gatehouse bench results RUN --json``: the contract's object, from the run the API answered."""
    return {"id": run["id"], "status": run["status"], "models": run.get("models_summary") or {},
            "levels": run.get("summary") or {}}
