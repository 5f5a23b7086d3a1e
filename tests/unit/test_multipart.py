"""multipart/related writer and incremental reader (RFC 2046 5.1, RFC 2387, PS3.18 8.6.1.2)."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Iterator, Mapping

import pytest

from ncpeh_dicomweb.dicomweb.multipart import (
    End,
    Event,
    MultipartError,
    MultipartReader,
    PartData,
    PartEnd,
    PartStart,
    boundary_from_content_type,
    closing_delimiter,
    content_type,
    new_boundary,
    part_header,
)

B = "0123456789abcdef0123456789abcdef"
Part = tuple[dict[str, str], bytes]

# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def build(
    parts: Iterable[tuple[Mapping[str, str], bytes]],
    boundary: str = B,
    *,
    preamble: bytes = b"",
    epilogue: bytes = b"",
) -> bytes:
    """A body written with the module's own writer functions."""
    out = [preamble]
    n = 0
    for headers, data in parts:
        out.append(part_header(boundary, headers, first=n == 0))
        out.append(data)
        n += 1
    out.append(closing_delimiter(boundary, empty=n == 0))
    out.append(epilogue)
    return b"".join(out)


def whole(body: bytes) -> Iterator[bytes]:
    yield body


def one_byte(body: bytes) -> Iterator[bytes]:
    for i in range(len(body)):
        yield body[i : i + 1]


def random_chunks(seed: int) -> Callable[[bytes], Iterator[bytes]]:
    def chunker(body: bytes) -> Iterator[bytes]:
        rnd = random.Random(seed)
        i = 0
        while i < len(body):
            n = rnd.choice([0, 1, 2, 3, 5, 17, 38, 39, 40, 64, 500, 4096])
            yield body[i : i + n]
            i += n

    return chunker


CHUNKERS = [
    pytest.param(whole, id="whole"),
    pytest.param(one_byte, id="one-byte"),
    *(pytest.param(random_chunks(seed), id=f"random-{seed}") for seed in range(4)),
]


def parse(
    chunks: Iterable[bytes], boundary: str = B, **kwargs: int
) -> tuple[list[Part], MultipartReader]:
    """Feed every chunk, check the event grammar, and return the reassembled parts."""
    reader = MultipartReader(boundary, **kwargs)
    events: list[Event] = []
    for chunk in chunks:
        events.extend(reader.feed(chunk))
    reader.finish()
    return check_events(events), reader


def check_events(events: list[Event]) -> list[Part]:
    """PartStart (PartData)* PartEnd ... End, no empty PartData; returns (headers, body)."""
    parts: list[Part] = []
    in_part = False
    ended = False
    for ev in events:
        assert not ended, "event after End"
        if isinstance(ev, PartStart):
            assert not in_part
            parts.append((dict(ev.headers), b""))
            in_part = True
        elif isinstance(ev, PartData):
            assert in_part
            assert ev.data, "empty PartData"
            assert isinstance(ev.data, memoryview)  # a view of what was fed, no copy
            headers, data = parts[-1]
            parts[-1] = (headers, data + bytes(ev.data))
        elif isinstance(ev, PartEnd):
            assert in_part
            in_part = False
        else:
            assert isinstance(ev, End)
            assert not in_part
            ended = True
    assert ended
    return parts


