"""The dashboards and alerts against a real Prometheus scraping the live gateway.

A Prometheus (1 s scrape and rule evaluation, the alert rules loaded, its own storage) scrapes the `stack`
fixture's gateway, whose /metrics carries the worker's metrics too (multiprocess mode, as under `gatehouse up`).
Traffic of every kind the dashboards show goes through the gateway; then every PromQL expression of every
dashboard panel, template variable and alert (without its trailing comparison) must parse and return data,
and the rule groups must load and evaluate without error.

The binaries come from PATH or Debian's package (see test_observability_files.prometheus_tools).
"""

from __future__ import annotations

import re
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import yaml
from conftest import Stack, admin, create_key, free_port
from test_observability_files import (
    PROM_DIR,
    alert_rules,
    dashboard_queries,
    metric_names,
    prometheus_tools,
    split_alert,
    variable_queries,
)

STARTUP_S = 30  # Prometheus ready, and the gateway's target up
SCRAPE_S = 1  # scrape and rule evaluation interval
SCRAPES_AFTER_TRAFFIC = 4  # scrape intervals to wait once the traffic is done
# what the live test puts in place of Grafana's variables ($model, $lane, $tenant: "All")
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}
MSGS = [{"role": "user", "content": "count the words of this short sentence please"}]
PROMPTS = ["Write a Python script that uses a for loop.", "Summarise this article in two sentences please"]


def grafana_expand(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return re.sub(r"\$\{?\w+\}?", ".*", expr)  # every other variable: its "All" value


class Prometheus:
    def __init__(self, base_url: str, proc: subprocess.Popen[bytes], log: Path):
        self.base_url, self.proc, self.log = base_url, proc, log

    def get(self, path: str, **params: str) -> dict:
        return httpx.get(self.base_url + path, params=params, timeout=10).json()  # type: ignore[no-any-return]

    def query(self, expr: str) -> dict:
        return self.get("/api/v1/query", query=expr)

    def wait_for(self, expr: str, timeout: float, what: str) -> list:
        deadline = time.time() + timeout
        last: dict = {}
        while time.time() < deadline:
            last = self.query(expr)
            if last.get("status") == "success" and last["data"]["result"]:
                return last["data"]["result"]  # type: ignore[no-any-return]
            time.sleep(0.25)
        targets = self.get("/api/v1/targets").get("data", {}).get("activeTargets", [])
        errors = [(t["scrapeUrl"], t["health"], t["lastError"]) for t in targets]
        raise AssertionError(f"{what}: no data for {expr!r} after {timeout}s ({last}); targets: {errors}")


@pytest.fixture(scope="module")
def prometheus(stack: Stack) -> Iterator[Prometheus]:
    binary, _ = prometheus_tools()
    with tempfile.TemporaryDirectory(prefix="gatehouse-prometheus-") as tmp:
        work = Path(tmp)
        # the embedded config, pointed at the test gateway and sped up
        cfg = yaml.safe_load((PROM_DIR / "prometheus-embedded.yml").read_text())
        interval = f"{SCRAPE_S}s"
        cfg["global"].update({"scrape_interval": interval, "scrape_timeout": interval, "evaluation_interval": interval})
        cfg["rule_files"] = [str(PROM_DIR / "alerts.yml")]
        (job,) = cfg["scrape_configs"]
        job["static_configs"] = [{"targets": [urllib.parse.urlsplit(stack.base_url).netloc]}]
        (work / "prometheus.yml").write_text(yaml.safe_dump(cfg))
        port = free_port()
        log = work / "prometheus.log"
        with log.open("wb") as out:
            proc = subprocess.Popen([binary, f"--config.file={work / 'prometheus.yml'}",
                                     f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}",
                                     "--storage.tsdb.retention.time=1h", "--log.level=warn"],
                                    stdout=out, stderr=subprocess.STDOUT, cwd=work)
        prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
        try:
            deadline = time.time() + STARTUP_S
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"prometheus exited with {proc.returncode}: {log.read_text()[-2000:]}")
                try:
                    if httpx.get(prom.base_url + "/-/ready", timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise TimeoutError(f"prometheus not ready after {STARTUP_S}s: {log.read_text()[-2000:]}")
                time.sleep(0.2)
            prom.wait_for('up{job="gatehouse"} == 1', STARTUP_S, "the gateway's /metrics scraped")
            yield prom
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


def drive_traffic(stack: Stack) -> None:
    """One of each thing the dashboards show: streamed and whole answers, errors, a retry, a cold start, an auth
    failure, a rate-limit refusal, priced usage on a virtual key, qgpt on the QRNG, and classification."""
    client = stack.client(timeout=60)
    for _ in range(3):
        client.chat.completions.create(model="fake", messages=MSGS)
        chunks = list(client.chat.completions.create(model="echo", messages=MSGS, stream=True,
                                                     stream_options={"include_usage": True}))
        assert chunks[-1].usage is not None
    client.completions.create(model="fake", prompt="hello there")
    client.models.list()
    with pytest.raises(openai.InternalServerError):  # the upstream always fails: 502 after the retries
        client.chat.completions.create(model="status-503", messages=MSGS)
    # fails once per distinct body, then succeeds: a retry (a fresh body, whatever ran before in the session)
    client.chat.completions.create(model="flaky-503", messages=[{"role": "user", "content": f"retry {uuid.uuid4()}"}])
    client.chat.completions.create(model="cold-0.8", messages=MSGS)  # scale-from-zero: waits, then answers
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=stack.base_url + "/v1", api_key="sk-wrong-key", max_retries=0, timeout=30).models.list()

    limited = create_key(stack, rpm_limit=1)
    limited_client = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=limited["key"], max_retries=0, timeout=30)
    limited_client.chat.completions.create(model="fake", messages=MSGS)
    with pytest.raises(openai.RateLimitError):
        limited_client.chat.completions.create(model="fake", messages=MSGS)

    payer = create_key(stack)
    priced = openai.OpenAI(base_url=stack.base_url + "/v1", api_key=payer["key"], max_retries=0, timeout=60)
    priced.chat.completions.create(model="priced", messages=MSGS)
    list(priced.chat.completions.create(model="priced", messages=MSGS, stream=True))

    client.chat.completions.create(model="qgpt", messages=MSGS, max_tokens=20, seed=1,
                                   extra_body={"quantum_profile": "medium"})
    r = httpx.post(stack.base_url + "/v1/classify", json={"prompts": PROMPTS}, headers=admin(stack), timeout=60)
    assert r.status_code == 200, r.text


