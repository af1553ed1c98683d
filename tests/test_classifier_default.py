"""`make up`'s default `prompt-classifier`: NVIDIA's classifier from the Hugging Face cache/hub, loaded on first
use. Offline and not cached, it answers an OpenAI-style 503 `model_unavailable` that names the model and says how
to point `checkpoint` at a local directory; a worker starts without it and stays up."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from conftest import MASTER_KEY, ROOT, free_port, show_logs, start_processes, stop_processes, wait_http

from core.config import LiteLLMParams, ModelEntry, load_config
from core.queue import JobSpec

HUB_ID = "nvidia/prompt-task-and-complexity-classifier"
HF_ENV = ("HF_HOME", "HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_HUB_OFFLINE",
          "TRANSFORMERS_OFFLINE", "HF_ENDPOINT")


def hf_env(hf_home: Path, **extra: str) -> dict[str, str]:
    """This process's environment with its own (empty unless filled) Hugging Face home, and nothing that
    would point elsewhere."""
    env = {k: v for k, v in os.environ.items() if k not in HF_ENV}
    return {**env, "HF_HOME": str(hf_home), **extra}


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from gpu_apps.classifier.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


# ── (a) the default config ──────────────────────────────────────────────────────────────────────────────────
def test_default_config_serves_the_prompt_classifier(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # no gatehouse.yaml here
    monkeypatch.delenv("GATEHOUSE_CONFIG", raising=False)
    models = load_config().models()
    entry = models["prompt-classifier"]
    assert entry.backend == "classifier"
    assert entry.litellm_params.model == "local/classifier"
    assert entry.litellm_params.extra_params() == {"checkpoint": HUB_ID}
    assert {"chargpt", "qgpt"} <= set(models)


def test_a_config_model_list_replaces_the_default_classifier(tmp_path: Path) -> None:
    cfg = tmp_path / "g.yaml"
    cfg.write_text(yaml.safe_dump({"model_list": [{"model_name": "prompt-classifier", "litellm_params": {
        "model": "local/classifier", "checkpoint": "/models/classifier"}}]}))
    models = load_config(cfg).models()
    assert list(models) == ["prompt-classifier"]
    assert models["prompt-classifier"].litellm_params.extra_params() == {"checkpoint": "/models/classifier"}


def test_a_503_worker_event_stays_a_503_with_its_code() -> None:
    from gateway.errors import ServiceUnavailable, from_event

    err = from_event({"status": 503, "type": "server_error", "code": "model_unavailable", "param": "model",
                      "message": "The model `prompt-classifier` is unavailable."})
    assert isinstance(err, ServiceUnavailable) and err.status == 503
    assert err.body() == {"error": {"message": "The model `prompt-classifier` is unavailable.",
                                    "type": "server_error", "param": "model", "code": "model_unavailable"}}


# ── (b) a real gateway + worker on the default model list, offline, with an empty Hugging Face cache ────────
@pytest.fixture(scope="module")
def offline_stack(tmp_path_factory: pytest.TempPathFactory, redis_url: str, database_url: str) -> Iterator[str]:
    root = tmp_path_factory.mktemp("offline-stack")
    port = free_port()
    path = root / "gatehouse.yaml"  # no model_list: the defaults, as under `make up`
    path.write_text(yaml.safe_dump({"gatehouse": {"port": port, "data_dir": str(root / "data"),
                                                  "request_timeout_s": 30}}))
    (root / "hf").mkdir()
    env = hf_env(root / "hf", HF_HUB_OFFLINE="1", REDIS_URL=redis_url.rsplit("/", 1)[0] + "/6",  # its own queue
                 DATABASE_URL=database_url, GATEHOUSE_MASTER_KEY=MASTER_KEY, GATEHOUSE_LOG_LEVEL="info")
    for name in ("GATEHOUSE_CONFIG", "GATEHOUSE_PORT", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(name, None)
    procs = start_processes(path, env, root / "logs")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/health/ready", procs=procs)
        worker_log = (root / "logs" / "worker0.log").read_text()
        assert "loading classifier" not in worker_log  # not at start: on first use
        yield base
    finally:
        stop_processes(procs)
        show_logs(root / "logs")


def test_offline_default_classifier_answers_503_saying_how_to_provide_it(offline_stack: str) -> None:
    headers = {"authorization": f"Bearer {MASTER_KEY}"}
    for path in ("/v1/classify", "/classify"):  # the second call is answered the same: nothing crashed
        started = time.monotonic()
        r = httpx.post(offline_stack + path, json={"prompts": ["hi"]}, headers=headers, timeout=30)
        assert time.monotonic() - started < 15
        assert r.status_code == 503, r.text
        assert r.headers["content-type"].startswith("application/json")
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "model_unavailable" and error["type"] == "server_error" and error["param"] == "model"
        message = error["message"]
        assert HUB_ID in message and "checkpoint" in message and "prompt-classifier" in message
        assert "HF_HUB_OFFLINE" in message and "Traceback" not in message
    assert httpx.get(offline_stack + "/health/ready", timeout=10).status_code == 200  # the worker is still up
    r = httpx.post(offline_stack + "/v1/chat/completions", headers=headers, timeout=30,
                   json={"model": "chargpt", "messages": [{"role": "user", "content": "def "}], "max_tokens": 4})
    assert r.status_code == 200, r.text  # the other default models are unaffected


# ── (c) the engine loader: a local directory, a hub id offline, a hub id from the Hugging Face cache ─────────
def test_loader_loads_a_local_directory(tiny_checkpoint: Path) -> None:
    from gpu_apps.classifier.engine import ClassifierEngine

    engine = ClassifierEngine.from_checkpoint(tiny_checkpoint)
    reference = ClassifierEngine.from_pretrained_dir(tiny_checkpoint)
    assert engine.classify(["hi", "Write a Python script."]) == reference.classify(["hi", "Write a Python script."])


def test_loader_names_a_missing_directory_or_files(tmp_path: Path, tiny_checkpoint: Path) -> None:
    from gpu_apps.classifier.engine import ClassifierEngine, ModelUnavailable

    with pytest.raises(ModelUnavailable, match="is not a directory") as e:
        ClassifierEngine.from_checkpoint(tmp_path / "nowhere")
    assert "litellm_params.checkpoint" in str(e.value)
    partial = tmp_path / "partial"
    shutil.copytree(tiny_checkpoint, partial)
    (partial / "model.safetensors").unlink()
    with pytest.raises(ModelUnavailable, match=r"lacks model\.safetensors or pytorch_model\.bin"):
        ClassifierEngine.from_checkpoint(partial)


LOAD_SCRIPT = """
import json, sys, time
from gpu_apps.classifier.engine import ClassifierEngine, ModelUnavailable
started = time.monotonic()
try:
    engine = ClassifierEngine.from_checkpoint(sys.argv[1], timeout=5)