def nasty_bodies(rnd: random.Random, boundary: str) -> list[bytes]:
    """Random binary bodies salted with near-delimiters, CRLFs and partial boundaries."""
    delim = b"\r\n--" + boundary.encode()
    salts = [
        b"\r\n",
        b"\r",
        b"\n",
        b"--",
        b"\r\n--",
        b"--" + boundary.encode(),  # not after CRLF: ordinary data
        delim[:-1],
        delim[:5],
        delim[: len(delim) // 2],
        b"\r\r\n--" + boundary.encode()[:-1],
        b"\r\n-" + boundary.encode(),
    ]
    bodies = [b"", b"\r", b"\r\n", b"-", delim[:-1], b"x" + delim[:-1], b"x--" + boundary.encode()]
    for _ in range(12):
        pieces = []
        for _ in range(rnd.randrange(0, 30)):
            if rnd.random() < 0.5:
                pieces.append(rnd.choice(salts))
            else:
                pieces.append(rnd.randbytes(rnd.randrange(0, 200)))
        body = b"".join(pieces)
        # RFC 2046 5.1.1: the boundary must not begin a line of the data, the first included
        # (it would follow the CRLF ending the header section). Break such occurrences.
        while delim in body:
            body = body.replace(delim, delim[:-1] + b"!")
        if body.startswith(delim[2:]):
            body = b"!" + body
        bodies.append(body)
    return bodies


# --------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunker", CHUNKERS)
@pytest.mark.parametrize("seed", range(3))
def test_round_trip_random_bodies(chunker: Callable[[bytes], Iterator[bytes]], seed: int) -> None:
    rnd = random.Random(seed)
    bodies = nasty_bodies(rnd, B)
    parts = [
        ({"Content-Type": "application/dicom", "Content-Location": f"/x/{i}"}, data)
        for i, data in enumerate(bodies)
    ]
    body = build(parts)
    got, reader = parse(chunker(body))
    assert reader.done
    assert [data for _, data in got] == bodies
    assert got[3][0] == {"content-type": "application/dicom", "content-location": "/x/3"}


@pytest.mark.parametrize("chunker", CHUNKERS)
@pytest.mark.parametrize("seed", range(3))
def test_parts_with_a_content_length_are_counted_not_searched(
    chunker: Callable[[bytes], Iterator[bytes]], seed: int
) -> None:
    # The same nasty bodies, each declaring its length (as PACS do), some parts without one:
    # counting gives what searching gives, for any chunking.
    rnd = random.Random(seed)
    bodies = nasty_bodies(rnd, B)
    parts = [
        ({"Content-Type": "application/dicom", "Content-Length": str(len(data))}, data)
        if i % 3
        else ({"Content-Type": "application/dicom"}, data)
        for i, data in enumerate(bodies)
    ]
    got, reader = parse(chunker(build(parts)))
    assert reader.done
    assert [data for _, data in got] == bodies
    assert got[1][0]["content-length"] == str(len(bodies[1]))


def test_a_counted_body_is_not_searched_for_the_delimiter() -> None:
    # What only counting can tell: a body that contains its own delimiter line, as its
    # Content-Length says (RFC 2046 forbids it; a search would cut the part there).
    inner = b"head\r\n--" + B.encode() + b"\r\ntail"
    body = build([({"Content-Length": str(len(inner))}, inner)])
    got, _ = parse(random_chunks(7)(body))
    assert [data for _, data in got] == [inner]


@pytest.mark.parametrize("delta", [-1, 1, 5])
@pytest.mark.parametrize("chunker", CHUNKERS)
def test_a_content_length_that_does_not_match_the_body_is_an_error(
    chunker: Callable[[bytes], Iterator[bytes]], delta: int
) -> None:
    data = b"0123456789" * 10
    body = build(
        [({"Content-Length": str(len(data) + delta)}, data), ({"Content-Length": "3"}, b"abc")]
    )
    with pytest.raises(MultipartError, match="Content-Length does not match"):
        parse(chunker(body))


@pytest.mark.parametrize("value", ["", "-3", "+3", "3.0", "0x10", "\u0663", "1" * 40])
def test_a_content_length_that_is_not_a_number_is_searched(value: str) -> None:
    data = b"abc\r\n--not-the-boundary"
    head = f"--{B}\r\nContent-Length: {value}\r\n\r\n".encode()  # the writer is ASCII-only
    got, _ = parse([head + data + closing_delimiter(B, empty=False)])
    assert [d for _, d in got] == [data]


def test_bytearray_input_and_views_that_stay_valid() -> None:
    # The upstream reader feeds fresh bytearrays; the views handed out must still read the
    # same after later feeds (the reader never writes into what it was fed).
    data = [bytes(range(256)) * 40, b"x" * 9000]
    body = build([({"Content-Length": str(len(d))}, d) for d in data])
    reader = MultipartReader(B)
    events = []
    for i in range(0, len(body), 1000):
        events.extend(reader.feed(bytearray(body[i : i + 1000])))
    reader.finish()
    assert [d for _, d in check_events(events)] == data


@pytest.mark.parametrize("chunker", CHUNKERS)
def test_same_result_for_every_chunking(chunker: Callable[[bytes], Iterator[bytes]]) -> None:
    rnd = random.Random(42)
    bodies = nasty_bodies(rnd, B)
    body = build(({"Content-Type": "application/octet-stream"}, data) for data in bodies)
    reference, _ = parse([body])
    got, _ = parse(chunker(body))
    assert got == reference
    assert b"".join(d for _, d in got) == b"".join(bodies)


@pytest.mark.parametrize("chunker", CHUNKERS)
def test_round_trip_boundary_with_special_characters(
    chunker: Callable[[bytes], Iterator[bytes]],
) -> None:
    boundary = "a'()+_,-./:=? b"
    ct = content_type("application/dicom", boundary)
    assert ct == 'multipart/related; type="application/dicom"; boundary="a\'()+_,-./:=? b"'
    assert boundary_from_content_type(ct) == boundary
    bodies = [b"one\r\n--a'()+_,-./:=? ", b"two"]
    body = build(((({"Content-Type": "text/plain"}), d) for d in bodies), boundary)
    got, _ = parse(chunker(body), boundary)
    assert [d for _, d in got] == bodies


@pytest.mark.parametrize("chunker", CHUNKERS)
def test_preamble_and_epilogue_ignored(chunker: Callable[[bytes], Iterator[bytes]]) -> None:
    preamble = b"This is a preamble.\r\n--not-the-boundary\r\n-- " + B.encode()[:-1] + b"\r\n"
    epilogue = b"epilogue\r\n--" + B.encode() + b"\r\nContent-Type: x\r\n\r\nignored"
    body = build([({"A": "1"}, b"data")], preamble=preamble, epilogue=epilogue)
    got, _ = parse(chunker(body))
    assert got == [({"a": "1"}, b"data")]


def test_preamble_without_crlf_before_boundary_is_not_a_delimiter() -> None:
    reader = MultipartReader(B)
    assert reader.feed(b"xx--" + B.encode() + b"\r\n\r\ndata") == []
    with pytest.raises(MultipartError, match="before the first boundary"):
        reader.finish()


@pytest.mark.parametrize("chunker", CHUNKERS)
def test_transport_padding(chunker: Callable[[bytes], Iterator[bytes]]) -> None:
    b = B.encode()
    body = (
        b"--" + b + b" \t \r\nA: 1\r\n\r\nfirst"
        b"\r\n--" + b + b"\t\r\n\r\nsecond"
        b"\r\n--" + b + b"--  \r\nepilogue"
    )
    got, _ = parse(chunker(body))
    assert got == [({"a": "1"}, b"first"), ({}, b"second")]


@pytest.mark.parametrize("chunker", CHUNKERS)
def test_bare_lf_line_endings_in_headers(chunker: Callable[[bytes], Iterator[bytes]]) -> None:
    b = B.encode()
    body = (
        b"--" + b + b"\nContent-Type: a/b\nX-Y:  z \n\nbody\nwith LF"
        b"\r\n--" + b + b"\n\nno headers"
        b"\r\n--" + b + b"\r\nMixed: 1\n\r\nm"
        b"\r\n--" + b + b"--"
    )
    got, _ = parse(chunker(body))
    assert got == [
        ({"content-type": "a/b", "x-y": "z"}, b"body\nwith LF"),
        ({}, b"no headers"),
        ({"mixed": "1"}, b"m"),
    ]


@pytest.mark.parametrize("chunker", CHUNKERS)
def test_header_details(chunker: Callable[[bytes], Iterator[bytes]]) -> None:
    b = B.encode()
    body = (
        b"--" + b + b"\r\nCONTENT-TYPE:application/dicom\r\nX-Dup: a\r\nx-dup: b\r\n"
        b"X-Folded: one\r\n  two\r\n\ttwo-b\r\nX-Empty:\r\nX-Utf8: caf\xc3\xa9\r\n"
        b"X-Latin: caf\xe9\r\n\r\n" + b"\r\n--" + b + b"--\r\n"
    )
    got, _ = parse(chunker(body))
    assert got == [
        (
            {
                "content-type": "application/dicom",
                "x-dup": "a, b",
                "x-folded": "one two two-b",
                "x-empty": "",
                "x-utf8": "caf\u00c3\u00a9",  # not valid UTF-8 as a whole: latin-1
                "x-latin": "caf\u00e9",
            },
            b"",
        )
    ]


def test_utf8_header_values() -> None:
    body = build([({"X": "y"}, b"")]).replace(b"X: y", "X: café".encode())
    got, _ = parse([body])
    assert got == [({"x": "café"}, b"")]


def test_header_mapping_is_read_only() -> None:
    events = MultipartReader(B).feed(build([({"A": "1"}, b"d")]))
    start = events[0]
    assert isinstance(start, PartStart)
    with pytest.raises(TypeError):
        start.headers["a"] = "2"  # type: ignore[index]


@pytest.mark.parametrize("chunker", CHUNKERS)
def test_zero_parts(chunker: Callable[[bytes], Iterator[bytes]]) -> None:
    body = build([])
    assert body == b"--" + B.encode() + b"--\r\n"
    got, reader = parse(chunker(body))
    assert got == []
    assert reader.done


def test_zero_parts_with_preamble() -> None:
    got, _ = parse([b"preamble\r\n--" + B.encode() + b"--"])
    assert got == []


def test_empty_parts() -> None:
    got, _ = parse(one_byte(build([({}, b""), ({}, b""), ({"A": "b"}, b"")])))
    assert got == [({}, b""), ({}, b""), ({"a": "b"}, b"")]


def test_event_sequence_exact() -> None:
    body = build([({"A": "1"}, b"xy"), ({}, b"")])
    events = MultipartReader(B).feed(body)
    assert events == [
        PartStart({"a": "1"}),
        PartData(b"xy"),
        PartEnd(),
        PartStart({}),
        PartEnd(),
        End(),
    ]


def test_data_is_released_without_waiting_for_the_delimiter() -> None:
    reader = MultipartReader(B)
    assert reader.feed(part_header(B, {}, first=True)) == [PartStart({})]
    assert reader.feed(b"hello") == [PartData(b"hello")]
    # A trailing CR may start the delimiter: held back until the next byte decides.
    assert reader.feed(b"world\r") == [PartData(b"world")]
    assert reader.buffered == 1
    assert reader.feed(b"\n-") == []
    assert reader.feed(b"x") == [PartData(b"\r\n-x")]
    assert reader.buffered == 0


def test_feed_accepts_bytearray_and_memoryview() -> None:
    body = build([({"A": "1"}, b"payload")])
    reader = MultipartReader(B)
    events = reader.feed(bytearray(body[:10])) + reader.feed(memoryview(body)[10:])
    reader.finish()
    assert check_events(events) == [({"a": "1"}, b"payload")]
    assert all(type(ev.data) is memoryview for ev in events if isinstance(ev, PartData))


def test_data_after_end_is_ignored() -> None:
    reader = MultipartReader(B)
    events = reader.feed(build([({}, b"a")]))
    assert events[-1] == End()
    assert reader.done
    assert reader.feed(b"\r\n--" + B.encode() + b"\r\n\r\nmore") == []
    reader.finish()
    reader.finish()


# --------------------------------------------------------------------------------------
# errors
# --------------------------------------------------------------------------------------


def test_every_truncation_is_detected() -> None:
    body = build([({"Content-Type": "application/dicom"}, b"ab\r\ncd"), ({}, b"x")])
    complete_at = body.index(b"--" + B.encode() + b"--") + len(B) + 4
    for cut in range(len(body) + 1):
        reader = MultipartReader(B)
        reader.feed(body[:cut])
        if cut < complete_at:
            assert not reader.done
            with pytest.raises(MultipartError, match="truncated"):
                reader.finish()
        else:
            assert reader.done
            reader.finish()


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (b"", "before the first boundary"),
        (b"preamble only\r\n", "before the first boundary"),
        (b"--" + B.encode(), "boundary line"),
        (b"--" + B.encode() + b"\r\nContent-Type: a", "header section"),
        (b"--" + B.encode() + b"\r\n\r\npart data, then the connection dropped", "body"),
        (b"--" + B.encode() + b"\r\n\r\ndata\r\n--" + B.encode() + b"\r\n", "header section"),
        (b"--" + B.encode() + b"\r\n\r\ndata\r\n--" + B.encode() + b"-", "boundary line"),
    ],
)
def test_missing_closing_delimiter(body: bytes, where: str) -> None:
    reader = MultipartReader(B)
    reader.feed(body)
    with pytest.raises(MultipartError, match=f"truncated.*{where}"):
        reader.finish()
    # The failure sticks.
    with pytest.raises(MultipartError):
        reader.feed(b"--")
    with pytest.raises(MultipartError):
        reader.finish()


