"""Files in PostgreSQL (migration 0003): a row in ``files`` per file, its content in ``file_chunks``. The gateway
serves them (gateway/files/), the batch runner reads its input and writes its results through the same store.

Every operation is one or more bounded :class:`~core.database.Database` calls, one per chunk of about
1 MiB, never one long call: a 200 MB file is 200 calls of at most ``timeout_s`` each, and an outage is a
``503 database_unavailable`` as everywhere else. A file becomes visible (listed, read, deleted) only when
:meth:`FileStore.complete` marks it so; an upload that never completes (a gateway died under it) is swept
after ``UNFINISHED_FOR``, and so is a file past its ``expires_at``.

Access is by ``scope``: None sees every file (the master key, admin keys), otherwise only the files whose
``owner_id`` is the scope (gateway.files.store says whose a caller's files are).

For the batch API: :meth:`FileStore.lines` reads a file line by line, :meth:`FileStore.create_from_lines`
writes a result file (``purpose: batch_output``) from an async iterator of lines.
"""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import asyncpg

from core.database import Database

CHUNK_BYTES = 1 << 20
FILE_ID = re.compile(r"^file-[0-9a-f]{24}$")
UNFINISHED_FOR = "1 day"  # an upload not completed within this is abandoned (its gateway died)
SWEEP_MAX = 20  # files removed per sweep (each sweep is one bounded call)
COLUMNS = "id, owner_id, team_id, filename, purpose, bytes, lines, created_at, expires_at"
VISIBLE = "complete AND (expires_at IS NULL OR expires_at > now())"
Order = Literal["asc", "desc"]


def new_file_id() -> str:
    """``file-`` + 12 hex digits of milliseconds since 1970 + 12 random ones: ids sort by creation time."""
    return f"file-{time.time_ns() // 1_000_000:012x}{secrets.token_hex(6)}"


class FileGone(LookupError):
    """The file does not exist (any more): deleted, swept or expired while it was used."""

    def __init__(self, file_id: str):
        super().__init__(f"No such File object: {file_id}")
        self.file_id = file_id


@dataclass(frozen=True, slots=True)
class FileRecord:
    id: str
    owner_id: str | None
    team_id: str | None
    filename: str
    purpose: str
    bytes: int
    lines: int
    created_at: datetime
    expires_at: datetime | None

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> FileRecord:
        return cls(**dict(row))

    def to_json(self) -> dict[str, Any]:
        """OpenAI's File object (with its deprecated ``status`` fields, which the SDK's model declares)."""
        return {"id": self.id, "object": "file", "bytes": self.bytes, "created_at": int(self.created_at.timestamp()),
                "filename": self.filename, "purpose": self.purpose,
                "expires_at": int(self.expires_at.timestamp()) if self.expires_at is not None else None,
                "status": "processed", "status_details": None}


class FileWriter:
    """A file's content into ``file_chunks``, CHUNK_BYTES a row (one bounded call each); counts its bytes and
    lines (newline-separated; a last line without a newline counts)."""

    def __init__(self, store: FileStore, file_id: str):
        self.store = store
        self.file_id = file_id
        self.size = 0
        self.newlines = 0
        self._ends_line = True
        self._buf = bytearray()
        self._seq = 0

    @property
    def lines(self) -> int:
        return self.newlines + (0 if self._ends_line else 1)

    async def write(self, data: bytes) -> None:
        if not data:
            return
        self.size += len(data)
        self.newlines += data.count(b"\n")
        self._ends_line = data.endswith(b"\n")
        self._buf += data
        while len(self._buf) >= CHUNK_BYTES:
            await self._put(bytes(self._buf[:CHUNK_BYTES]))
            del self._buf[:CHUNK_BYTES]

    async def flush(self) -> None:
        if self._buf:
            await self._put(bytes(self._buf))
            self._buf.clear()

    async def _put(self, data: bytes) -> None:
        try:
            await self.store.execute("INSERT INTO file_chunks (file_id, seq, data) VALUES ($1, $2, $3)",
                                     self.file_id, self._seq, data)
        except asyncpg.ForeignKeyViolationError:  # removed meanwhile (swept: slower than UNFINISHED_FOR)
            raise self.store.gone(self.file_id) from None
        self._seq += 1


