"""backends/http_stream.py: one streamed GET, against servers on loopback that write exactly
the bytes a test gives them (every framing, and the faults a real PACS will not show)."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from ncpeh_dicomweb.backends.http_stream import Body, Connection, parse_head, stream_get
from ncpeh_dicomweb.errors import BackendError, BackendTimeout, BackendUnreachable

Answer = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Answer], Awaitable[str]]]:
    servers: list[asyncio.Server] = []

    async def start(answer: Answer) -> str:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            request = await reader.readuntil(b"\r\n\r\n")
            handle.requests.append(request)  # type: ignore[attr-defined]
            try:
                await answer(reader, writer)
            finally:
                writer.close()

        handle.requests = []  # type: ignore[attr-defined]
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        start.requests = handle.requests  # type: ignore[attr-defined]
        port = server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}/dicom-web/studies/1.2.3?x=%5E"

    yield start
    for server in servers:
        server.close()
        await server.wait_closed()


def _writes(head: bytes, body: bytes, seed: int = 0) -> Answer:
    """An answer written in random pieces, with pauses: framing may split anywhere."""

    async def answer(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        rnd = random.Random(seed)
        data = head + body
        pos = 0
        while pos < len(data):
            n = rnd.choice([1, 2, 7, 100, 5000, 70_000, 300_000])
            writer.write(data[pos : pos + n])
            await writer.drain()
            pos += n
            if rnd.random() < 0.1:
                await asyncio.sleep(0.001)

    return answer


async def _get(url: str, *, read_timeout: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    async with stream_get(
        url, {"Accept": "multipart/related"}, connect_timeout=2, read_timeout=read_timeout
    ) as resp:
        body = bytearray()
        async for piece in resp.body:
            assert piece, "an empty body piece"
            body += piece
        return resp.status, dict(resp.headers), bytes(body)


BODY = os.urandom(3_000_000)


@pytest.mark.parametrize("seed", range(3))
async def test_a_body_with_a_content_length_ends_there(
    serve: Callable[[Answer], Awaitable[str]], seed: int
) -> None:
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\nX-A: 1\r\nx-a: 2\r\n\r\n".encode()
    # Bytes after the body (a server's mistake) are not part of it.
    url = await serve(_writes(head, BODY + b"garbage", seed))
    status, headers, body = await _get(url)
    assert (status, body) == (200, BODY)
    assert headers["x-a"] == "1, 2" and headers["content-length"] == str(len(BODY))


@pytest.mark.parametrize("seed", range(3))
async def test_a_chunked_body_is_decoded(
    serve: Callable[[Answer], Awaitable[str]], seed: int
) -> None:
    rnd = random.Random(seed)
    framed = bytearray()
    pos = 0
    while pos < len(BODY):
        n = rnd.choice([1, 10, 4096, 65536, 1_000_000])
        piece = BODY[pos : pos + n]
        ext = b";name=value" if rnd.random() < 0.2 else b""
        framed += b"%x%s\r\n%s\r\n" % (len(piece), ext, piece)
        pos += n
    framed += b"0\r\nTrailer-Field: x\r\n\r\n"
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    url = await serve(_writes(head, bytes(framed), seed))
    status, _, body = await _get(url)
    assert (status, body) == (200, BODY)


async def test_a_body_without_length_ends_with_the_connection(
    serve: Callable[[Answer], Awaitable[str]],
) -> None:
    # What Orthanc does: "Connection: close", no Content-Length, no chunks.
    url = await serve(_writes(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", BODY))
    assert await _get(url) == (200, {"connection": "close"}, BODY)


async def test_the_request_line_and_headers(serve: Callable[[Answer], Awaitable[str]]) -> None:
    url = await serve(_writes(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n", b""))
    assert await _get(url) == (204, {"content-length": "0"}, b"")
    (request,) = serve.requests  # type: ignore[attr-defined]
    lines = request.decode().split("\r\n")
    assert lines[0] == "GET /dicom-web/studies/1.2.3?x=%5E HTTP/1.1"  # sent as given
    assert "Connection: close" in lines and "Accept: multipart/related" in lines
    assert any(line.startswith("Host: 127.0.0.1:") for line in lines)


@pytest.mark.parametrize(
    ("head", "body", "message"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", b"x" * 50, "middle of an answer"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"10\r\nabc", "middle"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"zz\r\n", "malformed"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"3\r\nabcXY", "malformed"),
        (b"HTTP/1.1 200 OK\r\nContent-Len", b"", "without answering"),
        (b"SMTP ready\r\n\r\n", b"", "malformed HTTP status"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", b"", "malformed HTTP header"),
        (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 20000 + b"\r\n", b"", "oversized"),
    ],
)
async def test_broken_answers_are_backend_errors(
    serve: Callable[[Answer], Awaitable[str]], head: bytes, body: bytes, message: str
) -> None:
    url = await serve(_writes(head, body))
    with pytest.raises(BackendError, match=message):
        await _get(url)


async def test_a_silent_pacs_times_out(serve: Callable[[Answer], Awaitable[str]]) -> None:
    async def stall(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc")
        await writer.drain()
        await asyncio.sleep(5)

    url = await serve(stall)
    with pytest.raises(BackendTimeout):
        await _get(url, read_timeout=0.2)


async def test_nobody_listening_is_unreachable() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    with pytest.raises(BackendUnreachable):
        await _get(f"http://127.0.0.1:{port}/x")


async def test_leaving_early_closes_the_connection(
    serve: Callable[[Answer], Awaitable[str]],
) -> None:
    closed = asyncio.Event()

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n\r\n")
        try:
            while True:
                writer.write(b"x" * 65536)
                await writer.drain()
        except ConnectionError:
            closed.set()

    url = await serve(endless)
    fds = len(os.listdir("/proc/self/fd"))
    async with stream_get(url, {}, connect_timeout=2, read_timeout=2) as resp:
        async for _ in resp.body:
            break
    await asyncio.wait_for(closed.wait(), 5)  # the server saw the connection go
    assert len(os.listdir("/proc/self/fd")) <= fds + 1  # the server's side may still close


@pytest.mark.parametrize("bad", [{"X": "a\r\nInjected: 1"}, {"X": "a\0b"}, {"X\nY": "z"}])
async def test_a_header_with_a_line_break_is_refused(bad: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="line break"):
        async with stream_get("http://127.0.0.1:9/x", bad, connect_timeout=1, read_timeout=1):
            pass


def test_only_http_urls() -> None:
    with pytest.raises(ValueError, match="http://"):
        asyncio.run(_get("https://127.0.0.1/x"))


def test_parse_head() -> None:
    assert parse_head(b"HTTP/1.1 503 Busy\r\nRetry-After: 7") == (503, {"retry-after": "7"})
    # An HTTP/1.0 connection ends with its answer unless it says keep-alive (RFC 9112 9.3).
    assert parse_head(b"HTTP/1.0 200 OK\r\nX: 1") == (200, {"x": "1", "connection": "close"})
    kept = b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive"
    assert parse_head(kept) == (200, {"connection": "Keep-Alive"})


async def test_a_span_leaves_its_bytes_in_the_socket_until_taken(
    serve: Callable[[Answer], Awaitable[str]],
) -> None:
    """Body.span: read into Python, or moved into a pipe by splice; what follows is the body's
    next bytes either way, and a Content-Length body still ends where it says."""
    head = f"HTTP/1.1 200 OK\r\nContent-Length: {len(BODY)}\r\n\r\n".encode()
    url = await serve(_writes(head, BODY + b"trailing garbage", seed=5))
    async with stream_get(url, {}, connect_timeout=2, read_timeout=5) as resp:
        body = resp.body
        got = bytearray()
        body.read_size = 1000
        async for block in body:
            got += block
            if len(got) >= 1000:
                break
        first = body.span(700_000, [b"not", b"read"])
        assert first is not None and first.size == 700_007 and first.left == 700_000
        pieces = [bytes(p) async for p in first.chunks()]
        assert pieces[:2] == [b"not", b"read"] and first.left == 0
        got += b"".join(pieces[2:])
        second = body.span(1_000_000)
        assert second is not None
        pipe_r, pipe_w = os.pipe()
        try:
            while second.left:
                moved = await second.into_pipe(pipe_w, 65536)
                got += os.read(pipe_r, moved)
        finally:
            os.close(pipe_r)
            os.close(pipe_w)
        assert body.span(len(BODY)) is None  # more than the Content-Length has left
        body.read_size = 1 << 20
        async for block in body:
            got += block
    assert bytes(got) == BODY


async def test_a_span_cut_short_by_the_pacs_is_an_error(
    serve: Callable[[Answer], Awaitable[str]],
) -> None:
    url = await serve(_writes(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"x" * 5000))
    async with stream_get(url, {}, connect_timeout=2, read_timeout=5) as resp:
        body = resp.body
        async for _ in body:
            break
        span = body.span(100_000)
        assert span is not None
        with pytest.raises(BackendError, match="middle of an answer"):
            async for _ in span.chunks():
                pass


async def test_no_span_of_a_chunked_body(serve: Callable[[Answer], Awaitable[str]]) -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    url = await serve(_writes(head, b"5\r\nhello\r\n0\r\n\r\n"))
    async with stream_get(url, {}, connect_timeout=2, read_timeout=5) as resp:
        assert resp.body.span(1) is None
        assert [bytes(b) async for b in resp.body] == [b"hello"]


def _paced(*writes: bytes, pause: float = 0.02, close: bool = True) -> Answer:
    """An answer written as these pieces, ``pause`` apart; kept open after them unless
    ``close`` (a server that ignores ``Connection: close``)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for piece in writes:
            writer.write(piece)
            await writer.drain()
            await asyncio.sleep(pause)
        if not close:
            await reader.read()  # until the client leaves

    return answer


