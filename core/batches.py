"""The Batch API's contract: what the gateway (which creates, shows and cancels batches) and the batch runner in
the workers (which validates, runs and finishes them) agree on besides the tables of migration 0004.

    POST /v1/batches ─► batches row (validating) ─► runner: validate the input file line by line
        ─► batch_lines rows (in_progress) ─► each line a job on the batch lane (core.queue) ─► worker
        ─► its last events into RESULTS_STREAM ─► runner: the line's result into batch_lines, counts, spend
        ─► finalizing: output and error files (core.files) ─► completed

A line's job id is ``<batch id>:<line>``, so it is the same however often the line is fed: a line already
queued or running is not queued again (its job key exists), and one that finished is not either (its line is
in the batch's done hash, written in the same transaction as its result). Results are written to PostgreSQL
only where the line is still pending: each line's result lands exactly once.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any, Final

import orjson
from pydantic import ValidationError

from core import schemas as p
from core.embeddings import EmbeddingRequest, embedding_list
from core.ids import sortable_id

BATCH_QUEUE: Final = "gatehouse:queue:batch"  # the batch lane (core.queue.LANES)
RESULTS_STREAM: Final = "gatehouse:batch:results"  # every finished line: {j: job id, e: its events}
DONE_PREFIX: Final = "gatehouse:batch:done:"  # hash per batch: line -> 1 once its result is in RESULTS_STREAM
RUNNER_KEY: Final = "gatehouse:batch:runner"  # the worker whose runner drives every batch now (a lease)
LINE_JOB_PREFIX: Final = "batch_"  # request ids are uuid hex: no interactive job starts with this

ENDPOINTS: Final[dict[str, type[p.JobRequest]]] = {
    "/v1/chat/completions": p.ChatCompletionRequest,
    "/v1/completions": p.CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
}
COMPLETION_WINDOWS: Final = {"24h": 86_400}
ACTIVE: Final = ("validating", "in_progress", "finalizing", "cancelling")
FINAL: Final = ("completed", "failed", "expired", "cancelled")
MAX_ERRORS: Final = 1_000  # validation errors listed in a failed batch (each names its line)
CUSTOM_ID_MAX: Final = 512


def new_batch_id() -> str:
    """``batch_`` + 12 hex digits of milliseconds since 1970 + 12 random ones: ids sort by creation time."""
    return sortable_id("batch_", 6)


def line_job_id(batch_id: str, line: int) -> str:
    return f"{batch_id}:{line}"


def parse_line_job(job_id: str) -> tuple[str, int] | None:
    """(batch id, line) of a batch line's job id; None for any other job."""
    if not job_id.startswith(LINE_JOB_PREFIX):
        return None
    batch_id, _, line = job_id.rpartition(":")
    return (batch_id, int(line)) if line.isdigit() else None


def done_key(batch_id: str) -> str:
    return DONE_PREFIX + batch_id


def kind_of(endpoint: str) -> str:
    """The job kind of a batch's endpoint (chat, completion, embed)."""
    model = ENDPOINTS.get(endpoint)
    return model.kind if model is not None else "completion"


# ── validation ────────────────────────────────────────────────────────────────────────────────────────
@dataclass(frozen=True, slots=True)
class LineError:
    """One bad input line, as OpenAI lists it in ``errors.data`` (``line`` counts from 1)."""

    line: int
    code: str
    message: str
    param: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"code": self.code, "message": self.message, "param": self.param, "line": self.line}


@dataclass(frozen=True, slots=True)
class Line:
    line: int
    custom_id: str
    model: str
    body: bytes  # the request body, JSON


