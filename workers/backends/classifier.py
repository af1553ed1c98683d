"""The prompt task/complexity classifier (seed 001) behind the Backend interface: ``classify`` only.

Two ways to run it, chosen by the model entry:
- ``local/classifier`` with ``checkpoint: <dir or Hugging Face id>`` — gpu_apps.classifier's engine in-process
  (worker threads), loaded on the first request, not at start: a worker starts fast and offline, and a model
  that cannot be had (offline, not in the Hugging Face cache) answers 503 ``model_unavailable`` saying how to
  provide it, tried again on a later request;
- ``classifier/<name>`` with ``api_base`` — a service speaking the seed's ``POST /classify`` (the Modal
  app's ``ClassifierWeb``), authenticated with a short-lived HS256 JWT (``jwt_secret``, as the seed's client
  does) and/or extra headers (Modal proxy auth).
Both answer in the seed's format: one list per field, one element per prompt.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson

from core.config import ModelEntry
from core.queue import JobSpec
from workers.backends.base import BackendError, Classifies

if TYPE_CHECKING:
    from gpu_apps.classifier.engine import ClassifierEngine

log = logging.getLogger("gatehouse.worker")


def _in_daemon_thread(fn: Callable[[], Any], name: str) -> asyncio.Future[Any]:
    """Run ``fn`` in a daemon thread of its own; its outcome settles the returned future. Not the shared model
    executor: a first download (hundreds of MB) must not hold up other local models, and a worker that stops
    mid-download must not wait for it."""
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[Any] = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if not fut.done():
            fut.set_exception(error) if error is not None else fut.set_result(result)

    def target() -> None:
        result: Any = None
        error: BaseException | None = None
        try:
            result = fn()
        except Exception as e:  # noqa: BLE001 - handed to the awaiting requests
            error = e
        except BaseException as e:  # noqa: BLE001 - never leave the future pending
            error = RuntimeError(f"loading stopped: {type(e).__name__}")
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop closed meanwhile (the worker is stopping)
            pass

    threading.Thread(target=target, name=name, daemon=True).start()
    return fut


def _load_engine(checkpoint: str, timeout: float) -> ClassifierEngine:
    """Runs in the loading thread: importing torch and transformers takes a while too."""
    from gpu_apps.classifier.engine import ClassifierEngine

    return ClassifierEngine.from_checkpoint(checkpoint, timeout=timeout)


def _unavailable(err: BaseException) -> bool:
    """Whether a load failed with the engine's ModelUnavailable (the engine module raised it, so it is loaded)."""
    engine = sys.modules.get("gpu_apps.classifier.engine")
    return engine is not None and isinstance(err, engine.ModelUnavailable)


class ClassifierBackend(Classifies):
    kind = "classifier"
    #: After a failed load, requests get the same error for this long before the next attempt (so a flood of
    #: requests does not hammer the hub); then a request tries again.
    load_retry_s = 10.0

    def __init__(self, entry: ModelEntry, *, executor: ThreadPoolExecutor | None = None,
                 session: aiohttp.ClientSession | None = None):
        lp = entry.litellm_params
        self.extras = lp.extra_params()
        self.executor = executor
        self.session = session
        self.engine: ClassifierEngine | None = None
        self.url: str | None = None
        self.local = lp.provider == "local"
        if self.local:
            if not self.extras.get("checkpoint"):
                raise ValueError(f"model_list entry {entry.model_name!r}: litellm_params.checkpoint is required")
            self.model_name = entry.model_name
            self.checkpoint = str(self.extras["checkpoint"])
            self._load_lock = asyncio.Lock()  # concurrent first requests start one load
            self._loading: asyncio.Future[ClassifierEngine] | None = None
            self._failed: tuple[float, BaseException] | None = None  # (retry not before, monotonic s; the error)
        else:
            if not lp.api_base:
                raise ValueError(f"model_list entry {entry.model_name!r}: litellm_params.api_base is required")
            self.url = lp.api_base.rstrip("/") + "/classify"
            self.headers = {str(k): str(v) for k, v in (self.extras.get("extra_headers") or {}).items()}

    async def classify(self, job: JobSpec) -> dict[str, Any]:
        prompts: list[str] = job.body["prompts"]
        if self.local:
            from gpu_apps.classifier.postprocess import to_columns

            engine = self.engine if self.engine is not None else await self._load(job)
            loop = asyncio.get_running_loop()
            results = await loop.run_in_executor(self.executor, engine.classify, prompts)
            return to_columns(results)
        return await self._remote(job, prompts)

    async def _load(self, job: JobSpec) -> ClassifierEngine:
        """The engine, loaded by the first request (one load at a time, shared by concurrent requests). Each
        request waits at most until its own deadline; the load goes on for the next ones."""
        async with self._load_lock:
            if self.engine is not None:
                return self.engine
            if self._loading is None:
                if self._failed is not None and time.monotonic() < self._failed[0]:
                    raise self._error(self._failed[1])
                self._loading = self._start_load(job.remaining())
            loading = self._loading
        remaining = job.remaining()
        try:  # end a little before the job's deadline, so the client gets this answer rather than a bare 504
            return await asyncio.wait_for(asyncio.shield(loading), max(0.01, remaining - min(0.5, remaining / 10)))
        except TimeoutError:
            raise BackendError(503, f"The model `{self.model_name}` is still loading ({self.checkpoint}); retry "
                                    "shortly.", type_="server_error", code="model_loading", param="model",
                               retryable=True, retry_after=5) from None
        except Exception as e:  # the load's failure, as this request's error
            raise self._error(e) from e

    def _start_load(self, timeout: float) -> asyncio.Future[ClassifierEngine]:
        log.info("loading classifier %s from %s", self.model_name, self.checkpoint)
        started = time.monotonic()
        checkpoint, timeout = self.checkpoint, max(1.0, timeout)
        fut = _in_daemon_thread(lambda: _load_engine(checkpoint, timeout), name=f"load-{self.model_name}")

        def done(f: asyncio.Future[ClassifierEngine]) -> None:
            self._loading = None
            if f.cancelled():
                return
            err = f.exception()
            if err is None:
                self.engine, self._failed = f.result(), None
                log.info("classifier %s loaded in %.1fs: %s", self.model_name, time.monotonic() - started,
                         self.engine.info())
                return
            self._failed = (time.monotonic() + self.load_retry_s, err)
            if _unavailable(err):
                log.warning("classifier %s unavailable: %s", self.model_name, err)
            else:
                log.error("classifier %s failed to load", self.model_name, exc_info=err)

        fut.add_done_callback(done)
        return fut

    def _error(self, err: BaseException) -> BackendError:
        """A failed load as the client's error: a fresh one per request."""
        if _unavailable(err):
            return BackendError(503, f"The model `{self.model_name}` is unavailable. {err}", type_="server_error",
                                code="model_unavailable", param="model")
        return BackendError(500, f"The model `{self.model_name}` failed to load ({type(err).__name__}); see the "
                                 "worker's log.", type_="server_error", code="model_load_failed", param="model")

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