async def _pieces(url: str) -> list[bytes]:
    async with stream_get(url, {}, connect_timeout=2, read_timeout=2) as resp:
        return [bytes(piece) async for piece in resp.body]


async def test_a_part_written_in_small_pieces_wakes_the_reader_once(
    serve: Callable[[Answer], Awaitable[str]],
) -> None:
    """A PACS writes a part's delimiter, its headers and its body apart (Orthanc does): the
    reader is woken once 64 kB are there, not for each write (SO_RCVLOWAT)."""
    body = os.urandom(100_000)
    url = await serve(
        _paced(
            b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", b"\r\n", b"--b\r\nX: y\r\n\r\n", body
        )
    )
    pieces = await _pieces(url)
    assert b"".join(pieces) == b"\r\n--b\r\nX: y\r\n\r\n" + body
    assert len(pieces) <= 2, [len(p) for p in pieces]  # 3 or more if woken for each write


async def test_a_content_length_body_s_short_tail_is_not_waited_for(
    serve: Callable[[Answer], Awaitable[str]],
) -> None:
    """The end of a Content-Length body comes in as it is written, even short of 64 kB and
    with the connection kept open: the reader never waits for bytes that cannot come."""
    url = await serve(
        _paced(
            b"HTTP/1.1 200 OK\r\nContent-Length: 70010\r\n\r\n",
            b"a" * 70_000,
            b"b" * 10,
            close=False,
        )
    )
    started = asyncio.get_running_loop().time()
    assert b"".join(await _pieces(url)) == b"a" * 70_000 + b"b" * 10
    assert asyncio.get_running_loop().time() - started < 1.0  # not the 2 s read timeout


