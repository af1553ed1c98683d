"""deploy/kubernetes (ADR 0022), checked without a cluster.

`kubectl kustomize` renders the base and the dev and prod overlays. Every object then validates against
Kubernetes' own schemas (the kubernetes-validate package, strict: an unknown field fails) for 1.30 and for the
newest version the package knows; KEDA's ScaledObject and prometheus-operator's ServiceMonitor, which those
schemas do not cover, validate against deploy/kubernetes/schemas/ (written from their documentation). Then what
matters for Gatehouse:

- each Deployment runs a real `gatehouse` subcommand (parsed by the CLI's own typer app), the one
  docker-compose.yml runs;
- the gateway's probes: liveness /health/live; readiness /health/ready?workers=optional, which leaves the worker
  check out (tests/test_queue_path.py checks the route), so that workers scaled to zero never take the gateway
  out of its Service;
- shutdown: the gateway has a preStop and a grace period above preStop + shutdown_grace_s + the relays' finish +
  uvicorn's own shutdown (ADR 0015); the workers' grace covers their drain, trace flush and hand-back;
- no Secret is rendered, the ConfigMap holds no secret value, and every secret the pods or the config reference
  is a key of deploy/kubernetes/secret.example.yaml;
- the Ingress does not buffer (SSE), and its body size and timeouts exceed files_max_bytes and request_timeout_s;
- the ScaledObject scales the worker Deployment on metrics the gateway exports (names and labels taken from
  observability/queue_state.py), in its own namespace; prod never scales workers to zero;
- PodDisruptionBudgets, Services, ServiceMonitors, the HPA and the Ingress select or name things that exist;
- the Grafana dashboards component ships byte-identical copies of observability/grafana/dashboards;
- the migration Job's program runs against a real PostgreSQL (twice: the second run applies nothing).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy" / "kubernetes"
TARGETS = {"base": K8S / "base", "dev": K8S / "overlays" / "dev", "prod": K8S / "overlays" / "prod"}
SCHEMAS = {("keda.sh/v1alpha1", "ScaledObject"): K8S / "schemas" / "scaledobject-keda-v1alpha1.json",
           ("monitoring.coreos.com/v1", "ServiceMonitor"): K8S / "schemas" / "servicemonitor-monitoring-v1.json"}
SECRET_TEMPLATE = K8S / "secret.example.yaml"
DASHBOARDS_SRC = ROOT / "observability" / "grafana" / "dashboards"
DASHBOARDS_COPY = K8S / "components" / "grafana-dashboards" / "dashboards"
CONFIG_KEY = "gatehouse.yaml"
IMAGE_REPO = "ghcr.io/gatehouse/gatehouse"
KUBECTL = shutil.which("kubectl")
NO_KUBECTL = "kubectl not found: install Debian's `kubectl` package (apt-get install kubectl; .ci/run does)"
SECRET_WORDS = {"key", "secret", "token", "password", "passwd", "credential", "credentials"}
PROMQL_WORDS = {"sum", "max", "min", "avg", "count", "by", "without", "or", "and", "unless", "on", "ignoring",
                "vector", "scalar", "clamp_min", "clamp_max", "ceil", "floor", "round"}

Doc = dict[str, Any]


# ── rendering ─────────────────────────────────────────────────────────────────────────────────────────
@pytest.fixture(scope="module")
def rendered() -> dict[str, list[Doc]]:
    if KUBECTL is None:
        pytest.skip(NO_KUBECTL)
    version = subprocess.run([KUBECTL, "version", "--client", "-o", "json"], capture_output=True, text=True,
                             timeout=30, check=False)
    kustomize = json.loads(version.stdout or "{}").get("kustomizeVersion", "") if version.returncode == 0 else ""
    if not re.match(r"v([5-9]|\d{2,})\.", kustomize):
        pytest.skip(f"{KUBECTL} bundles kustomize {kustomize or '(unknown)'}; the manifests need kustomize >= v5 "
                    "(kubectl >= 1.27)")
    out = {}
    for name, path in TARGETS.items():
        r = subprocess.run([KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60,
                           check=False)
        assert r.returncode == 0, f"kubectl kustomize {path.relative_to(ROOT)} failed:\n{r.stderr}"
        out[name] = [d for d in yaml.safe_load_all(r.stdout) if d]
    return out


def of_kind(docs: list[Doc], kind: str) -> list[Doc]:
    return [d for d in docs if d["kind"] == kind]


def one(docs: list[Doc], kind: str, name: str) -> Doc:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def containers(deployment: Doc) -> list[Doc]:
    return deployment["spec"]["template"]["spec"]["containers"]  # type: ignore[no-any-return]


def deployment_running(docs: list[Doc], subcommand: str) -> Doc:
    found = [d for d in of_kind(docs, "Deployment") if containers(d)[0]["command"][:2] == ["gatehouse", subcommand]]
    assert len(found) == 1, f"expected one Deployment running `gatehouse {subcommand}`, found {len(found)}"
    return found[0]


def gatehouse_config(docs: list[Doc]) -> dict[str, Any]:
    maps = [d for d in of_kind(docs, "ConfigMap") if CONFIG_KEY in d.get("data", {})]
    assert len(maps) == 1, f"expected one ConfigMap with {CONFIG_KEY}, found {len(maps)}"
    return yaml.safe_load(maps[0]["data"][CONFIG_KEY])  # type: ignore[no-any-return]


def setting(docs: list[Doc], name: str) -> Any:
    """A gatehouse: setting as the pods see it: the ConfigMap's value, else the default."""
    from core.config import GatehouseSettings

    section = gatehouse_config(docs).get("gatehouse") or {}
    return section[name] if name in section else GatehouseSettings.model_fields[name].default


