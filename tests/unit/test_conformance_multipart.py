"""The harness's strict multipart/related reader, on good bodies (whole and byte at a time)
and on the framing faults it must name."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from conformance.model import Failed
from conformance.multipart import (
    MultipartParser,
    Part,
    boundary_of,
    parse_media_type,
    read_multipart,
)

CT = 'multipart/related; type="application/dicom"; boundary=b0und'


def body(*parts: tuple[str, bytes], preamble: bytes = b"", epilogue: bytes = b"") -> bytes:
    out = bytearray(preamble)
    for headers, content in parts:
        out += b"--b0und\r\n" + headers.encode() + b"\r\n" + content + b"\r\n"
    return bytes(out + b"--b0und--" + epilogue)


GOOD = body(
    ("Content-Type: application/dicom\r\n", b"DICM one"),
    ("Content-Type: application/dicom; transfer-syntax=1.2.840.10008.1.2.1\r\n", b"two\r\n--b0"),
)


def by_bytes(data: bytes, keep: int | None = None) -> list[Part]:
    parser = MultipartParser("b0und", keep=keep)
    parts: list[Part] = []
    for i in range(len(data)):
        parts += parser.feed(data[i : i + 1])
    parser.close()
    return parts


@pytest.mark.parametrize("read", [lambda d: read_multipart(d, CT), by_bytes])
def test_reads_parts_whole_or_byte_at_a_time(read: Callable[[bytes], list[Part]]) -> None:
    parts = read(GOOD)
    assert [p.body for p in parts] == [b"DICM one", b"two\r\n--b0"]
    assert parts[0].header("content-type") == "application/dicom"
    assert parts[1].header("Content-Type") == (
        "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
    )
    assert [p.size for p in parts] == [8, 9]


def test_preamble_epilogue_padding_and_headerless_part() -> None:
    data = b"ignored preamble\r\n--b0und  \t\r\n\r\nno headers\r\n--b0und-- \r\nepilogue"
    parts = read_multipart(data, CT)
    assert parts == [Part((), b"no headers", 10)]


def test_keep_bounds_memory_but_counts_the_size() -> None:
    data = body(("Content-Type: application/octet-stream\r\n", b"x" * 1000))
    (part,) = by_bytes(data, keep=10)
    assert (part.body, part.size, part.truncated) == (b"x" * 10, 1000, True)
    (whole,) = read_multipart(data, CT, keep=None)
    assert not whole.truncated


def test_folded_header_and_repeated_header() -> None:
    data = body(
        ("Content-Type: application/dicom;\r\n transfer-syntax=1.2\r\nX: 1\r\nx: 2\r\n", b"a")
    )
    (part,) = read_multipart(data, CT)
    assert part.header("content-type") == "application/dicom; transfer-syntax=1.2"
    assert part.header_count("X") == 2


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (GOOD[:-9], "without the close delimiter"),  # cut short
        (GOOD[:20], "without the close delimiter"),
        (b"no delimiter at all", "no delimiter"),
        (b"--b0und--", "before any body part"),
        (b"--b0und\nContent-Type: a/b\r\n\r\nx\r\n--b0und--", "bare LF"),
        (b"--b0und\r\nContent-Type: a/b\n\nx\r\n--b0und--", "bare LF"),
        (b"--b0und\r\nContent-Type: a/b\r\n\r\nx\n--b0und--", "bare LF"),
        (b"--b0und\r\nContent-Type a/b\r\n\r\nx\r\n--b0und--", "is not 'Name: value'"),
        (b"--b0und\r\n\r\nx\r\n--b0undX\r\n\r\ny\r\n--b0und--", "followed by"),
    ],
)
def test_framing_faults_are_named(data: bytes, says: str) -> None:
    with pytest.raises(Failed, match=says):
        read_multipart(data, CT)
    with pytest.raises(Failed, match=says):
        by_bytes(data)


@pytest.mark.parametrize(
    ("content_type", "says"),
    [
        ("application/dicom", "not multipart/related"),
        ('multipart/related; type="application/dicom"', "no boundary"),
        ("multipart/related; boundary=" + "a" * 71, "1 to 70"),
        ('multipart/related; boundary="ends in space "', "1 to 70"),
        ("multipart/related; boundary=a; boundary=b", "given twice"),
        ('multipart/related; boundary="open', "not closed"),
        ("multipart/related boundary=a", "unexpected"),
    ],
)
def test_bad_content_types(content_type: str, says: str) -> None:
    with pytest.raises(Failed, match=says):
        boundary_of(content_type)


def test_media_type_parameters() -> None:
    media = parse_media_type(
        'Multipart/Related ; TYPE="application/octet-stream; transfer-syntax=1.2" ;'
        ' boundary=abc ; ; q="a\\"b"'
    )
    assert media.essence == "multipart/related"
    assert media.param("type") == "application/octet-stream; transfer-syntax=1.2"
    assert media.params == {
        "type": "application/octet-stream; transfer-syntax=1.2",
        "boundary": "abc",
        "q": 'a"b',
    }
    assert boundary_of('multipart/related; boundary="with space, and:colon"') == (
        "with space, and:colon"
    )
