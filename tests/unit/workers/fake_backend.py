"""A backend for worker tests: implements every capability of the Backend interface with scripted behaviour,
and records the jobs it was given."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from core import schemas as s
from core.queue import JobSpec
from workers.backends import Answer, BackendError, Chunk, Classifies, Completions, Generates


class FakeBackend(Completions, Generates, Classifies):
    kind = "fake"

    def __init__(self, *, pieces: tuple[str, ...] = ("Hel", "lo"), role_first: bool = True,
                 error: BaseException | None = None, error_after: int = 0, delay_s: float = 0.0):
        self.pieces = pieces
        self.role_first = role_first  # open the stream with a role-only chunk, as OpenAI and vLLM do
        self.error = error  # raised after ``error_after`` pieces
        self.error_after = error_after
        self.delay_s = delay_s  # before anything: lets a test cancel or time out a job in flight
        self.jobs: list[JobSpec] = []
        self.closed = False

    async def _start(self, job: JobSpec) -> None:
        self.jobs.append(job)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.error is not None and self.error_after == 0:
            raise self.error

    async def complete(self, job: JobSpec) -> Answer:
        await self._start(job)
        text = "".join(self.pieces)
        return s.answer([s.answer_choice(0, text, "stop", chat=job.kind == "chat")], s.usage(1, len(self.pieces)))

    async def stream(self, job: JobSpec) -> AsyncIterator[Chunk]:
        await self._start(job)
        chat = job.kind == "chat"
        if chat and self.role_first:
            yield s.chunk([s.delta_choice(0, "", chat=True, role=True)])
        for i, piece in enumerate(self.pieces):
            if self.error is not None and i == self.error_after:
                raise self.error
            yield s.chunk([s.delta_choice(0, piece, chat=chat)])
        yield s.chunk([s.finish_choice(0, "stop", chat=chat)])
        yield s.usage_chunk(s.usage(1, len(self.pieces)))

    async def generate(self, job: JobSpec) -> Answer:
        await self._start(job)
        return {"generated_text": "".join(self.pieces), "seed": job.params.seed}

    async def classify(self, job: JobSpec) -> Answer:
        await self._start(job)
        return {"prompt_complexity_score": [0.5 for _ in job.body["prompts"]]}

    async def aclose(self) -> None:
        self.closed = True


class ChatOnly(Completions):
    """A backend that serves chat and completions only (like an OpenAI-compatible upstream)."""

    kind = "chat-only"

    async def complete(self, job: JobSpec) -> Answer:
        raise BackendError(500, "not called in these tests")

    async def stream(self, job: JobSpec) -> AsyncIterator[Chunk]:
        raise BackendError(500, "not called in these tests")
        yield {}  # an async generator