def env_value(container: Doc, name: str) -> Any:
    return next((e.get("value") for e in container.get("env", []) if e["name"] == name), None)


def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


# ── schemas ───────────────────────────────────────────────────────────────────────────────────────────
def test_every_object_validates_against_its_schema(rendered: dict[str, list[Doc]]) -> None:
    kv = pytest.importorskip("kubernetes_validate", reason="kubernetes-validate is in the dev extra: "
                             "pip install -e '.[dev]'")
    versions = ("1.30", kv.latest_version())
    crd_schemas = {key: json.loads(path.read_text()) for key, path in SCHEMAS.items()}
    for schema in crd_schemas.values():
        jsonschema.Draft202012Validator.check_schema(schema)
    errors = []
    for target, docs in rendered.items():
        for doc in docs:
            where = f"{target}: {doc['kind']}/{doc['metadata']['name']}"
            crd = crd_schemas.get((doc["apiVersion"], doc["kind"]))
            if crd is not None:
                errors += [f"{where}: {'.'.join(map(str, e.path))}: {e.message}"
                           for e in jsonschema.Draft202012Validator(crd).iter_errors(doc)]
                continue
            for version in versions:
                try:
                    kv.validate(doc, version, strict=True)
                except kv.ValidationError as e:
                    errors.append(f"{where} (Kubernetes {version}): {'.'.join(map(str, e.path))}: {e.message}")
                except kv.SchemaNotFoundError as e:
                    errors.append(f"{where}: {e.message} (a CRD needs a schema in deploy/kubernetes/schemas)")
    assert not errors, "\n".join(errors)


def test_crd_schemas_reject_what_they_should() -> None:
    """The hand-written CRD schemas are strict: a misspelt field, a number where KEDA wants a string, or a
    Prometheus trigger without its query fails."""
    scaled = yaml.safe_load((TARGETS["base"] / "worker-scaledobject.yaml").read_text())
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMAS["keda.sh/v1alpha1", "ScaledObject"].read_text()))
    assert not list(validator.iter_errors(scaled))
    for mutate in (lambda s: s["spec"].update(minReplicas=1),
                   lambda s: s["spec"]["triggers"][0]["metadata"].update(threshold=128),
                   lambda s: s["spec"]["triggers"][0]["metadata"].pop("query")):
        bad = json.loads(json.dumps(scaled))
        mutate(bad)
        assert list(validator.iter_errors(bad)), bad
    monitor = yaml.safe_load_all((K8S / "components" / "monitoring" / "servicemonitors.yaml").read_text())
    validator = jsonschema.Draft202012Validator(json.loads(
        SCHEMAS["monitoring.coreos.com/v1", "ServiceMonitor"].read_text()))
    first = next(iter(monitor))
    assert not list(validator.iter_errors(first))
    first["spec"]["endpoints"][0]["intervall"] = "15s"
    assert list(validator.iter_errors(first))


