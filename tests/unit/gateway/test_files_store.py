"""gateway.files against the session's PostgreSQL: uploads with small limits (each a 400 naming it, leaving
nothing behind), chunking, the batch API's line reader and writer, visibility, and the sweep."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.requests import Request

from core import files as store_module
from gateway.db.database import Database
from gateway.errors import GatewayError, NotFound
from gateway.files.store import FileStore, new_file_id
from gateway.files.upload import FORM_OVERHEAD, Limits, Upload

LIMITS = Limits(max_bytes=100, max_lines=3)


@pytest.fixture
async def store(database_url: str) -> AsyncIterator[FileStore]:
    db = Database(database_url)
    assert await db.open()  # connects and migrates
    yield FileStore(db)
    await db.close()


def request(data: dict[str, str] | None = None, files: dict[str, tuple[str, bytes]] | None = None, *,
            body: bytes | None = None, content_type: str | None = None, piece: int = 7) -> Request:
    """A Starlette request whose body arrives in ``piece``-byte messages (no Content-Length: chunked)."""
    if body is None:
        encoded = httpx.Request("POST", "http://x/v1/files", data=data, files=files)
        body, content_type = encoded.read(), encoded.headers["content-type"]
    pieces = [body[i:i + piece] for i in range(0, len(body), piece)] or [b""]

    async def receive() -> dict[str, object]:
        if pieces:
            chunk = pieces.pop(0)
            return {"type": "http.request", "body": chunk, "more_body": bool(pieces)}
        return {"type": "http.disconnect"}

    headers = [(b"content-type", (content_type or "").encode())]
    return Request({"type": "http", "method": "POST", "path": "/v1/files", "headers": headers}, receive)


async def owned(store: FileStore, owner: str) -> int:
    """Rows (complete or not) of ``owner``'s files, and their chunks."""
    return int(await store.db.fetchval(
        "SELECT count(*) + (SELECT count(*) FROM file_chunks c JOIN files f ON f.id = c.file_id "
        "WHERE f.owner_id = $1) FROM files WHERE owner_id = $1", owner))


async def upload(store: FileStore, owner: str, req: Request, limits: Limits = LIMITS) -> store_module.FileRecord:
    return await Upload(store, limits, owner, "team-x").receive(req)


@pytest.mark.parametrize("content", [b"a\nb\nc", b"a\nb\nc\n", b"x" * 100])
async def test_at_the_limits_is_accepted(store: FileStore, content: bytes) -> None:
    owner = f"ak-{uuid.uuid4().hex}"
    record = await upload(store, owner, request({"purpose": "batch"}, {"file": ("in.jsonl", content)}))
    assert (record.bytes, record.owner_id, record.team_id, record.purpose) == (len(content), owner, "team-x", "batch")
    assert record.lines == (3 if b"\n" in content else 1)
    assert b"".join([c async for c in store.chunks(record)]) == content


@pytest.mark.parametrize(("data", "files", "code", "named"), [
    ({"purpose": "batch"}, {"file": ("f", b"1\n2\n3\n4")}, "too_many_lines", "3 lines"),
    ({"purpose": "batch"}, {"file": ("f", b"1\n2\n3\n\n")}, "too_many_lines", "3 lines"),
    ({"purpose": "user_data"}, {"file": ("f", b"x" * 101)}, "file_too_large", "100 bytes"),
    ({"purpose": "batch"}, {"file": ("f", b"")}, "empty_file", "empty"),
    ({"purpose": "nope"}, {"file": ("f", b"x")}, "invalid_value", "'batch' and 'user_data'"),
    ({"purpose": "batch", "expires_after[seconds]": "3600"}, {"file": ("f", b"x")}, "invalid_value", "anchor"),
    ({"purpose": "batch", "expires_after[anchor]": "created_at", "expires_after[seconds]": "soon"},
     {"file": ("f", b"x")}, "invalid_value", "3600"),
    ({}, {"file": ("f", b"x")}, "missing_required_parameter", "purpose"),
    ({"purpose": "batch"}, {}, "missing_required_parameter", "file"),
    ({"purpose": "batch"}, {"file": ("f" * 600, b"x")}, "invalid_value", "512 characters"),
    ({"purpose": "batch", "note": "n" * 5000}, {"file": ("f", b"x")}, "invalid_value", "4096 bytes"),
])
async def test_refusals_name_the_limit_and_leave_nothing(store: FileStore, data: dict[str, str],
                                                         files: dict[str, tuple[str, bytes]], code: str,
                                                         named: str) -> None:
    owner = f"ak-{uuid.uuid4().hex}"
    req = request(data, files) if files else request(data, {"other": ("f", b"x")})
    with pytest.raises(GatewayError) as e:
        await upload(store, owner, req)
    assert e.value.status == 400 and e.value.code == code and named in e.value.message, e.value.message
    assert await owned(store, owner) == 0