@pytest.mark.parametrize("chunker", CHUNKERS)
@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"--" + B.encode() + b"x\r\n\r\n", id="text-after-boundary"),
        pytest.param(b"--" + B.encode() + b"  x\r\n\r\n", id="text-after-padding"),
        pytest.param(b"--" + B.encode() + b"\r\r\n\r\n", id="cr-cr-lf"),
        pytest.param(b"--" + B.encode() + b"-x\r\n", id="single-dash"),
        pytest.param(
            b"--" + B.encode() + b"\r\n\r\nd\r\n--" + B.encode() + b"0\r\n", id="longer-boundary"
        ),
        pytest.param(b"--" + B.encode() + b"\r\nno colon\r\n\r\n", id="header-no-colon"),
        pytest.param(b"--" + B.encode() + b"\r\nbad name: x\r\n\r\n", id="header-bad-name"),
        pytest.param(b"--" + B.encode() + b"\r\n folded: x\r\n\r\n", id="leading-fold"),
    ],
)
def test_malformed(body: bytes, chunker: Callable[[bytes], Iterator[bytes]]) -> None:
    reader = MultipartReader(B)
    with pytest.raises(MultipartError):  # noqa: PT012 - the error may come from any feed
        for chunk in chunker(body + b"--" + B.encode() + b"--"):
            reader.feed(chunk)
    with pytest.raises(MultipartError):
        reader.feed(b"")


