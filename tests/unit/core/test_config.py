"""Configuration: LiteLLM's file format, env references and overrides, one clear message on errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from core.config import ConfigError, load_config

LITELLM_FILE = """
model_list:
  - model_name: gpt-4o
    litellm_params:
      model: openai/gpt-4o
      api_key: os.environ/GH_TEST_OPENAI_KEY
  - model_name: claude
    litellm_params:
      model: anthropic/claude-3-5-sonnet-20240620
      api_key: os.environ/GH_TEST_ANTHROPIC_KEY
      max_tokens: 1024
  - model_name: llama-local
    litellm_params:
      model: hosted_vllm/meta-llama/Llama-3.1-8B-Instruct
      api_base: https://example--vllm.modal.run/v1
litellm_settings:
  drop_params: true
general_settings:
  master_key: sk-from-general-settings
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "gatehouse.yaml"
    p.write_text(text)
    return p


def test_litellm_file_is_accepted_unchanged(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GH_TEST_OPENAI_KEY", "sk-openai")
    monkeypatch.setenv("GH_TEST_ANTHROPIC_KEY", "sk-ant")
    cfg = load_config(write(tmp_path, LITELLM_FILE))
    models = cfg.models()
    assert list(models) == ["gpt-4o", "claude", "llama-local"]
    assert models["gpt-4o"].backend == "openai"
    assert models["gpt-4o"].litellm_params.api_key.get_secret_value() == "sk-openai"
    assert models["claude"].backend == "litellm"
    assert models["claude"].litellm_params.extra_params() == {"max_tokens": 1024}
    assert models["llama-local"].backend == "openai"
    assert models["llama-local"].litellm_params.upstream_model == "meta-llama/Llama-3.1-8B-Instruct"
    assert cfg.master_key() == "sk-from-general-settings"


def test_missing_env_reference_names_the_field(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GH_TEST_OPENAI_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"model_list\[0\]\.litellm_params\.api_key: environment variable "
                                          r"GH_TEST_OPENAI_KEY is not set"):
        load_config(write(tmp_path, LITELLM_FILE))


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = write(tmp_path, "gatehouse:\n  port: 9000\n  workers: 2\n")
    monkeypatch.setenv("GATEHOUSE_PORT", "9100")
    monkeypatch.setenv("REDIS_URL", "redis://example:6379/0")
    cfg = load_config(p)
    assert cfg.settings.port == 9100 and cfg.settings.workers == 2
    assert cfg.settings.redis_url == "redis://example:6379/0"


def test_defaults_serve_chargpt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GATEHOUSE_CONFIG", raising=False)
    cfg = load_config()
    assert list(cfg.models()) == ["chargpt", "qgpt", "prompt-classifier", "all-minilm-l6-v2"]
    assert [e.backend for e in cfg.models().values()] == ["local", "local", "classifier", "local"]
    assert cfg.models()["qgpt"].litellm_params.extra_params() == {"quantum": True}


@pytest.mark.parametrize("text, message", [
    ("gatehouse:\n  port: 70000\n", "gatehouse.port: Input should be less than or equal to 65535 (got 70000)"),
    ("gatehouse:\n  prot: 1\n", "gatehouse.prot: Extra inputs are not permitted"),
    ("model_list:\n  - model_name: x\n    litellm_params: {model: gpt4}\n",
     "model_list[0].litellm_params.model: String should match pattern"),
    ("model_list: []\n", "model_list: must name at least one model"),
    ("- just\n- a list\n", "the top level must be a mapping"),
    ("key: [unclosed\n", "not valid YAML"),
    ("gatehouse:\n  tracing:\n    masking: blur\n",
     "gatehouse.tracing.masking: Input should be 'off', 'hash' or 'drop'"),
    ("gatehouse:\n  metrics:\n    worker_port: 0\n", "gatehouse.metrics.worker_port: Input should be greater than"),
])
def test_invalid_config_messages(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, text))
    assert message in str(e.value)


def test_cli_exits_2_with_one_clear_line(tmp_path: Path) -> None:
    p = write(tmp_path, "gatehouse:\n  port: not-a-port\n")
    r = subprocess.run([sys.executable, "-m", "cli", "serve", "-c", str(p)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    assert "config error" in r.stderr and "gatehouse.port" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_example_config_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GATEHOUSE_PORT", raising=False)
    cfg = load_config(Path(__file__).resolve().parents[3] / "gatehouse.example.yaml")
    assert "chargpt" in cfg.models() and cfg.settings.port == 8000


def test_tracing_settings_from_file_and_langfuse_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LANGFUSE_PUBLIC_KEY", "LANGFUSE_SECRET_KEY", "LANGFUSE_BASE_URL", "LANGFUSE_HOST"):
        monkeypatch.delenv(name, raising=False)
    path = write(tmp_path, "gatehouse:\n  tracing:\n    public_key: pk-file\n    masking: off\n")
    t = load_config(path).settings.tracing
    assert t.masking == "off" and not t.enabled  # a bare YAML `off` is the mode, not false; no secret: off
    monkeypatch.setenv("LANGFUSE_SECRET_KEY", "sk-env")
    monkeypatch.setenv("LANGFUSE_HOST", "http://langfuse.internal:3000")
    t = load_config(path).settings.tracing
    assert t.enabled and t.public_key == "pk-file" and t.base_url == "http://langfuse.internal:3000"
    assert "sk-env" not in repr(t)


def test_an_empty_master_key_variable_means_unset(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEHOUSE_MASTER_KEY", "")  # what compose's ${GATEHOUSE_MASTER_KEY:-} gives when unset
    assert load_config(write(tmp_path, "gatehouse: {}\n")).master_key() is None  # serve then generates one
