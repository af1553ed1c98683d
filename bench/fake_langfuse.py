"""A local Langfuse for tests (aiohttp.web): the parts of its API Gatehouse uses, backed by what it received.

    POST /api/public/otel/v1/traces     OTLP/HTTP protobuf (gzip too), Basic auth public:secret; stores the spans
    GET  /api/public/traces/{traceId}   the trace: name, userId, sessionId, tags, metadata, input/output,
                                        observations (full)
    GET  /api/public/traces             traces, newest first (``data`` + ``meta``; userId, sessionId, name, tags,
                                        page, limit filters)
    GET  /api/public/v2/observations    observations (traceId, type, name, userId, sessionId, parentObservationId
                                        filters; ``fields`` groups; cursor pagination)
    GET  /api/public/health             {"status": "OK", "version": ...} (no auth, as in Langfuse)

Spans become traces and observations the way Langfuse maps OpenTelemetry attributes (its
OtelIngestionProcessor): ``langfuse.observation.type`` (else ``gen_ai.operation.name``, else a model name)
gives the type; ``langfuse.observation.*`` the model, parameters, usage and cost details, completion start
time, level and status message (else the span's status); ``langfuse.trace.*``, ``user.id`` and ``session.id``
the trace's fields, from the root span (no parent) and from any span that sets them. Metadata values sent
JSON-encoded (as SDK v5 does) are decoded. Unlike Langfuse there is no ingestion delay and no cost inference.

Failure modes, for tests: ``mode = "slow"`` stalls ``stall_s`` seconds before answering an export, ``"error"``
answers 500; stopping the server makes it "down"; ``legacy_trace_api = False`` hides the trace endpoint (clients
must fall back to v2 observations). Run alone:
``python -m bench.fake_langfuse --port 3000 --public-key pk-lf-test --secret-key sk-lf-test``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import binascii
import gzip
import json
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from bench.app_thread import AppThread

VERSION = "3.0.0-fake"
GENAI_GENERATION_OPERATIONS = {"chat", "completion", "text_completion", "generate_content", "generate"}
V2_FIELD_GROUPS = {
    "core": ("id", "traceId", "startTime", "endTime", "projectId", "parentObservationId", "type"),
    "basic": ("name", "level", "statusMessage", "version", "environment", "bookmarked", "public", "userId",
              "sessionId", "isRootObservation"),
    "time": ("completionStartTime", "createdAt", "updatedAt"),
    "io": ("input", "output"),
    "metadata": ("metadata",),
    "model": ("model", "internalModelId", "modelParameters"),
    "usage": ("usageDetails", "costDetails", "totalCost", "usagePricingTierName"),
    "prompt": ("promptId", "promptName", "promptVersion"),
    "metrics": ("latency", "timeToFirstToken"),
    "trace_context": ("tags", "release", "traceName"),
}


class FakeLangfuse:
    """The server's state: every span received (decoded), and the failure mode."""

    def __init__(self, public_key: str = "pk-lf-test", secret_key: str = "sk-lf-test"):
        self.public_key, self.secret_key = public_key, secret_key
        self.spans: list[dict[str, Any]] = []
        self.exports = 0  # export requests answered 200
        self.export_attempts = 0  # export requests received, whatever the answer
        self.export_headers: list[dict[str, str]] = []
        self.mode = "ok"  # ok | slow | error | discard
        self.stall_s = 5.0
        self.legacy_trace_api = True  # False: GET /api/public/traces/{id} answers 404, as where only v2 reads are
        self.app = web.Application(client_max_size=64 * 1024 * 1024)
        self.app.router.add_post("/api/public/otel/v1/traces", self.export)
        self.app.router.add_get("/api/public/traces/{trace_id}", self.get_trace)
        self.app.router.add_get("/api/public/traces", self.list_traces)
        self.app.router.add_get("/api/public/v2/observations", self.list_observations)
        self.app.router.add_get("/api/public/health", self.health)

    # ── ingestion ────────────────────────────────────────────────────────────────────────────────────
    async def export(self, request: web.Request) -> web.Response:
        self.export_attempts += 1
        if not self._authorized(request):
            return _error(401, "Invalid credentials")
        if self.mode == "discard":  # benchmarks: a Langfuse whose CPU is not on this machine
            await request.read()
            self.exports += 1
            return web.Response(body=b"", content_type="application/x-protobuf")
        self.export_headers.append({k.lower(): v for k, v in request.headers.items()})
        if self.mode == "slow":
            await asyncio.sleep(self.stall_s)
        if self.mode == "error":
            return _error(500, "fake Langfuse is failing on purpose")
        if request.content_type != "application/x-protobuf":
            return _error(415, "this fake takes OTLP protobuf only")
        body = await request.read()
        if body[:2] == b"\x1f\x8b":  # aiohttp already undoes Content-Encoding: gzip; this catches the rest
            body = gzip.decompress(body)
        message = ExportTraceServiceRequest()
        try:
            message.ParseFromString(body)
        except Exception:  # noqa: BLE001 - the protobuf library raises DecodeError or worse
            return _error(400, "not an ExportTraceServiceRequest")
        self.spans.extend(decode_request(message))
        self.exports += 1
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(),
                            content_type="application/x-protobuf")

    # ── public API ───────────────────────────────────────────────────────────────────────────────────
    async def health(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "OK", "version": VERSION})

    async def get_trace(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Invalid credentials")
        trace = self.trace(request.match_info["trace_id"]) if self.legacy_trace_api else None
        if trace is None:
            return _error(404, f"Trace {request.match_info['trace_id']} not found within authorized project")
        return web.json_response(trace)

    async def list_traces(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Invalid credentials")
        q = request.query
        traces = [t for t in (self.trace(tid) for tid in reversed(self.trace_ids())) if t is not None]
        for field in ("userId", "sessionId", "name"):
            if q.get(field):
                traces = [t for t in traces if t[field] == q[field]]
        for tag in q.getall("tags", []):
            traces = [t for t in traces if tag in t["tags"]]
        page, limit = max(1, int(q.get("page", "1"))), min(100, max(1, int(q.get("limit", "50"))))
        rows = traces[(page - 1) * limit: page * limit]
        for t in rows:
            t["observations"] = [o["id"] for o in t["observations"]]
        return web.json_response({"data": rows, "meta": {"page": page, "limit": limit, "totalItems": len(traces),
                                                          "totalPages": -(-len(traces) // limit)}})

    async def list_observations(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return _error(401, "Invalid credentials")
        q = request.query
        rows = sorted((self.observation(s) for s in list(self.spans)), key=lambda o: o["startTime"])
        for field in ("traceId", "type", "name", "userId", "sessionId", "parentObservationId", "level"):
            if q.get(field):
                rows = [o for o in rows if o.get(field) == q[field]]
        limit = min(1000, max(1, int(q.get("limit", "50"))))
        offset = int(base64.b64decode(q["cursor"]).decode()) if q.get("cursor") else 0
        groups = {"core", *(g.strip() for g in q.get("fields", "core,basic").split(",") if g.strip())}
        keys = {k for g in groups for k in V2_FIELD_GROUPS.get(g, ())}
        page = []
        for o in rows[offset: offset + limit]:
            row = {k: o.get(k) for k in keys}
            for k in ("input", "output"):  # the v2 API returns them as the raw strings received
                if k in row:
                    row[k] = o["raw"][k]
            page.append(row)
        meta: dict[str, Any] = {}
        if offset + limit < len(rows):
            meta["cursor"] = base64.b64encode(str(offset + limit).encode()).decode()
        return web.json_response({"data": page, "meta": meta})

    # ── the read model ───────────────────────────────────────────────────────────────────────────────
    def trace_ids(self) -> list[str]:
        """Trace ids in the order their first span arrived."""
        return list(dict.fromkeys(s["traceId"] for s in self.spans))

    def spans_of(self, trace_id: str) -> list[dict[str, Any]]:
        return [s for s in list(self.spans) if s["traceId"] == trace_id]

    def wait_for_spans(self, trace_id: str, count: int, timeout_s: float = 10.0) -> list[dict[str, Any]]:
        """The trace's spans once ``count`` have arrived (TimeoutError past ``timeout_s``)."""
        deadline = time.monotonic() + timeout_s
        while True:
            spans = self.spans_of(trace_id)
            if len(spans) >= count:
                return spans
            if time.monotonic() > deadline:
                raise TimeoutError(f"{len(spans)} of {count} spans of trace {trace_id} arrived")
            time.sleep(0.02)

    def observation(self, span: dict[str, Any]) -> dict[str, Any]:
        """A span as a Langfuse observation (the fields of the public API)."""
        a = span["attributes"]
        usage = _parse(a.get("langfuse.observation.usage_details")) or {}
        cost = _parse(a.get("langfuse.observation.cost_details")) or {}
        start, end = _iso_ns(span["startTimeUnixNano"]), _iso_ns(span["endTimeUnixNano"])
        completion_start = _completion_start(a.get("langfuse.observation.completion_start_time"))
        status = span["status"]
        raw_in, raw_out = a.get("langfuse.observation.input"), a.get("langfuse.observation.output")
        return {
            "id": span["spanId"], "traceId": span["traceId"], "projectId": "fake-project",
            "parentObservationId": span["parentSpanId"], "type": _observation_type(a),
            "name": span["name"], "startTime": start, "endTime": end, "completionStartTime": completion_start,
            "model": a.get("langfuse.observation.model.name") or a.get("gen_ai.request.model"),
            "modelParameters": _parse(a.get("langfuse.observation.model.parameters")) or {},
            "input": _parse(raw_in), "output": _parse(raw_out), "raw": {"input": raw_in, "output": raw_out},
            "metadata": _metadata(a, "langfuse.observation.metadata"),
            "usageDetails": usage, "costDetails": cost, "totalCost": cost.get("total"),
            "level": a.get("langfuse.observation.level") or ("ERROR" if status["code"] == 2 else "DEFAULT"),
            "statusMessage": a.get("langfuse.observation.status_message") or status["message"] or None,
            "version": a.get("langfuse.version"), "environment": _environment(span),
            "userId": a.get("user.id"), "sessionId": a.get("session.id"),
            "traceName": a.get("langfuse.trace.name"), "tags": list(a.get("langfuse.trace.tags") or []),
            "release": a.get("langfuse.release") or span["resource"].get("langfuse.release"),
            "isRootObservation": span["parentSpanId"] is None, "bookmarked": False, "public": False,
            "latency": (span["endTimeUnixNano"] - span["startTimeUnixNano"]) / 1e9,
            "timeToFirstToken": _seconds_between(start, completion_start),
            "createdAt": start, "updatedAt": end, "internalModelId": None, "usagePricingTierName": None,
            "promptId": None, "promptName": None, "promptVersion": None,
        }

    def trace(self, trace_id: str) -> dict[str, Any] | None:
        """The trace as ``GET /api/public/traces/{id}`` returns it (None when no span of it arrived)."""
        spans = self.spans_of(trace_id)
        if not spans:
            return None
        root = next((s for s in spans if s["parentSpanId"] is None), None)
        trace: dict[str, Any] = {"id": trace_id, "name": None, "userId": None, "sessionId": None, "tags": [],
                                 "metadata": {}, "input": None, "output": None, "release": None, "version": None,
                                 "public": False, "bookmarked": False, "environment": _environment(spans[0]),
                                 "timestamp": _iso_ns(min(s["startTimeUnixNano"] for s in spans))}
        for span in [s for s in spans if s is not root] + ([root] if root else []):  # the root wins
            a = span["attributes"]
            trace["name"] = a.get("langfuse.trace.name") or trace["name"]
            trace["userId"] = a.get("user.id") or trace["userId"]
            trace["sessionId"] = a.get("session.id") or trace["sessionId"]
            trace["tags"] = sorted({*trace["tags"], *(a.get("langfuse.trace.tags") or [])})
            trace["metadata"].update(_metadata(a, "langfuse.trace.metadata"))
            trace["release"] = a.get("langfuse.release") or trace["release"]
        if root is not None:
            obs = self.observation(root)
            trace["name"] = trace["name"] or root["name"]
            trace["metadata"].update(obs["metadata"])
            trace["input"], trace["output"] = obs["input"], obs["output"]
            trace["timestamp"] = obs["startTime"]
            trace["latency"] = obs["latency"]
        observations = sorted((self.observation(s) for s in spans), key=lambda o: o["startTime"])
        for o in observations:
            o.pop("raw")
        trace["observations"] = observations
        trace["totalCost"] = sum(o["totalCost"] or 0 for o in observations)
        trace["scores"] = []
        trace["htmlPath"] = f"/project/fake-project/traces/{trace_id}"
        return trace

    def _authorized(self, request: web.Request) -> bool:
        header = request.headers.get("authorization", "")
        if not header.startswith("Basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:]).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return False
        return user == self.public_key and password == self.secret_key


# ── OTLP decoding ─────────────────────────────────────────────────────────────────────────────────────
def decode_request(message: ExportTraceServiceRequest) -> list[dict[str, Any]]:
    """Every span of an export request, with its resource and scope, as plain Python."""
    out = []
    for resource_spans in message.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            scope = {"name": scope_spans.scope.name, "version": scope_spans.scope.version,
                     "attributes": _attributes(scope_spans.scope.attributes)}
            for span in scope_spans.spans:
                out.append({
                    "traceId": span.trace_id.hex(), "spanId": span.span_id.hex(),
                    "parentSpanId": span.parent_span_id.hex() or None, "name": span.name, "kind": span.kind,
                    "startTimeUnixNano": span.start_time_unix_nano, "endTimeUnixNano": span.end_time_unix_nano,
                    "attributes": _attributes(span.attributes),
                    "status": {"code": span.status.code, "message": span.status.message},
                    "events": [{"name": e.name, "timeUnixNano": e.time_unix_nano,
                                "attributes": _attributes(e.attributes)} for e in span.events],
                    "resource": resource, "scope": scope})
    return out


def _attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs}


def _value(v: Any) -> Any:
    """An OTLP AnyValue as Python."""
    kind = v.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return _attributes(v.kvlist_value.values)
    return getattr(v, kind)


# ── Langfuse's mapping, simplified ────────────────────────────────────────────────────────────────────
def _observation_type(a: dict[str, Any]) -> str:
    declared = a.get("langfuse.observation.type")
    if declared:
        return str(declared).upper()
    if a.get("gen_ai.operation.name") in GENAI_GENERATION_OPERATIONS:
        return "GENERATION"
    if a.get("langfuse.observation.model.name") or a.get("gen_ai.request.model"):
        return "GENERATION"
    return "SPAN"


def _metadata(a: dict[str, Any], prefix: str) -> dict[str, Any]:
    """``prefix`` (a JSON object) merged with ``prefix.<key>`` attributes, JSON-encoded values decoded."""
    meta = _parse(a.get(prefix)) if isinstance(a.get(prefix), str) else {}
    meta = dict(meta) if isinstance(meta, dict) else {}
    for key, value in a.items():
        if key.startswith(prefix + "."):
            meta[key[len(prefix) + 1:]] = _parse(value)
    return meta


def _parse(value: Any) -> Any:
    """JSON text as what it encodes; anything else (a plain string, a number) as it is."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except ValueError:
        return value


def _completion_start(value: Any) -> str | None:
    parsed = _parse(value)  # the SDK sends a JSON string, older ones a bare ISO time
    if not isinstance(parsed, str):
        return None
    try:
        datetime.fromisoformat(parsed)  # Python 3.11 reads the "Z"
    except ValueError:
        return None
    return parsed


def _environment(span: dict[str, Any]) -> str:
    return (span["attributes"].get("langfuse.environment") or span["resource"].get("langfuse.environment")
            or "default")


def _iso_ns(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


def _seconds_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"message": message}, status=status)


# ── running it ────────────────────────────────────────────────────────────────────────────────────────
class LangfuseThread(AppThread):
    """A FakeLangfuse on 127.0.0.1 in a background thread (for tests): ``base_url``, ``fake``, ``stop()`` (which
    also makes the "down" case: the port refuses connections). ``port=0`` picks a free port."""

    name = "langfuse"

    def __init__(self, port: int = 0, public_key: str = "pk-lf-test", secret_key: str = "sk-lf-test"):
        self.fake = FakeLangfuse(public_key, secret_key)
        super().__init__(self.fake.app, port)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=3000)
    parser.add_argument("--public-key", default="pk-lf-test")
    parser.add_argument("--secret-key", default="sk-lf-test")
    parser.add_argument("--mode", choices=("ok", "slow", "error", "discard"), default="ok",
                        help="ok; slow: stall --stall seconds before answering each export; error: answer 500; "
                             "discard: answer 200 without decoding or keeping anything (benchmarks)")
    parser.add_argument("--stall", type=float, default=5.0, help="seconds a slow export stalls (default 5)")
    args = parser.parse_args()
    fake = FakeLangfuse(args.public_key, args.secret_key)
    fake.mode, fake.stall_s = args.mode, args.stall
    web.run_app(fake.app, host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
