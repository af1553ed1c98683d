"""Native client for every OpenAI-compatible upstream (OpenAI, Groq, vLLM on Modal, any compatible server).

aiohttp with pooled keep-alive connections and orjson: ~0.2 ms of CPU per call, where LiteLLM's acompletion
costs ~3 ms. The request body is the client's own (already validated by the gateway) with ``model`` swapped
for the upstream name, so vendor extensions pass through untouched.

Retries: connection errors, 408/409/429 and 5xx are retried with exponential backoff (honouring the
upstream's ``retry-after``) while no output has reached the client and the request's deadline allows.
Cold starts: an app that scales to zero (Modal) answers 502/503/504 or refuses connections while a container
starts; for such upstreams (``*.modal.run``, or ``cold_start_retry: true`` in ``litellm_params``) those answers
are retried until the request's deadline instead of ``max_retries`` times — the job waits, the client
does not see the cold start as an error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiohttp
import orjson

from core import embeddings
from core.config import ModelEntry
from core.queue import JobSpec
from observability import calls
from workers.backends.base import Answer, BackendError, Chunk, Completions, Embeds, WholeAnswer
from workers.backends.responses_native import native_answer, native_body, native_chunks

log = logging.getLogger("gatehouse.worker")
DEFAULT_BASES = {"openai": "https://api.openai.com/v1", "groq": "https://api.groq.com/openai/v1",
                 "deepinfra": "https://api.deepinfra.com/v1/openai", "together_ai": "https://api.together.xyz/v1"}
# litellm_params keys that configure the call rather than being request defaults
_CALL_KEYS = {"model", "api_base", "api_key", "timeout", "max_retries", "extra_headers", "headers", "rpm", "tpm",
              "cold_start_retry", "modal_app",
              "stream_timeout", "organization", "api_version", "input_cost_per_token", "output_cost_per_token"}
RETRYABLE_STATUS = {408, 409, 429, 500, 502, 503, 504}
RELAYED_HEADERS = ("retry-after", "retry-after-ms")  # an upstream 4xx's headers its client gets too (a 429's)
_ENVELOPE = ("id", "object", "created", "model")
COLD_START_STATUS = {502, 503, 504}  # what a scaling-from-zero app answers while its container starts
COLD_START_MAX_DELAY_S = 5.0
# Models named "*-local" (self-hosted vLLM) default to these unless the request sets them: a low temperature and
# automatic tool choice make tool calling reliable on open models (the seed deployments' convention).
LOCAL_SUFFIX = "-local"
LOCAL_DEFAULTS = {"temperature": 0.3, "tool_choice": "auto"}


def new_session(limit: int = 1024) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=limit, limit_per_host=limit, keepalive_timeout=60, ttl_dns_cache=300)
    return aiohttp.ClientSession(connector=connector, json_serialize=lambda o: orjson.dumps(o).decode(),
                                 auto_decompress=True)


class OpenAICompatibleBackend(Completions, Embeds):
    kind = "openai"
    provides = frozenset({"responses"})  # POST /responses, for entries whose upstream speaks it (ADR 0020)

    def __init__(self, entry: ModelEntry, session: aiohttp.ClientSession, *, retries: int = 2,
                 timeout_s: float = 600.0, on_request: Callable[[], None] | None = None):
        lp = entry.litellm_params
        self.on_request = on_request  # activity hook (hybrid scaling of the Modal app behind this entry)
        base = lp.api_base or DEFAULT_BASES.get(lp.provider)
        if not base:
            raise ValueError(f"model_list entry {entry.model_name!r}: litellm_params.api_base is required "
                             f"for provider {lp.provider!r}")
        self.base = base.rstrip("/")
        self.upstream_model = lp.upstream_model
        self.session = session
        self.retries = lp.max_retries if lp.max_retries is not None else retries
        self.cold_start = bool(lp.extra_params().get("cold_start_retry", ".modal.run" in self.base))
        self.timeout_s = lp.timeout or timeout_s
        self.headers = {"content-type": "application/json", "accept": "application/json"}
        if lp.api_key is not None and lp.api_key.get_secret_value():
            self.headers["authorization"] = f"Bearer {lp.api_key.get_secret_value()}"
        extras = lp.extra_params()
        for key in ("extra_headers", "headers"):
            self.headers.update({str(k): str(v) for k, v in (extras.get(key) or {}).items()})
        self.defaults = {k: v for k, v in extras.items() if k not in _CALL_KEYS}
        if entry.model_name.endswith(LOCAL_SUFFIX):
            self.defaults = {**LOCAL_DEFAULTS, **self.defaults}

    def _build(self, job: JobSpec, stream: bool) -> tuple[str, bytes]:
        if job.kind == "responses":
            return self.base + "/responses", native_body(self.defaults, job.body, self.upstream_model, stream)
        body = {**self.defaults, **job.body, "model": self.upstream_model}
        body.pop("drop_params", None)  # LiteLLM's, honoured by the gateway (ADR 0019): never the upstream's
        if "tools" not in body:
            body.pop("tool_choice", None)  # a tool_choice without tools is an error for OpenAI-compatible servers
        if stream:
            body["stream"] = True
            # always ask for usage: the gateway needs it (metrics, spend) even if the client did not
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        else:
            body.pop("stream", None)
            body.pop("stream_options", None)
        path = "/chat/completions" if job.kind == "chat" else "/completions"
        return self.base + path, orjson.dumps(body)

    def _timeout(self, job: JobSpec) -> aiohttp.ClientTimeout:
        total = max(0.05, min(self.timeout_s, job.remaining()))
        return aiohttp.ClientTimeout(total=total, sock_connect=min(10.0, total))

    async def _post(self, job: JobSpec, url: str, data: bytes) -> aiohttp.ClientResponse:
        """POST with retries; returns a 2xx response whose body is still unread."""
        attempt = 0
        while True:
            try:
                resp = await self.session.post(url, data=data, headers=self.headers, timeout=self._timeout(job))
            except TimeoutError as e:
                raise BackendError(504, "The upstream model did not answer in time.", type_="timeout_error",
                                   code="timeout") from e
            except aiohttp.ClientError as e:
                err = BackendError(502, f"Could not reach the upstream model ({type(e).__name__}).",
                                   code="upstream_unreachable", retryable=True)
                resp = None
            if resp is not None:
                if resp.status < 400:
                    return resp
                err = await _error_from(resp)
            attempt += 1
            cold = self.cold_start and (err.status in COLD_START_STATUS or err.code == "upstream_unreachable")
            if not err.retryable or (attempt > self.retries and not cold):
                raise err
            delay = min(COLD_START_MAX_DELAY_S if cold else 8.0, 0.25 * 2 ** (attempt - 1)) * (0.5 + random.random())
            if err.retry_after is not None:
                delay = max(delay, err.retry_after)
            if delay >= job.remaining():
                raise err
            if cold:
                calls.note_cold_start(job.model)
            calls.note_retry("openai", _retry_reason(err, cold))
            log.info("upstream %s answered %d; %s %d in %.2fs", self.base, err.upstream_status or err.status,
                     "cold start, waiting: try" if cold else "retry", attempt, delay)
            await asyncio.sleep(delay)

    def _request(self, job: JobSpec, stream: bool) -> tuple[str, bytes]:
        if self.on_request is not None:
            self.on_request()
        return self._build(job, stream)

    async def complete(self, job: JobSpec) -> Answer:
        url, data = self._request(job, stream=False)
        resp = await self._post(job, url, data)
        async with resp:
            with _reading():
                raw = await resp.read()
        try:
            out = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise BackendError(502, "The upstream model returned a body that is not JSON.") from e
        if job.kind == "responses":
            return native_answer(out)
        # everything but the envelope the gateway rewrites: vendor fields (e.g. qgpt's quantum_diagnostics) pass
        return {k: v for k, v in out.items() if k not in _ENVELOPE}

    async def stream(self, job: JobSpec) -> AsyncIterator[Chunk]:
        url, data = self._request(job, stream=True)
        resp = await self._post(job, url, data)
        async with resp:
            with _reading(streaming=True):
                if job.kind == "responses":
                    async for event in native_chunks(resp, sse_data):
                        yield event
                    return
                if "text/event-stream" not in resp.headers.get("content-type", ""):
                    # some servers ignore stream=true; relay their whole answer as one result (the gateway replays
                    # it as chunks)
                    out = _json(await resp.read())
                    yield WholeAnswer({k: out[k] for k in ("choices", "usage", "system_fingerprint") if k in out})
                    return
                finished = False  # a choice's finish_reason was seen: the answer is complete even without [DONE]
                async for payload in sse_data(resp.content):
                    if payload == b"[DONE]":
                        return
                    try:
                        chunk = orjson.loads(payload)
                    except orjson.JSONDecodeError:
                        continue
                    if "error" in chunk:
                        e = chunk["error"] or {}
                        raise BackendError(502, str(e.get("message") or "upstream stream error"), code=e.get("code"))
                    if not finished:
                        choices = chunk.get("choices") or ()
                        finished = any(isinstance(c, dict) and c.get("finish_reason") for c in choices)
                    yield {k: chunk[k] for k in ("choices", "usage", "system_fingerprint") if k in chunk}
                if not finished:  # the body ended cleanly, but the answer did not: not a success
                    raise BackendError(502, "The upstream model's stream ended before the answer did (no finish_reason,"
                                       " no [DONE]).", code="upstream_stream_incomplete")

    async def embed(self, job: JobSpec) -> Answer:
        """``POST {api_base}/embeddings`` with the client's body (vLLM's embedding servers speak it too), retried
        as completions are; the vectors come back in the format the client asked for."""
        if self.on_request is not None:
            self.on_request()
        data = orjson.dumps({**job.body, "model": self.upstream_model})
        resp = await self._post(job, self.base + "/embeddings", data)
        async with resp:
            with _reading():
                raw = await resp.read()
        try:
            return embeddings.upstream_answer(orjson.loads(raw), job.body.get("encoding_format"))
        except ValueError as e:  # not JSON (orjson's error is a ValueError), or not an embeddings body
            raise BackendError(502, f"The upstream model's embeddings answer is not usable: {e}.") from e


@contextlib.contextmanager
def _reading(streaming: bool = False) -> Iterator[None]:
    """While reading an answer's body: the upstream hanging up or stalling is its failure (502/504), not ours. A
    stream cut midway (connection reset or closed before its end) is ``upstream_stream_interrupted``."""
    try:
        yield
    except TimeoutError as e:
        raise BackendError(504, "The upstream model stopped sending before it finished.", type_="timeout_error",
                           code="timeout") from e
    except (aiohttp.ClientError, ConnectionError) as e:
        if streaming:
            raise BackendError(502, f"The upstream model's stream was cut off midway ({type(e).__name__}).",
                               code="upstream_stream_interrupted") from e
        raise BackendError(502, f"The upstream model broke off its answer ({type(e).__name__}).",
                           code="upstream_disconnected") from e


def _json(raw: bytes) -> dict[str, Any]:
    """An upstream's whole answer as a JSON object; a body that is not one is the upstream's failure (502)."""
    try:
        out = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise BackendError(502, "The upstream model returned a body that is not JSON.") from e
    if not isinstance(out, dict):
        raise BackendError(502, "The upstream model returned JSON that is not an object.")
    return out


async def sse_data(content: aiohttp.StreamReader) -> AsyncIterator[bytes]:
    """The ``data:`` payloads of a server-sent event stream, split from whatever each socket read brought
    (one read usually holds several events: cheaper than reading line by line)."""
    rest = b""
    async for block in content.iter_any():
        lines = (rest + block).split(b"\n")
        rest = lines.pop()
        for line in lines:
            if line.startswith(b"data:"):
                yield line[5:].strip()
    if rest.startswith(b"data:"):
        yield rest[5:].strip()


async def _error_from(resp: aiohttp.ClientResponse) -> BackendError:
    async with resp:
        raw = await resp.read()
    message, code, type_, param = None, None, None, None
    try:
        e = orjson.loads(raw).get("error")
        if isinstance(e, dict):
            message = str(e.get("message") or "") or None
            code, type_, param = e.get("code"), e.get("type"), e.get("param")
        elif isinstance(e, str):
            message = e
    except (orjson.JSONDecodeError, AttributeError):
        pass
    status = resp.status
    if status >= 500:  # the upstream failed: 502 upstream_error to the client, its message kept, its status logged
        err = BackendError(502, f"The upstream model answered HTTP {status}" + (f": {message}" if message else "."),
                           type_="upstream_error", code="upstream_error", retryable=status in RETRYABLE_STATUS,
                           upstream_status=status)
    else:  # the upstream's own 4xx passes through as it was (a 429 with its retry-after)
        err = BackendError(status, message or f"The upstream model answered HTTP {status}.", type_=type_, code=code,
                           param=param, retryable=status in RETRYABLE_STATUS, upstream_status=status,
                           headers={h: v for h in RELAYED_HEADERS if (v := resp.headers.get(h))})
    ra = resp.headers.get("retry-after")
    if ra:
        try:
            err.retry_after = float(ra)
        except ValueError:
            pass
    return err


def _retry_reason(err: BackendError, cold: bool) -> str:
    """A bounded label for the retry metric."""
    if cold:
        return "cold_start"
    if err.status == 429:
        return "rate_limited"
    if err.code == "upstream_unreachable":
        return "unreachable"
    return "server_error"
