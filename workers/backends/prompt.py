"""The text a model that takes a plain prompt continues: chat messages joined one per line, or a completion
request's prompt (the local char-GPT and the qgpt Modal class take text, not chat turns)."""

from __future__ import annotations

from core.queue import JobSpec
from workers.backends.base import BackendError


def prompt_of(job: JobSpec) -> str:
    body = job.body
    if job.kind == "chat":
        parts = []
        for m in body.get("messages") or []:
            c = m.get("content")
            if isinstance(c, list):
                c = "".join(str(p.get("text", "")) for p in c if isinstance(p, dict))
            if c:
                parts.append(str(c))
        return "\n".join(parts)
    prompt = body.get("prompt", "")
    if isinstance(prompt, list):
        if prompt and all(isinstance(x, str) for x in prompt):
            return str(prompt[0])
        raise BackendError(400, "This model takes text prompts, not token ids.", param="prompt",
                           code="invalid_value")
    return str(prompt)
