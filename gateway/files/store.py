"""The gateway's view of core.files: whose a caller's files are, and a vanished file as OpenAI's 404."""

from __future__ import annotations

from collections.abc import Callable

from core import files
from core.files import FILE_ID, FileRecord, FileWriter, new_file_id
from gateway.auth import Principal
from gateway.errors import NotFound

__all__ = ["FILE_ID", "FileRecord", "FileStore", "FileWriter", "file_not_found", "new_file_id", "owner_of",
           "scope_of"]


def owner_of(principal: Principal) -> str | None:
    """Whose a principal's files are: its key id, its JWT identity, or None for the master key."""
    if principal.kind == "master":
        return None
    return principal.key_id or principal.id


def scope_of(principal: Principal) -> str | None:
    """The files a principal may see: all (None) for admins, else its own."""
    return None if principal.is_admin else (owner_of(principal) or principal.id)


def file_not_found(file_id: str) -> NotFound:
    shown = file_id if len(file_id) <= 64 else file_id[:64] + "…"
    return NotFound(f"No such File object: {shown}", param="file_id", code="file_not_found")


class FileStore(files.FileStore):
    gone: Callable[[str], Exception] = staticmethod(file_not_found)
