"""The deployment and observability files, checked without running them: docker-compose.yml (validated by
docker-compose itself), the Prometheus configs and alert rules (promtool), the Grafana provisioning and dashboards
(JSON model, data source, and every metric name they query against the catalogue in observability/metrics.py).

The helpers here (the catalogue's exported names, the queries of every dashboard and alert, how the Prometheus
binaries are obtained) are shared with tests/test_prometheus_live.py, which runs those queries for real.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROM_DIR = ROOT / "observability" / "prometheus"
GRAFANA_DIR = ROOT / "observability" / "grafana"
DASHBOARDS = sorted((GRAFANA_DIR / "dashboards").glob("*.json"))
COMPOSE_FILE = ROOT / "docker-compose.yml"
COMPOSE_CONFIG = ROOT / "observability" / "compose" / "gatehouse.compose.yaml"
CACHE = ROOT / ".gatehouse" / "cache" / "prometheus"  # ignored by git; reused across runs
DATASOURCE = {"type": "prometheus", "uid": "prometheus"}
SERVICES = ("redis", "postgres", "gateway", "worker", "prometheus", "grafana", "langfuse-web", "langfuse-worker",
            "clickhouse", "minio", "langfuse-redis")
SEVERITIES = {"critical", "warning", "info"}
# time series Prometheus makes itself (alerts may use them; dashboards stick to the catalogue)
PROMETHEUS_SERIES = {"up"}


# ── the metric catalogue ──────────────────────────────────────────────────────────────────────────────
def exported_names() -> set[str]:
    """Every sample name the gateway and workers can export: the registered metrics of observability/metrics.py
    with prometheus_client's suffixes, plus the gauges observability/queue_state.py renders at scrape time."""
    from prometheus_client.metrics import MetricWrapperBase

    from observability import metrics
    from observability.queue_state import QueueState, QueueStateCollector

    names: set[str] = set()
    for obj in vars(metrics).values():
        if not isinstance(obj, MetricWrapperBase):
            continue
        kind, name = obj._type, obj._name
        if kind == "counter":
            names.add(name + "_total")
        elif kind == "histogram":
            names.update(name + suffix for suffix in ("_bucket", "_sum", "_count"))
        else:
            names.add(name)
    state = QueueState(queued={"interactive": 0}, running={"interactive": 0})
    names.update(family.name for family in QueueStateCollector(state, tenant_labels=True).collect())
    return names


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENT = re.compile(r"(?<![\w.:$])([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, labels and durations left out)."""
    s = _STRING.sub('""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)  # label matchers
    s = re.sub(r"\[[^\]]*\]", " ", s)  # ranges and subqueries
    s = _GROUPING.sub(" ", s)
    s = re.sub(r"\$\{?\w+\}?", " ", s)  # template variables
    return {m for m in _IDENT.findall(s) if m.lower() not in _KEYWORDS}


# ── the queries of the dashboards and alerts ──────────────────────────────────────────────────────────
def load_dashboard(path: Path) -> dict:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def all_panels(board: dict) -> Iterator[dict]:
    for panel in board.get("panels", []):
        yield panel
        yield from panel.get("panels", [])  # collapsed rows carry their panels


def dashboard_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target of every dashboard, as written (template variables unexpanded)."""
    out = []
    for path in DASHBOARDS:
        for panel in all_panels(load_dashboard(path)):
            for target in panel.get("targets", []):
                out.append((f"{path.name} / {panel['title']} / {target['refId']}", target["expr"]))
    return out


_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<metric>[^,]+?)\s*,\s*(?P<label>\w+)\s*\)\s*$")


def variable_queries() -> list[tuple[str, str]]:
    """(where, PromQL) for every template variable: Grafana's label_values(metric, label) as the PromQL that
    lists the same label values."""
    out = []
    for path in DASHBOARDS:
        for var in load_dashboard(path).get("templating", {}).get("list", []):
            if var.get("type") != "query":
                continue
            definition = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
            m = _LABEL_VALUES.match(definition)
            assert m, f"{path.name}: variable {var['name']} is not label_values(metric, label): {definition}"
            out.append((f"{path.name} / ${var['name']}", f"count by ({m['label']}) ({m['metric']})"))
    return out


def dashboard_variables() -> set[str]:
    return {var["name"] for path in DASHBOARDS for var in load_dashboard(path).get("templating", {}).get("list", [])}


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((PROM_DIR / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"] if "alert" in rule]


_COMPARISON = re.compile(r"^(?P<query>.+?)\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<value>-?\d+(?:\.\d+)?(?:[eE]-?\d+)?)\s*$",
                         re.DOTALL)


def split_alert(expr: str) -> tuple[str, str, float]:
    """``<query> <comparison> <number>`` -> (query, comparison, number)."""
    m = _COMPARISON.match(expr.strip())
    assert m, f"alert expression is not '<query> <comparison> <number>': {expr}"
    query = m["query"].strip()
    assert query.count("(") == query.count(")"), f"the trailing comparison is not at the top level: {expr}"
    return query, m["op"], float(m["value"])


# ── tools: promtool / prometheus, docker-compose ──────────────────────────────────────────────────────
@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    directory.mkdir(parents=True, exist_ok=True)
    with (directory / ".lock").open("w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _run(argv: list[str], timeout: float, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=timeout,  # type: ignore[call-overload]
                          **kw)


def prometheus_tools() -> tuple[str, str]:
    """(prometheus, promtool): from PATH when both are there; else Debian's ``prometheus`` package, downloaded
    with ``apt-get download`` and unpacked with ``dpkg-deb -x`` under .gatehouse/cache/prometheus (never
    installed: no dpkg lock, no service started), and reused on later runs."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if found[0] and found[1]:
        return found[0], found[1]
    bin_dir = CACHE / "root" / "usr" / "bin"
    with _locked(CACHE):
        if not ((bin_dir / "prometheus").exists() and (bin_dir / "promtool").exists()):
            _unpack_debian_package("prometheus", CACHE)
    return str(bin_dir / "prometheus"), str(bin_dir / "promtool")


def _unpack_debian_package(package: str, dest: Path) -> None:
    if not (shutil.which("apt-get") and shutil.which("dpkg-deb")):
        pytest.skip(f"no {package} on PATH and no apt-get/dpkg-deb to fetch Debian's package")
    download = dest / "download"
    shutil.rmtree(download, ignore_errors=True)
    download.mkdir(parents=True)
    r = _run(["apt-get", "download", package], 300, cwd=download)
    if r.returncode != 0:  # a fresh machine may have no package lists yet
        _run(["apt-get", "update"], 300)
        r = _run(["apt-get", "download", package], 300, cwd=download)
    debs = sorted(download.glob(f"{package}_*.deb"))
    if r.returncode != 0 or not debs:
        pytest.skip(f"could not download Debian's {package} package: {(r.stderr or r.stdout).strip()[-400:]}")
    staging = dest / "root.partial"
    shutil.rmtree(staging, ignore_errors=True)
    r = _run(["dpkg-deb", "-x", str(debs[-1]), str(staging)], 300)
    if r.returncode != 0:
        pytest.skip(f"could not unpack {debs[-1].name}: {r.stderr.strip()[-400:]}")
    shutil.rmtree(dest / "root", ignore_errors=True)
    staging.rename(dest / "root")
    shutil.rmtree(download, ignore_errors=True)


@pytest.fixture(scope="session")
def promtool() -> str:
    return prometheus_tools()[1]


@pytest.fixture(scope="session")
def docker_compose() -> str:
    """docker-compose, installed from Debian (apt-get install) on a machine that lacks it. It only validates
    the file here: no Docker engine is needed."""
    exe = shutil.which("docker-compose")
    if exe:
        return exe
    if not shutil.which("apt-get"):
        pytest.skip("docker-compose is not installed and there is no apt-get to install it")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", "docker-compose"]
    r = _run(install, 600, env=env)
    if r.returncode != 0:
        _run(["apt-get", "update"], 300, env=env)
        r = _run(install, 600, env=env)
    exe = shutil.which("docker-compose")
    if r.returncode != 0 or not exe:
        pytest.skip(f"could not install docker-compose: {(r.stderr or r.stdout).strip()[-400:]}")
    return exe


def compose_env() -> dict[str, str]:
    return {**os.environ, "GATEHOUSE_MASTER_KEY": "sk-gh-compose-check-0123456789"}


# ── docker-compose.yml ────────────────────────────────────────────────────────────────────────────────
def test_compose_file_is_valid(docker_compose: str) -> None:
    r = _run([docker_compose, "-f", str(COMPOSE_FILE), "config", "-q"], 120, env=compose_env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_compose_runs_the_whole_stack_with_health_checks(docker_compose: str) -> None:
    r = _run([docker_compose, "-f", str(COMPOSE_FILE), "config"], 120, env=compose_env(), cwd=ROOT)
    assert r.returncode == 0, r.stderr
    services = yaml.safe_load(r.stdout)["services"]
    assert set(SERVICES) <= set(services), f"missing services: {set(SERVICES) - set(services)}"
    for name in SERVICES:
        check = services[name].get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} has no health check"

    assert "--appendonly" in services["redis"]["command"] and "yes" in services["redis"]["command"]
    assert services["worker"]["deploy"]["replicas"] >= 1
    for name in ("gateway", "worker"):
        env = services[name]["environment"]
        assert env["GATEHOUSE_CONFIG"] == "/config/gatehouse.yaml"
        assert env["LANGFUSE_BASE_URL"] == "http://langfuse-web:3000"
        assert env["LANGFUSE_PUBLIC_KEY"] and env["LANGFUSE_SECRET_KEY"]
        assert any(str(v).endswith("gatehouse.compose.yaml:/config/gatehouse.yaml:ro")
                   or (isinstance(v, dict) and str(v.get("source", "")).endswith("gatehouse.compose.yaml"))
                   for v in services[name]["volumes"])
    web = services["langfuse-web"]["environment"]
    assert web["LANGFUSE_INIT_PROJECT_PUBLIC_KEY"] == services["gateway"]["environment"]["LANGFUSE_PUBLIC_KEY"]
    assert web["LANGFUSE_INIT_PROJECT_SECRET_KEY"] == services["gateway"]["environment"]["LANGFUSE_SECRET_KEY"]
    for name in ("langfuse-web", "langfuse-worker"):
        env = services[name]["environment"]
        for var in ("DATABASE_URL", "CLICKHOUSE_URL", "CLICKHOUSE_MIGRATION_URL", "REDIS_HOST", "SALT",
                    "ENCRYPTION_KEY", "LANGFUSE_S3_EVENT_UPLOAD_BUCKET", "LANGFUSE_S3_EVENT_UPLOAD_ENDPOINT"):
            assert env.get(var), f"{name} lacks {var}"
        assert env["DATABASE_URL"].endswith("/langfuse")  # its own database, made by postgres-init.sql
        assert len(env["ENCRYPTION_KEY"]) == 64
    assert "NEXTAUTH_SECRET" in web and "NEXTAUTH_URL" in web
    # the Python SDK pinned in pyproject.toml (langfuse>=5) exports OTLP that needs a Langfuse v4 server (>= 4.59)
    assert '"langfuse>=5' in (ROOT / "pyproject.toml").read_text()
    for name in ("langfuse-web", "langfuse-worker"):
        assert services[name]["image"].rsplit(":", 1)[1].split(".")[0] == "4", services[name]["image"]
    mounts = " ".join(str(v) for s in ("prometheus", "grafana", "postgres") for v in services[s]["volumes"])
    for path in ("observability/prometheus", "observability/grafana/provisioning", "observability/grafana/dashboards",
                 "observability/compose/postgres-init.sql"):
        assert str(ROOT / path) in mounts, f"{path} is not mounted"
    assert "CREATE DATABASE langfuse" in (ROOT / "observability/compose/postgres-init.sql").read_text()


def test_compose_config_sets_the_worker_metrics_port() -> None:
    from core.config import load_config

    cfg = load_config(COMPOSE_CONFIG)  # validated by the real settings model
    scrape = yaml.safe_load((PROM_DIR / "prometheus.yml").read_text())["scrape_configs"]
    worker = next(job for job in scrape if job["job_name"] == "worker")
    assert worker["dns_sd_configs"] == [{"names": ["worker"], "type": "A", "port": cfg.settings.metrics.worker_port,
                                         "refresh_interval": "15s"}]
    assert cfg.settings.metrics.worker_port == 9101 and cfg.settings.metrics.enabled


# ── Prometheus ────────────────────────────────────────────────────────────────────────────────────────
def test_promtool_accepts_the_rules_and_both_configs(promtool: str) -> None:
    r = _run([promtool, "check", "rules", str(PROM_DIR / "alerts.yml")], 60)
    assert r.returncode == 0, r.stdout + r.stderr
    for config in ("prometheus.yml", "prometheus-embedded.yml"):
        r = _run([promtool, "check", "config", str(PROM_DIR / config)], 60)
        assert r.returncode == 0, r.stdout + r.stderr


def test_alert_rules_are_complete_and_use_catalogue_metrics() -> None:
    known = exported_names() | PROMETHEUS_SERIES
    rules = alert_rules()
    names = [rule["alert"] for rule in rules]
    assert len(names) == len(set(names))
    for expected in ("GatehouseQueueBacklogGrowing", "GatehouseNoLiveWorkers", "GatehouseHighErrorRatio",
                     "GatehouseHighLatencyP99", "GatehouseQrngFallbackActive", "GatehouseTracingDroppingSpans",
                     "GatehouseRedisUnreachable"):
        assert expected in names
    for rule in rules:
        assert rule.get("for"), f"{rule['alert']}: no 'for'"
        assert rule.get("labels", {}).get("severity") in SEVERITIES, rule["alert"]
        assert rule.get("annotations", {}).get("summary") and rule["annotations"].get("description"), rule["alert"]
        query, _, _ = split_alert(rule["expr"])
        used = metric_names(query)
        assert used, f"{rule['alert']}: no metric found in {query}"
        assert used <= known, f"{rule['alert']} uses unknown metrics {used - known}"
    backlog = next(r for r in rules if r["alert"] == "GatehouseQueueBacklogGrowing")
    assert "deriv(" in backlog["expr"] or "delta(" in backlog["expr"]


def test_metric_name_parsing() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, route) (rate(gatehouse_http_request_duration_seconds_bucket'
            '{route!~"/metrics|/health.*"}[$__rate_interval]))) / on (lane) group_left max(gatehouse_queue_depth)'
            ' > bool 0 or vector(0)')
    assert metric_names(expr) == {"gatehouse_http_request_duration_seconds_bucket", "gatehouse_queue_depth"}
    assert split_alert("a * (b > bool 0) > 100") == ("a * (b > bool 0)", ">", 100.0)
    assert split_alert("x >= 0.05") == ("x", ">=", 0.05)


# ── Grafana ───────────────────────────────────────────────────────────────────────────────────────────
def test_grafana_provisioning() -> None:
    ds = yaml.safe_load((GRAFANA_DIR / "provisioning" / "datasources" / "prometheus.yml").read_text())
    (source,) = ds["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    boards = yaml.safe_load((GRAFANA_DIR / "provisioning" / "dashboards" / "gatehouse.yml").read_text())
    (provider,) = boards["providers"]
    assert provider["type"] == "file" and provider["options"]["path"] == "/var/lib/grafana/dashboards"


def test_dashboards_are_valid_grafana_json() -> None:
    assert {p.name for p in DASHBOARDS} == {"overview.json", "queue-workers.json", "tenants-spend.json",
                                             "gpu-apps.json"}
    uids = set()
    for path in DASHBOARDS:
        board = load_dashboard(path)
        assert board["uid"] not in uids
        uids.add(board["uid"])
        assert board["title"] and 36 <= board["schemaVersion"] <= 41
        panels = list(all_panels(board))
        ids = [p["id"] for p in panels]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in panels:
            pos = panel["gridPos"]
            assert {"h", "w", "x", "y"} <= set(pos) and pos["x"] + pos["w"] <= 24, (path.name, panel["title"])
            if panel["type"] == "row":
                continue
            assert panel["type"] in {"timeseries", "stat", "bargauge", "table", "gauge"}
            assert panel["datasource"] == DATASOURCE, (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
            ref_ids = [t["refId"] for t in panel["targets"]]
            assert len(ref_ids) == len(set(ref_ids))
            for target in panel["targets"]:
                assert target["datasource"] == DATASOURCE and target["expr"].strip()
        for var in board["templating"]["list"]:
            assert var["datasource"] == DATASOURCE
            assert var.get("allValue") == ".*" or not var.get("includeAll")


def test_dashboards_query_only_catalogue_metrics() -> None:
    known = exported_names()
    variables = dashboard_variables()
    for where, expr in dashboard_queries() + variable_queries():
        used = metric_names(expr)
        assert used, f"{where}: no metric in {expr}"
        assert used <= known, f"{where} uses unknown metrics {used - known}"
        for var in re.findall(r"\$(\w+)", expr):
            assert var in variables or var.startswith("__"), f"{where}: undefined variable ${var}"


def test_dashboards_cover_the_issue() -> None:
    """Each dashboard shows what it is for (a check on the metrics each one uses)."""
    wanted = {
        "overview.json": {"gatehouse_http_requests_total", "gatehouse_http_request_duration_seconds_bucket",
                          "gen_ai_server_time_to_first_token_seconds_bucket",
                          "gen_ai_server_time_per_output_token_seconds_bucket", "gatehouse_tokens_total"},
        "queue-workers.json": {"gatehouse_queue_depth", "gatehouse_inflight_jobs",
                               "gatehouse_queue_wait_seconds_bucket",
                               "gatehouse_workers_live", "gatehouse_worker_heartbeat_age_seconds",
                               "gatehouse_jobs_total", "gatehouse_backend_errors_total",
                               "gatehouse_backend_retries_total", "gatehouse_batch_lines_total",
                               "gatehouse_queue_tenants", "gatehouse_queue_tenant_depth"},
        "tenants-spend.json": {"gatehouse_spend_usd_total", "gatehouse_tokens_total",
                               "gatehouse_rate_limit_rejections_total", "gatehouse_auth_failures_total"},
        "gpu-apps.json": {"gatehouse_modal_cold_starts_total", "gen_ai_client_operation_duration_seconds_bucket",
                          "gatehouse_qrng_pool_bytes", "gatehouse_qrng_fallback_active",
                          "gatehouse_classifier_prompts_total"},
    }
    for name, metrics_wanted in wanted.items():
        used: set[str] = set()
        for where, expr in dashboard_queries():
            if where.startswith(name):
                used |= metric_names(expr)
        assert metrics_wanted <= used, f"{name} lacks {metrics_wanted - used}"
    rate_exprs = [expr for _, expr in dashboard_queries() if "rate(" in expr or "increase(" in expr]
    assert all("$__rate_interval" in e or re.search(r"\[\d+[hd]\]", e) for e in rate_exprs)
