"""One streamed HTTP/1.1 GET, its body read in large buffers straight from the socket.

A retrieve is one GET whose answer is a long body: the status, the headers, then bytes until
the body's length or the connection's end. aiohttp's client copies every body byte once more
(its parser makes a new bytes object of each piece) and runs its parser, timers and stream
reader for each socket read. Here the socket reads into fresh buffers
(:class:`asyncio.BufferedProtocol`), handed on as they are; only the head is parsed.

Plain ``http://``, one connection per GET (``Connection: close``), what a retrieve of many
megabytes can afford. Errors are raised as :mod:`ncpeh_dicomweb.errors` types.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from urllib.parse import urlsplit

from ..errors import BackendError, BackendTimeout, BackendUnreachable

__all__ = ["StreamedResponse", "stream_get"]

_READ_SIZE = 1 << 20  # the most one socket read takes (asyncio's default is 256 kB)
_READ_AHEAD = 4 << 20  # bytes read from the PACS before the reading waits for the client
_MAX_HEAD = 64 * 1024


@dataclass(frozen=True, slots=True)
class StreamedResponse:
    """The status, the headers (lower-case names) and the body, buffer by buffer."""

    status: int
    headers: Mapping[str, str]
    body: AsyncIterator[bytes | bytearray]


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
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(connect_timeout):
            transport, reader = await loop.create_connection(
                lambda: _Reader(read_timeout), parts.hostname, parts.port or 80
            )
    except TimeoutError:
        raise BackendUnreachable("the PACS did not accept a connection in time") from None
    except OSError:
        raise BackendUnreachable("the PACS cannot be reached") from None
    try:
        transport.write(request)
        status, head, rest = await _read_head(reader)
        yield StreamedResponse(status, head, _body(reader, head, rest))
    finally:
        transport.abort()  # a body not read to its end must not be waited for


def _request(target: str, host: str, headers: Mapping[str, str]) -> bytes:
    fields = {"Host": host, **headers, "Connection": "close"}
    if any(c in "".join((target, *fields, *fields.values())) for c in "\r\n\0"):
        raise ValueError("the request contains a line break or NUL")
    lines = [f"GET {target} HTTP/1.1", *(f"{name}: {value}" for name, value in fields.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class _Reader(asyncio.Protocol):
    """Socket reads, queued as they came for one consumer (bounded: reading pauses above
    :data:`_READ_AHEAD` queued); ``read_timeout``: the longest silence waited for.

    Each read is a new bytes object the socket wrote into directly: nothing copies or
    zeroes the body on its way in (a ``BufferedProtocol``'s bytearray would be zeroed).
    """

    def __init__(self, read_timeout: float) -> None:
        self._read_timeout = read_timeout
        self._queue: collections.deque[bytes] = collections.deque()
        self._queued = 0
        self._transport: asyncio.Transport | None = None
        self._paused = False
        self._eof = False
        self._error: Exception | None = None
        self._waiter: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        # asyncio's selector transport reads max_size bytes per call (3.11 to 3.13): four
        # times fewer reads, wake-ups and trips through the generators than 256 kB.
        if isinstance(getattr(transport, "max_size", None), int):
            transport.max_size = _READ_SIZE  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self._queue.append(data)
        self._queued += len(data)
        if self._queued >= _READ_AHEAD and not self._paused and self._transport is not None:
            self._transport.pause_reading()
            self._paused = True
        self._wake()

    def eof_received(self) -> bool:
        self._eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._eof = True
        self._error = exc
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def next_block(self) -> bytes | None:
        """The next buffer read, or None at the connection's end."""
        while not self._queue:
            if self._error is not None:
                raise BackendError("the PACS connection broke") from None
            if self._eof:
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(self._read_timeout):
                    await self._waiter
            except TimeoutError:
                raise BackendTimeout("the PACS did not answer in time") from None
            finally:
                self._waiter = None
        block = self._queue.popleft()
        self._queued -= len(block)
        if self._paused and self._queued < _READ_AHEAD // 2 and self._transport is not None:
            self._transport.resume_reading()
            self._paused = False
        return block


async def _read_head(reader: _Reader) -> tuple[int, Mapping[str, str], bytearray]:
    """The status code, the headers and what of the body came with them."""
    data = bytearray()
    while (end := data.find(b"\r\n\r\n")) < 0:
        if len(data) > _MAX_HEAD:
            raise BackendError("the PACS sent an oversized response head")
        block = await reader.next_block()
        if block is None:
            raise BackendError("the PACS closed the connection without answering")
        data += block
    if end > _MAX_HEAD:
        raise BackendError("the PACS sent an oversized response head")
    status, headers = parse_head(bytes(data[:end]))
    return status, headers, data[end + 4 :]


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
    return int(code), headers


async def _body(
    reader: _Reader, headers: Mapping[str, str], first: bytearray
) -> AsyncIterator[bytes | bytearray]:
    """The body by its framing (RFC 9112 6.3): chunked, a Content-Length, or until close."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        async for piece in _dechunked(reader, first):
            yield piece
        return
    length = headers.get("content-length")
    remaining = int(length) if length is not None and length.strip().isdigit() else -1
    block: bytes | bytearray | None = first
    while block is not None:
        if remaining >= 0:
            if len(block) >= remaining:
                if remaining:  # what follows the body, if anything, is not ours
                    yield block[:remaining] if len(block) > remaining else block
                return
            remaining -= len(block)
        if block:
            yield block
        block = await reader.next_block()
    if remaining > 0:
        raise BackendError("the PACS closed the connection in the middle of an answer")


async def _dechunked(reader: _Reader, buffer: bytearray) -> AsyncIterator[bytearray]:
    """A chunked body's data (RFC 9112 7.1); trailers are read and dropped."""

    async def more() -> None:
        block = await reader.next_block()
        if block is None:
            raise BackendError("the PACS closed the connection in the middle of an answer")
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