async def test_purpose_after_the_file_still_limits_lines(store: FileStore) -> None:
    owner = f"ak-{uuid.uuid4().hex}"
    boundary = "bnd"
    body = (f'--{boundary}\r\ncontent-disposition: form-data; name="file"; filename="late.jsonl"\r\n\r\n'
            f'1\n2\n3\n4\r\n--{boundary}\r\ncontent-disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f"--{boundary}--\r\n").encode()
    with pytest.raises(GatewayError) as e:
        await upload(store, owner, request(body=body, content_type=f"multipart/form-data; boundary={boundary}"))
    assert e.value.code == "too_many_lines"
    assert await owned(store, owner) == 0
    ok = body.replace(b"3\n4", b"3")
    record = await upload(store, owner, request(body=ok, content_type=f"multipart/form-data; boundary={boundary}"))
    assert (record.purpose, record.lines, record.filename) == ("batch", 3, "late.jsonl")


async def test_a_chunked_body_is_bounded_while_read(store: FileStore) -> None:
    owner = f"ak-{uuid.uuid4().hex}"
    body = b"x" * (LIMITS.max_body + 1)  # no boundary anywhere: all preamble, never a part
    with pytest.raises(GatewayError) as e:
        await upload(store, owner, request(body=body, content_type="multipart/form-data; boundary=b",
                                           piece=64 * 1024))
    assert e.value.code == "file_too_large" and LIMITS.max_body == 100 + FORM_OVERHEAD


async def test_two_files_and_a_cut_upload_are_refused(store: FileStore) -> None:
    owner = f"ak-{uuid.uuid4().hex}"
    two = (b'--b\r\ncontent-disposition: form-data; name="file"; filename="1"\r\n\r\nx\r\n'
           b'--b\r\ncontent-disposition: form-data; name="file"; filename="2"\r\n\r\ny\r\n--b--')
    with pytest.raises(GatewayError, match="one file"):
        await upload(store, owner, request(body=two, content_type="multipart/form-data; boundary=b"))
    cut = b'--b\r\ncontent-disposition: form-data; name="file"; filename="1"\r\n\r\nxyz'
    with pytest.raises(GatewayError, match="cut short"):
        await upload(store, owner, request(body=cut, content_type="multipart/form-data; boundary=b"))
    assert await owned(store, owner) == 0


async def test_content_spans_chunks_and_reads_back_by_line(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "CHUNK_BYTES", 16)
    owner = f"ak-{uuid.uuid4().hex}"
    content = b"".join(b'{"custom_id": "%d"}\n' % i for i in range(40)) + b"\n" + b"last"
    record = await upload(store, owner, request({"purpose": "batch"}, {"file": ("f", content)}, piece=5),
                          Limits(10_000, 100))
    assert record.lines == 42
    assert await store.db.fetchval("SELECT count(*) FROM file_chunks WHERE file_id = $1", record.id) == \
        -(-len(content) // 16)
    assert b"".join([c async for c in store.chunks(record)]) == content
    assert [line async for line in store.lines(record)] == content.split(b"\n")


async def test_result_files_from_lines(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "CHUNK_BYTES", 8)

    async def results() -> AsyncIterator[bytes | str]:
        yield '{"id": "batch_req_1"}'
        yield b'{"id": "batch_req_2"}\n'

    record = await store.create_from_lines(results(), filename="batch_x_output.jsonl", owner_id="ak-owner",
                                           team_id=None)
    assert (record.purpose, record.lines, record.filename) == ("batch_output", 2, "batch_x_output.jsonl")
    assert [line async for line in store.lines(record)] == [b'{"id": "batch_req_1"}', b'{"id": "batch_req_2"}']
    assert record.to_json()["object"] == "file" and record.to_json()["purpose"] == "batch_output"

    async def failing() -> AsyncIterator[bytes]:
        yield b"one"
        raise RuntimeError("the runner failed")

    owner = f"ak-{uuid.uuid4().hex}"
    with pytest.raises(RuntimeError):
        await store.create_from_lines(failing(), filename="x", owner_id=owner, team_id=None)
    assert await owned(store, owner) == 0


async def test_visibility_and_delete(store: FileStore) -> None:
    owner = f"ak-{uuid.uuid4().hex}"
    record = await upload(store, owner, request({"purpose": "user_data"}, {"file": ("f", b"data")}))
    assert await store.get(record.id, owner) == record and await store.get(record.id, None) == record
    assert await store.get(record.id, "ak-someone-else") is None
    assert await store.get("file-../../etc", None) is None and not await store.delete("nope", None)
    assert (await store.list(owner))[0] == [record]
    assert (await store.list("ak-someone-else"))[0] == []
    assert not await store.delete(record.id, "ak-someone-else")
    assert await store.delete(record.id, owner) and await store.get(record.id, None) is None
    assert await owned(store, owner) == 0


async def test_unfinished_and_expired_files_are_swept(store: FileStore) -> None:
    owner = f"ak-{uuid.uuid4().hex}"
    stale = await store.begin(filename="stale", purpose="batch", owner_id=owner, team_id=None)
    await stale.write(b"partial")
    await stale.flush()
    await store.execute("UPDATE files SET created_at = now() - interval '2 days' WHERE id = $1", stale.file_id)
    fresh = await store.begin(filename="fresh", purpose="batch", owner_id=owner, team_id=None)
    expired = await upload(store, owner, request({"purpose": "user_data"}, {"file": ("f", b"old")}))
    await store.execute("UPDATE files SET expires_at = now() - interval '1 second' WHERE id = $1", expired.id)
    assert await store.get(expired.id, None) is None  # invisible at once, removed by the next sweep
    while await store.sweep():
        pass
    left = await store.db.fetch("SELECT id FROM files WHERE owner_id = $1", owner)
    assert [r["id"] for r in left] == [fresh.file_id]
    await fresh.write(b"late")
    with pytest.raises(NotFound):  # chunks of a swept upload are refused...
        await stale.write(b"x" * store_module.CHUNK_BYTES)
    await store.discard(fresh.file_id)
    with pytest.raises(NotFound):  # ...and so is completing it
        await store.complete(fresh, purpose="batch")


def test_ids_sort_by_creation_time() -> None:
    ids = [new_file_id() for _ in range(3)]
    assert all(store_module.FILE_ID.match(i) for i in ids) and ids[0][:17] <= ids[-1][:17]
