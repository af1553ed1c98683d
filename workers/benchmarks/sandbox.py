"""Where a benchmark's agent task runs (issue #14, docs/adr/0018-benchmark-runs.md): one small interface,
``Sandbox.run(argv, env, timeout_s) -> TaskOutcome``, and two implementations.

  * ``LocalSandbox`` (the default): the command as a subprocess of the worker, in a fresh temporary directory
    that is removed afterwards, with a minimal environment (a few variables of the worker's own, plus what the
    runner passes: the gateway's URL and the task's key). It runs in a process group of its own, so a timeout
    (or the run being cancelled) kills the command and everything it started.
  * ``ModalSandbox`` (``sandbox: modal``): the command in a Modal Sandbox (``modal.Sandbox.create``), the
    environment passed as a Modal secret. Modal is imported only when one is used. The command must reach the
    gateway from Modal's cloud: the run's gateway URL has to be a public one.

Output is kept up to ``MAX_OUTPUT`` bytes per stream (the end of it, where a harness prints its verdict).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

MAX_OUTPUT = 1 << 20  # bytes of stdout / stderr kept per task (the last ones)
KEPT_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
            "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE", "SYSTEMROOT")
KILL_GRACE_S = 5.0  # after the kill, how long the output pipes may take to close
MODAL_APP = os.environ.get("GATEHOUSE_BENCH_MODAL_APP", "gatehouse-bench")
MODAL_IMAGE = os.environ.get("GATEHOUSE_BENCH_MODAL_IMAGE")  # a registry image; default: debian slim + openai


@dataclass(frozen=True, slots=True)
class TaskOutcome:
    exit_code: int | None  # None when it never exited on its own (timed out, killed)
    stdout: str
    stderr: str
    wall_ms: float
    timed_out: bool


class Sandbox(Protocol):
    async def run(self, argv: Sequence[str], env: Mapping[str, str], timeout_s: float) -> TaskOutcome: ...


def base_env(extra: Mapping[str, str]) -> dict[str, str]:
    """A minimal environment: the worker's own ``KEPT_ENV`` variables, then ``extra``."""
    return {**{k: os.environ[k] for k in KEPT_ENV if k in os.environ}, **extra}


class LocalSandbox:
    """A subprocess in a fresh temporary directory; killed with its process group on timeout or cancel."""

    async def run(self, argv: Sequence[str], env: Mapping[str, str], timeout_s: float) -> TaskOutcome:
        with tempfile.TemporaryDirectory(prefix="gatehouse-task-", ignore_cleanup_errors=True) as cwd:
            started = time.perf_counter()
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=cwd, env=base_env(env), stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
            assert proc.stdout is not None and proc.stderr is not None
            readers = [asyncio.ensure_future(_tail(proc.stdout)), asyncio.ensure_future(_tail(proc.stderr))]
            timed_out = False
            try:
                try:
                    await asyncio.wait_for(proc.wait(), timeout_s)
                except TimeoutError:
                    timed_out = True
                    _kill_group(proc.pid)
                    await proc.wait()
                wall_ms = (time.perf_counter() - started) * 1000
                done, _ = await asyncio.wait(readers, timeout=KILL_GRACE_S if timed_out else None)
            finally:
                if proc.returncode is None:  # cancelled (the run was): take everything it started with it
                    _kill_group(proc.pid)
                    with contextlib.suppress(ProcessLookupError):
                        await asyncio.shield(proc.wait())
                for r in readers:
                    r.cancel()
            out, err = (r.result() if r in done and not r.cancelled() else b"" for r in readers)
            return TaskOutcome(None if timed_out else proc.returncode, out.decode(errors="replace"),
                               err.decode(errors="replace"), wall_ms, timed_out)


async def _tail(stream: asyncio.StreamReader) -> bytes:
    """Everything the stream says, keeping only the last ``MAX_OUTPUT`` bytes."""
    kept = bytearray()
    while chunk := await stream.read(65536):
        kept += chunk
        if len(kept) > 2 * MAX_OUTPUT:
            del kept[:-MAX_OUTPUT]
    return bytes(kept[-MAX_OUTPUT:])


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


class ModalSandbox:
    """The command in a Modal Sandbox of the app ``app_name`` (created when missing); ``image`` a registry image
    name, else Debian slim with the OpenAI SDK. Its exit code is the sandbox's return code."""

    def __init__(self, app_name: str = MODAL_APP, image: str | None = MODAL_IMAGE):
        self.app_name = app_name
        self.image = image

    async def run(self, argv: Sequence[str], env: Mapping[str, str], timeout_s: float) -> TaskOutcome:
        import modal  # optional: only a run that asks for Modal needs it (and Modal credentials)

        app = await modal.App.lookup.aio(self.app_name, create_if_missing=True)
        image: Any = (modal.Image.from_registry(self.image) if self.image
                      else modal.Image.debian_slim().pip_install("openai"))
        started = time.perf_counter()
        sb = await modal.Sandbox.create.aio(*argv, app=app, image=image, timeout=max(1, int(timeout_s + 0.999)),
                                            secrets=[modal.Secret.from_dict(dict(env))])
        try:
            await sb.wait.aio(raise_on_termination=False)
            wall_ms = (time.perf_counter() - started) * 1000
            out, err = await sb.stdout.read.aio(), await sb.stderr.read.aio()
        finally:
            if sb.returncode is None:  # cancelled while running
                await sb.terminate.aio()
        timed_out = wall_ms >= timeout_s * 1000
        return TaskOutcome(None if timed_out else sb.returncode, _text(out)[-MAX_OUTPUT:], _text(err)[-MAX_OUTPUT:],
                           wall_ms, timed_out)


def _text(value: str | bytes) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else value


def sandbox_for(name: str | None) -> Sandbox:
    """The sandbox a suite names: ``local`` (also the default) or ``modal``."""
    if name in (None, "local"):
        return LocalSandbox()
    if name == "modal":
        return ModalSandbox()
    raise ValueError(f"unknown sandbox {name!r} (local or modal)")
