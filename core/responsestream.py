"""A chat completions stream as the Responses API's event stream (ADR 0020).

    response.created, response.in_progress
    per message:  response.output_item.added, response.content_part.added, response.output_text.delta…,
                  response.output_text.done, response.content_part.done, response.output_item.done
    per tool call: response.output_item.added, response.function_call_arguments.delta…,
                  response.function_call_arguments.done, response.output_item.done
    response.completed (or response.incomplete when the answer was cut; error + response.failed on a failure)

Every event carries its ``sequence_number``; on the wire each is ``event: <type>`` + ``data: <json>``, as OpenAI
sends them (no ``[DONE]``). Only the first choice is translated: the Responses API has no ``n``.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson

from core.responses import finished, function_call, new_id, responses_param, text_part, usage_of

Event = dict[str, Any]


def sse(event: Event) -> bytes:
    return b"event: " + str(event["type"]).encode() + b"\ndata: " + orjson.dumps(event) + b"\n\n"


class StreamTranslator:
    """Feed it chat chunks (``chunk``); it answers the Responses events each one makes. ``response`` is the
    Response skeleton (core.responses.skeleton); ``final`` is the finished Response."""

    def __init__(self, response: dict[str, Any]):
        self.response = response
        self.seq = 0
        self.output: list[dict[str, Any]] = []
        self.message: int | None = None  # output index of the open message item
        self.part: str | None = None  # the open content part's type (output_text or refusal)
        self.calls: dict[int, int] = {}  # chat tool-call index → output index (open calls)
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def event(self, type_: str, **fields: Any) -> Event:
        ev = {"type": type_, "sequence_number": self.seq, **fields}
        self.seq += 1
        return ev

    def snapshot(self) -> dict[str, Any]:
        return {**copy.deepcopy(self.response), "output": copy.deepcopy(self.output)}

    def opening(self) -> list[Event]:
        return [self.event("response.created", response=self.snapshot()),
                self.event("response.in_progress", response=self.snapshot())]

    def chunk(self, chunk: dict[str, Any]) -> list[Event]:
        out: list[Event] = []
        if chunk.get("model"):
            self.response["model"] = chunk["model"]
        if chunk.get("usage"):
            self.usage = chunk["usage"]
        for choice in chunk.get("choices") or ():
            if choice.get("index", 0) != 0:
                continue
            delta = choice.get("delta") or {}
            if delta.get("content"):
                out.extend(self._text("output_text", delta["content"]))
            if delta.get("refusal"):
                out.extend(self._text("refusal", delta["refusal"]))
            for position, call in enumerate(delta.get("tool_calls") or ()):
                out.extend(self._call(call, position))
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def closing(self) -> list[Event]:
        """Close what is open; ``response.completed`` (``response.incomplete`` if the answer was cut)."""
        out = self._close_message()
        for index in list(self.calls):
            out.extend(self._close_call(index))
        if not self.output:  # nothing was said: one empty message, so the Response has its text ("")
            out.extend(self._text("output_text", ""))
            out.extend(self._close_message())
        final = self.final()
        kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
        out.append(self.event(kind, response=final))
        return out

    def failed(self, error: dict[str, Any]) -> list[Event]:
        """An ``error`` event and ``response.failed`` (``error``: an OpenAI error body's ``error``)."""
        code = error.get("code") or error.get("type") or "server_error"
        message = str(error.get("message") or "The model failed.")
        failed = {**self.snapshot(), "status": "failed", "error": {"code": code, "message": message},
                  "usage": usage_of(self.usage)}
        self.response = failed
        return [self.event("error", code=code, message=message, param=responses_param(error.get("param"))),
                self.event("response.failed", response=failed)]

    def final(self) -> dict[str, Any]:
        status = "incomplete" if self.finish_reason == "length" else "completed"
        for item in self.output:
            item["status"] = status if item["type"] == "message" else "completed"
        self.response = finished({**self.snapshot(), "usage": usage_of(self.usage)}, self.finish_reason)
        return self.response

    # ── items ──────────────────────────────────────────────────────────────────────────────────────
    def _text(self, kind: str, piece: str) -> list[Event]:
        out: list[Event] = []
        if self.message is None:
            self.message = len(self.output)
            item: dict[str, Any] = {"type": "message", "id": new_id("msg"), "status": "in_progress",
                                    "role": "assistant", "content": []}
            self.output.append(item)
            out.append(self.event("response.output_item.added", output_index=self.message, item=copy.deepcopy(item)))
        item = self.output[self.message]
        if self.part != kind:
            out.extend(self._close_part())
            part: dict[str, Any] = text_part("") if kind == "output_text" else {"type": "refusal", "refusal": ""}
            item["content"].append(part)
            self.part = kind
            out.append(self.event("response.content_part.added", **self._where(), part=copy.deepcopy(part)))
        part = item["content"][-1]
        if kind == "output_text":
            part["text"] += piece
            if piece:
                out.append(self.event("response.output_text.delta", **self._where(), delta=piece, logprobs=[]))
        else:
            part["refusal"] += piece
            out.append(self.event("response.refusal.delta", **self._where(), delta=piece))
        return out

    def _where(self) -> dict[str, Any]:
        assert self.message is not None
        item = self.output[self.message]
        return {"item_id": item["id"], "output_index": self.message, "content_index": len(item["content"]) - 1}

    def _close_part(self) -> list[Event]:
        if self.part is None or self.message is None:
            return []
        part = self.output[self.message]["content"][-1]
        where = self._where()
        self.part = None
        if part["type"] == "output_text":
            done = self.event("response.output_text.done", **where, text=part["text"], logprobs=[])
        else:
            done = self.event("response.refusal.done", **where, refusal=part["refusal"])
        return [done, self.event("response.content_part.done", **where, part=copy.deepcopy(part))]

    def _close_message(self) -> list[Event]:
        if self.message is None:
            return []
        out = self._close_part()
        item = self.output[self.message]
        item["status"] = "incomplete" if self.finish_reason == "length" else "completed"
        out.append(self.event("response.output_item.done", output_index=self.message, item=copy.deepcopy(item)))
        self.message = None
        return out

    def _call(self, call: dict[str, Any], position: int) -> list[Event]:
        index = call.get("index", position)  # a replayed whole answer's calls may come without an index
        fn = call.get("function") or {}
        out: list[Event] = []
        if index not in self.calls:
            out.extend(self._close_message())  # the text came first: that message is done
            item = function_call(call.get("id") or new_id("call"), fn.get("name") or "", "", "in_progress")
            self.calls[index] = len(self.output)
            self.output.append(item)
            out.append(self.event("response.output_item.added", output_index=self.calls[index],
                                  item=copy.deepcopy(item)))
        at = self.calls[index]
        item = self.output[at]
        if fn.get("name") and not item["name"]:
            item["name"] = fn["name"]
        if fn.get("arguments"):
            item["arguments"] += fn["arguments"]
            out.append(self.event("response.function_call_arguments.delta", item_id=item["id"], output_index=at,
                                  delta=fn["arguments"]))
        return out

    def _close_call(self, index: int) -> list[Event]:
        at = self.calls.pop(index)
        item = self.output[at]
        item["status"] = "completed"
        return [self.event("response.function_call_arguments.done", item_id=item["id"], output_index=at,
                           name=item["name"], arguments=item["arguments"]),
                self.event("response.output_item.done", output_index=at, item=copy.deepcopy(item))]
