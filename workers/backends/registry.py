"""``Backends``: model name -> backend, built once per worker process from the config's ``model_list``, with the
resources the backends share (one HTTP pool, one model thread, one entropy pool, the hybrid scaler)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from core.config import Config, ModelEntry
from workers.backends.base import Backend, BackendError

if TYPE_CHECKING:
    from gpu_apps.chargpt import CharGPTEngine
    from gpu_apps.qgpt.entropy import EntropyPool
    from gpu_apps.scaling import HybridScaler

log = logging.getLogger("gatehouse.worker")
LOCAL_MODELS = ("chargpt",)


@dataclass
class Resources:
    """What backends share within one worker process; each is made on first need and closed once."""

    session: aiohttp.ClientSession | None = None
    executor: ThreadPoolExecutor | None = None  # one thread: the local models' torch code
    entropy: EntropyPool | None = None  # quantum sampling (qgpt)
    scaler: HybridScaler | None = None  # gatehouse.modal.hybrid_scaling
    engines: dict[str, CharGPTEngine] = field(default_factory=dict)

    def http(self) -> aiohttp.ClientSession:
        if self.session is None:
            from workers.backends.openai_compat import new_session

            self.session = new_session()
        return self.session

    def model_thread(self) -> ThreadPoolExecutor:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="local-model")
        return self.executor

    async def aclose(self) -> None:
        if self.session is not None:
            await self.session.close()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
        if self.entropy is not None:
            await self.entropy.stop()


class Backends:
    """Model name -> backend, built once per worker process."""

    def __init__(self, config: Config):
        self.config = config
        self.resources = Resources()
        self._by_name: dict[str, Backend] = {}

    @property
    def scaler(self) -> HybridScaler | None:
        return self.resources.scaler

    @property
    def entropy_pool(self) -> EntropyPool | None:
        """The worker's entropy pool, if a quantum-sampled model made one."""
        return self.resources.entropy

    def build(self) -> Backends:
        modal = self.config.settings.modal
        if modal.hybrid_scaling:
            self.resources.scaler = _scaler(modal.scaling_dry_run)
        for name, entry in self.config.models().items():
            self.register(name, self._make(entry))
            log.info("model %s -> %s backend (%s)", name, entry.backend, entry.litellm_params.model)
        return self

    def register(self, name: str, backend: Backend) -> None:
        """Serve ``name`` with ``backend`` (``build`` registers every configured model)."""
        self._by_name[name] = backend

    def _make(self, entry: ModelEntry) -> Backend:
        s, res = self.config.settings, self.resources
        if entry.backend == "openai":
            from workers.backends.openai_compat import OpenAICompatibleBackend

            return OpenAICompatibleBackend(entry, res.http(), retries=s.upstream_retries,
                                           timeout_s=s.upstream_timeout_s, on_request=self._activity_hook(entry))
        if entry.backend == "classifier":
            from workers.backends.classifier import ClassifierBackend

            return ClassifierBackend(entry, executor=res.model_thread(), session=res.http())
        if entry.backend == "modal":
            from workers.backends.modal_client import adapter_of

            if adapter_of(entry) == "classifier":
                from workers.backends.modal_classifier import ModalClassifierBackend

                return ModalClassifierBackend(entry)
            from workers.backends.modal_qgpt import ModalQgptBackend

            return ModalQgptBackend(entry)
        if entry.backend == "litellm":
            from workers.backends.litellm_backend import LiteLLMBackend

            return LiteLLMBackend(entry, retries=s.upstream_retries, timeout_s=s.upstream_timeout_s)
        from workers.backends.local import LocalBackend

        return LocalBackend(entry, self._engine(entry), res.model_thread(), self._entropy())

    def _entropy(self) -> EntropyPool:
        """The worker's entropy pool: QRNG-filled when a local entry sets ``qrng_api_key`` (and optionally
        ``qrng_base_url``), else the OS CSPRNG, labelled as such in every answer's diagnostics."""
        if self.resources.entropy is None:
            from gpu_apps.qgpt.entropy import EntropyPool, QrngClient

            local = [e.litellm_params.extra_params() for e in self.config.models().values() if e.backend == "local"]
            qrng = next((x for x in local if x.get("qrng_api_key")), None)
            client = None
            if qrng is not None:
                key = str(qrng["qrng_api_key"])
                base = qrng.get("qrng_base_url")
                client = QrngClient(key, base_url=str(base)) if base else QrngClient(key)
            self.resources.entropy = EntropyPool(client)
            self.resources.entropy.start()
        return self.resources.entropy

    def _engine(self, entry: ModelEntry) -> CharGPTEngine:
        name = entry.litellm_params.upstream_model
        engines = self.resources.engines
        if name not in engines:
            if name not in LOCAL_MODELS:
                raise ValueError(f"model_list entry {entry.model_name!r}: unknown local model {name!r} "
                                 f"(available: {', '.join(LOCAL_MODELS)})")
            from gpu_apps.chargpt import CharGPTEngine

            engines[name] = CharGPTEngine.load(entry.litellm_params.extra_params().get("checkpoint"))
        return engines[name]

    def _activity_hook(self, entry: ModelEntry) -> Callable[[], None] | None:
        """With hybrid scaling on, requests to a Modal-hosted entry count as activity for its app."""
        scaler = self.resources.scaler
        if scaler is None:
            return None
        from gpu_apps.scaling import modal_app_of

        extras = entry.litellm_params.extra_params()
        app = extras.get("modal_app") or modal_app_of(entry.litellm_params.api_base or "")
        return (lambda: scaler.record(str(app))) if app else None

    def get(self, model: str) -> Backend:
        try:
            return self._by_name[model]
        except KeyError:
            raise BackendError(404, f"The model `{model}` does not exist or you do not have access to it.",
                               code="model_not_found", param="model") from None

    async def aclose(self) -> None:
        for b in self._by_name.values():
            await b.aclose()
        await self.resources.aclose()


def _scaler(dry_run: bool) -> HybridScaler:
    from gpu_apps.scaling import HybridScaler, ScalingSettings, modal_apply

    async def report_only(app: str, window: int, max_containers: int) -> None:
        log.info("hybrid scaling (dry run): %s -> scaledown_window=%ds, max_containers=%d", app, window,
                 max_containers)

    return HybridScaler(ScalingSettings.from_env(), report_only if dry_run else modal_apply)
