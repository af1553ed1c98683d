"""Ids that sort by creation time: a prefix, 12 hex digits of milliseconds since 1970, then random hex digits.
Within one process they are strictly increasing: a second id in the same millisecond takes the next one, so a
listing ordered by id is the order of creation even for objects made back to back."""

from __future__ import annotations

import secrets
import threading
import time

_lock = threading.Lock()
_last_ms = 0


def sortable_id(prefix: str, random_bytes: int) -> str:
    global _last_ms
    with _lock:
        ms = max(time.time_ns() // 1_000_000, _last_ms + 1)
        _last_ms = ms
    return f"{prefix}{ms:012x}{secrets.token_hex(random_bytes)}"
