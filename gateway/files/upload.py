"""``POST /v1/files``: a multipart upload streamed into the file store as it arrives.

    body pieces → MultipartParser → fields (purpose, expires_after[…]) and the file part → FileWriter (1 MiB rows)

Memory stays bounded by a piece plus a chunk, whatever the file's size. Limits, each a 400 naming it:
``files_max_bytes`` for the file (the whole body may add ``FORM_OVERHEAD`` for the other fields; a larger
declared Content-Length is refused by the request middleware before anything is read, see :func:`body_limits`),
``files_max_lines`` for a ``batch`` file, no empty file. On any failure the partial file is removed; after a
400 the rest of the body is read (up to the limit) and dropped, so the client gets the answer instead of a
connection reset mid-upload.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import asyncpg
from starlette.requests import ClientDisconnect, Request

from core.config import GatehouseSettings
from gateway.db.database import DatabaseUnavailable
from gateway.errors import GatewayError, InvalidRequest
from gateway.files.multipart import END_OF_PART, Event, MultipartParser, Part, boundary_of, clean_text
from gateway.files.store import FileRecord, FileStore, FileWriter

log = logging.getLogger("gatehouse.files")
PURPOSES = ("batch", "user_data")  # what clients upload; batch_output files are made by Gatehouse
FORM_OVERHEAD = 1 << 20  # multipart framing and the other fields, beyond the file itself
MAX_FIELD = 4 * 1024  # one form field other than the file
MAX_PARTS = 16
MAX_FILENAME = 512
UPLOAD_PATHS = ("/v1/files", "/files")
EXPIRES_MIN_S, EXPIRES_MAX_S = 3_600, 30 * 86_400  # as OpenAI: one hour to thirty days


@dataclass(frozen=True, slots=True)
class Limits:
    max_bytes: int
    max_lines: int

    @classmethod
    def of(cls, settings: GatehouseSettings) -> Limits:
        return cls(settings.files_max_bytes, settings.files_max_lines)

    @property
    def max_body(self) -> int:
        return self.max_bytes + FORM_OVERHEAD


def too_large(limits: Limits) -> InvalidRequest:
    mib = limits.max_bytes / (1 << 20)
    return InvalidRequest(f"The file is larger than {limits.max_bytes} bytes ({mib:g} MiB), the limit for an upload.",
                          param="file", code="file_too_large")


def body_limits(settings: GatehouseSettings) -> dict[str, tuple[int, GatewayError]]:
    """For the request middleware: the upload paths' own limit on a declared Content-Length (the file's plus
    the form's overhead), and the 400 answered beyond it."""
    limits = Limits.of(settings)
    return {path: (limits.max_body, too_large(limits)) for path in UPLOAD_PATHS}