# ── what each pod runs ────────────────────────────────────────────────────────────────────────────────
def test_deployments_run_real_gatehouse_subcommands(rendered: dict[str, list[Doc]]) -> None:
    import typer

    from cli.main import app

    group = typer.main.get_command(app)
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for target, docs in rendered.items():
        deployments = of_kind(docs, "Deployment")
        assert len(deployments) == 2, target
        for dep in deployments:
            for c in containers(dep):
                command = c["command"]
                assert command[0] == "gatehouse", (target, command)
                assert command[1] in group.commands, f"`gatehouse {command[1]}` is not a subcommand ({target})"
                sub = group.commands[command[1]]  # type: ignore[attr-defined]
                sub.make_context(f"gatehouse {command[1]}", list(command[2:]))  # raises on an unknown option
                assert c["image"].rpartition(":")[0] == IMAGE_REPO and not c["image"].endswith(":latest"), c["image"]
                for bound in ("requests", "limits"):
                    assert {"cpu", "memory"} <= c["resources"][bound].keys(), (target, c["name"], bound)
        assert containers(deployment_running(docs, "serve"))[0]["command"] == compose["gateway"]["command"]
        assert containers(deployment_running(docs, "worker"))[0]["command"] == compose["worker"]["command"]


def test_gateway_probes_and_ports(rendered: dict[str, list[Doc]]) -> None:
    base_ready = None
    for target, docs in rendered.items():
        gw = containers(deployment_running(docs, "serve"))[0]
        port = next(p["containerPort"] for p in gw["ports"] if p["name"] == "http")
        assert env_value(gw, "GATEHOUSE_PORT") == str(port), "the gateway listens where its probes and Service look"
        assert gw["livenessProbe"]["httpGet"] == {"path": "/health/live", "port": "http"}
        assert gw["startupProbe"]["httpGet"]["path"] == "/health/live"
        ready = gw["readinessProbe"]
        # ready without a worker (scaled to zero: jobs wait); test_readiness_can_leave_workers_out checks the route
        assert ready["httpGet"] == {"path": "/health/ready?workers=optional", "port": "http"}
        assert ready["timeoutSeconds"] >= 5  # the route bounds each check to 2 s
        base_ready = base_ready or ready
        assert ready == base_ready, f"{target} changed the readiness probe"
        worker = containers(deployment_running(docs, "worker"))[0]
        metrics_port = next(p["containerPort"] for p in worker["ports"] if p["name"] == "metrics")
        assert metrics_port == setting(docs, "metrics")["worker_port"], "the worker serves /metrics on worker_port"
        assert worker["livenessProbe"]["httpGet"] == {"path": "/metrics", "port": "metrics"}


def test_shutdown_order_fits_the_grace_periods(rendered: dict[str, list[Doc]]) -> None:
    from core.settings import TracingSettings
    from gateway.draining import FINISH_S

    uvicorn_shutdown_s = int(FINISH_S) + 1  # cli.main.serve: timeout_graceful_shutdown
    for target, docs in rendered.items():
        drain_s = float(setting(docs, "shutdown_grace_s"))
        gw_pod = deployment_running(docs, "serve")["spec"]["template"]["spec"]
        pre_stop = gw_pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"]
        assert pre_stop[0] == "sleep", pre_stop
        sleep_s = float(pre_stop[1])
        assert sleep_s >= 3, "endpoints and ingress-nginx need a few seconds to drop the pod"
        needed = sleep_s + drain_s + FINISH_S + uvicorn_shutdown_s
        assert gw_pod["terminationGracePeriodSeconds"] > needed, (target, needed)
        assert gw_pod["terminationGracePeriodSeconds"] > drain_s + 5  # ADR 0015's rule
        worker_pod = deployment_running(docs, "worker")["spec"]["template"]["spec"]
        tracing = gatehouse_config(docs).get("gatehouse", {}).get("tracing", {})
        flush_s = tracing.get("shutdown_timeout_s", TracingSettings.model_fields["shutdown_timeout_s"].default)
        hand_back_s = 5  # workers/assemble.py: on_shutdown waits at most 5 s for hand_back
        assert worker_pod["terminationGracePeriodSeconds"] > drain_s + flush_s + hand_back_s, target


# ── configuration and secrets ─────────────────────────────────────────────────────────────────────────
def _secret_like(name: str) -> bool:
    return bool(SECRET_WORDS & set(re.split(r"[^a-z0-9]+", name.lower())))


