"""backends/http_keepalive.py: whole-body GETs over kept-alive connections, against servers on
loopback that answer each request with exactly the bytes a test scripts (every framing, and the
ways a PACS ends, drops or stalls a connection)."""

from __future__ import annotations

import asyncio
import gzip
import os
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import pytest

from ncpeh_dicomweb.backends.http_keepalive import KeepAliveClient
from ncpeh_dicomweb.errors import BackendError, BackendTimeout, BackendUnreachable

# --- the scripted PACS -------------------------------------------------------------------------


class Peer:
    """The server's side of one connection: the requests read on it, and whether the client
    has ended it (``ended``) or the server has (``finished``)."""

    def __init__(self, index: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.index = index  # 0 for the server's first connection, 1 for the next...
        self._reader = reader
        self._writer = writer
        self.requests: list[bytes] = []
        self.ended = asyncio.Event()  # the client closed its side
        self.finished = asyncio.Event()  # the server closed its side

    async def request(self) -> bytes | None:
        """The next request's head, kept in ``requests``; None once the client has closed."""
        try:
            head = await self._reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            self.ended.set()
            return None
        self.requests.append(head)
        return head

    async def send(self, *pieces: bytes, pause: float = 0.0) -> None:
        """``pieces`` written one by one (each drained, then ``pause`` seconds); a
        ConnectionError if the client has closed the connection."""
        for piece in pieces:
            try:
                self._writer.write(piece)
                await self._writer.drain()
            except ConnectionError:
                self.ended.set()
                raise
            if pause:
                await asyncio.sleep(pause)

    async def until_ended(self) -> None:
        """Keep the connection open, answering nothing, until the client closes it."""
        while await self.request() is not None:
            pass


Handler = Callable[[Peer], Awaitable[None]]


@dataclass
class Pacs:
    port: int
    peers: list[Peer]  # one per connection the server accepted, in order


@pytest.fixture
async def pacs() -> AsyncIterator[Callable[[Handler], Awaitable[Pacs]]]:
    """Starts servers on 127.0.0.1 running ``handler`` for each connection; the connection is
    closed when the handler returns."""
    servers: list[asyncio.Server] = []
    tasks: list[asyncio.Task[object]] = []

    async def start(handler: Handler) -> Pacs:
        peers: list[Peer] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            tasks.append(task)
            peer = Peer(len(peers), reader, writer)
            peers.append(peer)
            try:
                await handler(peer)
            except ConnectionError:
                pass
            finally:
                writer.close()
                peer.finished.set()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return Pacs(server.sockets[0].getsockname()[1], peers)

    yield start
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for server in servers:
        server.close()
        await server.wait_closed()


class MakeClient(Protocol):
    def __call__(
        self,
        port: int,
        *,
        max_connections: int = 4,
        total_timeout: float = 5.0,
        max_body: int = 1_000_000,
    ) -> KeepAliveClient: ...


@pytest.fixture
async def new_client() -> AsyncIterator[MakeClient]:
    """KeepAliveClients to 127.0.0.1, each closed at the test's end."""
    clients: list[KeepAliveClient] = []

    def make(
        port: int,
        *,
        max_connections: int = 4,
        total_timeout: float = 5.0,
        max_body: int = 1_000_000,
    ) -> KeepAliveClient:
        client = KeepAliveClient(
            "127.0.0.1",
            port,
            max_connections=max_connections,
            connect_timeout=2.0,
            total_timeout=total_timeout,
            max_body=max_body,
        )
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


def response(status_line: str, fields: Sequence[str], body: bytes = b"") -> bytes:
    return ("\r\n".join([status_line, *fields]) + "\r\n\r\n").encode("latin-1") + body


def ok(body: bytes, *fields: str) -> bytes:
    """A 200 with a Content-Length."""
    return response("HTTP/1.1 200 OK", [f"Content-Length: {len(body)}", *fields], body)


def target(request: bytes) -> bytes:
    """The request target of a request head."""
    return request.split(b" ", 2)[1]


def kept(reply: Callable[[bytes], bytes]) -> Handler:
    """Every request on the connection answered with ``reply(request)``, the connection kept
    open until the client closes it."""

    async def handle(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            await peer.send(reply(request))

    return handle


def silent_after(sent: bytes) -> Handler:
    """One request answered with ``sent`` (a head, part of a body), then silence until the
    client closes the connection."""

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(sent)
        await peer.until_ended()

    return handle


def echo(request: bytes) -> bytes:
    return ok(b"answer to " + target(request))


MakePacs = Callable[[Handler], Awaitable[Pacs]]


# --- 1. reuse ----------------------------------------------------------------------------------


async def test_sequential_gets_share_one_connection(pacs: MakePacs, new_client: MakeClient) -> None:
    """Three GETs one after another go over one kept connection: one connect, three requests
    on it, each answered with its own status and body; each request names the Host and the
    given headers and does not ask for the connection to be closed."""
    server = await pacs(kept(lambda r: ok(b"study " + target(r), "Connection: keep-alive")))
    client = new_client(server.port)
    for n in range(3):
        answer = await client.get(f"/dicom-web/studies?n={n}", {"Accept": "application/json"})
        assert answer.status == 200
        assert answer.body == f"study /dicom-web/studies?n={n}".encode()
        assert answer.headers["connection"] == "keep-alive"
    assert client.opened == 1
    assert len(server.peers) == 1 and len(server.peers[0].requests) == 3
    for n, request in enumerate(server.peers[0].requests):
        lines = request.decode("latin-1").split("\r\n")
        assert lines[0] == f"GET /dicom-web/studies?n={n} HTTP/1.1"
        assert f"Host: 127.0.0.1:{server.port}" in lines
        assert "Accept: application/json" in lines
        assert not any(
            line.lower().startswith("connection:") and "close" in line.lower() for line in lines
        )


# --- 2. a connection the PACS closes -----------------------------------------------------------


async def test_an_idle_connection_closed_by_the_pacs_is_replaced(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """The PACS answers one request and closes the connection: the next GET still succeeds,
    over a new connection."""

    async def once(peer: Peer) -> None:
        if await peer.request() is not None:
            await peer.send(ok(b"answer on connection %d" % peer.index))

    server = await pacs(once)
    client = new_client(server.port)
    assert (await client.get("/a", {})).body == b"answer on connection 0"
    await asyncio.wait_for(server.peers[0].finished.wait(), 2)
    await asyncio.sleep(0.05)  # the server's FIN reaches the client's socket
    answer = await client.get("/b", {})
    assert (answer.status, answer.body) == (200, b"answer on connection 1")
    assert client.opened == 2 and len(server.peers) == 2


async def test_a_kept_connection_closed_under_a_request_is_retried_once(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """The race of RFC 9112 9.6: the PACS reads the second request on the kept connection,
    then closes it without answering; the GET is made again on a new connection and succeeds."""

    async def handle(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(ok(b"first"))
            await peer.request()  # the second GET arrives on the old connection...
            return  # ...which closes without an answer
        await kept(lambda r: ok(b"second on a new connection"))(peer)

    server = await pacs(handle)
    client = new_client(server.port)
    assert (await client.get("/a", {})).body == b"first"
    answer = await client.get("/b", {})
    assert (answer.status, answer.body) == (200, b"second on a new connection")
    assert client.opened == 2
    assert [target(r) for r in server.peers[0].requests] == [b"/a", b"/b"]
    assert [target(r) for r in server.peers[1].requests] == [b"/b"]


async def test_a_connection_on_which_the_pacs_sent_something_unasked_is_not_used(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """Once its answer has been read, the PACS writes another that nobody asked for: the next
    GET does not take it for its own but goes over a new connection, and the client closes the
    old one."""

    async def handle(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(ok(b"first"), pause=0.05)
            await peer.send(ok(b"unasked"))
            await peer.until_ended()
        else:
            await kept(echo)(peer)

    server = await pacs(handle)
    client = new_client(server.port)
    assert (await client.get("/a", {})).body == b"first"
    await asyncio.sleep(0.2)
    assert (await client.get("/b", {})).body == b"answer to /b"
    assert client.opened == 2
    await asyncio.wait_for(server.peers[0].ended.wait(), 2)
    assert [target(r) for r in server.peers[0].requests] == [b"/a"]


async def test_the_most_recently_used_idle_connection_is_taken_first(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """Two idle connections: the next GET goes over the one whose answer ended last."""

    async def handle(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            if target(request) == b"/slow":
                await asyncio.sleep(0.2)
            await peer.send(echo(request))

    server = await pacs(handle)
    client = new_client(server.port)
    await asyncio.gather(client.get("/fast", {}), client.get("/slow", {}))
    assert client.opened == 2
    assert (await client.get("/next", {})).body == b"answer to /next"
    assert client.opened == 2
    served = sorted([target(r) for r in peer.requests] for peer in server.peers)
    assert served == [[b"/fast"], [b"/slow", b"/next"]]


async def test_a_fresh_connection_closed_without_an_answer_is_an_error(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """A new connection that the PACS closes without answering is not retried: BackendError,
    after one connection."""

    async def hang_up(peer: Peer) -> None:
        await peer.request()

    server = await pacs(hang_up)
    client = new_client(server.port)
    with pytest.raises(BackendError, match="without answering"):
        await asyncio.wait_for(client.get("/a", {}), 3)
    assert client.opened == 1 and len(server.peers) == 1


async def test_the_retry_after_a_stale_connection_is_made_only_once(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """The kept connection closes under the request and so does the new one: BackendError,
    after exactly one more connection (no endless retry)."""

    async def handle(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(ok(b"first"))
        await peer.request()  # then every request is met by a close

    server = await pacs(handle)
    client = new_client(server.port)
    assert (await client.get("/a", {})).body == b"first"
    with pytest.raises(BackendError, match="without answering"):
        await asyncio.wait_for(client.get("/b", {}), 3)
    await asyncio.sleep(0.05)
    assert client.opened == 2 and len(server.peers) == 2


# --- 3. the PACS's Keep-Alive timeout ----------------------------------------------------------


async def test_a_connection_idle_near_the_pacs_timeout_is_not_used(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """``Keep-Alive: timeout=1``: a GET 0.3 s later reuses the connection, one 0.9 s later (past
    the timeout less the 0.25 s margin) opens a new one without trying the old one, which the
    client closes."""
    server = await pacs(kept(lambda r: ok(b"x", "Keep-Alive: timeout=1, max=100")))
    client = new_client(server.port)
    await client.get("/a", {})
    await asyncio.sleep(0.3)
    await client.get("/b", {})
    assert client.opened == 1
    await asyncio.sleep(0.9)
    assert (await client.get("/c", {})).body == b"x"
    assert client.opened == 2
    await asyncio.wait_for(server.peers[0].ended.wait(), 2)
    assert [target(r) for r in server.peers[0].requests] == [b"/a", b"/b"]
    assert [target(r) for r in server.peers[1].requests] == [b"/c"]


# --- 4. framing --------------------------------------------------------------------------------


async def test_a_chunked_answer_is_joined_and_its_connection_kept(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """Chunks split across writes (sizes, an extension, a trailer) are joined into the body,
    and the connection, read exactly to the chunked body's end, serves the next GET."""

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n",
            b"\r\n5\r\nhel",
            b"lo\r\n",
            b"7;ext=1\r\n, world\r",
            b"\n0\r\nX-Trailer: y\r",
            b"\n\r\n",
            pause=0.01,
        )
        await kept(echo)(peer)

    server = await pacs(handle)
    client = new_client(server.port)
    answer = await client.get("/a", {})
    assert (answer.status, answer.body) == (200, b"hello, world")
    assert (await client.get("/b", {})).body == b"answer to /b"
    assert client.opened == 1 and len(server.peers[0].requests) == 2


async def test_a_close_delimited_answer_is_read_to_the_end_and_not_reused(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """No Content-Length, not chunked: the body is everything until the PACS closes, and the
    next GET opens a new connection."""
    body = os.urandom(200_000)

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n",
            body[:1000],
            body[1000:150_000],
            body[150_000:],
            pause=0.01,
        )

    server = await pacs(handle)
    client = new_client(server.port)
    answer = await client.get("/a", {})
    assert (answer.status, answer.body) == (200, body)
    assert (await client.get("/b", {})).body == body
    assert client.opened == 2 and len(server.peers) == 2


@pytest.mark.parametrize(
    ("answer", "reused"),
    [
        (ok(b"hi", "Connection: close"), False),
        (ok(b"hi", "Connection: Keep-Alive, Close"), False),
        (response("HTTP/1.0 200 OK", ["Content-Length: 2"], b"hi"), False),
        (response("HTTP/1.0 200 OK", ["Content-Length: 2", "Connection: keep-alive"], b"hi"), True),
        (ok(b"hi"), True),  # HTTP/1.1 keeps a connection unless told otherwise
    ],
)
async def test_which_answers_leave_their_connection_kept(
    pacs: MakePacs, new_client: MakeClient, answer: bytes, reused: bool
) -> None:
    """``Connection: close`` and an HTTP/1.0 answer without keep-alive end their connection
    (the client closes it even though the server would keep it); the others are reused."""
    server = await pacs(kept(lambda r: answer))
    client = new_client(server.port)
    assert (await client.get("/a", {})).body == b"hi"
    assert (await client.get("/b", {})).body == b"hi"
    if reused:
        assert client.opened == 1 and len(server.peers[0].requests) == 2
    else:
        assert client.opened == 2 and len(server.peers[0].requests) == 1
        await asyncio.wait_for(server.peers[0].ended.wait(), 2)


@pytest.mark.parametrize("status_line", ["HTTP/1.1 204 No Content", "HTTP/1.1 304 Not Modified"])
async def test_an_answer_without_a_body_does_not_wait_for_the_connection_to_end(
    pacs: MakePacs, new_client: MakeClient, status_line: str
) -> None:
    """A 204 or 304 with no length is complete at its head's end: b"" at once, although the
    server keeps the connection open (total_timeout is 5 s; the GET must end well before)."""
    server = await pacs(kept(lambda r: response(status_line, ["X-A: 1"])))
    client = new_client(server.port)
    started = time.monotonic()
    answer = await asyncio.wait_for(client.get("/a", {}), 2)
    assert time.monotonic() - started < 1
    assert answer.status == int(status_line.split()[1])
    assert answer.body == b"" and answer.headers["x-a"] == "1"
    await client.get("/b", {})  # its connection is kept: the answer's end was its head's
    assert client.opened == 1


# --- 5. limits and content codings -------------------------------------------------------------


async def test_a_content_length_over_max_body_is_refused_at_once(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """Content-Length: max_body + 1: BackendError before any of the body is waited for (the
    server sends none of it), and the connection is closed."""

    server = await pacs(silent_after(b"HTTP/1.1 200 OK\r\nContent-Length: 1001\r\n\r\n"))
    client = new_client(server.port, max_body=1000)
    with pytest.raises(BackendError, match="larger"):
        await asyncio.wait_for(client.get("/a", {}), 2)
    await asyncio.wait_for(server.peers[0].ended.wait(), 2)


async def test_a_body_of_exactly_max_body_is_accepted(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """The limit is inclusive: a Content-Length body and a chunked body of max_body bytes are
    whole answers."""
    body = os.urandom(1000)
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunked += b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (400, body[:400], 600, body[400:])
    server = await pacs(kept(lambda r: ok(body) if target(r) == b"/length" else chunked))
    client = new_client(server.port, max_body=1000)
    assert (await client.get("/length", {})).body == body
    assert (await client.get("/chunked", {})).body == body


async def test_a_chunked_body_growing_past_max_body_is_refused(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """Chunks of 400 bytes, more coming: BackendError once they pass max_body, without waiting
    for the rest; the connection is closed."""

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(10):
            await peer.send(b"190\r\n" + b"x" * 400 + b"\r\n", pause=0.01)
        await peer.until_ended()

    server = await pacs(handle)
    client = new_client(server.port, max_body=1000)
    with pytest.raises(BackendError, match="larger"):
        await asyncio.wait_for(client.get("/a", {}), 2)
    await asyncio.wait_for(server.peers[0].ended.wait(), 2)


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


JSON = b'[{"0020000D": {"vr": "UI", "Value": ["1.2.3.4"]}}]' * 200


@pytest.mark.parametrize(
    ("coding", "encode"),
    [
        ("gzip", gzip.compress),
        ("x-gzip", gzip.compress),
        ("GZip ", gzip.compress),
        ("deflate", zlib.compress),  # zlib-wrapped, as RFC 9110 says
        ("deflate", _raw_deflate),  # raw, as some servers send
        ("identity", lambda data: data),
    ],
)
async def test_a_coded_body_is_decoded(
    pacs: MakePacs, new_client: MakeClient, coding: str, encode: Callable[[bytes], bytes]
) -> None:
    """gzip and deflate (zlib-wrapped or raw) bodies come back decoded."""
    coded = encode(JSON)
    server = await pacs(kept(lambda r: ok(coded, f"Content-Encoding: {coding}")))
    client = new_client(server.port)
    answer = await client.get("/a", {})
    assert answer.status == 200 and answer.body == JSON


@pytest.mark.parametrize(("size", "fits"), [(100_000, True), (100_001, False), (10**8, False)])
async def test_a_gzip_body_decoding_past_max_body_is_refused(
    pacs: MakePacs, new_client: MakeClient, size: int, fits: bool
) -> None:
    """A few kilobytes of gzip that decode to more than max_body (a bomb: 100 MB of zeros) are
    a BackendError; decoding to exactly max_body is fine."""
    coded = gzip.compress(b"\0" * size)
    assert len(coded) < 100_000
    server = await pacs(kept(lambda r: ok(coded, "Content-Encoding: gzip")))
    client = new_client(server.port, max_body=100_000)
    if fits:
        assert (await client.get("/a", {})).body == b"\0" * size
    else:
        with pytest.raises(BackendError, match="larger"):
            await client.get("/a", {})


@pytest.mark.parametrize("coding", ["br", "compress", "gzip, br"])
async def test_an_unknown_content_coding_is_refused(
    pacs: MakePacs, new_client: MakeClient, coding: str
) -> None:
    """A coding the client cannot undo is a BackendError, not the coded bytes as the body."""
    server = await pacs(kept(lambda r: ok(b"\x1b\x00\x00coded", f"Content-Encoding: {coding}")))
    client = new_client(server.port)
    with pytest.raises(BackendError, match="unknown coding"):
        await client.get("/a", {})


async def test_a_body_that_is_not_gzip_is_refused(pacs: MakePacs, new_client: MakeClient) -> None:
    """``Content-Encoding: gzip`` on bytes that are not gzip: BackendError."""
    server = await pacs(kept(lambda r: ok(b"plain text", "Content-Encoding: gzip")))
    client = new_client(server.port)
    with pytest.raises(BackendError, match="does not decode"):
        await client.get("/a", {})


async def test_a_truncated_gzip_body_is_refused(pacs: MakePacs, new_client: MakeClient) -> None:
    """A gzip stream cut short (the framing is whole, the coded data is not) does not decode:
    BackendError, not the part of the body that was there."""
    coded = gzip.compress(JSON + os.urandom(2000))
    cut = coded[: len(coded) // 2]
    server = await pacs(kept(lambda r: ok(cut, "Content-Encoding: gzip")))
    client = new_client(server.port)
    with pytest.raises(BackendError, match="does not decode"):
        await client.get("/a", {})


async def test_a_gzip_body_of_several_members_is_decoded_whole(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """A gzip body is a series of members (RFC 1952 2.2, what ``gzip.decompress`` reads); the
    decoded body is all of them, not the first."""
    coded = gzip.compress(b"first member, ") + gzip.compress(b"second member")
    server = await pacs(kept(lambda r: ok(coded, "Content-Encoding: gzip")))
    client = new_client(server.port)
    assert (await client.get("/a", {})).body == b"first member, second member"


# --- 6. timeouts and cancelling ----------------------------------------------------------------


async def test_a_silent_pacs_times_out(pacs: MakePacs, new_client: MakeClient) -> None:
    """A PACS that takes the request and never answers: BackendTimeout after total_timeout,
    and the connection is closed."""

    async def silent(peer: Peer) -> None:
        await peer.until_ended()

    server = await pacs(silent)
    client = new_client(server.port, total_timeout=0.3)
    started = time.monotonic()
    with pytest.raises(BackendTimeout):
        await asyncio.wait_for(client.get("/a", {}), 3)
    assert 0.25 < time.monotonic() - started < 1.5
    await asyncio.wait_for(server.peers[0].ended.wait(), 2)
    assert len(server.peers[0].requests) == 1


async def test_a_pacs_stalling_mid_body_times_out(pacs: MakePacs, new_client: MakeClient) -> None:
    """Half a Content-Length body, then silence: BackendTimeout after total_timeout."""

    half = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789"
    server = await pacs(silent_after(half))
    client = new_client(server.port, total_timeout=0.3)
    with pytest.raises(BackendTimeout):
        await asyncio.wait_for(client.get("/a", {}), 3)
    await asyncio.wait_for(server.peers[0].ended.wait(), 2)


async def test_a_cancelled_get_closes_its_connection(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """A GET cancelled in the middle of its answer closes that connection (the server sees it
    end) and the next GET opens a new one."""
    partial_sent = asyncio.Event()

    async def handle(peer: Peer) -> None:
        if peer.index == 0:
            await peer.request()
            await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
            partial_sent.set()
            await peer.until_ended()
        else:
            await kept(echo)(peer)

    server = await pacs(handle)
    client = new_client(server.port)
    task = asyncio.create_task(client.get("/a", {}))
    await asyncio.wait_for(partial_sent.wait(), 2)
    await asyncio.sleep(0.05)
    assert not task.done()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.wait_for(server.peers[0].ended.wait(), 2)
    assert (await client.get("/b", {})).body == b"answer to /b"
    assert client.opened == 2
    assert [target(r) for r in server.peers[0].requests] == [b"/a"]


# --- 7. max_connections ------------------------------------------------------------------------


async def test_concurrent_gets_take_turns_on_one_connection(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """max_connections=1: two GETs at once are served one after the other over one
    connection, both with their own answer."""

    async def slow_echo(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            await asyncio.sleep(0.1)
            await peer.send(echo(request))

    server = await pacs(slow_echo)
    client = new_client(server.port, max_connections=1)
    first, second = await asyncio.gather(client.get("/a", {}), client.get("/b", {}))
    assert (first.status, first.body) == (200, b"answer to /a")
    assert (second.status, second.body) == (200, b"answer to /b")
    assert client.opened == 1
    assert len(server.peers) == 1 and len(server.peers[0].requests) == 2


async def test_the_wait_for_a_connection_counts_toward_total_timeout(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """max_connections=1, total_timeout=0.7: a GET started 0.1 s after one that holds the
    connection 0.5 s, then answered 0.5 s after its request, ends in BackendTimeout at 0.7 s
    from its start (its own exchange alone would fit in 0.7 s)."""

    async def slow_echo(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            await asyncio.sleep(0.5)
            await peer.send(echo(request))

    server = await pacs(slow_echo)
    client = new_client(server.port, max_connections=1, total_timeout=0.7)
    first = asyncio.create_task(client.get("/a", {}))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    with pytest.raises(BackendTimeout):
        await client.get("/b", {})
    assert 0.6 < time.monotonic() - started < 0.8
    assert (await first).body == b"answer to /a"


async def test_a_get_waiting_for_a_stuck_connection_times_out(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """max_connections=1 and a PACS that never answers: the GET holding the connection and the
    one waiting for it both end in BackendTimeout within total_timeout of their start (the
    second does not get a fresh total_timeout once the first gives up)."""

    async def silent(peer: Peer) -> None:
        await peer.until_ended()

    server = await pacs(silent)
    client = new_client(server.port, max_connections=1, total_timeout=0.4)
    started = time.monotonic()
    results = await asyncio.wait_for(
        asyncio.gather(client.get("/a", {}), client.get("/b", {}), return_exceptions=True), 3
    )
    assert [type(r) for r in results] == [BackendTimeout, BackendTimeout]
    assert time.monotonic() - started < 0.7
    assert [target(r) for r in server.peers[0].requests] == [b"/a"]


# --- 8. unreachable ----------------------------------------------------------------------------


async def test_nobody_listening_is_unreachable(new_client: MakeClient) -> None:
    """A port with nothing listening: BackendUnreachable, and no connection counted."""
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    client = new_client(port)
    with pytest.raises(BackendUnreachable):
        await asyncio.wait_for(client.get("/a", {}), 3)
    assert client.opened == 0


# --- 9. close ----------------------------------------------------------------------------------


async def test_close_ends_idle_connections_and_later_gets(
    pacs: MakePacs, new_client: MakeClient
) -> None:
    """close() closes the idle connections (the server sees them end) and a GET afterwards is
    a BackendError without connecting."""
    server = await pacs(kept(echo))
    client = new_client(server.port)
    await asyncio.gather(client.get("/a", {}), client.get("/b", {}))
    assert client.opened == 2
    await client.close()
    await asyncio.wait_for(server.peers[0].ended.wait(), 2)
    await asyncio.wait_for(server.peers[1].ended.wait(), 2)
    with pytest.raises(BackendError, match="closing"):
        await client.get("/c", {})
    assert client.opened == 2 and len(server.peers) == 2


async def test_close_ends_a_get_under_way_at_once(pacs: MakePacs, new_client: MakeClient) -> None:
    """close() while a GET is reading its answer: the connection ends (the server sees it) and
    the GET fails at once with a 502 BackendError, not a BackendTimeout (504) once total_timeout
    (3 s here) has passed."""
    partial_sent = asyncio.Event()

    async def stall(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n0123456789")
        partial_sent.set()
        await peer.until_ended()

    server = await pacs(stall)
    client = new_client(server.port, total_timeout=3.0)
    task = asyncio.create_task(client.get("/a", {}))
    await asyncio.wait_for(partial_sent.wait(), 2)
    await asyncio.sleep(0.05)
    await client.close()
    await asyncio.wait_for(server.peers[0].ended.wait(), 2)
    started = time.monotonic()
    with pytest.raises(BackendError) as raised:
        await asyncio.wait_for(task, 5)
    elapsed = time.monotonic() - started
    error = raised.value
    assert (type(error), error.status) == (BackendError, 502), f"{error!r} after {elapsed:.1f} s"
    assert elapsed < 1


# --- 10. interim answers -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "pieces",
    [
        [b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"final")],
        [b"HTTP/1.1 100 Continue\r\n\r\n", ok(b"final")],
        [
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </x>",
            b"; rel=preload\r\n\r\n",
            ok(b"final", "X-Final: yes"),
        ],
    ],
)
async def test_interim_answers_are_skipped(
    pacs: MakePacs, new_client: MakeClient, pieces: list[bytes]
) -> None:
    """1xx answers before the final one are read past: the status, headers and body are the
    final answer's, and the connection is kept for the next GET."""

    async def handle(peer: Peer) -> None:
        await peer.request()
        await peer.send(*pieces, pause=0.01)
        await kept(echo)(peer)

    server = await pacs(handle)
    client = new_client(server.port)
    answer = await client.get("/a", {})
    assert (answer.status, answer.body) == (200, b"final")
    assert "link" not in answer.headers and answer.headers["content-length"] == "5"
    assert (await client.get("/b", {})).body == b"answer to /b"
    assert client.opened == 1


# --- the moment a request has gone ---------------------------------------------------------------


async def test_on_sent_is_called_once_the_request_has_gone_before_its_answer(
    pacs: Callable[[Handler], Awaitable[Pacs]],
) -> None:
    """The server answers only after the client has said its request was sent: the GET can
    complete only if ``on_sent`` runs while the answer is still awaited (once per GET)."""
    sent = asyncio.Event()
    calls: list[float] = []

    def on_sent() -> None:
        calls.append(time.monotonic())
        sent.set()

    async def handle(peer: Peer) -> None:
        while await peer.request() is not None:
            await asyncio.wait_for(sent.wait(), 2)
            sent.clear()
            await peer.send(ok(b"[]"))

    server = await pacs(handle)
    client = KeepAliveClient(
        "127.0.0.1",
        server.port,
        max_connections=1,
        connect_timeout=2.0,
        total_timeout=5.0,
        max_body=1000,
        on_sent=on_sent,
    )
    try:
        for _ in range(3):
            assert (await client.get("/studies", {})).body == b"[]"
    finally:
        await client.close()
    assert len(calls) == 3
    assert len(server.peers) == 1  # kept alive: the callback does not cost the connection