except ModelUnavailable as e:
    print(json.dumps({"error": str(e), "checkpoint": e.checkpoint, "s": time.monotonic() - started}))
else:
    print(json.dumps({"results": engine.classify(["hi", "Write a Python script."]), "model": engine.model_name}))
"""


def load_in_subprocess(checkpoint: str, env: dict[str, str]) -> dict[str, Any]:
    """huggingface_hub reads HF_HOME and HF_HUB_OFFLINE when imported: a fresh process sees them as a worker does."""
    r = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, checkpoint], env=env, cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def unreachable_hub() -> dict[str, str]:
    return {"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"}  # nothing listens: connection refused


@pytest.mark.parametrize("network", ["HF_HUB_OFFLINE", "hub unreachable"])
def test_loader_raises_model_unavailable_for_a_hub_id_not_cached(tmp_path: Path, network: str) -> None:
    extra = {"HF_HUB_OFFLINE": "1"} if network == "HF_HUB_OFFLINE" else unreachable_hub()
    out = load_in_subprocess(HUB_ID, hf_env(tmp_path, **extra))
    assert out["checkpoint"] == HUB_ID and out["s"] < 10
    assert HUB_ID in out["error"] and "litellm_params.checkpoint: /path/to/dir" in out["error"]
    assert f"huggingface-cli download {HUB_ID}" in out["error"] and "HF_HOME" in out["error"]
    assert str(tmp_path / "hub") in out["error"]  # where it looked
    assert ("HF_HUB_OFFLINE is set" if network == "HF_HUB_OFFLINE" else "could not be reached") in out["error"]


@pytest.mark.parametrize("network", ["HF_HUB_OFFLINE", "hub unreachable"])
def test_loader_resolves_a_hub_id_from_the_hugging_face_cache(tmp_path: Path, tiny_checkpoint: Path,
                                                              network: str) -> None:
    """The tiny checkpoint placed as huggingface_hub lays out a downloaded snapshot: the hub id loads from it."""
    from gpu_apps.classifier.engine import ClassifierEngine

    revision = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--acme--tiny-prompt-classifier"
    shutil.copytree(tiny_checkpoint, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    extra = {"HF_HUB_OFFLINE": "1"} if network == "HF_HUB_OFFLINE" else unreachable_hub()
    out = load_in_subprocess("acme/tiny-prompt-classifier", hf_env(tmp_path, **extra))
    assert "error" not in out, out.get("error")
    expected = ClassifierEngine.from_pretrained_dir(tiny_checkpoint).classify(["hi", "Write a Python script."])
    assert out["results"] == json.loads(json.dumps(expected))
    assert out["model"] == "gatehouse/tiny-random-prompt-classifier"  # from the snapshot's config.json


# ── (d) the backend's lazy load: once for concurrent requests, retried after a failure, bounded by the deadline ─
def backend_for(checkpoint: Path | str):  # type: ignore[no-untyped-def]
    from workers.backends.classifier import ClassifierBackend

    entry = ModelEntry(model_name="prompt-classifier",
                       litellm_params=LiteLLMParams(model="local/classifier", checkpoint=str(checkpoint)))
    return ClassifierBackend(entry)


def job(prompts: list[str], seconds: float = 30.0) -> JobSpec:
    return JobSpec(id=f"cls-{time.monotonic_ns()}", kind="classify", model="prompt-classifier",
                   body={"prompts": prompts}, stream=False, deadline=time.time() + seconds)


@pytest.fixture
def load_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Counts (and can slow down) the engine loads the backend starts."""
    from gpu_apps.classifier.engine import ClassifierEngine

    calls: list[str] = []
    real = ClassifierEngine.from_checkpoint

    def counting(checkpoint: str, **kwargs: object) -> ClassifierEngine:
        calls.append(str(checkpoint))
        time.sleep(float(os.environ.get("_TEST_LOAD_DELAY_S", "0")))
        return real(checkpoint, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(ClassifierEngine, "from_checkpoint", staticmethod(counting))
    return calls


async def test_backend_loads_on_first_use_once_for_concurrent_requests(tiny_checkpoint: Path,
                                                                       load_calls: list[str],
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from gpu_apps.classifier.engine import ClassifierEngine
    from gpu_apps.classifier.postprocess import to_columns

    monkeypatch.setenv("_TEST_LOAD_DELAY_S", "0.3")
    backend = backend_for(tiny_checkpoint)
    assert backend.engine is None and load_calls == []  # nothing loaded at construction (worker start)
    answers = await asyncio.gather(*(backend.classify(job([p])) for p in ("hi", "Write a poem.", "hi")))
    assert load_calls == [str(tiny_checkpoint)]
    expected = ClassifierEngine.from_pretrained_dir(tiny_checkpoint)
    assert answers[0] == answers[2] == to_columns(expected.classify(["hi"]))
    assert answers[1] == to_columns(expected.classify(["Write a poem."]))
    await backend.classify(job(["again"]))
    assert load_calls == [str(tiny_checkpoint)]


async def test_backend_retries_a_failed_load_after_its_back_off(tmp_path: Path, tiny_checkpoint: Path,
                                                                load_calls: list[str]) -> None:
    from workers.backends.base import BackendError

    later = tmp_path / "later"
    backend = backend_for(later)
    backend.load_retry_s = 1.0
    with pytest.raises(BackendError) as first:
        await backend.classify(job(["hi"]))
    assert (first.value.status, first.value.code, first.value.type, first.value.param) == \
        (503, "model_unavailable", "server_error", "model")
    assert str(later) in first.value.message and "checkpoint" in first.value.message
    shutil.copytree(tiny_checkpoint, later)
    with pytest.raises(BackendError) as again:  # within the back-off: the same answer, no new attempt
        await backend.classify(job(["hi"]))
    assert again.value.code == "model_unavailable" and again.value is not first.value and len(load_calls) == 1
    await asyncio.sleep(1.1)  # the back-off is over: the next request tries again
    assert set(await backend.classify(job(["hi"]))) >= {"task_type_1", "prompt_complexity_score"}
    assert len(load_calls) == 2


async def test_backend_waits_no_longer_than_the_job_deadline(tiny_checkpoint: Path, load_calls: list[str],
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from workers.backends.base import BackendError

    monkeypatch.setenv("_TEST_LOAD_DELAY_S", "1.5")
    backend = backend_for(tiny_checkpoint)
    started = time.monotonic()
    with pytest.raises(BackendError) as e:
        await backend.classify(job(["hi"], seconds=0.5))
    assert time.monotonic() - started < 1.0
    assert e.value.status == 503 and e.value.code == "model_loading"
    assert (await backend.classify(job(["hi"])))["task_type_1"]  # the load went on; the next request gets it
    assert len(load_calls) == 1
