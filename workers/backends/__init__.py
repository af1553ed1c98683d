"""Backends, one module each, behind :class:`workers.backends.base.Backend`; ``Backends`` builds them from
the config's ``model_list`` and owns the resources they share (HTTP pool, model threads)."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from core.config import Config, ModelEntry
from workers.backends.base import Backend, BackendError, WholeAnswer

log = logging.getLogger("gatehouse.worker")

__all__ = ["Backend", "BackendError", "Backends", "WholeAnswer"]


class Backends:
    """Model name -> backend, built once per worker process."""

    def __init__(self, config: Config):
        self.config = config
        self._by_name: dict[str, Backend] = {}
        self._session: Any = None
        self._executor: ThreadPoolExecutor | None = None
        self._engines: dict[str, Any] = {}
        self._pool: Any = None  # one entropy pool per worker process, shared by quantum-sampled requests
        self.scaler: Any = None  # gpu_apps.scaling.HybridScaler when gatehouse.modal.hybrid_scaling is on

    def build(self) -> Backends:
        modal = self.config.settings.modal
        if modal.hybrid_scaling:
            from gpu_apps.scaling import HybridScaler, ScalingSettings, modal_apply

            async def dry_run(app: str, window: int, max_containers: int) -> None:
                log.info("hybrid scaling (dry run): %s -> scaledown_window=%ds, max_containers=%d", app, window,
                         max_containers)

            self.scaler = HybridScaler(ScalingSettings.from_env(), dry_run if modal.scaling_dry_run else modal_apply)
        for name, entry in self.config.models().items():
            self._by_name[name] = self._make(entry)
            log.info("model %s -> %s backend (%s)", name, entry.backend, entry.litellm_params.model)
        return self

    def _make(self, entry: ModelEntry) -> Backend:
        s = self.config.settings
        if entry.backend == "openai":
            from workers.backends.openai_compat import OpenAICompatibleBackend, new_session

            if self._session is None:
                self._session = new_session()
            return OpenAICompatibleBackend(entry, self._session, retries=s.upstream_retries,
                                           timeout_s=s.upstream_timeout_s, on_request=self._activity_hook(entry))
        if entry.backend == "classifier":
            from workers.backends.classifier import ClassifierBackend
            from workers.backends.openai_compat import new_session

            if self._session is None:
                self._session = new_session()
            if self._executor is None:
                self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-model")
            return ClassifierBackend(entry, executor=self._executor, session=self._session)
        if entry.backend == "modal":
            from workers.backends.modal_cls import ModalClsBackend

            return ModalClsBackend(entry)
        if entry.backend == "litellm":
            from workers.backends.litellm_backend import LiteLLMBackend

            return LiteLLMBackend(entry, retries=s.upstream_retries, timeout_s=s.upstream_timeout_s)
        from workers.backends.local import LocalBackend

        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-model")
        return LocalBackend(entry, self._engine(entry), self._executor, self._entropy())

    def _entropy(self) -> Any:
        """The worker's entropy pool: QRNG-filled when a local entry sets ``qrng_api_key`` (and optionally
        ``qrng_base_url``), else the OS CSPRNG, labelled as such in every answer's diagnostics."""
        if self._pool is None:
            from gpu_apps.qgpt.entropy import EntropyPool, QrngClient

            local = [e.litellm_params.extra_params() for e in self.config.models().values() if e.backend == "local"]
            qrng = next((x for x in local if x.get("qrng_api_key")), None)
            client = None
            if qrng is not None:
                kw = {"base_url": str(qrng["qrng_base_url"])} if qrng.get("qrng_base_url") else {}
                client = QrngClient(str(qrng["qrng_api_key"]), **kw)
            self._pool = EntropyPool(client)
            self._pool.start()
        return self._pool

    @property
    def entropy_pool(self) -> Any:
        """The worker's entropy pool, if a quantum-sampled model made one."""
        return self._pool

    def _engine(self, entry: ModelEntry) -> Any:
        name = entry.litellm_params.upstream_model
        if name not in self._engines:
            if name != "chargpt":
                raise ValueError(f"model_list entry {entry.model_name!r}: unknown local model {name!r} "
                                 "(available: chargpt)")
            from gpu_apps.chargpt import CharGPTEngine

            extras = entry.litellm_params.extra_params()
            self._engines[name] = CharGPTEngine.load(extras.get("checkpoint"))
        return self._engines[name]

    def _activity_hook(self, entry: ModelEntry) -> Any:
        """With hybrid scaling on, requests to a Modal-hosted entry count as activity for its app."""
        if self.scaler is None:
            return None
        from gpu_apps.scaling import modal_app_of

        extras = entry.litellm_params.extra_params()
        app = extras.get("modal_app") or modal_app_of(entry.litellm_params.api_base or "")
        return (lambda: self.scaler.record(str(app))) if app else None

    def get(self, model: str) -> Backend:
        try:
            return self._by_name[model]
        except KeyError:
            raise BackendError(404, f"The model `{model}` does not exist or you do not have access to it.",
                               code="model_not_found", param="model") from None

    async def aclose(self) -> None:
        for b in self._by_name.values():
            await b.aclose()
        if self._session is not None:
            await self._session.close()
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self._pool is not None:
            await self._pool.stop()