class LineValidator:
    """Checks input lines one at a time, as the runner reads them: invalid JSON, a missing or repeated
    ``custom_id``, a method other than POST, a ``url`` other than the batch's endpoint, ``stream: true``, a body
    the endpoint would refuse, an unknown model or one the batch's key may not use."""

    def __init__(self, endpoint: str, models: Collection[str], allowed: Collection[str] | None,
                 max_tokens_limit: int):
        self.endpoint = endpoint
        self.request_model = ENDPOINTS[endpoint]
        self.models = models
        self.allowed = None if allowed is None else frozenset(allowed)
        self.max_tokens_limit = max_tokens_limit
        self._seen: set[str] = set()

    def check(self, n: int, raw: bytes) -> Line | LineError:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return LineError(n, "invalid_json", f"Line {n} is not valid JSON.")
        if not isinstance(obj, dict):
            return LineError(n, "invalid_json", f"Line {n} must be a JSON object.")
        custom_id = obj.get("custom_id")
        if not isinstance(custom_id, str) or not custom_id:
            return LineError(n, "missing_required_parameter", "Each line needs a non-empty string custom_id.",
                             "custom_id")
        if len(custom_id) > CUSTOM_ID_MAX or "\x00" in custom_id:
            return LineError(n, "invalid_value", f"custom_id is longer than {CUSTOM_ID_MAX} characters or "
                             "holds a NUL.", "custom_id")
        if custom_id in self._seen:
            return LineError(n, "duplicate_custom_id", f"The custom_id {custom_id!r} is used by an earlier line; "
                             "each line needs its own.", "custom_id")
        self._seen.add(custom_id)
        if obj.get("method") != "POST":
            return LineError(n, "invalid_value", "Each line's method must be POST.", "method")
        if obj.get("url") != self.endpoint:
            return LineError(n, "mismatched_endpoint", f"The line's url {str(obj.get('url'))[:100]!r} is not the "
                             f"batch's endpoint {self.endpoint}.", "url")
        body = obj.get("body")
        if not isinstance(body, dict):
            return LineError(n, "invalid_value", "Each line needs a JSON object body.", "body")
        return self._check_body(n, custom_id, body)

    def _check_body(self, n: int, custom_id: str, body: dict[str, Any]) -> Line | LineError:
        if body.get("stream"):
            return LineError(n, "invalid_value", "Batch requests cannot stream (stream: true).", "body.stream")
        try:
            req = self.request_model.model_validate(body)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(x) for x in first.get("loc", ())) or None
            return LineError(n, "invalid_request", f"Invalid body: {first.get('msg', 'invalid')}"
                             + (f" ({where})" if where else ""), f"body.{where}" if where else "body")
        if req.model not in self.models:
            return LineError(n, "model_not_found", f"The model `{req.model[:100]}` does not exist.", "body.model")
        if self.allowed is not None and req.model not in self.allowed:
            return LineError(n, "model_not_allowed", f"This batch's key may not use the model `{req.model}`.",
                             "body.model")
        limit = req.token_limit() if isinstance(req, p.SamplingRequest) else None
        if limit is not None and limit > self.max_tokens_limit:
            return LineError(n, "invalid_value", f"max_tokens is too large: {limit} (at most "
                             f"{self.max_tokens_limit}).", "body.max_tokens")
        return Line(n, custom_id, req.model, orjson.dumps(body))


# ── results ───────────────────────────────────────────────────────────────────────────────────────────
@dataclass(frozen=True, slots=True)
class LineResult:
    """A finished line: ``ok`` lines go to the output file, the others to the error file."""

    line: int
    ok: bool
    record: bytes  # the output (or error) file's line, JSON, without newline
    prompt_tokens: int = 0
    completion_tokens: int = 0


def request_line_id() -> str:
    return "batch_req_" + uuid.uuid4().hex


