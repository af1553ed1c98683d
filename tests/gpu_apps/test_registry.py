"""The vLLM registry, the Modal app check, and how registry models reach the gateway's model list."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from core.config import ConfigError, load_config
from gpu_apps import check
from gpu_apps.registry import VllmModel, load_registry, model_list_entries, parse_gpu


def test_seed_models_and_their_gpus() -> None:
    reg = load_registry()
    assert {n: parse_gpu(m.gpu)[0] for n, m in reg.items()} == {
        "llama-3.1-8b": "A10G", "qwen3-4b": "A10G", "qwen3-30b-a3b": "A10G", "qwen3-235b": "A100-80GB",
        "gpt-oss-20b": "H100", "gpt-oss-120b": "H100", "qwen3-embedding-0.6b": "L4"}
    assert reg["qwen3-235b"].hf_id.endswith("-FP8")
    assert all(m.min_containers == 0 for m in reg.values())  # every app scales to zero
    cmd = reg["qwen3-235b"].vllm_command()
    assert cmd[:3] == ["vllm", "serve", "Qwen/Qwen3-235B-A22B-Instruct-2507-FP8"] and "--tensor-parallel-size" in cmd
    assert "--runner" not in cmd


def test_the_embedding_variant_runs_the_pooling_runner() -> None:
    m = load_registry()["qwen3-embedding-0.6b"]
    assert m.task == "embed"
    cmd = m.vllm_command()
    assert cmd[cmd.index("--runner") + 1] == "pooling" and cmd[cmd.index("--convert") + 1] == "embed"
    entry = next(e for e in model_list_entries("acme") if e["model_name"] == "qwen3-embedding-0.6b-local")
    assert entry["litellm_params"]["model"] == "hosted_vllm/Qwen/Qwen3-Embedding-0.6B"
    assert entry["model_info"]["mode"] == "embedding"
    chat = next(e for e in model_list_entries("acme") if e["model_name"] == "qwen3-4b-local")
    assert "mode" not in chat["model_info"]


@pytest.mark.parametrize("gpu, tp, message", [("A100(80)", None, "unknown GPU"), ("A10G:4", None, "does not match"),
                                             ("H100", "2", "does not match")])
def test_registry_rejects_bad_entries(gpu: str, tp: str | None, message: str) -> None:
    args = ["--tensor-parallel-size", tp] if tp else []
    with pytest.raises(ValueError, match=message):
        VllmModel(name="x", hf_id="org/x", gpu=gpu, max_model_len=4096, vllm_args=args)


def test_registry_models_join_the_model_list(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg_file = tmp_path / "g.yaml"
    cfg_file.write_text("gatehouse:\n  modal: {workspace: acme, environment: prod}\n")
    monkeypatch.delenv("MODAL_KEY", raising=False)
    with pytest.raises(ConfigError, match="MODAL_KEY is not set"):
        load_config(cfg_file)
    monkeypatch.setenv("MODAL_KEY", "wk-123")
    monkeypatch.setenv("MODAL_SECRET", "ws-456")
    models = load_config(cfg_file).models()
    assert "chargpt" in models  # the default list stays
    e = models["qwen3-4b-local"]
    assert e.backend == "openai" and e.litellm_params.model == "hosted_vllm/Qwen/Qwen3-4B-Instruct-2507"
    assert e.litellm_params.api_base == "https://acme-prod--gatehouse-vllm-qwen3-4b-serve.modal.run/v1"
    assert e.litellm_params.extra_params()["extra_headers"] == {"Modal-Key": "wk-123", "Modal-Secret": "ws-456"}


def test_every_modal_app_checks_out() -> None:
    assert check.main() == 0


def test_check_finds_removed_modal_names(tmp_path: Path) -> None:
    old = tmp_path / "old_app.py"
    old.write_text("import modal\nstub = modal.Stub('x')\n@stub.function(gpu=modal.gpu.A100(), keep_warm=1,\n"
                   "    container_idle_timeout=60, concurrency_limit=2)\ndef f(): pass\n")
    found = check.removed_names(old)
    assert {f.split(": ")[1] for f in found} == {".Stub", ".gpu", "keep_warm=", "container_idle_timeout=",
                                                 "concurrency_limit="}


def test_local_models_get_the_seed_defaults(stack) -> None:  # type: ignore[no-untyped-def]
    h = {"authorization": f"Bearer {stack.master_key}"}
    last = stack.upstream.base_url.replace("/v1", "") + "/_last"
    msgs = [{"role": "user", "content": "x"}]
    httpx.post(stack.base_url + "/v1/chat/completions", headers=h, json={"model": "echo-local", "messages": msgs})
    body = httpx.get(last).json()["body"]
    assert body["temperature"] == 0.3 and "tool_choice" not in body  # no tools: no tool_choice
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    httpx.post(stack.base_url + "/v1/chat/completions", headers=h,
               json={"model": "echo-local", "messages": msgs, "tools": tools, "temperature": 0.9})
    body = httpx.get(last).json()["body"]
    assert body["tool_choice"] == "auto" and body["temperature"] == 0.9  # the request's own value wins
    httpx.post(stack.base_url + "/v1/chat/completions", headers=h, json={"model": "echo", "messages": msgs})
    assert "temperature" not in httpx.get(last).json()["body"]  # other models get nothing added
