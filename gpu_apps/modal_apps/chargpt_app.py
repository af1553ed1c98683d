"""The char-level GPT (seed 002) on Modal: the same engine the workers run locally, on a CPU container.

    modal deploy gpu_apps/modal_apps/chargpt_app.py

``x-api-key`` auth from the ``gatehouse-chargpt`` secret's ``API_KEY`` (the seed's header).
"""

from __future__ import annotations

import os
from typing import Any

import modal

from gpu_apps.modal_apps.common import AppSettings

FUNCTIONS = ("web",)
SETTINGS = AppSettings(gpu=None, scaledown_window=120, min_containers=0, max_containers=4, timeout=300,
                       secrets=("gatehouse-chargpt",), max_concurrent_inputs=16)

image = (modal.Image.debian_slim(python_version="3.12")
         .pip_install("torch==2.8.0", "fastapi", "pydantic", "numpy")
         .add_local_python_source("gpu_apps"))
app = modal.App("gatehouse-chargpt")


@app.function(image=image, cpu=2.0, **SETTINGS.function_kwargs())
@modal.concurrent(max_inputs=16)
@modal.asgi_app()
def web() -> Any:
    from gpu_apps.chargpt.api import create_app
    from gpu_apps.chargpt.engine import CharGPTEngine

    return create_app(CharGPTEngine.load(), api_key=os.environ.get("API_KEY"))