@pytest.mark.parametrize("chunker", CHUNKERS)
def test_oversized_headers(chunker: Callable[[bytes], Iterator[bytes]]) -> None:
    big = build([({"X-Big": "v" * 200}, b"data")])
    reader = MultipartReader(B, max_header_bytes=100)
    with pytest.raises(MultipartError, match="larger than 100 bytes"):  # noqa: PT012
        for chunk in chunker(big):
            reader.feed(chunk)


def test_oversized_header_section_without_end_fails_early() -> None:
    reader = MultipartReader(B, max_header_bytes=1000)
    reader.feed(b"--" + B.encode() + b"\r\n")
    with pytest.raises(MultipartError, match="larger than"):  # noqa: PT012
        for _ in range(100):
            reader.feed(b"X-A: " + b"a" * 20 + b"\r\n")
    assert reader.buffered == 0


def test_header_limit_is_inclusive() -> None:
    section = b"X-Big: " + b"v" * 89 + b"\r\n\r\n"  # exactly 100 bytes
    assert len(section) == 100
    body = b"--" + B.encode() + b"\r\n" + section + b"data\r\n--" + B.encode() + b"--"
    got, _ = parse(one_byte(body), max_header_bytes=100)
    assert got == [({"x-big": "v" * 89}, b"data")]
    with pytest.raises(MultipartError):
        parse([body], max_header_bytes=99)


