"""The vLLM model registry (registry.yaml): what each Modal app deploys, and what the gateway routes to it.

One entry drives both sides:
- ``modal deploy`` — ``gpu_apps/modal_apps/vllm_app.py`` reads the entry named by ``VLLM_MODEL`` (GPU string,
  scaling settings, vLLM arguments) and builds one app, ``gatehouse-vllm-<name>``, that scales to zero;
- the gateway — :func:`model_list_entries` turns every entry into a LiteLLM-format ``model_list`` entry
  ``<name>-local`` → ``hosted_vllm/<served name>`` at the app's URL, with Modal proxy-auth headers.

An entry with ``task: embed`` is an embedding model: its server runs vLLM's pooling runner (``--runner pooling
--convert embed``, vLLM ≥ 0.10; ``--task embed`` before) and answers ``POST /v1/embeddings``, which the gateway
passes through (its ``model_info.mode`` is ``embedding``, LiteLLM's name for it).

GPU strings follow Modal 1.x: ``"A10G"``, ``"H100"``, ``"A100-80GB:4"`` (type, optionally ``:count``). Models
that do not fit one card get a count and a matching ``--tensor-parallel-size``: Qwen3-30B-A3B in bf16 is
~61 GB (4 × A10G 24 GB), Qwen3-235B-A22B in FP8 ~235 GB (4 × A100-80GB).
"""

from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

REGISTRY_FILE = Path(__file__).with_name("registry.yaml")
GPU_TYPES = ("T4", "L4", "A10G", "A10", "L40S", "A100", "A100-40GB", "A100-80GB", "H100", "H100!", "H200", "B200")
_GPU = re.compile(r"^(?P<type>[A-Z0-9!\-]+?)(?::(?P<count>[1-8]))?$")
LOCAL_SUFFIX = "-local"  # the gateway gives "-local" models their defaults (workers/backends/openai_compat.py)


def parse_gpu(gpu: str) -> tuple[str, int]:
    """``"A100-80GB:4"`` -> ``("A100-80GB", 4)``; ValueError for anything Modal would not accept."""
    m = _GPU.match(gpu)
    if not m or m.group("type") not in GPU_TYPES:
        raise ValueError(f"unknown GPU string {gpu!r}: use one of {', '.join(GPU_TYPES)}, optionally ':<count>'")
    return m.group("type"), int(m.group("count") or 1)


class Scaling(BaseModel):
    model_config = ConfigDict(extra="forbid")

    scaledown_window: int = Field(default=300, ge=2, le=3600)
    min_containers: int = Field(default=0, ge=0)
    max_containers: int = Field(default=2, ge=1)
    max_concurrent_inputs: int = Field(default=64, ge=1)
    startup_timeout: int = Field(default=1200, ge=30)
    vllm_version: str = "0.11.0"


class VllmModel(Scaling):
    name: str
    hf_id: str = Field(pattern=r"^[\w.\-]+/[\w.\-]+$")
    gpu: str
    max_model_len: int = Field(ge=256)
    served_name: str | None = None
    task: Literal["generate", "embed"] = "generate"  # embed: vLLM's pooling runner, POST /v1/embeddings
    vllm_args: list[str] = Field(default_factory=list)

    @field_validator("gpu")
    @classmethod
    def _gpu(cls, v: str) -> str:
        parse_gpu(v)
        return v

    @model_validator(mode="after")
    def _parallelism(self) -> VllmModel:
        count = parse_gpu(self.gpu)[1]
        tp = int(self.vllm_args[self.vllm_args.index("--tensor-parallel-size") + 1]) \
            if "--tensor-parallel-size" in self.vllm_args else 1
        if tp != count:
            raise ValueError(f"{self.name}: --tensor-parallel-size {tp} does not match the GPU count in {self.gpu!r}")
        if self.min_containers > self.max_containers:
            raise ValueError(f"{self.name}: min_containers > max_containers")
        return self

    @property
    def model_name(self) -> str:
        return self.name + LOCAL_SUFFIX

    @property
    def app_name(self) -> str:
        return f"gatehouse-vllm-{self.name.replace('.', '-')}"

    @property
    def served(self) -> str:
        return self.served_name or self.hf_id

    def vllm_command(self, port: int = 8000) -> list[str]:
        task: list[str] = []
        if self.task == "embed" and "--runner" not in self.vllm_args:
            task = ["--runner", "pooling", "--convert", "embed"]  # vLLM >= 0.10 (was: --task embed)
        return ["vllm", "serve", self.hf_id, "--host", "0.0.0.0", "--port", str(port),
                "--served-model-name", self.served, "--max-model-len", str(self.max_model_len), *task,
                *self.vllm_args]

    def url(self, workspace: str, environment: str | None = None, function: str = "serve") -> str:
        """The web endpoint Modal gives ``@modal.web_server`` function ``function`` of this app."""
        prefix = f"{workspace}-{environment}" if environment and environment != "main" else workspace
        return f"https://{prefix}--{self.app_name}-{function}.modal.run"


@lru_cache(maxsize=4)
def load_registry(path: Path = REGISTRY_FILE) -> dict[str, VllmModel]:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    defaults = raw.get("defaults") or {}
    return {name: VllmModel(name=name, **{**defaults, **spec}) for name, spec in (raw.get("models") or {}).items()}


def model_list_entries(workspace: str, environment: str | None = None) -> list[dict[str, Any]]:
    """LiteLLM-format ``model_list`` entries for every registry model, authenticated with Modal proxy auth
    (the ``MODAL_KEY`` / ``MODAL_SECRET`` environment variables, resolved when the config is loaded)."""
    return [{"model_name": m.model_name,
             "litellm_params": {"model": f"hosted_vllm/{m.served}", "api_base": m.url(workspace, environment) + "/v1",
                                "extra_headers": {"Modal-Key": "os.environ/MODAL_KEY",
                                                  "Modal-Secret": "os.environ/MODAL_SECRET"},
                                "timeout": float(m.startup_timeout + 600)},
             "model_info": {"gpu": m.gpu, "hf_id": m.hf_id, "max_model_len": m.max_model_len,
                            **({"mode": "embedding"} if m.task == "embed" else {})}}
            for m in load_registry().values()]