class Upload:
    """One upload by ``owner_id`` (None: the master key): :meth:`receive` reads it into ``store``."""

    def __init__(self, store: FileStore, limits: Limits, owner_id: str | None, team_id: str | None):
        self.store = store
        self.limits = limits
        self.owner_id = owner_id
        self.team_id = team_id
        self.fields: dict[str, str] = {}  # the form's other fields, as text
        self.writer: FileWriter | None = None  # once the file part began
        self._part: Part | None = None  # the part being read
        self._field = bytearray()  # the content of a field being read
        self._parts = 0

    async def receive(self, request: Request) -> FileRecord:
        """The uploaded file, complete; a GatewayError (the partial file removed) otherwise."""
        parser = MultipartParser(boundary_of(request.headers.get("content-type")))
        body = request.stream()
        received = 0
        try:
            async for piece in body:
                received += len(piece)
                if received > self.limits.max_body:
                    raise too_large(self.limits)
                for event in parser.feed(piece):
                    await self._on(event)
                if parser.done:
                    break
            parser.close()
            return await self._finish()
        except BaseException as exc:
            if self.writer is not None:
                await self._discard(self.writer.file_id)
            if isinstance(exc, GatewayError) and received <= self.limits.max_body:
                await _drain(body, self.limits.max_body - received)
            raise

    async def _on(self, event: Event) -> None:
        if isinstance(event, Part):
            self._parts += 1
            if self._parts > MAX_PARTS:
                raise InvalidRequest(f"The form has more than {MAX_PARTS} fields.", code="invalid_multipart")
            self._part = event
            if event.name == "file":
                await self._open(event)
        elif isinstance(event, bytes):
            if self._part is not None and self._part.name == "file":
                await self._write(event)
            else:
                self._field += event
                if len(self._field) > MAX_FIELD:
                    name = self._part.name[:64] if self._part else "?"
                    raise InvalidRequest(f"The form field '{name}' is longer than {MAX_FIELD} bytes.", param=name,
                                         code="invalid_value")
        elif event is END_OF_PART and self._part is not None and self._part.name != "file":
            self._set_field(self._part.name, bytes(self._field))
            self._field.clear()
            self._part = None

    async def _open(self, part: Part) -> None:
        if self.writer is not None:
            raise InvalidRequest("Upload one file per request (the field `file` appears twice).", param="file",
                                 code="invalid_value")
        filename = clean_text(part.filename or "").strip() or "file"
        if len(filename) > MAX_FILENAME:
            raise InvalidRequest(f"The file name is longer than {MAX_FILENAME} characters.", param="file",
                                 code="invalid_value")
        self.writer = await self.store.begin(filename=filename, purpose=self.fields.get("purpose", ""),
                                             owner_id=self.owner_id, team_id=self.team_id)

    async def _write(self, data: bytes) -> None:
        assert self.writer is not None
        await self.writer.write(data)
        self._check_limits(final=False)

    def _check_limits(self, *, final: bool) -> None:
        writer = self.writer
        assert writer is not None
        if writer.size > self.limits.max_bytes:
            raise too_large(self.limits)
        lines = writer.lines if final else writer.newlines  # a line is known complete at its newline
        if self.fields.get("purpose") == "batch" and lines > self.limits.max_lines:
            raise InvalidRequest(f"The file has more than {self.limits.max_lines} lines, the limit for purpose "
                                 "'batch'.", param="file", code="too_many_lines")

    def _set_field(self, name: str, raw: bytes) -> None:
        try:
            value = raw.decode()
        except UnicodeDecodeError:
            raise InvalidRequest(f"The form field '{name[:64]}' is not UTF-8 text.", param=name[:64],
                                 code="invalid_value") from None
        if name == "purpose":
            _check_purpose(value)
        self.fields[name] = value

    async def _finish(self) -> FileRecord:
        purpose = self.fields.get("purpose")
        if purpose is None:
            raise InvalidRequest("Missing required parameter: 'purpose'.", param="purpose",
                                 code="missing_required_parameter")
        if self.writer is None:
            raise InvalidRequest("Missing required parameter: 'file' (the file, as a multipart file field).",
                                 param="file", code="missing_required_parameter")
        expires = _expires_after(self.fields)
        if self.writer.size == 0:
            raise InvalidRequest("The file is empty.", param="file", code="empty_file")
        self._check_limits(final=True)
        return await self.store.complete(self.writer, purpose=purpose, expires_after_s=expires)

    async def _discard(self, file_id: str) -> None:
        try:
            await self.store.discard(file_id)
        except (DatabaseUnavailable, asyncpg.PostgresError) as e:  # the sweep removes the partial file later
            log.warning("could not remove the partial upload %s now (%s); it will be swept", file_id,
                        type(e).__name__)


def _check_purpose(value: str) -> None:
    if value not in PURPOSES:
        shown = clean_text(value)[:64]
        raise InvalidRequest(f"Invalid value for 'purpose': '{shown}'. Supported values are 'batch' and "
                             "'user_data'.", param="purpose", code="invalid_value")


def _expires_after(fields: dict[str, str]) -> int | None:
    """``expires_after[anchor]=created_at`` and ``expires_after[seconds]=N``, as the OpenAI SDK sends them."""
    anchor, seconds = fields.get("expires_after[anchor]"), fields.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise InvalidRequest("Invalid value for 'expires_after.anchor': it must be 'created_at'.",
                             param="expires_after.anchor", code="invalid_value")
    try:
        value = int(seconds or "")
    except ValueError:
        value = -1
    if not EXPIRES_MIN_S <= value <= EXPIRES_MAX_S:
        raise InvalidRequest(f"Invalid value for 'expires_after.seconds': an integer from {EXPIRES_MIN_S} to "
                             f"{EXPIRES_MAX_S}.", param="expires_after.seconds", code="invalid_value")
    return value


async def _drain(body: AsyncIterator[Any], budget: int) -> None:
    """Read and drop the rest of the body (at most ``budget`` bytes), so the answer reaches the client."""
    try:
        async for piece in body:
            budget -= len(piece)
            if budget < 0:
                return
    except ClientDisconnect:  # the client went away meanwhile: nothing to answer
        return