def test_endless_transport_padding_is_bounded() -> None:
    reader = MultipartReader(B, max_header_bytes=64)
    reader.feed(b"--" + B.encode())
    with pytest.raises(MultipartError, match="padding"):  # noqa: PT012
        for _ in range(100):
            reader.feed(b" " * 10)


def test_bad_reader_arguments() -> None:
    with pytest.raises(MultipartError):
        MultipartReader("")
    with pytest.raises(MultipartError):
        MultipartReader("x" * 71)
    with pytest.raises(ValueError, match="max_header_bytes"):
        MultipartReader(B, max_header_bytes=0)


# --------------------------------------------------------------------------------------
# bounded memory
# --------------------------------------------------------------------------------------


def test_buffer_stays_bounded_for_a_50_mb_part() -> None:
    chunk_size = 64 * 1024
    rnd = random.Random(7)
    # CRs near the chunk end force the hold-back path now and then.
    chunks = [rnd.randbytes(chunk_size - 3) + b"\r\n-", rnd.randbytes(chunk_size)]
    delimiter_len = len(B) + 4
    reader = MultipartReader(B)
    reader.feed(part_header(B, {"Content-Type": "application/dicom"}, first=True))
    total = 0
    max_buffered = 0
    max_event = 0
    n_chunks = 50 * 1024 * 1024 // chunk_size
    for i in range(n_chunks):
        for ev in reader.feed(chunks[i % 2]):
            assert isinstance(ev, PartData)
            total += len(ev.data)
            max_event = max(max_event, len(ev.data))
        max_buffered = max(max_buffered, reader.buffered)
    events = reader.feed(closing_delimiter(B, empty=False))
    total += sum(len(ev.data) for ev in events if isinstance(ev, PartData))
    reader.finish()
    assert total == n_chunks * chunk_size
    assert 0 < max_buffered < delimiter_len
    assert max_event < chunk_size + delimiter_len


