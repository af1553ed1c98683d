"""A streaming ``multipart/form-data`` parser: fed the body piece by piece, it returns events, never the whole body.

    Part(name, filename, content_type)   a part starts (its headers were read)
    bytes                                the next piece of the current part's content
    END_OF_PART                          the current part ended

Nothing is buffered beyond one fed piece plus the length of the boundary, so a 200 MB upload costs the memory
of the pieces the server hands over (uvicorn's are 64 KiB). Malformed input raises :class:`MultipartError`,
an OpenAI-style 400. (Starlette's own form parser needs python-multipart, and spools file parts to a temporary
file; here the content goes straight to its destination as it arrives.)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final
from urllib.parse import unquote

from gateway.errors import InvalidRequest

MAX_HEADERS = 16 * 1024  # one part's headers
MAX_PADDING = 64  # whitespace allowed between a boundary and its line break (RFC 2046's transport padding)
CRLF: Final = b"\r\n"
_PARAM = re.compile(r';\s*([^\s=;]+)\s*=\s*("(?:[^"\\]|\\.)*"|[^;]*)')
_ESCAPE = re.compile(r"\\(.)")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class MultipartError(InvalidRequest):
    code = "invalid_multipart"


@dataclass(frozen=True, slots=True)
class Part:
    name: str
    filename: str | None = None
    content_type: str | None = None


class _EndOfPart:
    def __repr__(self) -> str:
        return "END_OF_PART"


END_OF_PART: Final = _EndOfPart()
Event = Part | bytes | _EndOfPart


def header_params(value: str) -> tuple[str, dict[str, str]]:
    """``form-data; name="file"; filename="a.jsonl"`` → ("form-data", {"name": "file", "filename": "a.jsonl"}).
    Quoted values lose their quotes and backslash escapes (and ``%22``, a browser's escaped quote)."""
    kind, _, rest = value.partition(";")
    params: dict[str, str] = {}
    for match in _PARAM.finditer(";" + rest):
        key, raw = match.group(1).lower(), match.group(2).strip()
        if raw.startswith('"') and raw.endswith('"') and len(raw) >= 2:
            raw = _ESCAPE.sub(r"\1", raw[1:-1]).replace("%22", '"')
        params[key] = raw
    return kind.strip().lower(), params


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a ``multipart/form-data`` content type; 400 for any other type."""
    kind, params = header_params(content_type or "")
    boundary = params.get("boundary", "")
    if kind != "multipart/form-data":
        raise MultipartError("The request must be multipart/form-data, with the file in the field `file`.",
                             param="file", code="invalid_content_type")
    if not 1 <= len(boundary) <= 200 or not boundary.isascii() or _CONTROL.search(boundary):
        raise MultipartError("The multipart/form-data content type has no valid boundary.")
    return boundary.encode()


def _part(raw: bytes) -> Part:
    disposition, content_type = None, None
    for line in raw.split(CRLF):
        name, sep, value = line.partition(b":")
        if not sep:
            raise MultipartError("A multipart part has a malformed header line.")
        lowered = name.strip().lower()
        if lowered == b"content-disposition":
            disposition = value.decode("utf-8", "replace").strip()
        elif lowered == b"content-type":
            content_type = value.decode("latin-1").strip()
    kind, params = header_params(disposition or "")
    if kind != "form-data" or not params.get("name"):
        raise MultipartError("Every multipart part needs `Content-Disposition: form-data; name=\"…\"`.")
    filename = params.get("filename")
    if "filename*" in params:  # RFC 5987: utf-8''name%20with%20spaces
        _, _, encoded = params["filename*"].partition("''")
        filename = unquote(encoded, errors="replace") or filename
    return Part(params["name"], filename, content_type)


class MultipartParser:
    """Feed it the body; each :meth:`feed` returns the events that piece completed. :attr:`done` once the
    closing boundary was read (what follows it, the epilogue, is ignored); :meth:`close` at the end of the
    body raises if the closing boundary never came."""

    def __init__(self, boundary: bytes):
        self._delimiter = CRLF + b"--" + boundary  # every boundary follows a line break...
        self._buf = bytearray(CRLF)  # ...except the first, which may open the body: pretend one precedes it
        self._state = "preamble"
        self.done = False

    def feed(self, data: bytes) -> list[Event]:
        if self.done:
            return []
        self._buf += data
        events: list[Event] = []
        while self._step(events):
            pass
        return events

    def close(self) -> None:
        if not self.done:
            raise MultipartError("The multipart body ended before its closing boundary; was the upload cut short?")

    def _step(self, events: list[Event]) -> bool:
        """One move of the state machine; False when it needs more input (or is done)."""
        if self._state == "delimiter":
            return self._after_delimiter()
        if self._state == "headers":
            return self._headers(events)
        return self._content(events)

    def _content(self, events: list[Event]) -> bool:
        """The preamble (dropped) or a part's content, up to the next delimiter."""
        buf, delim = self._buf, self._delimiter
        at = buf.find(delim)
        if at < 0:
            keep = len(delim) - 1  # a delimiter may start in this piece and end in the next
            if len(buf) > keep:
                if self._state == "body":
                    events.append(bytes(buf[:-keep]))
                del buf[:-keep]
            return False
        if self._state == "body":
            if at:
                events.append(bytes(buf[:at]))
            events.append(END_OF_PART)
        del buf[:at + len(delim)]
        self._state = "delimiter"
        return True

    def _after_delimiter(self) -> bool:
        """``--`` (the closing boundary) or optional padding and a line break (a part follows)."""
        buf = self._buf
        if len(buf) < 2:
            return False
        if buf[:2] == b"--":
            self.done = True
            buf.clear()
            return False
        end = buf.find(CRLF)
        if end < 0:
            if len(buf) > MAX_PADDING:
                raise MultipartError("A multipart boundary is not followed by a line break.")
            return False
        if buf[:end].strip(b" \t"):
            raise MultipartError("A multipart boundary is followed by unexpected characters.")
        del buf[:end + 2]
        self._state = "headers"
        return True

    def _headers(self, events: list[Event]) -> bool:
        """A part's headers, up to the blank line (a part without headers starts with it)."""
        buf = self._buf
        end = 0 if buf[:2] == CRLF else buf.find(CRLF + CRLF)
        if end < 0 and len(buf) <= MAX_HEADERS:
            return False
        if not 0 <= end <= MAX_HEADERS:
            raise MultipartError(f"A multipart part's headers exceed {MAX_HEADERS} bytes.")
        events.append(_part(bytes(buf[:end])))
        del buf[:end + (2 if end == 0 else 4)]
        self._state = "body"
        return True


def clean_text(value: str) -> str:
    """``value`` without control characters (NUL among them, which PostgreSQL's text refuses)."""
    return _CONTROL.sub("", value)
