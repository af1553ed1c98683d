"""qgpt: gpt-oss-120b with quantum-steered sampling (seed 000) — ``/health`` and ``/generate``, token streaming.

    modal deploy gpu_apps/modal_apps/qgpt_app.py

Secrets: ``gatehouse-qrng`` (``QRNG_API_KEY``; without it the pool serves the OS CSPRNG, labelled as such) and
``gatehouse-qgpt`` (``QGPT_KEY`` / ``QGPT_SECRET`` for the seed's HTTP Basic auth).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import modal

from gpu_apps.modal_apps.common import HF_CACHE, AppSettings

HF_MODEL = "openai/gpt-oss-120b"
FUNCTIONS = ("QuantumService",)
SETTINGS = AppSettings(gpu="A100-80GB", scaledown_window=600, min_containers=0, max_containers=1, timeout=3600,
                       secrets=("gatehouse-huggingface", "gatehouse-qrng", "gatehouse-qgpt"),
                       volumes={HF_CACHE: "gatehouse-hf-cache"}, max_concurrent_inputs=8)

image = (modal.Image.debian_slim(python_version="3.12")
         .pip_install("torch==2.8.0", "transformers>=4.55", "accelerate", "kernels", "huggingface_hub", "fastapi",
                      "pydantic", "numpy", "aiohttp")
         .add_local_python_source("gpu_apps"))
app = modal.App("gatehouse-qgpt")


@app.cls(image=image, **SETTINGS.function_kwargs())
@modal.concurrent(max_inputs=8)
class QuantumService:
    @modal.enter()
    def load(self) -> None:
        from huggingface_hub import snapshot_download

        from gpu_apps.qgpt.entropy import EntropyPool, QrngClient
        from gpu_apps.qgpt.generator import QuantumGenerator

        key = os.environ.get("QRNG_API_KEY")
        self.pool = EntropyPool(QrngClient(key) if key else None)
        path = snapshot_download(HF_MODEL, cache_dir=HF_CACHE)
        self.generator = QuantumGenerator.from_pretrained_dir(path, device="cuda", pool=self.pool,
                                                              use_chat_template=True)

    @modal.method()
    def generate(self, prompt: str, max_new_tokens: int = 512, quantum_profile: str = "medium",
                 temperature: float = 0.8, top_p: float = 1.0, seed: int | None = None) -> dict[str, Any]:
        return self.generator.generate(prompt, max_new_tokens, quantum_profile, temperature, top_p, seed)

    @modal.method()
    def stream(self, prompt: str, max_new_tokens: int = 512, quantum_profile: str = "medium",
               temperature: float = 0.8, top_p: float = 1.0, seed: int | None = None) -> Iterator[Any]:
        """Text pieces as they are sampled (``.remote_gen``), then the whole /generate body as a dict."""
        tokens = self.generator.stream(prompt, max_new_tokens, quantum_profile, temperature, top_p, seed)
        yield from tokens
        yield tokens.response

    @modal.asgi_app()
    def web(self) -> Any:
        from gpu_apps.qgpt.api import create_app

        key, secret = os.environ.get("QGPT_KEY"), os.environ.get("QGPT_SECRET")
        return create_app(self.generator, self.pool, credentials=(key, secret) if key and secret else None)