# --------------------------------------------------------------------------------------
# writer
# --------------------------------------------------------------------------------------


def test_new_boundary() -> None:
    boundaries = {new_boundary() for _ in range(100)}
    assert len(boundaries) == 100
    for b in boundaries:
        assert re.fullmatch(r"[0-9a-f]{32}", b)
        assert boundary_from_content_type(content_type("application/dicom", b)) == b


def test_content_type() -> None:
    assert content_type("application/dicom", "XYZ") == (
        'multipart/related; type="application/dicom"; boundary=XYZ'
    )
    assert content_type("application/dicom", "XYZ", transfer_syntax="1.2.840.10008.1.2.1") == (
        'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1; '
        "boundary=XYZ"
    )
    assert content_type("application/octet-stream", "b", start="<a b>") == (
        'multipart/related; type="application/octet-stream"; start="<a b>"; boundary=b'
    )


@pytest.mark.parametrize(
    "call",
    [
        lambda: content_type("application/dicom", ""),
        lambda: content_type("application/dicom", "x" * 71),
        lambda: content_type('a/"b', "x"),
        lambda: content_type("application/dicom", "x", type="y"),
        lambda: content_type("application/dicom", "x", start="a\r\nb"),
        lambda: part_header("x", {"Bad Name": "v"}, first=True),
        lambda: part_header("x", {"X": "a\r\nInjected: yes"}, first=True),
        lambda: part_header("x", {"X": "caf\u00e9"}, first=True),
        lambda: part_header("bad boundary ", {}, first=True),
        lambda: closing_delimiter("", empty=True),
    ],
)
def test_writer_rejects_bad_input(call: Callable[[], object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - MultipartError or a plain ValueError
        call()


def test_part_header_and_closing_delimiter() -> None:
    headers = {"Content-Type": "application/dicom", "Content-Length": "12"}
    assert part_header("B", headers, first=True) == (
        b"--B\r\nContent-Type: application/dicom\r\nContent-Length: 12\r\n\r\n"
    )
    assert part_header("B", {}, first=False) == b"\r\n--B\r\n\r\n"
    assert closing_delimiter("B", empty=False) == b"\r\n--B--\r\n"
    assert closing_delimiter("B", empty=True) == b"--B--\r\n"


# --------------------------------------------------------------------------------------
# boundary_from_content_type
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('multipart/related; type="application/dicom"; boundary=abc', "abc"),
        ('multipart/related; type="application/dicom"; boundary="abc"', "abc"),
        ("multipart/related;boundary=abc;type=application/dicom", "abc"),
        ("multipart/related; BOUNDARY = abc ", "abc"),
        ('multipart/related; type="a;boundary=wrong"; boundary="r:ight"', "r:ight"),
        ('multipart/related; boundary="with space"', "with space"),
        ('multipart/related; boundary="\\a\\b"', "ab"),
        ("multipart/related; boundary=" + "x" * 70, "x" * 70),
        ("multipart/mixed; boundary=Boundary_1_2_3", "Boundary_1_2_3"),
        ("multipart/related; boundary=a; boundary=b", "a"),
    ],
)
def test_boundary_from_content_type(value: str, expected: str) -> None:
    assert boundary_from_content_type(value) == expected