def answered(line: int, custom_id: str, kind: str, model: str, events: Iterable[dict[str, Any]]) -> LineResult:
    """A line's output-file (or error-file) record from its job's events."""
    request_id = uuid.uuid4().hex
    created = p.now()
    chat = kind == "chat"
    rid = ("chatcmpl-" if chat else "cmpl-") + request_id
    texts: dict[int, list[str]] = {}
    finish: dict[int, str | None] = {}
    usage: dict[str, Any] | None = None
    body: dict[str, Any] | None = None
    for ev in events:
        k = ev.get("k")
        if k == "error":
            status = int(ev.get("status") or 500)
            error = {"message": ev.get("message"), "type": ev.get("type"), "param": ev.get("param"),
                     "code": ev.get("code")}
            return failed_http(line, custom_id, status, request_id, error)
        d = ev.get("d") or {}
        model = str(d.get("model") or model)
        if k == "result" and kind == "embed":
            usage = d.get("usage")
            body = embedding_list(d, model)
        elif k == "result":
            usage = d.get("usage")
            whole = (p.chat_completion if chat else p.text_completion)(rid, model, created, d.get("choices", []),
                                                                         usage)
            body = {**whole, **{key: v for key, v in d.items() if key not in whole}}
        elif k == "chunk":
            usage = d.get("usage") or usage
            for c in d.get("choices") or ():
                i = c.get("index", 0)
                piece = (c.get("delta") or {}).get("content") if chat else c.get("text")
                if piece:
                    texts.setdefault(i, []).append(piece)
                finish[i] = c.get("finish_reason") or finish.get(i)
    if body is None:
        choices = [p.answer_choice(i, "".join(texts.get(i, [])), finish.get(i) or "stop", chat=chat)
                   for i in sorted(set(texts) | set(finish))]
        body = (p.chat_completion if chat else p.text_completion)(rid, model, created, choices, usage)
    record = {"id": request_line_id(), "custom_id": custom_id,
              "response": {"status_code": 200, "request_id": request_id, "body": body}, "error": None}
    u = usage or {}
    return LineResult(line, True, orjson.dumps(record), int(u.get("prompt_tokens") or 0),
                      int(u.get("completion_tokens") or 0))


def failed_http(line: int, custom_id: str, status: int, request_id: str, error: dict[str, Any]) -> LineResult:
    """A line the model or the gateway answered with an HTTP error (it goes to the error file)."""
    record = {"id": request_line_id(), "custom_id": custom_id,
              "response": {"status_code": status, "request_id": request_id, "body": {"error": error}}, "error": None}
    return LineResult(line, False, orjson.dumps(record))


def not_run(line: int, custom_id: str, code: str, message: str) -> LineResult:
    """A line that never got an HTTP answer: expired, cancelled, or lost with its workers."""
    record = {"id": request_line_id(), "custom_id": custom_id, "response": None,
              "error": {"code": code, "message": message}}
    return LineResult(line, False, orjson.dumps(record))


# ── feeding the batch lane ────────────────────────────────────────────────────────────────────────────
# KEYS: 1 batch queue, 2 wake list, 3 fair hash, 4 the batch's done hash, 5 the lane's tenants hash
# ARGV: per line (8): job id, arq job key, payload, ttl (ms), tenant, priority, line number, label (job_label)
# Returns per line: 1 queued, 0 already queued or running, -1 finished (its result is on its way). A wake-up
# token per line queued: each can wake a different worker.
FEED_LUA = """
local out, queued = {}, 0
for i = 1, #ARGV, 8 do
  if redis.call('HEXISTS', KEYS[4], ARGV[i + 6]) == 1 then
    out[#out + 1] = -1
  elseif redis.call('EXISTS', ARGV[i + 1]) == 1 then
    out[#out + 1] = 0
  else
    local score = fair_score(KEYS[3], ARGV[i + 4], tonumber(ARGV[i + 5]))
    redis.call('SET', ARGV[i + 1], ARGV[i + 2], 'PX', ARGV[i + 3])
    redis.call('ZADD', KEYS[1], score, ARGV[i])
    redis.call('HSET', KEYS[5], ARGV[i], ARGV[i + 7])
    out[#out + 1] = 1
    queued = queued + 1
  end
end
for _ = 1, queued do redis.call('LPUSH', KEYS[2], '1') end
if queued > 0 then redis.call('PEXPIRE', KEYS[2], 60000) end
return out
"""
FEED_ARGS_PER_LINE: Final = 8
