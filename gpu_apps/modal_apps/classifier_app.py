"""NVIDIA prompt-task-and-complexity classifier on a T4: the seed's ``/classify`` and ``/health``, batched.

    modal deploy gpu_apps/modal_apps/classifier_app.py

Two classes on the same image and GPU type (Modal does not allow other methods beside a ``@modal.batched`` one):
``ClassifierWeb`` serves gpu_apps.classifier.api over HTTP (JWT HS256 from the ``gatehouse-classifier`` secret's
``JWT_SECRET``); ``ClassifierBatch.classify`` is for in-cluster callers (the gateway's modal backend), and
``@modal.batched`` groups their single prompts into batches of up to 256.
"""

from __future__ import annotations

import os
from typing import Any

import modal

from gpu_apps.modal_apps.common import HF_CACHE, AppSettings

HF_MODEL = "nvidia/prompt-task-and-complexity-classifier"
FUNCTIONS = ("ClassifierBatch", "ClassifierWeb")
SETTINGS = AppSettings(gpu="T4", scaledown_window=300, min_containers=0, max_containers=4, timeout=600,
                       secrets=("gatehouse-huggingface", "gatehouse-classifier"),
                       volumes={HF_CACHE: "gatehouse-hf-cache"},
                       max_concurrent_inputs=64)

image = (modal.Image.debian_slim(python_version="3.12")
         .pip_install("torch==2.8.0", "transformers>=4.45", "tokenizers", "huggingface_hub", "fastapi", "pydantic",
                      "numpy", "pyjwt", "safetensors", "sentencepiece")
         .add_local_python_source("gpu_apps"))
app = modal.App("gatehouse-classifier")


def _load_engine() -> Any:
    from huggingface_hub import snapshot_download

    from gpu_apps.classifier.engine import ClassifierEngine

    return ClassifierEngine.from_pretrained_dir(snapshot_download(HF_MODEL, cache_dir=HF_CACHE))


@app.cls(image=image, **SETTINGS.function_kwargs())
class ClassifierBatch:
    @modal.enter()
    def load(self) -> None:
        self.engine = _load_engine()

    @modal.batched(max_batch_size=256, wait_ms=20)
    def classify(self, prompts: list[str]) -> list[dict[str, Any]]:
        return self.engine.classify(prompts, batch_size=256)


@app.cls(image=image, **SETTINGS.function_kwargs())
@modal.concurrent(max_inputs=64)
class ClassifierWeb:
    @modal.enter()
    def load(self) -> None:
        self.engine = _load_engine()

    @modal.asgi_app()
    def web(self) -> Any:
        from gpu_apps.classifier.api import create_app, hs256_authorizer

        secret = os.environ.get("JWT_SECRET")
        return create_app(self.engine, authorize=hs256_authorizer(secret) if secret else None)