@pytest.mark.parametrize(
    "value",
    [
        pytest.param('multipart/related; type="application/dicom"', id="missing"),
        pytest.param("multipart/related", id="no-params"),
        pytest.param("multipart/related; boundary", id="no-value"),
        pytest.param("multipart/related; boundary=", id="empty"),
        pytest.param('multipart/related; boundary=""', id="empty-quoted"),
        pytest.param("multipart/related; boundary=" + "x" * 71, id="too-long"),
        pytest.param('multipart/related; boundary="trailing "', id="ends-with-space"),
        pytest.param("multipart/related; boundary=a{b}", id="bad-char"),
        pytest.param('multipart/related; boundary="a;b"', id="semicolon"),
        pytest.param('multipart/related; boundary="q\\"uote"', id="quote"),
        pytest.param('multipart/related; type="a; boundary=x"', id="only-inside-quotes"),
    ],
)
def test_boundary_from_content_type_invalid(value: str) -> None:
    with pytest.raises(MultipartError):
        boundary_from_content_type(value)


def test_a_counted_body_can_be_taken_past_the_reader() -> None:
    # What a retrieve does to splice a long part: the body's rest is taken elsewhere, then
    # the reader goes on from the delimiter that follows it.
    data = bytes(range(256)) * 100
    body = build([({"Content-Length": str(len(data))}, data), ({}, b"next")])
    head_end = body.index(b"\r\n\r\n") + 4
    reader = MultipartReader(B)
    events = reader.feed(body[: head_end + 1000])
    assert reader.body_remaining == len(data) - 1000
    with pytest.raises(ValueError, match="more than"):
        reader.skip_body(len(data))
    reader.skip_body(len(data) - 1000)  # those bytes went past the reader
    assert reader.body_remaining == 0
    events += reader.feed(body[head_end + len(data) :])
    reader.finish()
    parts = check_events(events)
    assert [d for _, d in parts] == [data[:1000], b"next"]


def test_body_remaining_outside_a_counted_body() -> None:
    reader = MultipartReader(B)
    assert reader.body_remaining == -1  # the preamble
    reader.feed(f"--{B}\r\nContent-Type: x\r\n\r\nabc".encode())
    assert reader.body_remaining == -1  # a body without a length
