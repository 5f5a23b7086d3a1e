"""One streamed HTTP/1.1 GET, its body read in large buffers straight from the socket.

A retrieve is one GET whose answer is a long body: the status, the headers, then bytes until
the body's length or the connection's end. aiohttp's client copies every body byte once more
(its parser makes a new bytes object of each piece) and runs its parser, timers and stream
reader for each socket read. Here the socket (non-blocking, ours: no asyncio transport, so
the loop lets us wait on it) is read 1 MB at a time into bytes handed on as they are, and
only the head is parsed. The socket's kernel buffer is the read-ahead.

A stretch of a Content-Length or close-delimited body can be taken as a :class:`BodySpan`
(:meth:`Body.span`): its bytes then stay in the socket until the consumer reads them or has
the kernel ``splice`` them elsewhere.

Plain ``http://``, one connection per GET (``Connection: close``), what a retrieve of many
megabytes can afford. Errors are raised as :mod:`ncpeh_dicomweb.errors` types.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import re
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from functools import lru_cache
from types import MappingProxyType
from urllib.parse import urlsplit

from ..errors import BackendError, BackendTimeout, BackendUnreachable
from .base import BodySpan

__all__ = [
    "Body",
    "Connection",
    "StreamedResponse",
    "connect",
    "content_length",
    "parse_head",
    "read_head",
    "request_bytes",
    "stream_get",
]

_READ_SIZE = 1 << 20  # the most one socket read takes
_MAX_HEAD = 64 * 1024
# A streamed body wakes its reader once this much has come (a part's delimiter, headers and
# the start of its body, not each alone; see Connection.wake_at), or at its end.
_WAKE_AT = 64 * 1024
_MID_ANSWER = "the PACS closed the connection in the middle of an answer"
_SPLICE = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)  # Linux


@dataclass(frozen=True, slots=True)
class StreamedResponse:
    """The status, the headers (lower-case names) and the body."""

    status: int
    headers: Mapping[str, str]
    body: Body


@asynccontextmanager
async def stream_get(
    url: str,
    headers: Mapping[str, str],
    *,
    connect_timeout: float,
    read_timeout: float,
) -> AsyncIterator[StreamedResponse]:
    """GET ``url`` (``http://`` only); the connection is closed when the block exits."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError(f"stream_get needs an http:// URL, not {url!r}")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    request = _request(target, parts.netloc, headers)
    connection = await connect(parts.hostname, parts.port or 80, connect_timeout, read_timeout)
    try:
        await connection.send(request)
        status, head, rest = await read_head(connection)
        body = Body(connection, head, bytes(rest), wake_at=_WAKE_AT)
        yield StreamedResponse(status, head, body)
    finally:
        connection.close()  # a body not read to its end is not waited for


def _request(target: str, host: str, headers: Mapping[str, str]) -> bytes:
    return request_bytes(target, host, {**headers, "Connection": "close"})


def request_bytes(target: str, host: str, headers: Mapping[str, str]) -> bytes:
    """A GET's request line and header fields (RFC 9112 3, 5)."""
    fields = {"Host": host, **headers}
    if _UNSAFE.search("".join((target, *fields, *fields.values()))):
        raise ValueError("the request contains a line break or NUL")
    lines = [f"GET {target} HTTP/1.1", *(f"{name}: {value}" for name, value in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


_UNSAFE = re.compile("[\r\n\0]")  # would end a request line or field early


async def connect(
    host: str, port: int, connect_timeout: float, read_timeout: float | None
) -> Connection:
    loop = asyncio.get_running_loop()
    sock: socket.socket | None = None
    try:
        async with asyncio.timeout(connect_timeout):
            infos = _numeric(host, port) or await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM
            )
            for family, kind, proto, _, address in infos:
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                try:
                    await loop.sock_connect(sock, address)
                    break
                except OSError:
                    sock.close()
                    sock = None
    except TimeoutError:
        if sock is not None:
            sock.close()
        raise BackendUnreachable("the PACS did not accept a connection in time") from None
    except OSError:
        raise BackendUnreachable("the PACS cannot be reached") from None
    except BaseException:  # cancelled while connecting: the socket is not left open
        if sock is not None:
            sock.close()
        raise
    if sock is None:
        raise BackendUnreachable("the PACS cannot be reached")
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return Connection(sock, read_timeout)


def _numeric(host: str, port: int) -> list[tuple[int, int, int, str, tuple[str, int]]]:
    """The address of a numeric ``host`` without a resolver (whose thread hop costs a
    retrieve a millisecond); [] for a name."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return []
    family = socket.AF_INET6 if address.version == 6 else socket.AF_INET
    return [(family, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", (host, port))]


class Connection:
    """A non-blocking socket and the longest silence waited for on it (None: the caller
    bounds the whole exchange)."""

    def __init__(self, sock: socket.socket, read_timeout: float | None) -> None:
        self._sock = sock
        self._read_timeout = read_timeout
        self._loop = asyncio.get_running_loop()
        self._low_water = 1
        self._waiter: asyncio.Future[None] | None = None  # a read waiting for data
        self._closed = False
        # keep_watch(): registered with the loop for the connection's life, not per wait.
        self._watching = False
        self._resting = False  # kept idle between two exchanges (watched connections)
        self._stirred = False  # readable while resting: closed by the peer, or bytes unasked

    def wake_at(self, size: int) -> None:
        """Wait for a read only until ``size`` bytes are there, or the connection's end
        (``SO_RCVLOWAT``; a read that does not wait takes what there is). A PACS writes a
        part's delimiter, its headers and its body apart: the reader is woken once for them,
        not for each. Only where ``size`` more bytes are sure to come, or the end: else the
        wait could outlast the answer."""
        size = max(1, size)
        if size != self._low_water:
            with contextlib.suppress(OSError):  # not supported: woken for each write, as before
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVLOWAT, size)
            self._low_water = size

    async def send(self, data: bytes) -> None:
        try:
            sent = self._sock.send(data)  # a request fits the socket's buffer: no future
        except BlockingIOError:
            sent = 0
        except OSError:
            raise BackendError("the PACS connection broke") from None
        if sent == len(data):
            return
        try:
            async with asyncio.timeout(self._read_timeout):
                await self._loop.sock_sendall(self._sock, data[sent:])
        except TimeoutError:
            raise BackendTimeout("the PACS did not take the request in time") from None
        except OSError:
            raise BackendError("the PACS connection broke") from None

    async def recv(self, most: int = _READ_SIZE) -> bytes:
        """Up to ``most`` bytes once some are there; b"" at the connection's end."""
        while True:
            try:
                return self._sock.recv(most)  # usually there already: no future, no timer
            except BlockingIOError:
                await self._readable()
            except OSError:
                raise BackendError("the PACS connection broke") from None

    async def splice(self, pipe: int, most: int) -> int:
        """Up to ``most`` bytes moved into ``pipe`` once some are there; 0 at the end."""
        while True:
            try:
                return os.splice(self._sock.fileno(), pipe, most, flags=_SPLICE)
            except BlockingIOError:
                await self._readable()
            except OSError:
                raise BackendError("the PACS connection broke") from None

    def keep_watch(self) -> None:
        """Stay registered with the loop from now on (a kept-alive connection): a wait for
        data costs no registration of its own, and a close by the peer or bytes nobody asked
        for while the connection rests are seen as they come, not by a peek at reuse."""
        if not self._watching and not self._closed:
            self._watching = True
            self._loop.add_reader(self._sock.fileno(), self._on_readable)

    def rest(self) -> None:
        """The connection is idle until :meth:`still_open` takes it again."""
        self._resting = True

    def _on_readable(self) -> None:
        waiter = self._waiter
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(None)
        elif self._resting and self._peer_spoke():
            # Nothing may come while it rests: it is done for. Unwatched at once, or a level-
            # triggered loop would call this on every turn until the connection is dropped.
            # (Peeked first: the loop may report a readiness the last read has consumed.)
            self._stirred = True
            self._unwatch()

    def _peer_spoke(self) -> bool:
        """Whether the peer closed the connection or sent something (a non-blocking peek)."""
        try:
            self._sock.recv(1, socket.MSG_PEEK)  # b"": closed; bytes: nobody asked for them
        except BlockingIOError:
            return False
        except OSError:
            pass
        return True

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self._loop.remove_reader(self._sock.fileno())

    async def _readable(self) -> None:
        waiter = self._waiter = self._loop.create_future()
        fd = self._sock.fileno()
        registered = not self._watching  # a watched one is registered already (_on_readable)
        if registered:
            self._loop.add_reader(fd, _wake, waiter)
        try:
            if self._read_timeout is None:
                await waiter
            else:
                async with asyncio.timeout(self._read_timeout):
                    await waiter
        except TimeoutError:
            raise BackendTimeout("the PACS did not answer in time") from None
        finally:
            self._waiter = None
            if registered and not self._closed:  # closed: the number may be reused by now
                self._loop.remove_reader(fd)

    def still_open(self) -> bool:
        """Whether an idle connection may be used again: the peer has not closed it, nor sent
        anything unasked (seen by the loop for a watched one, else by a non-blocking peek).
        True takes it out of its rest."""
        if self._watching or self._stirred:
            self._resting = False
            return not self._stirred
        return not self._peer_spoke()

    def close(self) -> None:
        """Close the socket; a read waiting on it fails at once (502)."""
        if self._closed:
            return
        self._closed = True
        waiter = self._waiter
        # Unregistered before the number can be reused: for its life, or for the read waiting.
        if self._watching:
            self._unwatch()
        elif waiter is not None:
            self._loop.remove_reader(self._sock.fileno())
        if waiter is not None and not waiter.done():
            waiter.set_exception(BackendError("the connection to the PACS was closed"))
        self._sock.close()


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


class Body:
    """A response's body by its framing (RFC 9112 6.3): chunked, a Content-Length, or until
    the connection's end; iterated, it gives the bytes as the socket reads them."""

    def __init__(
        self,
        connection: Connection,
        headers: Mapping[str, str],
        first: bytes,
        *,
        wake_at: int = 0,
    ):
        self._connection = connection
        self._first = first  # what came with the head
        self._chunked: AsyncIterator[bytearray] | None = None
        self.read_size = _READ_SIZE  # the most the next read takes (a reader may lower it)
        self.remaining = -1  # the Content-Length's bytes still to come; -1: until the end
        self.overran = False  # bytes came after the body's length (dropped)
        # Connection.wake_at: the body's length or its end bounds what is sure to come; a
        # chunked body's last chunk may be followed by nothing, so it is read as it comes.
        self._wake_at = wake_at
        if _chunked(headers):
            self._chunked = _dechunked(connection, bytearray(first))
            self._wake_at = 0
        else:
            self.remaining = content_length(headers)
            if wake_at:
                connection.wake_at(wake_at if self.remaining < 0 else min(wake_at, self.remaining))

    def took(self, size: int) -> None:
        """``size`` bytes of a Content-Length body were read (or spliced)."""
        remaining = self.remaining = self.remaining - size
        if remaining < self._wake_at:
            self._connection.wake_at(remaining)

    def __aiter__(self) -> Body:
        return self

    async def __anext__(self) -> bytes | bytearray:
        if self._chunked is not None:
            return await anext(self._chunked)
        while True:
            if self.remaining == 0:
                raise StopAsyncIteration
            if self._first:
                block, self._first = self._first, b""
            else:
                block = await self._connection.recv(self.read_size)
                if not block:
                    if self.remaining > 0:
                        raise BackendError(_MID_ANSWER)
                    raise StopAsyncIteration
            if self.remaining >= 0:
                if len(block) > self.remaining:  # what follows the body is not ours
                    block = block[: self.remaining]
                    self.overran = True
                self.took(len(block))
            if block:
                return block

    def span(self, size: int, prefix: Sequence[bytes | memoryview] = ()) -> BodySpan | None:
        """``prefix`` and the next ``size`` bytes as a span, if these are all still in the
        socket."""
        if self._chunked is not None or self._first or 0 <= self.remaining < size:
            return None
        return _SocketSpan(self, size, prefix)


class _SocketSpan(BodySpan):
    __slots__ = ("_body",)

    def __init__(self, body: Body, size: int, prefix: Sequence[bytes | memoryview]) -> None:
        super().__init__(size, prefix)
        self._body = body

    async def read(self, most: int) -> bytes:
        data = await self._body._connection.recv(min(most, self.left))
        return self._took(data, len(data))

    async def into_pipe(self, pipe: int, most: int) -> int:
        moved = await self._body._connection.splice(pipe, min(most, self.left))
        self._took(b"", moved)
        return moved

    def _took(self, data: bytes, size: int) -> bytes:
        if not size:
            raise BackendError(_MID_ANSWER)
        self.left -= size
        if self._body.remaining > 0:
            self._body.took(size)
        return data


def content_length(headers: Mapping[str, str]) -> int:
    """A body's length by its ``Content-Length`` (RFC 9112 6.3); -1 for a chunked body or
    one that names none (or not in ASCII digits)."""
    if _chunked(headers):
        return -1
    length = headers.get("content-length", "").strip()
    return int(length) if length.isascii() and length.isdigit() else -1


def _chunked(headers: Mapping[str, str]) -> bool:
    return "chunked" in headers.get("transfer-encoding", "").lower()


async def read_head(
    connection: Connection, first: bytes = b""
) -> tuple[int, Mapping[str, str], bytearray]:
    """The status code, the headers and what of the body came with them (``first``: what
    was already read of the answer)."""
    data = bytearray(first)
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > _MAX_HEAD:
            raise BackendError("the PACS sent an oversized response head")
        block = await connection.recv()
        if not block:
            raise BackendError("the PACS closed the connection without answering")
        data += block
    if end > _MAX_HEAD:
        raise BackendError("the PACS sent an oversized response head")
    status, headers = parse_head(bytes(data[:end]))
    return status, headers, data[end + 4 :]


# A PACS answering the same search sends the same head (Orthanc sends no Date): parsed once.
# The mapping is read-only, so answers may share it.
@lru_cache(maxsize=128)
def parse_head(head: bytes) -> tuple[int, Mapping[str, str]]:
    """An HTTP/1.1 response's status line and header fields (RFC 9112 4, 5)."""
    status_line, *lines = head.decode("latin-1").split("\r\n")
    version, _, rest = status_line.partition(" ")
    code = rest[:3]
    if not version.startswith("HTTP/1.") or not code.isdigit():
        raise BackendError("the PACS sent a malformed HTTP status line")
    headers: dict[str, str] = {}
    for line in lines:
        name, colon, value = line.partition(":")
        name = name.strip().lower()
        if not colon or not name:
            raise BackendError("the PACS sent a malformed HTTP header")
        value = value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    if version == "HTTP/1.0" and "keep-alive" not in headers.get("connection", "").lower():
        headers["connection"] = "close"  # an HTTP/1.0 connection ends with its answer
    return int(code), MappingProxyType(headers)


async def _dechunked(connection: Connection, buffer: bytearray) -> AsyncIterator[bytearray]:
    """A chunked body's data (RFC 9112 7.1); trailers are read and dropped."""

    async def more() -> None:
        block = await connection.recv()
        if not block:
            raise BackendError(_MID_ANSWER)
        buffer.extend(block)

    async def line() -> bytes:
        while (end := buffer.find(b"\r\n")) < 0:
            if len(buffer) > _MAX_HEAD:
                raise BackendError("the PACS sent a malformed chunked body")
            await more()
        out = bytes(buffer[:end])
        del buffer[: end + 2]
        return out

    while True:
        size_text = (await line()).split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise BackendError("the PACS sent a malformed chunked body") from None
        if size == 0:
            while await line():  # trailer fields, then the empty line
                pass
            return
        while size:
            if not buffer:
                await more()
            take = min(size, len(buffer))
            if take == len(buffer):
                piece, buffer = buffer, bytearray()
            else:
                piece = buffer[:take]
                del buffer[:take]
            size -= take
            yield piece
        while len(buffer) < 2:
            await more()
        if buffer[:2] != b"\r\n":
            raise BackendError("the PACS sent a malformed chunked body")
        del buffer[:2]