def _walk(value: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    if isinstance(value, dict):
        for k, v in value.items():
            yield path + "." + str(k), str(k), v
            yield from _walk(v, path + "." + str(k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _walk(v, f"{path}[{i}]")


def test_no_secret_in_the_configmap_or_the_rendering(rendered: dict[str, list[Doc]]) -> None:
    for target, docs in rendered.items():
        assert not of_kind(docs, "Secret"), f"{target} renders a Secret: secrets are created by hand"
        for cm in of_kind(docs, "ConfigMap"):
            for key in cm.get("data", {}):
                assert not _secret_like(key), f"{target}: ConfigMap {cm['metadata']['name']} has a key {key}"
        for path, key, value in _walk(gatehouse_config(docs)):
            if _secret_like(key) and value not in (None, ""):
                assert isinstance(value, str) and value.startswith("os.environ/"), \
                    f"{target}: {path} holds a value; reference the Secret instead (os.environ/NAME)"
            if isinstance(value, str):
                assert not re.search(r"://[^/@\s]+:[^/@\s]+@", value), f"{target}: {path} has credentials in a URL"


def test_secret_template_covers_every_reference(rendered: dict[str, list[Doc]]) -> None:
    secret = yaml.safe_load(SECRET_TEMPLATE.read_text())
    kv = pytest.importorskip("kubernetes_validate")
    kv.validate(secret, "1.30", strict=True)
    keys = set(secret["stringData"])
    assert {"GATEHOUSE_MASTER_KEY", "REDIS_URL", "DATABASE_URL", "GATEHOUSE_JWT_SECRET", "MODAL_TOKEN_ID",
            "MODAL_TOKEN_SECRET"} <= keys
    for target, docs in rendered.items():
        pods = [d["spec"]["template"]["spec"] for d in of_kind(docs, "Deployment")]
        pods += [j["spec"]["template"]["spec"] for j in of_kind(docs, "Job")]
        for pod in pods:
            for c in pod["containers"]:
                for e in c.get("env", []):
                    ref = e.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        assert ref["name"] == secret["metadata"]["name"] and ref["key"] in keys, (target, ref)
                for src in c.get("envFrom", []):
                    assert src["secretRef"]["name"] == secret["metadata"]["name"], (target, src)
        for path, _key, value in _walk(gatehouse_config(docs)):
            if isinstance(value, str) and value.startswith("os.environ/"):
                assert value.removeprefix("os.environ/") in keys, f"{target}: {path} names a key the Secret lacks"


def test_config_map_is_a_valid_gatehouse_config(rendered: dict[str, list[Doc]], tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    from core.config import load_config

    for name in list(os.environ):
        if name.startswith(("GATEHOUSE_", "LANGFUSE_")) or name in ("REDIS_URL", "DATABASE_URL"):
            monkeypatch.delenv(name)
    for target, docs in rendered.items():
        path = tmp_path / f"{target}.yaml"
        path.write_text(yaml.safe_dump(gatehouse_config(docs)))
        cfg = load_config(path)
        assert cfg.settings.host == "0.0.0.0", "the gateway must listen on the pod's address"
        assert cfg.settings.metrics.enabled, "KEDA scales on the gateway's /metrics"
        assert str(cfg.settings.data_dir).startswith("/home/gatehouse"), "data_dir is the writable home volume"


# ── traffic ───────────────────────────────────────────────────────────────────────────────────────────
def _nginx_bytes(size: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmMgG]?)", size).groups()  # type: ignore[union-attr]
    return int(number) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[unit.lower()]


def test_ingress_streams_and_fits_the_limits(rendered: dict[str, list[Doc]]) -> None:
    for docs in rendered.values():
        services = {s["metadata"]["name"]: s for s in of_kind(docs, "Service")}
        ingress = one(docs, "Ingress", "gatehouse")
        notes = ingress["metadata"]["annotations"]
        prefix = "nginx.ingress.kubernetes.io/"
        assert notes[prefix + "proxy-buffering"] == "off", "SSE must not be buffered"
        assert notes[prefix + "proxy-request-buffering"] == "off"
        assert _nginx_bytes(notes[prefix + "proxy-body-size"]) > setting(docs, "files_max_bytes")
        for timeout in ("proxy-read-timeout", "proxy-send-timeout"):
            assert int(notes[prefix + timeout]) > setting(docs, "request_timeout_s"), timeout
        assert ingress["spec"]["ingressClassName"] == "nginx"
        for ing in of_kind(docs, "Ingress"):
            for rule in ing["spec"]["rules"]:
                for p in rule["http"]["paths"]:
                    svc = services[p["backend"]["service"]["name"]]
                    assert p["backend"]["service"]["port"]["name"] in {x["name"] for x in svc["spec"]["ports"]}
        internal = one(docs, "Ingress", "gatehouse-metrics-internal")
        assert internal["spec"]["rules"][0]["host"] == ingress["spec"]["rules"][0]["host"]
        assert internal["spec"]["rules"][0]["http"]["paths"][0]["path"] == "/metrics"


def test_selectors_find_their_pods_and_ports(rendered: dict[str, list[Doc]]) -> None:
    for target, docs in rendered.items():
        pods = [(d["spec"]["template"]["metadata"]["labels"], d) for d in of_kind(docs, "Deployment")]
        for pdb in of_kind(docs, "PodDisruptionBudget"):
            matched = [d for labels, d in pods if selects(pdb["spec"]["selector"]["matchLabels"], labels)]
            assert len(matched) == 1, f"{target}: PDB {pdb['metadata']['name']} selects {len(matched)} Deployments"
        services = of_kind(docs, "Service")
        for svc in services:
            matched = [d for labels, d in pods if selects(svc["spec"]["selector"], labels)]
            assert len(matched) == 1, f"{target}: Service {svc['metadata']['name']}"
            names = {p["name"] for c in containers(matched[0]) for p in c.get("ports", [])}
            assert {p["targetPort"] for p in svc["spec"]["ports"]} <= names, svc["metadata"]["name"]
        for mon in of_kind(docs, "ServiceMonitor"):
            matched = [s for s in services if selects(mon["spec"]["selector"]["matchLabels"], s["metadata"]["labels"])]
            assert len(matched) == 1, f"{target}: ServiceMonitor {mon['metadata']['name']}"
            assert {e["port"] for e in mon["spec"]["endpoints"]} <= {p["name"] for p in matched[0]["spec"]["ports"]}
        for dep in of_kind(docs, "Deployment"):  # their replica count belongs to the HPA / KEDA
            assert "replicas" not in dep["spec"], f"{target}: {dep['metadata']['name']} sets replicas"
        hpa = one(docs, "HorizontalPodAutoscaler", "gatehouse-gateway")
        assert hpa["spec"]["scaleTargetRef"]["name"] == deployment_running(docs, "serve")["metadata"]["name"]
        gw_pdb = next(p for p in of_kind(docs, "PodDisruptionBudget")
                      if selects(p["spec"]["selector"]["matchLabels"],
                                 deployment_running(docs, "serve")["spec"]["template"]["metadata"]["labels"]))
        if target == "prod":  # a drain always leaves a gateway serving
            assert hpa["spec"]["minReplicas"] - gw_pdb["spec"]["maxUnavailable"] >= 1


# ── autoscaling ───────────────────────────────────────────────────────────────────────────────────────
def exported_queue_metrics() -> dict[str, set[str]]:
    """The gauges the gateway's /metrics exports from observability/queue_state.py: name -> label names."""
    from observability.queue_state import QueueState, QueueStateCollector

    state = QueueState(queued={"interactive": 3, "batch": 1}, running={"interactive": 1}, workers_live=1,
                       runner_work={"batch": 1, "benchmark": 0})
    return {family.name: {k for s in family.samples for k in s.labels}
            for family in QueueStateCollector(state, tenant_labels=True).collect()}


def promql_metrics(query: str) -> tuple[set[str], set[str]]:
    """(metric names, grouping labels) of a PromQL expression made of aggregations and selectors."""
    labels = {x.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", query) for x in group.split(",")}
    bare = re.sub(r"\{[^}]*\}", " ", re.sub(r'"[^"]*"', '""', query))
    bare = re.sub(r"\b(?:by|without)\s*\([^)]*\)", " ", bare)
    names = {w for w in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare) if w not in PROMQL_WORDS}
    return names, labels - {""}


def test_workers_scale_on_the_queue_metrics_the_gateway_exports(rendered: dict[str, list[Doc]]) -> None:
    exported = exported_queue_metrics()
    assert {"gatehouse_queue_depth", "gatehouse_inflight_jobs"} <= exported.keys()
    concurrency = None
    for target, docs in rendered.items():
        concurrency = setting(docs, "worker_concurrency")
        scaled = one(docs, "ScaledObject", "gatehouse-worker")
        worker = deployment_running(docs, "worker")
        ref = scaled["spec"]["scaleTargetRef"]
        assert ref.get("kind", "Deployment") == "Deployment" and ref.get("apiVersion", "apps/v1") == "apps/v1"
        assert ref["name"] == worker["metadata"]["name"], f"{target}: the ScaledObject scales something else"
        assert not [h for h in of_kind(docs, "HorizontalPodAutoscaler")
                    if h["spec"]["scaleTargetRef"]["name"] == worker["metadata"]["name"]], "KEDA makes that HPA"
        (trigger,) = scaled["spec"]["triggers"]
        assert trigger["type"] == "prometheus"
        meta = trigger["metadata"]
        assert query_balanced(meta["query"]), meta["query"]
        names, labels = promql_metrics(meta["query"])
        assert {"gatehouse_queue_depth", "gatehouse_inflight_jobs", "gatehouse_runner_work"} <= names, meta["query"]
        assert names <= exported.keys(), f"{target}: the query names {names - exported.keys()}, not exported"
        for grouping, name in re.findall(r"\bby\s*\(([^)]*)\)\s*\((\w+)", meta["query"]):
            wanted = {x.strip() for x in grouping.split(",")} - {""}
            assert wanted <= exported[name], f"{target}: {name} has no label {wanted - exported[name]}"
        assert labels == {"lane", "kind"}, labels
        namespace = scaled["metadata"].get("namespace")
        if namespace:  # an overlay: only its own gateway's numbers
            assert meta["query"].count(f'namespace="{namespace}"') == len(re.findall(r"gatehouse_\w+", meta["query"]))
        assert 0 < float(meta["threshold"]) < concurrency, "jobs per worker, below a worker's concurrency"
        assert float(meta.get("activationThreshold", "0")) == 0, "a single waiting job must wake a worker"
        spec = scaled["spec"]
        assert spec.get("minReplicaCount", 0) <= spec.get("maxReplicaCount", 100)
        if target == "prod":
            assert spec["minReplicaCount"] >= 1, "prod never scales its workers to zero"
        if target == "dev":
            assert spec["minReplicaCount"] == 0, "dev is the overlay that scales workers to zero"
            assert spec["cooldownPeriod"] >= 60


def query_balanced(query: str) -> bool:
    depth = 0
    for ch in query:
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if depth < 0:
            return False
    return depth == 0 and query.count("{") == query.count("}")


# ── dashboards ────────────────────────────────────────────────────────────────────────────────────────
def test_dashboard_copies_are_identical() -> None:
    src = {p.name: p.read_bytes() for p in DASHBOARDS_SRC.glob("*.json")}
    copy = {p.name: p.read_bytes() for p in DASHBOARDS_COPY.glob("*.json")}
    assert src, "no dashboards in observability/grafana/dashboards"
    stale = sorted(n for n in src.keys() | copy.keys() if src.get(n) != copy.get(n))
    assert not stale, f"{stale} differ from observability/grafana/dashboards: run deploy/kubernetes/sync-dashboards.sh"


def test_dashboards_ship_as_labelled_configmaps(rendered: dict[str, list[Doc]]) -> None:
    maps = [m for m in of_kind(rendered["prod"], "ConfigMap")
            if m["metadata"].get("labels", {}).get("grafana_dashboard") == "1"]
    shipped = {key: json.loads(value) for m in maps for key, value in m["data"].items()}
    assert shipped == {p.name: json.loads(p.read_text()) for p in DASHBOARDS_SRC.glob("*.json")}


# ── the migration Job ─────────────────────────────────────────────────────────────────────────────────
def test_migration_job_applies_the_migrations(rendered: dict[str, list[Doc]], database_url: str) -> None:
    """The Job runs `gatehouse migrate` from the pods' image: run here against a real PostgreSQL, twice (the second
    run applies nothing), with only DATABASE_URL set, as in the Job."""
    from gateway.db.migrate import discover

    for docs in rendered.values():
        (job,) = of_kind(docs, "Job")
        (c,) = job["spec"]["template"]["spec"]["containers"]
        assert c["command"] == ["gatehouse", "migrate"]
        assert c["image"] == containers(deployment_running(docs, "serve"))[0]["image"], "same release as the pods"
        assert {e["name"] for e in c["env"]} == {"DATABASE_URL"}
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GATEHOUSE_", "REDIS_URL"))}
    env["DATABASE_URL"] = database_url
    argv = [sys.executable, "-m", "cli", "migrate"]
    first = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("applied migrations:"), first.stdout
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=60, check=False, cwd=ROOT)
    assert again.returncode == 0, again.stderr
    assert "up to date" in again.stdout, again.stdout
    bad = subprocess.run(argv, env={**env, "DATABASE_URL": ""}, capture_output=True, text=True, timeout=60,
                         check=False, cwd=ROOT)
    assert bad.returncode == 2 and "database_url" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
    assert discover(), "no migrations found"
