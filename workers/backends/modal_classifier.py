"""The classifier Modal class (``ClassifierBatch``) behind Classifies: ``classify(prompt)`` is
``@modal.batched`` on the app side, so the backend makes one call per prompt and Modal batches them."""

from __future__ import annotations

import asyncio

from core.config import ModelEntry
from core.queue import JobSpec
from workers.backends.base import Answer, Classifies
from workers.backends.modal_client import ModalTarget, Resolver, modal_resolver


class ModalClassifierBackend(Classifies):
    kind = "modal"

    def __init__(self, entry: ModelEntry, resolver: Resolver = modal_resolver):
        self.target = ModalTarget(entry, resolver)

    async def classify(self, job: JobSpec) -> Answer:
        from gpu_apps.classifier.postprocess import to_columns

        results = await asyncio.gather(*(self.target.call(job, p) for p in job.body["prompts"]))
        columns: Answer = to_columns(list(results))
        return columns
