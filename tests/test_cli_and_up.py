"""The CLI: `gatehouse up` on the embedded default (start, serve, Ctrl-C, restart), chat, models, --help."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import openai
from conftest import ROOT, free_port, wait_http

GATEHOUSE = [sys.executable, "-m", "cli"]


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_") and k not in ("REDIS_URL",
                                                                                                  "DATABASE_URL")}
    env.update(extra)
    return env


def test_help_lists_every_command() -> None:
    r = subprocess.run([*GATEHOUSE, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0
    for cmd in ("up", "serve", "worker", "models", "chat"):
        assert cmd in r.stdout


def _up(tmp_path: Path, port: int) -> subprocess.Popen[str]:
    return subprocess.Popen([*GATEHOUSE, "up", "--port", str(port), "--workers", "1"], cwd=tmp_path,
                            env=_clean_env(PYTHONPATH=str(ROOT)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)


def _read_until_banner(proc: subprocess.Popen[str], timeout: float = 120) -> str:
    """What `up` printed up to and including its banner (the point where a user starts using it)."""
    lines: list[str] = []
    deadline = time.time() + timeout
    assert proc.stdout is not None
    while time.time() < deadline:
        line = proc.stdout.readline()
        if not line:
            raise AssertionError("gatehouse up exited before it was ready:\n" + "".join(lines))
        lines.append(line)
        if "Ctrl-C stops everything" in line:
            return "".join(lines)
    raise AssertionError("no banner within the timeout:\n" + "".join(lines))


def test_up_serves_chargpt_stops_cleanly_and_reuses_data(tmp_path: Path) -> None:
    port = free_port()
    proc = _up(tmp_path, port)
    try:
        banner = _read_until_banner(proc)
        wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=10)
        key_file = tmp_path / ".gatehouse" / "master_key"
        assert oct(key_file.stat().st_mode & 0o777) == "0o600"
        key = key_file.read_text().strip()
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0)
        r = client.chat.completions.create(model="chargpt", messages=[{"role": "user", "content": "def "}],
                                           max_tokens=10, seed=1)
        assert len(r.choices[0].message.content) == 10
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out
    assert f"http://127.0.0.1:{port}/v1" in banner and key in banner  # the banner shows URL and master key
    assert "stopped." in out
    time.sleep(0.5)
    assert subprocess.run(["pgrep", "-f", f"valkey.*{tmp_path}"], capture_output=True).returncode == 1

    proc = _up(tmp_path, port)  # a second `up` reuses the data dir and the key
    try:
        _read_until_banner(proc)
        assert (tmp_path / ".gatehouse" / "master_key").read_text().strip() == key
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


def test_chat_command_streams(stack) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run([*GATEHOUSE, "chat", "echo", "hello from the cli", "--base-url", stack.base_url,
                        "--api-key", stack.master_key], capture_output=True, text=True, timeout=60,
                       env=_clean_env())
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "hello from the cli"


def test_chat_command_reports_errors(stack) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run([*GATEHOUSE, "chat", "missing", "x", "--base-url", stack.base_url, "--api-key",
                        stack.master_key], capture_output=True, text=True, timeout=60, env=_clean_env())
    assert r.returncode == 1 and "404" in r.stderr and "Traceback" not in r.stderr


def test_models_command(stack) -> None:  # type: ignore[no-untyped-def]
    r = subprocess.run([*GATEHOUSE, "models", "-c", str(stack.config_path), "--base-url", stack.base_url],
                       capture_output=True, text=True, timeout=60, env=_clean_env())
    assert r.returncode == 0, r.stderr
    assert "chargpt" in r.stdout and "echo" in r.stdout and "source: gateway" in r.stderr


def test_up_uses_external_servers_when_urls_are_set(tmp_path: Path, redis_url: str, database_url: str) -> None:
    port = free_port()
    external_redis = redis_url.rsplit("/", 1)[0] + "/3"  # its own database: no other test's worker sees it
    proc = subprocess.Popen([*GATEHOUSE, "up", "--port", str(port)], cwd=tmp_path, text=True,
                            env=_clean_env(PYTHONPATH=str(ROOT), REDIS_URL=external_redis, DATABASE_URL=database_url),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        _read_until_banner(proc)
        wait_http(f"http://127.0.0.1:{port}/health/ready", timeout=10)
        assert not (tmp_path / ".gatehouse" / "valkey").exists()
        assert not (tmp_path / ".gatehouse" / "postgres").exists()
        key = (tmp_path / ".gatehouse" / "master_key").read_text().strip()
        r = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0).completions.create(
            model="chargpt", prompt="x", max_tokens=5, seed=2)
        assert len(r.choices[0].text) == 5
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, out


def test_chat_without_a_key_says_how_to_get_one(tmp_path: Path) -> None:
    r = subprocess.run([*GATEHOUSE, "chat", "chargpt", "x", "--base-url", "http://127.0.0.1:9"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60, env=_clean_env(PYTHONPATH=str(ROOT)))
    assert r.returncode == 2 and "no API key" in r.stderr
    assert not (tmp_path / ".gatehouse").exists()  # a client command creates nothing


def test_up_says_why_when_the_port_is_taken(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # someone else already listens on the gateway's port
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = _up(tmp_path, port)
        out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 1
    assert f"port {port} on 127.0.0.1 is already in use" in out and "Traceback" not in out
    assert not (tmp_path / ".gatehouse" / "valkey").exists()  # it said so before starting anything


def test_embedded_valkey_moves_off_a_busy_port(tmp_path: Path) -> None:
    import socket

    from cli.embedded import DEFAULT_VALKEY_PORT, EmbeddedValkey

    blocker = socket.socket()
    try:
        blocker.bind(("127.0.0.1", DEFAULT_VALKEY_PORT))  # if it is already taken, that is the case we test too
        blocker.listen()
    except OSError:
        pass
    try:
        v = EmbeddedValkey(tmp_path)
        url = v.start()
        try:
            assert not url.endswith(f":{DEFAULT_VALKEY_PORT}/0")
        finally:
            v.stop()
    finally:
        blocker.close()


def test_children_end_when_up_is_killed(tmp_path: Path) -> None:
    """kill -9 of the supervisor leaves no gateway, worker or Valkey behind (the parent-death signal)."""
    port = free_port()
    proc = _up(tmp_path, port)
    try:
        _read_until_banner(proc)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
        assert len(children) >= 3  # Valkey, the gateway, the worker
    finally:
        proc.kill()
        proc.communicate(timeout=30)
    deadline = time.time() + 15
    alive = [pid for pid in children if Path(f"/proc/{pid}").exists()]
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in children if Path(f"/proc/{pid}").exists()
                 and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]]
    assert not alive, f"still running after the supervisor's kill -9: {alive}"
