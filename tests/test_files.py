"""The Files API through the official SDK against the real stack: round trip, a large streamed upload,
ownership, limits, errors and pagination. (Small limits, malformed bodies: tests/unit/gateway/test_files_store.py.)"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import time

import httpx
import openai
import pytest
from conftest import admin, create_key

BATCH = b"".join(b'{"custom_id": "r-%d", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "echo", '
                 b'"messages": [{"role": "user", "content": "hi %d"}]}}\n' % (i, i) for i in range(3))


def sdk(stack, key: str) -> openai.OpenAI:  # type: ignore[no-untyped-def]
    return openai.OpenAI(base_url=stack.base_url + "/v1", api_key=key, max_retries=0)


def test_round_trip_with_the_sdk(stack) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    created = client.files.create(file=("requests.jsonl", BATCH), purpose="batch")
    assert created.id.startswith("file-") and len(created.id) == 29 and created.object == "file"
    assert (created.bytes, created.filename, created.purpose, created.expires_at) == \
        (len(BATCH), "requests.jsonl", "batch", None)
    assert abs(created.created_at - time.time()) < 60
    assert client.files.retrieve(created.id) == created
    assert created.id in [f.id for f in client.files.list()]
    assert client.files.content(created.id).content == BATCH
    deleted = client.files.delete(created.id)
    assert (deleted.id, deleted.object, deleted.deleted) == (created.id, "file", True)
    with pytest.raises(openai.NotFoundError) as e:
        client.files.retrieve(created.id)
    assert e.value.body["param"] == "file_id" and created.id in e.value.body["message"]  # type: ignore[index]
    for call in (client.files.content, client.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(created.id)


def test_expires_after_and_the_paths_without_v1(stack) -> None:  # type: ignore[no-untyped-def]
    created = stack.client().files.create(file=io.BytesIO(b"notes"), purpose="user_data",
                                          expires_after={"anchor": "created_at", "seconds": 3600})
    assert created.expires_at == created.created_at + 3600 and created.filename == "upload"
    r = httpx.get(f"{stack.base_url}/files/{created.id}/content", headers=admin(stack))
    assert r.status_code == 200 and r.content == b"notes" and r.headers["content-length"] == "5"
    with pytest.raises(openai.BadRequestError) as e:
        stack.client().files.create(file=b"x", purpose="user_data", expires_after={"anchor": "created_at",
                                                                                   "seconds": 10})
    assert e.value.body["param"] == "expires_after.seconds"  # type: ignore[index]


def rss(pid: int) -> int:
    """The process's resident memory in bytes (Linux's /proc)."""
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _rss_sampler(pid: int) -> tuple[list[int], threading.Event, threading.Thread]:
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            samples.append(rss(pid))
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    return samples, stop, thread


def test_a_large_upload_is_streamed_not_held(stack) -> None:  # type: ignore[no-untyped-def]
    """24 MB: beyond the stack's 1 MiB max_body_bytes (uploads have their own limit), stored as ~24 chunks, and
    the gateway's memory does not grow by the file's size while it streams through."""
    size = 24 * 1024 * 1024
    data = os.urandom(size // 2).hex().encode()  # incompressible text
    client = stack.client(timeout=120)
    baseline = rss(stack.procs[0].pid)
    samples, stop, thread = _rss_sampler(stack.procs[0].pid)
    try:
        created = client.files.create(file=("big.txt", data), purpose="user_data")
        body = client.files.content(created.id).content
    finally:
        stop.set()
        thread.join()
    assert created.bytes == size and hashlib.sha256(body).digest() == hashlib.sha256(data).digest()
    assert max(samples) - baseline < size // 2, f"gateway RSS grew by {(max(samples) - baseline) >> 20} MiB"
    client.files.delete(created.id)


def test_a_key_sees_only_its_own_files(stack) -> None:  # type: ignore[no-untyped-def]
    alice, bob = sdk(stack, create_key(stack)["key"]), sdk(stack, create_key(stack)["key"])
    mine = alice.files.create(file=("a.jsonl", BATCH), purpose="batch")
    assert [f.id for f in alice.files.list()] == [mine.id]
    assert bob.files.list().data == []
    for call in (bob.files.retrieve, bob.files.content, bob.files.delete):
        with pytest.raises(openai.NotFoundError):
            call(mine.id)
    master = stack.client()
    assert master.files.retrieve(mine.id).id == mine.id  # the master key sees every file
    assert mine.id in [f.id for f in master.files.list(purpose="batch")]
    assert alice.files.content(mine.id).content == BATCH
    assert alice.files.delete(mine.id).deleted


def test_an_admin_key_sees_every_file(stack) -> None:  # type: ignore[no-untyped-def]
    theirs = sdk(stack, create_key(stack)["key"]).files.create(file=("t.jsonl", BATCH), purpose="batch")
    boss = sdk(stack, create_key(stack, is_admin=True)["key"])
    assert boss.files.retrieve(theirs.id).id == theirs.id
    assert boss.files.delete(theirs.id).deleted


def test_pagination(stack) -> None:  # type: ignore[no-untyped-def]
    client = sdk(stack, create_key(stack)["key"])
    ids = [client.files.create(file=(f"f{i}.jsonl", BATCH), purpose="batch").id for i in range(5)]
    assert ids == sorted(ids)  # ids sort by creation time
    page = client.files.list(limit=2)
    assert [f.id for f in page.data] == ids[:-3:-1] and page.has_more
    raw = httpx.get(stack.base_url + "/v1/files", params={"limit": 2, "after": ids[3]},
                    headers={"authorization": f"Bearer {client.api_key}"}).json()
    assert [f["id"] for f in raw["data"]] == [ids[2], ids[1]] and raw["has_more"]
    assert (raw["first_id"], raw["last_id"], raw["object"]) == (ids[2], ids[1], "list")
    last = client.files.list(limit=2, after=ids[1])
    assert [f.id for f in last.data] == [ids[0]] and not last.has_more
    assert [f.id for f in client.files.list(order="asc", limit=3, after=ids[0])] == ids[1:]  # the SDK pages on
    assert [f.id for f in client.files.list(purpose="user_data")] == []
    empty = httpx.get(stack.base_url + "/v1/files", params={"after": ids[0]},
                      headers={"authorization": f"Bearer {client.api_key}"}).json()
    assert empty == {"object": "list", "data": [], "first_id": None, "last_id": None, "has_more": False}
    for i in ids:
        client.files.delete(i)


def test_a_batch_file_over_the_line_limit_is_a_400_naming_it(stack) -> None:  # type: ignore[no-untyped-def]
    client = stack.client()
    before = {f.id for f in client.files.list()}
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=("many.jsonl", b"{}\n" * 50_001), purpose="batch")
    assert "50000 lines" in e.value.message and e.value.body["code"] == "too_many_lines"  # type: ignore[index]
    ok = client.files.create(file=("many.jsonl", b"{}\n" * 50_001), purpose="user_data")  # no line limit there
    assert ok.bytes == 150_003
    assert {f.id for f in client.files.list()} - before == {ok.id}  # the refused upload left nothing behind
    client.files.delete(ok.id)


@pytest.mark.parametrize("purpose", ["fine-tune", "batch_output", "assistants"])
def test_other_purposes_are_refused(stack, purpose: str) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(openai.BadRequestError) as e:
        stack.client().files.create(file=("x.jsonl", BATCH), purpose=purpose)  # type: ignore[arg-type]
    assert e.value.body["param"] == "purpose" and "'batch'" in e.value.message  # type: ignore[index]


@pytest.mark.parametrize(("kwargs", "param"), [
    ({"files": {"file": ("x.jsonl", BATCH)}}, "purpose"),
    ({"data": {"purpose": "batch"}, "files": {"other": ("x.jsonl", BATCH)}}, "file"),
    ({"data": {"purpose": "batch"}, "files": {"file": ("x.jsonl", b"")}}, "file"),
    ({"json": {"purpose": "batch"}}, "file"),
    ({"content": b"--b\r\nno headers", "headers": {"content-type": "multipart/form-data; boundary=b"}}, None),
])
def test_bad_uploads_are_400s(stack, kwargs: dict, param: str | None) -> None:  # type: ignore[no-untyped-def]
    headers = {**admin(stack), **kwargs.pop("headers", {})}
    r = httpx.post(stack.base_url + "/v1/files", headers=headers, **kwargs)
    assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_a_declared_length_over_the_upload_limit_is_refused_unread(stack) -> None:  # type: ignore[no-untyped-def]
    """The request middleware answers from the headers (uploads: files_max_bytes plus the form's overhead);
    other routes keep max_body_bytes."""
    host, port = stack.base_url.removeprefix("http://").split(":")

    def send_headers(path: str, length: int) -> bytes:
        with socket.create_connection((host, int(port)), timeout=10) as s:
            s.sendall(f"POST {path} HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {stack.master_key}\r\n"
                      f"content-type: multipart/form-data; boundary=b\r\ncontent-length: {length}\r\n\r\n".encode())
            answer = b""
            while chunk := s.recv(65536):  # the middleware closes the connection after its answer
                answer += chunk
            return answer

    answer = send_headers("/v1/files", 300 * 1024 * 1024)
    assert answer.startswith(b"HTTP/1.1 400") and b"209715200 bytes" in answer and b"file_too_large" in answer
    assert send_headers("/v1/chat/completions", 2 * 1024 * 1024).startswith(b"HTTP/1.1 413")


def test_every_route_needs_a_credential(stack) -> None:  # type: ignore[no-untyped-def]
    for method, path in (("POST", "/v1/files"), ("GET", "/v1/files"), ("GET", "/v1/files/file-0"),
                         ("GET", "/v1/files/file-0/content"), ("DELETE", "/v1/files/file-0")):
        r = httpx.request(method, stack.base_url + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key", (method, path)


@pytest.mark.parametrize("params", [{"limit": 0}, {"limit": 10_001}, {"order": "sideways"}, {"after": "x\x00"},
                                    {"purpose": "a\x00"}])
def test_bad_list_parameters_are_400s(stack, params: dict) -> None:  # type: ignore[no-untyped-def]
    r = httpx.get(stack.base_url + "/v1/files", params=params, headers=admin(stack))
    assert r.status_code == 400 and r.json()["error"]["param"] == next(iter(params)), r.text