@pytest.fixture(scope="module")
def scraped(stack: Stack, prometheus: Prometheus) -> Prometheus:
    # Two rounds a few scrapes apart. A series that is not primed is born with its first increment already in
    # it, which rate() and increase() cannot see; the second round is what the rate panels show.
    drive_traffic(stack)
    time.sleep(2.5 * SCRAPE_S)
    drive_traffic(stack)
    # the last scrape must have happened after the traffic: wait for a few more, and for the workers' heartbeat
    # (which refreshes the entropy-pool gauges every 2 s)
    time.sleep(SCRAPES_AFTER_TRAFFIC * SCRAPE_S)
    prometheus.wait_for("sum(gatehouse_classifier_prompts_total) > 0", 15, "the classifier count scraped")
    return prometheus


# series an operator turns on (metrics.tenant_labels), off in this stack: their queries need only parse
OPT_IN = {"gatehouse_queue_tenant_depth"}


def evaluate(prom: Prometheus, queries: list[tuple[str, str]]) -> list[str]:
    """The queries that fail to parse or return no data, each as one line."""
    problems = []
    for where, expr in queries:
        body = prom.query(expr)
        if body.get("status") != "success":
            problems.append(f"{where}: {body.get('errorType')}: {body.get('error')}\n    {expr}")
        elif not body["data"]["result"] and not metric_names(expr) & OPT_IN:
            problems.append(f"{where}: no data\n    {expr}")
    return problems


def test_every_dashboard_query_returns_data(scraped: Prometheus) -> None:
    queries = [(where, grafana_expand(expr)) for where, expr in dashboard_queries() + variable_queries()]
    assert len(queries) > 40
    problems = evaluate(scraped, queries)
    assert not problems, f"{len(problems)} of {len(queries)} dashboard queries failed:\n" + "\n".join(problems)


def test_every_metric_queried_is_exported(scraped: Prometheus) -> None:
    """Each metric name on its own, so that no `or vector(0)` fallback hides a series the gateway never sends."""
    exprs = [expr for _, expr in dashboard_queries() + variable_queries()]
    exprs += [split_alert(rule["expr"])[0] for rule in alert_rules()]
    names = sorted(set().union(*(metric_names(e) for e in exprs)))
    problems = evaluate(scraped, [(name, name) for name in names])
    assert not problems, "metrics never scraped:\n" + "\n".join(problems)


