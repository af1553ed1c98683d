"""gateway.files.multipart: the streaming parser against httpx's encoder, fed in pieces of every size, and the
malformed bodies it refuses with a 400."""

from __future__ import annotations

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.files.multipart import (
    END_OF_PART,
    Event,
    MultipartError,
    MultipartParser,
    Part,
    boundary_of,
    header_params,
)


def encoded(data: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, bytes]:
    """(boundary, body) as httpx (the OpenAI SDK's transport) writes them."""
    req = httpx.Request("POST", "http://x/v1/files", data=data, files=files)
    return boundary_of(req.headers["content-type"]), req.read()


def parse(boundary: bytes, body: bytes, piece: int) -> list[Event]:
    parser = MultipartParser(boundary)
    events: list[Event] = []
    for i in range(0, len(body), piece):
        events += parser.feed(body[i:i + piece])
    parser.close()
    merged: list[Event] = []
    for ev in events:
        if isinstance(ev, bytes) and merged and isinstance(merged[-1], bytes):
            merged[-1] += ev
        else:
            merged.append(ev)
    return merged


TRICKY = b"line\r\n--not-the-boundary\r\n\r\n--\r\n-" + bytes(range(256)) + b"\r\n"


@pytest.mark.parametrize("piece", [1, 2, 3, 5, 16, 37, 64, 1000, 100_000])
def test_fields_and_file_in_any_pieces(piece: int) -> None:
    boundary, body = encoded({"purpose": "batch"}, {"file": ('we"ird\\ é.jsonl', TRICKY)})
    assert parse(boundary, body, piece) == [
        Part("purpose"), b"batch", END_OF_PART,
        Part("file", 'we"ird\\ é.jsonl', "application/octet-stream"), TRICKY, END_OF_PART]


@settings(max_examples=60, deadline=None)
@given(content=st.binary(max_size=3000), purpose=st.text(max_size=40), piece=st.integers(1, 400))
def test_any_content_survives(content: bytes, purpose: str, piece: int) -> None:
    boundary, body = encoded({"purpose": purpose}, {"file": ("f", content)})
    events = parse(boundary, body, piece)
    file_at = events.index(Part("file", "f", "application/octet-stream"))
    assert b"".join(e for e in events[file_at:] if isinstance(e, bytes)) == content
    assert b"".join(e for e in events[:file_at] if isinstance(e, bytes)) == purpose.encode()


def test_preamble_padding_epilogue_and_a_part_without_content() -> None:
    body = (b"ignored preamble\r\n--b \t\r\ncontent-disposition: form-data; name=a\r\n\r\n\r\n--b\r\n"
            b'Content-Disposition: form-data; name="f"; filename*=utf-8\'\'%C3%A9t%C3%A9.txt\r\n\r\nx\r\n--b--'
            b"\r\nepilogue --b")
    assert parse(b"b", body, 4) == [Part("a"), END_OF_PART, Part("f", "été.txt"), b"x", END_OF_PART]


def test_nothing_is_returned_after_the_closing_boundary() -> None:
    parser = MultipartParser(b"b")
    parser.feed(b"--b--\r\n")
    assert parser.done and parser.feed(b"--b\r\nmore") == []


@pytest.mark.parametrize("content_type", [None, "application/json", "multipart/form-data",
                                          "multipart/form-data; boundary=", "multipart/mixed; boundary=b",
                                          "multipart/form-data; boundary=a\x01b"])
def test_only_multipart_form_data_with_a_boundary(content_type: str | None) -> None:
    with pytest.raises(MultipartError) as e:
        boundary_of(content_type)
    assert e.value.status == 400


@pytest.mark.parametrize("body", [
    b"--b\r\ncontent-disposition: form-data; name=a\r\n\r\nx",  # no closing boundary
    b"--b\r\n",  # cut after the first boundary
    b"no boundary at all",
])
def test_a_cut_body_is_refused_at_the_end(body: bytes) -> None:
    parser = MultipartParser(b"b")
    parser.feed(body)
    with pytest.raises(MultipartError):
        parser.close()


@pytest.mark.parametrize("body", [
    b"--b\r\ncontent-type: text/plain\r\n\r\nx\r\n--b--",  # no Content-Disposition
    b"--b\r\ncontent-disposition: attachment; name=a\r\n\r\nx\r\n--b--",
    b"--b\r\ncontent-disposition: form-data\r\n\r\nx\r\n--b--",  # no name
    b"--b\r\nnot a header line\r\n\r\nx\r\n--b--",
    b"--bx\r\n",  # characters after the boundary
    b"--b" + b" " * 100,  # padding without end
    b"--b\r\ncontent-disposition: form-data; name=a\r\nx-long: " + b"y" * 20_000,
])
def test_malformed_parts_are_refused(body: bytes) -> None:
    with pytest.raises(MultipartError) as e:
        MultipartParser(b"b").feed(body)
    assert e.value.status == 400 and e.value.type == "invalid_request_error"


def test_header_params() -> None:
    assert header_params('form-data; name="a;b"; filename="x\\"y%22z"') == \
        ("form-data", {"name": "a;b", "filename": 'x"y"z'})
    assert header_params("Multipart/Form-Data; Boundary=abc") == ("multipart/form-data", {"boundary": "abc"})
