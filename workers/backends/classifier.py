"""The prompt task/complexity classifier (seed 001) behind the Backend interface: ``classify`` only.

Two ways to run it, chosen by the model entry:
- ``local/classifier`` with ``checkpoint: <dir>`` — gpu_apps.classifier's engine in-process (worker threads);
- ``classifier/<name>`` with ``api_base`` — a service speaking the seed's ``POST /classify`` (the Modal
  app's ``ClassifierWeb``), authenticated with a short-lived HS256 JWT (``jwt_secret``, as the seed's client
  does) and/or extra headers (Modal proxy auth).
Both answer in the seed's format: one list per field, one element per prompt.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import aiohttp
import orjson

from core.config import ModelEntry
from core.queue import JobSpec
from workers.backends.base import Backend, BackendError


class ClassifierBackend(Backend):
    name = "classifier"

    def __init__(self, entry: ModelEntry, *, executor: ThreadPoolExecutor | None = None,
                 session: aiohttp.ClientSession | None = None):
        lp = entry.litellm_params
        self.extras = lp.extra_params()
        self.executor = executor
        self.session = session
        self.engine: Any = None
        self.url: str | None = None
        if lp.provider == "local":
            from gpu_apps.classifier.engine import ClassifierEngine

            if not self.extras.get("checkpoint"):
                raise ValueError(f"model_list entry {entry.model_name!r}: litellm_params.checkpoint is required")
            self.engine = ClassifierEngine.from_pretrained_dir(str(self.extras["checkpoint"]))
        else:
            if not lp.api_base:
                raise ValueError(f"model_list entry {entry.model_name!r}: litellm_params.api_base is required")
            self.url = lp.api_base.rstrip("/") + "/classify"
            self.headers = {str(k): str(v) for k, v in (self.extras.get("extra_headers") or {}).items()}

    async def complete(self, job: JobSpec) -> dict[str, Any]:
        raise BackendError(400, f"Model `{job.model}` is a classifier: use POST /v1/classify.",
                           code="unsupported_endpoint")

    async def stream(self, job: JobSpec) -> AsyncIterator[dict[str, Any]]:
        raise BackendError(400, f"Model `{job.model}` is a classifier: use POST /v1/classify.",
                           code="unsupported_endpoint")
        yield {}  # pragma: no cover - makes this an async generator

    async def classify(self, job: JobSpec) -> dict[str, Any]:
        prompts: list[str] = job.body["prompts"]
        if self.engine is not None:
            from gpu_apps.classifier.postprocess import to_columns

            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self.executor, self.engine.classify, prompts)
            return to_columns(results)  # type: ignore[no-any-return]
        return await self._remote(job, prompts)

    async def _remote(self, job: JobSpec, prompts: list[str]) -> dict[str, Any]:
        assert self.session is not None and self.url is not None
        headers = {"content-type": "application/json", **self.headers}
        if self.extras.get("jwt_secret"):
            import jwt

            now = int(time.time())
            headers["authorization"] = "Bearer " + jwt.encode({"sub": "gatehouse", "iat": now, "exp": now + 300},
                                                             str(self.extras["jwt_secret"]), algorithm="HS256")
        timeout = aiohttp.ClientTimeout(total=max(0.05, job.remaining()))
        try:
            async with self.session.post(self.url, data=orjson.dumps({"prompts": prompts}), headers=headers,
                                         timeout=timeout) as r:
                raw = await r.read()
                if r.status >= 400:
                    raise BackendError(502 if r.status >= 500 else r.status,
                                       f"The classifier service answered HTTP {r.status}.")
        except TimeoutError as e:
            raise BackendError(504, "The classifier did not answer in time.", type_="timeout_error",
                               code="timeout") from e
        except aiohttp.ClientError as e:
            raise BackendError(502, f"Could not reach the classifier ({type(e).__name__}).") from e
        return orjson.loads(raw)  # type: ignore[no-any-return]