def test_every_alert_query_returns_data(scraped: Prometheus) -> None:
    queries = [(rule["alert"], split_alert(rule["expr"])[0]) for rule in alert_rules()]
    problems = evaluate(scraped, queries)
    assert not problems, f"{len(problems)} of {len(queries)} alert queries failed:\n" + "\n".join(problems)


def test_alert_rules_load_and_evaluate_without_errors(scraped: Prometheus) -> None:
    expected = {rule["alert"] for rule in alert_rules()}
    deadline = time.time() + 15
    while True:
        groups = scraped.get("/api/v1/rules")["data"]["groups"]
        rules = {r["name"]: r for g in groups for r in g["rules"]}
        evaluated = all(r.get("health") == "ok" for r in rules.values()) and set(rules) == expected
        if evaluated or time.time() > deadline:
            break
        time.sleep(0.5)
    assert set(rules) == expected
    broken = {name: (r.get("health"), r.get("lastError")) for name, r in rules.items()
              if r.get("health") != "ok" or r.get("lastError")}
    assert not broken, broken
    file_groups = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())["groups"]
    assert sorted(g["name"] for g in groups) == sorted(g["name"] for g in file_groups)


# panels whose value must be a positive number after the traffic (at least one series), not only "some data"
LIVELY_PANELS = [
    ("overview.json", "Requests / s"), ("overview.json", "5xx ratio"), ("overview.json", "p99 latency"),
    ("overview.json", "Error ratio"), ("overview.json", "Latency p50 / p95 / p99"),
    ("overview.json", "Requests by model"), ("overview.json", "Time to first token"),
    ("overview.json", "Time per output token"), ("overview.json", "Tokens billed / s"),
    ("overview.json", "Tokens per backend call (mean)"),
    ("queue-workers.json", "Live workers"), ("queue-workers.json", "Queue wait p50 / p99"),
    ("queue-workers.json", "Job outcomes"), ("queue-workers.json", "Job failure ratio"),
    ("queue-workers.json", "Backend errors"), ("queue-workers.json", "Backend retries"),
    ("tenants-spend.json", "Spend, last 24 h"), ("tenants-spend.json", "Tokens, last 24 h"),
    ("tenants-spend.json", "Rate-limited, last 1 h"), ("tenants-spend.json", "Auth failures, last 1 h"),
    ("tenants-spend.json", "Spend rate by model"), ("tenants-spend.json", "Rate-limit rejections"),
    ("tenants-spend.json", "Authentication failures by reason"),
    ("gpu-apps.json", "QRNG pool"), ("gpu-apps.json", "Classifier prompts / s"),
    ("gpu-apps.json", "Operation latency p99 by model"),
]


def test_panels_show_the_traffic(scraped: Prometheus) -> None:
    """The panels that should move with the traffic show a positive value (a mis-wired metric that is merely
    present, or a rate over a series that never changes, would read 0 or NaN)."""
    import math

    problems = []
    for board, title in LIVELY_PANELS:
        exprs = [expr for where, expr in dashboard_queries() if where.startswith(f"{board} / {title} / ")]
        assert exprs, f"{board}: no panel {title!r}"
        values = [float(r["value"][1]) for e in exprs for r in scraped.query(grafana_expand(e))["data"]["result"]]
        if not any(math.isfinite(v) and v > 0 for v in values):
            problems.append(f"{board} / {title}: {values}")
    assert not problems, "panels that do not show the traffic:\n" + "\n".join(problems)


def test_the_traffic_shows_up_in_the_right_series(scraped: Prometheus) -> None:
    """Spot checks that the traffic was counted where the dashboards look for it."""
    def value(expr: str) -> float:
        result = scraped.query(expr)["data"]["result"]
        assert result, f"no data for {expr}"
        return sum(float(r["value"][1]) for r in result)

    assert value('sum(gatehouse_http_requests_total{code=~"5.."})') >= 1
    assert value('sum(gatehouse_auth_failures_total{reason!="missing"})') >= 1
    assert value("sum(gatehouse_rate_limit_rejections_total)") >= 1
    assert value('sum(gatehouse_spend_usd_total{model="priced"})') > 0
    assert value("sum(gatehouse_backend_retries_total)") >= 1
    assert value("sum(gen_ai_server_time_per_output_token_seconds_count)") >= 1
    assert value('sum(gatehouse_jobs_total{outcome="ok"})') >= 5
    assert value("max(gatehouse_workers_live)") >= 1
