"""HTTP/1.1 chunks of a streamed answer written straight to the client's socket.

aiohttp frames a chunk by joining its size line, the data and the CRLF into one new bytes
object (``writelines`` is unsafe before Python 3.12.9): a copy of every byte streamed, a
tenth of a retrieve's CPU. Here the pieces of a chunk go to the kernel in one ``writev``
while the transport has nothing queued. What the socket does not take is queued on the
transport, and every later chunk queues behind it until it drains, so the bytes stay in
order; aiohttp's flow control (``drain``) still paces the stream.

TLS transports, answers that are not chunked (HTTP/1.0) and transports without a socket go
through aiohttp's writer as before.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterator

from aiohttp import web

__all__ = ["ChunkWriter"]

_CRLF = b"\r\n"


class ChunkWriter:
    """Writes the body of a prepared, chunked ``response`` one chunk at a time."""

    __slots__ = ("_fd", "_response", "_started", "_transport", "_writer")

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self._response = response
        self._writer = request.writer
        self._transport: asyncio.Transport | None = None
        self._fd = -1
        self._started = False
        transport = request.transport
        if (
            isinstance(transport, asyncio.Transport)
            and transport.get_extra_info("sslcontext") is None
            and response.headers.get("Transfer-Encoding", "").lower() == "chunked"
        ):
            sock = transport.get_extra_info("socket")
            if sock is not None:
                self._transport = transport
                self._fd = sock.fileno()

    async def write(self, *pieces: bytes | memoryview) -> None:
        """One chunk made of ``pieces`` (a part's header and its body's start, say)."""
        transport = self._transport
        if transport is None or not self._started:
            # aiohttp's own writer: the first chunk (it owns the status line and headers).
            for piece in pieces:
                await self._response.write(piece)
            self._started = True
            return
        size = sum(map(len, pieces))
        if not size:
            return
        if transport.is_closing():
            raise ConnectionResetError("the client went away")
        frame = (b"%x\r\n" % size, *pieces, _CRLF)
        total = size + len(frame[0]) + len(_CRLF)
        sent = 0
        if not transport.get_write_buffer_size():
            try:
                sent = os.writev(self._fd, frame)
            except (BlockingIOError, InterruptedError):
                sent = 0
        if sent < total:
            for rest in _after(frame, sent):
                transport.write(rest)
        writer = self._writer
        writer.output_size += total  # the access log's byte count
        if writer.on_body_write is not None:  # the metrics' (as aiohttp's writer tells it)
            writer.on_body_write(size, writer.output_size)
        await writer.drain()


def _after(pieces: tuple[bytes | memoryview, ...], skip: int) -> Iterator[bytes | memoryview]:
    """``pieces`` without their first ``skip`` bytes."""
    for piece in pieces:
        if skip >= len(piece):
            skip -= len(piece)
            continue
        yield piece[skip:] if skip else piece
        skip = 0