class FileStore:
    gone: Callable[[str], Exception] = FileGone  # what a vanished file raises (the gateway's: a 404)

    def __init__(self, db: Database):
        self.db = db

    async def execute(self, query: str, *args: Any) -> str:
        return await self.db.run(lambda conn: conn.execute(query, *args, timeout=self.db.timeout_s))

    # ── writing ───────────────────────────────────────────────────────────────────────────────────────
    async def begin(self, *, filename: str, purpose: str, owner_id: str | None, team_id: str | None) -> FileWriter:
        """A new, not yet visible file (after sweeping abandoned and expired ones)."""
        await self.sweep()
        file_id = new_file_id()
        await self.execute("INSERT INTO files (id, owner_id, team_id, filename, purpose) VALUES ($1, $2, $3, $4, $5)",
                           file_id, owner_id, team_id, filename, purpose)
        return FileWriter(self, file_id)

    async def complete(self, writer: FileWriter, *, purpose: str, expires_after_s: int | None = None) -> FileRecord:
        """Store what the writer still holds and make the file visible."""
        await writer.flush()
        row = await self.db.fetchrow(
            f"UPDATE files SET complete = true, purpose = $2, bytes = $3, lines = $4, "
            f"expires_at = created_at + make_interval(secs => $5::integer) "
            f"WHERE id = $1 AND NOT complete RETURNING {COLUMNS}",
            writer.file_id, purpose, writer.size, writer.lines, expires_after_s)
        if row is None:  # swept meanwhile (an upload slower than UNFINISHED_FOR)
            raise self.gone(writer.file_id)
        return FileRecord.from_row(row)

    async def discard(self, file_id: str) -> None:
        await self.execute("DELETE FROM files WHERE id = $1", file_id)

    async def sweep(self) -> int:
        """Remove a few abandoned uploads and expired files; how many."""
        status = await self.execute(
            "DELETE FROM files WHERE id IN (SELECT id FROM files WHERE (NOT complete AND created_at < now() - "
            f"interval '{UNFINISHED_FOR}') OR expires_at <= now() LIMIT {SWEEP_MAX})")
        return int(status.rpartition(" ")[2] or 0)

    async def create_from_lines(self, lines: AsyncIterable[bytes | str], *, filename: str, owner_id: str | None,
                                team_id: str | None, purpose: str = "batch_output",
                                expires_after_s: int | None = None) -> FileRecord:
        """A file (a batch's results: ``batch_output``) made of ``lines``, each given with or without its
        newline. Removed again if anything fails before it is complete."""
        writer = await self.begin(filename=filename, purpose=purpose, owner_id=owner_id, team_id=team_id)
        try:
            async for line in lines:
                data = line.encode() if isinstance(line, str) else line
                await writer.write(data if data.endswith(b"\n") else data + b"\n")
            return await self.complete(writer, purpose=purpose, expires_after_s=expires_after_s)
        except BaseException:
            await self.discard(writer.file_id)
            raise

    # ── reading ───────────────────────────────────────────────────────────────────────────────────────
    async def get(self, file_id: str, scope: str | None) -> FileRecord | None:
        """The file, if it exists, is complete and ``scope`` may see it."""
        if not FILE_ID.match(file_id):
            return None
        row = await self.db.fetchrow(f"SELECT {COLUMNS} FROM files WHERE id = $1 AND {VISIBLE} "
                                     "AND ($2::text IS NULL OR owner_id = $2)", file_id, scope)
        return FileRecord.from_row(row) if row is not None else None

    async def list(self, scope: str | None, *, purpose: str | None = None, after: str | None = None,
                   limit: int = 10_000, order: Order = "desc") -> tuple[list[FileRecord], bool]:
        """A page of files, newest first (``desc``) or oldest first, after the id ``after``; and whether more
        follow."""
        compare, direction = (">", "ASC") if order == "asc" else ("<", "DESC")
        rows = await self.db.fetch(
            f"SELECT {COLUMNS} FROM files WHERE {VISIBLE} AND ($1::text IS NULL OR owner_id = $1) "
            f"AND ($2::text IS NULL OR purpose = $2) AND ($3::text IS NULL OR id {compare} $3) "
            f"ORDER BY id {direction} LIMIT $4", scope, purpose, after, limit + 1)
        return [FileRecord.from_row(r) for r in rows[:limit]], len(rows) > limit

    async def delete(self, file_id: str, scope: str | None) -> bool:
        if not FILE_ID.match(file_id):
            return False
        status = await self.execute(f"DELETE FROM files WHERE id = $1 AND {VISIBLE} "
                                    "AND ($2::text IS NULL OR owner_id = $2)", file_id, scope)
        return status == "DELETE 1"

    async def chunks(self, record: FileRecord) -> AsyncIterator[bytes]:
        """The content, a chunk per bounded call. A file deleted while it is read raises ``file_not_found``."""
        seq, sent = 0, 0
        while sent < record.bytes:
            data = await self.db.fetchval("SELECT data FROM file_chunks WHERE file_id = $1 AND seq = $2",
                                          record.id, seq)
            if data is None:
                raise self.gone(record.id)
            seq, sent = seq + 1, sent + len(data)
            yield bytes(data)

    async def lines(self, record: FileRecord) -> AsyncIterator[bytes]:
        """The content line by line, each without its newline (blank lines included; none after a final
        newline)."""
        rest = b""
        async for chunk in self.chunks(record):
            pieces = (rest + chunk).split(b"\n")
            rest = pieces.pop()
            for line in pieces:
                yield line
        if rest:
            yield rest