async def test_a_chunked_body_s_last_chunk_is_not_waited_for(
    serve: Callable[[Answer], Awaitable[str]],
) -> None:
    """A chunked body's last chunk and terminator are read as they come (the server keeps
    the connection open): a chunked body sets no low-water mark."""
    url = await serve(
        _paced(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"3\r\nabc\r\n",
            b"0\r\n\r\n",
            close=False,
        )
    )
    started = asyncio.get_running_loop().time()
    assert b"".join(await _pieces(url)) == b"abc"
    assert asyncio.get_running_loop().time() - started < 1.0


class _Levels:
    """Stands for a Connection: records the wake levels a Body asks for."""

    def __init__(self) -> None:
        self.levels: list[int] = []

    def wake_at(self, size: int) -> None:
        self.levels.append(size)


@pytest.mark.parametrize(
    ("headers", "reads", "levels"),
    [
        # The level is never above what is still to come: the tail of a Content-Length
        # body, short of 64 kB, wakes the reader (some kernels would not, on their own).
        (
            {"content-length": "200000"},
            [100_000, 60_000, 30_000, 10_000],
            [65536, 40_000, 10_000, 0],
        ),
        ({"content-length": "1000"}, [1000], [1000, 0]),
        ({}, [100_000, 100_000], [65536]),  # until the end: the end wakes it
        ({"transfer-encoding": "chunked"}, [], []),  # its last chunk may be followed by nothing
    ],
)
def test_the_wake_level_never_waits_past_the_body(
    headers: dict[str, str], reads: list[int], levels: list[int]
) -> None:
    connection = _Levels()
    body = Body(connection, headers, b"", wake_at=65536)  # type: ignore[arg-type]
    for size in reads:
        if body.remaining >= 0:
            body.took(size)
    assert connection.levels == levels


# ---------------------------------------------------------------- watched (kept-alive) connections


def _watched_pair() -> tuple[Connection, socket.socket]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    connection = Connection(ours, None)
    connection.keep_watch()
    return connection, peer


async def test_a_resting_connection_the_peer_closes_is_dropped_as_it_happens() -> None:
    """Seen by the loop when it happens (not by a peek at reuse), and unregistered at once:
    a level-triggered loop would otherwise call back on every turn."""
    connection, peer = _watched_pair()
    fd = connection._sock.fileno()
    connection.rest()
    assert connection.still_open()
    connection.rest()
    peer.close()
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    assert not loop.remove_reader(fd)  # no longer registered
    assert not connection.still_open()
    connection.close()


async def test_bytes_nobody_asked_for_spoil_a_resting_connection() -> None:
    connection, peer = _watched_pair()
    connection.rest()
    peer.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    await asyncio.sleep(0.05)
    assert not connection.still_open()
    connection.close()
    peer.close()


async def test_a_watched_connection_reads_as_an_unwatched_one() -> None:
    """Waits for data without (un)registering per wait; a readiness the last read consumed
    (the loop reports it once more) does not spoil the connection."""
    connection, peer = _watched_pair()
    loop = asyncio.get_running_loop()
    for n in range(3):
        assert connection.still_open()
        loop.call_later(0.01, peer.sendall, b"answer %d" % n)
        assert await connection.recv() == b"answer %d" % n
        connection.rest()
        await asyncio.sleep(0.01)  # the loop's turns after the read
    assert connection.still_open()
    fd = connection._sock.fileno()
    connection.close()
    assert not loop.remove_reader(fd)  # closing unregistered it
    peer.close()


async def test_closing_a_watched_connection_fails_its_waiting_read_at_once() -> None:
    connection, peer = _watched_pair()
    assert connection.still_open()
    read = asyncio.ensure_future(connection.recv())
    await asyncio.sleep(0.01)
    connection.close()
    with pytest.raises(BackendError):
        await asyncio.wait_for(read, 1)
    peer.close()
