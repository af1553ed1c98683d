"""``Backends``: model name -> backend, built once per worker process from the config's ``model_list``, with the
resources the backends share (one HTTP pool, one model thread, one entropy pool, the hybrid scaler); and, for the
models that need one (several deployments, limits, fallbacks), a ``workers.routing.Route``."""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import aiohttp

from core.config import Config, ModelEntry
from workers.backends.base import Backend, BackendError, Completions

if TYPE_CHECKING:
    from gpu_apps.chargpt import CharGPTEngine
    from gpu_apps.qgpt.entropy import EntropyPool
    from gpu_apps.scaling import HybridScaler
    from workers.routing import Route

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
        self._others: list[Backend] = []  # the deployments after each model's first (closed with the rest)
        self.routes: dict[str, Route] = {}  # model name -> its route, for the models that need one

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
        from workers.routing import Group, build_routes

        groups: dict[str, Group] = {}
        for name, deployments in self.config.deployments().items():
            # a balanced group's retries are the router's (each may go to another deployment), not the backend's
            balanced = len(deployments) > 1 or deployments[0].limited
            backends = tuple(self._make(d.entry, retries=0 if balanced else None) for d in deployments)
            for b in backends:
                if isinstance(b, Completions):  # what it cannot do is dropped, not refused (ADR 0019)
                    b.drop_params = self.config.drop_params()
            self.register(name, backends[0])
            self._others.extend(backends[1:])
            groups[name] = Group(name, tuple(deployments), backends)
            for d in deployments:
                log.info("model %s -> %s backend (%s)%s", name, d.entry.backend, d.entry.litellm_params.model,
                         f", deployment {d.id}" if len(deployments) > 1 else "")
        self.routes = build_routes(self.config.router_settings, groups, self.config.settings.upstream_retries)
        return self

    def route(self, model: str) -> Route | None:
        """The model's route, or None when its one deployment is called directly."""
        return self.routes.get(model)

    def register(self, name: str, backend: Backend) -> None:
        """Serve ``name`` with ``backend`` (``build`` registers every configured model)."""
        self._by_name[name] = backend

    def _make(self, entry: ModelEntry, retries: int | None = None) -> Backend:
        s, res = self.config.settings, self.resources
        retries = s.upstream_retries if retries is None else retries
        if entry.backend == "openai":
            from workers.backends.openai_compat import OpenAICompatibleBackend

            return OpenAICompatibleBackend(entry, res.http(), retries=retries,
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

            return LiteLLMBackend(entry, retries=retries, timeout_s=s.upstream_timeout_s,
                                  drop_params=self.config.drop_params())
        from workers.backends import embeddings_local

        if embeddings_local.serves(entry):  # local/all-minilm-l6-v2: its own thread, loaded on first use
            return embeddings_local.LocalEmbeddingBackend(entry)
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
        for b in [*self._by_name.values(), *self._others]:
            await b.aclose()
        await self.resources.aclose()


def _scaler(dry_run: bool) -> HybridScaler:
    from gpu_apps.scaling import HybridScaler, ScalingSettings, modal_apply

    async def report_only(app: str, window: int, max_containers: int) -> None:
        log.info("hybrid scaling (dry run): %s -> scaledown_window=%ds, max_containers=%d", app, window,
                 max_containers)

    return HybridScaler(ScalingSettings.from_env(), report_only if dry_run else modal_apply)
