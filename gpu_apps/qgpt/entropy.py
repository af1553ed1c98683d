"""Quantum entropy: the QBCK QRNG client, a circuit breaker, and a background-filled entropy pool.

``EntropyPool.take`` is called by the sampler (any thread) and never waits on the network: it serves QRNG
bytes when the pool holds enough and otherwise the OS CSPRNG, labelling every answer with its source. A
background asyncio task refills the pool to the high-water mark whenever it falls below the low-water mark.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import aiohttp

log = logging.getLogger(__name__)

SOURCE_QRNG, SOURCE_OS = "qrng", "os_csprng"


class QrngError(Exception):
    """A failed QRNG request (transport error, timeout, HTTP error, or an API-level ``error`` != "OK")."""


class QrngClient:
    """Async client for ``GET {base}/{API_KEY}/qbck/block/hex?size=N&length=L`` (N hex blocks of L bytes).

    The key sits in the URL path, so URLs never reach logs, error messages or ``repr``."""

    def __init__(self, api_key: str, *, base_url: str = "https://qrng.qbck.io", timeout_s: float = 5.0,
                 block_length: int = 256, max_blocks: int = 64) -> None:
        if not api_key:
            raise ValueError("QRNG api_key must be non-empty")
        self._api_key, self.base_url, self.timeout_s = api_key, base_url.rstrip("/"), timeout_s
        self.block_length, self.max_blocks = block_length, max_blocks
        self._session: aiohttp.ClientSession | None = None

    @property
    def max_request_bytes(self) -> int:
        """The most bytes one request returns."""
        return self.block_length * self.max_blocks

    def __repr__(self) -> str:
        return f"QrngClient(base_url={self.base_url!r}, api_key='***', timeout_s={self.timeout_s})"

    async def fetch(self, n_bytes: int) -> bytes:
        """Fetch whole blocks covering ``n_bytes`` (capped per request); raise QrngError on failure."""
        blocks = max(1, min(self.max_blocks, -(-n_bytes // self.block_length)))
        url = f"{self.base_url}/{self._api_key}/qbck/block/hex"
        params = {"size": str(blocks), "length": str(self.block_length)}
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        try:
            async with self._session.get(url, params=params) as r:
                if r.status != 200:
                    raise QrngError(f"QRNG HTTP {r.status}")
                body = await r.json(content_type=None)
        except TimeoutError:
            raise QrngError(f"QRNG request timed out after {self.timeout_s}s") from None
        except (aiohttp.ClientError, ValueError) as e:  # the message of e may hold the URL, hence the key
            raise QrngError(f"QRNG request failed: {type(e).__name__}") from None
        return self._parse(body, blocks * self.block_length)

    @staticmethod
    def _parse(body: Any, expected: int) -> bytes:
        if not isinstance(body, dict):
            raise QrngError("QRNG response is not a JSON object")
        if body.get("error", "OK") != "OK":  # errors can arrive with HTTP 200
            raise QrngError(f"QRNG API error: {str(body.get('error'))[:200]}")
        result = (body.get("data") or {}).get("result")
        blocks = [result] if isinstance(result, str) else result
        if not isinstance(blocks, list) or not all(isinstance(b, str) for b in blocks):
            raise QrngError("QRNG response has no data.result hex blocks")
        try:
            data = b"".join(bytes.fromhex(b.removeprefix("0x")) for b in blocks)
        except ValueError as e:
            raise QrngError("QRNG response holds invalid hex") from e
        if len(data) < expected:
            raise QrngError(f"QRNG returned {len(data)} bytes, expected {expected}")
        return data

    async def close(self) -> None:
        """Close the HTTP session."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class CircuitBreaker:
    """Closed -> open after ``failure_threshold`` consecutive failures -> half-open after ``cooldown_s``,
    where one trial request is allowed: success closes the breaker, failure reopens it."""

    def __init__(self, failure_threshold: int = 3, cooldown_s: float = 30.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.failure_threshold, self.cooldown_s, self._clock = failure_threshold, cooldown_s, clock
        self._lock = threading.Lock()
        self._failures = self.times_opened = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> str:
        """``closed``, ``open`` or ``half_open``."""
        with self._lock:
            if self._opened_at is None:
                return "closed"
            return "half_open" if self._clock() - self._opened_at >= self.cooldown_s else "open"

    def allow_request(self) -> bool:
        """Whether a request may go out now (closed, or half-open for a trial)."""
        return self.state != "open"

    def record_success(self) -> None:
        """A request succeeded: close the breaker."""
        with self._lock:
            self._failures, self._opened_at = 0, None

    def record_failure(self) -> None:
        """A request failed: open on reaching the threshold, or reopen after a failed half-open trial."""
        with self._lock:
            self._failures += 1
            if self._opened_at is not None or self._failures >= self.failure_threshold:
                self._opened_at = self._clock()
                self.times_opened += 1


@dataclass(frozen=True, slots=True)
class PoolLevel:
    """The pool gauge: bytes held, capacity (the high-water mark) and their ratio."""

    bytes: int
    capacity: int
    fraction: float


class EntropyPool:
    """A thread-safe byte pool filled from a QrngClient in the background, with an OS CSPRNG fallback."""

    def __init__(self, client: QrngClient | None = None, *, high_water: int = 262_144,
                 low_water: int = 65_536, breaker: CircuitBreaker | None = None,
                 poll_interval_s: float = 1.0) -> None:
        if not 0 <= low_water <= high_water or high_water <= 0:
            raise ValueError("need 0 <= low_water <= high_water and high_water > 0")
        self.client, self.high_water, self.low_water = client, high_water, low_water
        self.breaker, self.poll_interval_s = breaker or CircuitBreaker(), poll_interval_s
        self._lock = threading.Lock()
        self._buf, self._pos = bytearray(), 0  # bytes before _pos were served; compacted on deposit
        self._served = {SOURCE_QRNG: 0, SOURCE_OS: 0}
        self._refills = self._refill_failures = 0
        self._last_error: str | None = None
        self._wake: asyncio.Event | None = None  # the loop and event of the running refill task
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake_pending = False
        self._task: asyncio.Task[None] | None = None

    def take(self, n: int) -> tuple[bytes, str]:
        """Return ``n`` bytes and their source (``qrng`` or ``os_csprng``); never blocks on I/O."""
        with self._lock:
            if len(self._buf) - self._pos >= n:
                data, source = bytes(self._buf[self._pos:self._pos + n]), SOURCE_QRNG
                self._pos += n
            else:
                data, source = os.urandom(n), SOURCE_OS
            self._served[source] += n
            wake = len(self._buf) - self._pos < self.low_water and not self._wake_pending
            self._wake_pending |= wake
        if wake and self._loop is not None and self._wake is not None:
            with contextlib.suppress(RuntimeError):  # the loop may be closed
                self._loop.call_soon_threadsafe(self._wake.set)
        return data, source

    def deposit(self, data: bytes) -> int:
        """Add QRNG bytes (up to the high-water mark); return how many were kept."""
        with self._lock:
            del self._buf[:self._pos]
            self._pos, kept = 0, data[:max(0, self.high_water - len(self._buf))]
            self._buf += kept
            return len(kept)

    def level(self) -> PoolLevel:
        """The current fill level."""
        with self._lock:
            held = len(self._buf) - self._pos
        return PoolLevel(held, self.high_water, held / self.high_water)

    def stats(self) -> dict[str, Any]:
        """Gauge and counters: level, bytes served per source, refills, failures, breaker state."""
        lvl = self.level()
        with self._lock:
            served, refills, failures = dict(self._served), self._refills, self._refill_failures
            err = self._last_error
        return {"level_bytes": lvl.bytes, "level_fraction": round(lvl.fraction, 6),
                "capacity_bytes": lvl.capacity, "qrng_configured": self.client is not None,
                "bytes_served": served, "refills": refills, "refill_failures": failures, "last_error": err,
                "circuit_breaker": self.breaker.state}

    async def refill_once(self) -> int:
        """Fetch until the high-water mark, a failure, or an open breaker; return bytes added."""
        added, self._wake_pending = 0, False  # a take() from here on may wake the task again
        while self.client and self.level().bytes < self.high_water and self.breaker.allow_request():
            want = min(self.high_water - self.level().bytes, self.client.max_request_bytes)
            try:
                data = await self.client.fetch(want)
            except QrngError as e:
                self.breaker.record_failure()
                with self._lock:
                    self._refill_failures, self._last_error = self._refill_failures + 1, str(e)
                log.warning("QRNG refill failed (%s); sampler falls back to os_csprng", e)
                break
            self.breaker.record_success()
            added += self.deposit(data)
            with self._lock:
                self._refills += 1
        return added

    async def fill(self, timeout_s: float = 10.0) -> None:
        """Prefetch: refill now, giving up after ``timeout_s``."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.refill_once(), timeout_s)

    async def run(self) -> None:
        """Refill loop: whenever the level is below the low-water mark, refill; then sleep until woken."""
        self._loop, self._wake = asyncio.get_running_loop(), asyncio.Event()
        while True:
            if self.level().bytes < self.low_water:
                await self.refill_once()
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_interval_s)

    def start(self) -> None:
        """Start the background refill task on the running event loop (idempotent)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="qgpt-entropy-pool")

    async def stop(self) -> None:
        """Stop the refill task and close the client."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._task = self._loop = self._wake = None
        if self.client is not None:
            await self.client.close()
