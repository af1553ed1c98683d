"""One vLLM OpenAI server per registry model, behind Modal proxy auth, scaling to zero.

    VLLM_MODEL=qwen3-4b modal deploy gpu_apps/modal_apps/vllm_app.py

The gateway reaches it as ``<name>-local`` (``hosted_vllm/…`` with ``Modal-Key``/``Modal-Secret`` headers;
see gpu_apps/registry.py). Weights land in the ``gatehouse-hf-cache`` volume on first start, compiled
kernels in ``gatehouse-vllm-cache``; later cold starts reuse both.
"""

from __future__ import annotations

import os
import subprocess
import time
import urllib.request

import modal

from gpu_apps.modal_apps.common import HF_CACHE, VLLM_CACHE, AppSettings
from gpu_apps.registry import load_registry

MODEL = load_registry()[os.environ.get("VLLM_MODEL", "qwen3-4b")]
PORT = 8000
FUNCTIONS = ("serve",)
SETTINGS = AppSettings(
    gpu=MODEL.gpu, scaledown_window=MODEL.scaledown_window, min_containers=MODEL.min_containers,
    max_containers=MODEL.max_containers, timeout=24 * 3600, secrets=("gatehouse-huggingface",),
    volumes={HF_CACHE: "gatehouse-hf-cache", VLLM_CACHE: "gatehouse-vllm-cache"},
    max_concurrent_inputs=MODEL.max_concurrent_inputs)

image = (modal.Image.debian_slim(python_version="3.12")
         .pip_install(f"vllm=={MODEL.vllm_version}", "huggingface_hub[hf_transfer]", "pyyaml", "pydantic")
         .env({"HF_HUB_ENABLE_HF_TRANSFER": "1", "VLLM_MODEL": MODEL.name})
         .add_local_python_source("gpu_apps"))
app = modal.App(MODEL.app_name)


@app.function(image=image, **SETTINGS.function_kwargs())
@modal.concurrent(max_inputs=MODEL.max_concurrent_inputs)
@modal.web_server(port=PORT, startup_timeout=MODEL.startup_timeout, requires_proxy_auth=True)
def serve() -> None:
    """Start ``vllm serve`` and return once its /health answers, so no request reaches a loading server."""
    subprocess.Popen(MODEL.vllm_command(PORT))
    deadline = time.time() + MODEL.startup_timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{PORT}/health", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"vLLM did not become healthy within {MODEL.startup_timeout}s")
