"""``gatehouse batches …`` as a subprocess against the real stack: submit --wait, list, show, download, cancel,
and every error as one line on stderr with a non-zero exit (never a traceback)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from conftest import ROOT

GATEHOUSE = [sys.executable, "-m", "cli", "batches"]
COMMANDS = ("submit", "list", "show", "cancel", "download")
UNREACHABLE = "http://127.0.0.1:9"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEHOUSE_") and k not in ("REDIS_URL",
                                                                                                  "DATABASE_URL")}
    return {**env, "PYTHONPATH": str(ROOT)}


def run(cwd: Path, *args: str, base_url: str = UNREACHABLE, key: str = "sk-unused") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*GATEHOUSE, *args, "--base-url", base_url, "--api-key", key], cwd=cwd,
                          capture_output=True, text=True, timeout=120, env=_env())


def gh(stack: Any, cwd: Path, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    return run(cwd, *args, base_url=stack.base_url, key=key or stack.master_key)


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str, code: int = 1) -> None:
    assert r.returncode == code, (r.returncode, r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout == "", (r.stdout, r.stderr)
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for needle in needles:
        assert needle in r.stderr, r.stderr


def requests(n: int, url: str = "/v1/chat/completions") -> bytes:
    def body(i: int) -> dict[str, Any]:
        if url == "/v1/chat/completions":
            return {"model": "echo", "messages": [{"role": "user", "content": f"line {i}"}], "max_tokens": 8}
        return {"model": "echo", "prompt": f"line {i}", "max_tokens": 8}
    return b"".join(orjson.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url, "body": body(i)}) + b"\n"
                    for i in range(n))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cli-batches")


@pytest.fixture(scope="module")
def done(stack: Any, workdir: Path) -> dict[str, Any]:
    """A 12-line chat batch submitted with --wait --json: the final Batch object it printed."""
    (workdir / "in.jsonl").write_bytes(requests(12))
    r = gh(stack, workdir, "submit", "in.jsonl", "--wait", "--json", "--metadata", "job=cli-test", "-m", "n=12")
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    return orjson.loads(r.stdout)  # type: ignore[no-any-return]  # the whole stdout is one JSON object


@pytest.mark.parametrize("command", COMMANDS)
def test_help_explains_with_an_example(command: str, tmp_path: Path) -> None:
    r = subprocess.run([*GATEHOUSE, command, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                       env={**_env(), "COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "Example:" in r.stdout and f"gatehouse batches {command}" in r.stdout
    assert "--base-url" in r.stdout and "--api-key" in r.stdout and "--json" in r.stdout


def test_group_help_lists_the_commands(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "cli", "batches", "--help"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, env=_env())
    assert r.returncode == 0 and all(c in r.stdout for c in COMMANDS)


def test_submit_wait_json_prints_the_final_batch(done: dict[str, Any]) -> None:
    assert done["object"] == "batch" and done["id"].startswith("batch_")
    assert done["status"] == "completed" and done["endpoint"] == "/v1/chat/completions"
    assert done["request_counts"] == {"total": 12, "completed": 12, "failed": 0}
    assert done["metadata"] == {"job": "cli-test", "n": "12"}
    assert done["output_file_id"] and done["error_file_id"] is None


def test_list(stack: Any, workdir: Path, done: dict[str, Any]) -> None:
    r = gh(stack, workdir, "list", "--limit", "100", "--json")
    assert r.returncode == 0, r.stderr
    page = orjson.loads(r.stdout)
    assert page["object"] == "list" and done["id"] in [b["id"] for b in page["data"]]
    r = gh(stack, workdir, "list", "--limit", "100")
    assert r.returncode == 0, r.stderr
    row = next(line for line in r.stdout.splitlines() if done["id"] in line)
    assert "completed" in row and "12/0/12" in row and "/v1/chat/completions" in row


def test_show(stack: Any, workdir: Path, done: dict[str, Any]) -> None:
    r = gh(stack, workdir, "show", done["id"], "--json")
    assert r.returncode == 0, r.stderr
    shown = orjson.loads(r.stdout)
    assert shown["id"] == done["id"] and shown["status"] == "completed" and shown["request_counts"]["total"] == 12
    r = gh(stack, workdir, "show", done["id"])
    assert r.returncode == 0, r.stderr
    assert done["id"] in r.stdout and "completed" in r.stdout and done["output_file_id"] in r.stdout
    assert "cli-test" in r.stdout


def test_download(stack: Any, workdir: Path, done: dict[str, Any]) -> None:
    r = gh(stack, workdir, "download", done["id"])
    assert r.returncode == 0, r.stderr
    path = workdir / f"{done['id']}_output.jsonl"
    results = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert sorted(x["custom_id"] for x in results) == sorted(f"req-{i}" for i in range(12))
    assert all(x["response"]["status_code"] == 200 for x in results)
    assert "12 line(s)" in r.stdout
    r = gh(stack, workdir, "download", done["id"], "-o", "sub.jsonl", "--json")
    assert r.returncode == 0, r.stderr
    meta = orjson.loads(r.stdout)
    assert meta["id"] == done["output_file_id"] and meta["purpose"] == "batch_output"
    assert len((workdir / "sub.jsonl").read_bytes().splitlines()) == 12
    r = gh(stack, workdir, "download", done["id"], "-o", "-")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 12, r.stderr
    one_line_error(gh(stack, workdir, "download", done["id"], "--errors"), "no error file")
    one_line_error(gh(stack, workdir, "download", done["id"], "-o", "no/such/dir.jsonl"), "cannot write", code=2)
    assert not list(workdir.rglob("*.part"))


def test_cancel_of_a_finished_batch_is_refused(stack: Any, workdir: Path, done: dict[str, Any]) -> None:
    one_line_error(gh(stack, workdir, "cancel", done["id"]), "409", "completed")
    one_line_error(gh(stack, workdir, "cancel", done["id"], "--json"), "409")


def test_submit_without_wait(stack: Any, workdir: Path) -> None:
    (workdir / "c.jsonl").write_bytes(requests(3, "/v1/completions"))
    r = gh(stack, workdir, "submit", "c.jsonl", "--endpoint", "/v1/completions", "--json")
    assert r.returncode == 0, r.stderr
    batch = orjson.loads(r.stdout)
    assert batch["endpoint"] == "/v1/completions" and batch["status"] in ("validating", "in_progress",
                                                                          "finalizing", "completed")
    r = gh(stack, workdir, "submit", "c.jsonl", "-e", "/v1/completions")
    assert r.returncode == 0 and "submitted batch_" in r.stdout, r.stderr


def test_a_failed_batch_shows_its_validation_errors(stack: Any, workdir: Path) -> None:
    (workdir / "bad.jsonl").write_bytes(requests(1) + b"{not json\n")
    r = gh(stack, workdir, "submit", "bad.jsonl", "--wait")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert "failed" in r.stdout and "line 2: invalid_json" in r.stdout, r.stdout
    r = gh(stack, workdir, "submit", "bad.jsonl", "--wait", "--json")
    assert r.returncode == 1
    batch = orjson.loads(r.stdout)
    assert batch["status"] == "failed" and batch["errors"]["data"][0]["line"] == 2
    assert "line 2: invalid_json" in r.stderr  # the summary goes to stderr with --json
    one_line_error(gh(stack, workdir, "download", batch["id"]), "has no output file")


def test_unknown_batch(stack: Any, workdir: Path) -> None:
    for command in ("show", "cancel", "download"):
        one_line_error(gh(stack, workdir, command, "batch_000000000000nope"), "404", "No batch found")


def test_bad_key_and_unreachable_gateway(stack: Any, workdir: Path) -> None:
    one_line_error(gh(stack, workdir, "list", key="sk-gh-not-a-key"), "401")
    one_line_error(run(workdir, "list"), "cannot reach the gateway")
    (workdir / "one.jsonl").write_bytes(requests(1))
    one_line_error(run(workdir, "submit", "one.jsonl", "--wait"), "cannot reach the gateway")


def test_local_file_problems_exit_2(tmp_path: Path) -> None:
    one_line_error(run(tmp_path, "submit", "missing.jsonl"), "no such file", code=2)
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    one_line_error(run(tmp_path, "submit", "empty.jsonl"), "is empty", code=2)
    one_line_error(run(tmp_path, "submit", "."), "directory", code=2)
    (tmp_path / "ok.jsonl").write_bytes(requests(1))
    one_line_error(run(tmp_path, "submit", "ok.jsonl", "--metadata", "novalue"), "KEY=VALUE", code=2)
