"""What every Gatehouse Modal app shares: credentials, volumes, and the settings record the check reads."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import modal

HF_CACHE = "/root/.cache/huggingface"
VLLM_CACHE = "/root/.cache/vllm"


@dataclass(frozen=True)
class AppSettings:
    """The arguments given to ``@app.function`` / ``@app.cls`` — one record, so the check sees what Modal sees."""

    gpu: str | None
    scaledown_window: int
    min_containers: int
    max_containers: int
    timeout: int
    secrets: tuple[str, ...] = ()
    volumes: dict[str, str] = field(default_factory=dict)  # mount path -> volume name
    max_concurrent_inputs: int | None = None

    def function_kwargs(self) -> dict[str, Any]:
        return {"gpu": self.gpu, "scaledown_window": self.scaledown_window, "min_containers": self.min_containers,
                "max_containers": self.max_containers, "timeout": self.timeout,
                "secrets": [modal.Secret.from_name(s) for s in self.secrets],
                "volumes": {path: modal.Volume.from_name(name, create_if_missing=True)
                            for path, name in self.volumes.items()}}
