"""HTTP/1.1 chunks of a streamed answer written straight to the client's socket.

aiohttp frames a chunk by joining its size line, the data and the CRLF into one new bytes
object (``writelines`` is unsafe before Python 3.12.9): a copy of every byte streamed, a
tenth of a retrieve's CPU. Here the pieces of a chunk go to the kernel in one ``writev``
while the transport has nothing queued. What the socket does not take is queued on the
transport, and every later chunk queues behind it until it drains, so the bytes stay in
order; aiohttp's flow control (``drain``) still paces the stream.

A part's body still in the PACS's connection (a :class:`BodySpan`) is moved by the kernel:
``splice`` from that socket into a pipe, and from the pipe into the client's socket, so its
bytes are never copied into Python. When the client's socket is full, what is in the pipe is
read out and queued on the transport, and the span is read and queued until the transport
has drained: the bytes stay in order either way.

TLS transports, answers that are not chunked (HTTP/1.0) and transports without a socket go
through aiohttp's writer as before, spans read.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import socket
from collections.abc import Iterator
from types import TracebackType

from aiohttp import web

from ..backends.base import BodySpan

__all__ = ["ChunkWriter"]

_CRLF = b"\r\n"
_PIPE_SIZE = 1 << 20  # Linux's default most for an unprivileged process
_CAN_SPLICE = hasattr(os, "splice")  # Linux: elsewhere spans are read
_SPLICE = getattr(os, "SPLICE_F_MOVE", 0) | getattr(os, "SPLICE_F_NONBLOCK", 0)
_SPLICE_MORE = getattr(os, "SPLICE_F_MORE", 0)  # more of the chunk follows: no push yet

Piece = bytes | memoryview


class ChunkWriter:
    """Writes the body of a prepared, chunked ``response`` one chunk at a time; a context
    manager (it may hold a pipe)."""

    __slots__ = (
        "_fd",
        "_pending",
        "_pipe",
        "_pipe_size",
        "_response",
        "_sock",
        "_started",
        "_transport",
        "_writer",
    )

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self._response = response
        self._writer = request.writer
        self._transport: asyncio.Transport | None = None
        self._fd = -1
        self._sock: socket.socket | None = None  # a duplicate of the client's (_more_sock)
        self._started = False
        self._pipe: tuple[int, int] | None = None  # for spans, made for the first
        self._pipe_size = 0
        self._pending = b""  # a span's closing CRLF: sent with what comes next
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

    def __enter__(self) -> ChunkWriter:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._pipe is not None:
            for end in self._pipe:
                os.close(end)
            self._pipe = None
        if self._sock is not None:
            self._sock.close()  # the duplicate only: the client's socket is the transport's
            self._sock = None

    async def write(self, *pieces: Piece) -> None:
        """One chunk made of ``pieces`` (a part's header and its body's start, say)."""
        transport = self._transport
        if transport is None or not self._started:
            # aiohttp's own writer: the first chunk (it owns the status line and headers).
            for piece in pieces:
                await self._response.write(piece)
            self._started = True
            return
        size = sum(map(len, pieces))
        self._check_open(transport)
        if not size:
            self._send(transport, ())  # a pending CRLF, if any
            return
        frame = (b"%x\r\n" % size, *pieces, _CRLF)
        self._send(transport, frame)
        self._count(size, size + len(frame[0]) + len(_CRLF))
        await self._writer.drain()

    async def write_span(self, head: Piece, span: BodySpan) -> None:
        """One chunk: ``head`` (a part's header, or nothing), then the span's bytes."""
        transport = self._transport
        if transport is None or not self._started or not _CAN_SPLICE:
            if head:
                await self.write(head)
            async for piece in span.chunks():
                await self.write(piece)
            return
        size = len(head) + span.size
        self._check_open(transport)
        size_line = b"%x\r\n" % size
        self._send(transport, (size_line, head, *span.prefix), more=True)
        pipe_r, pipe_w = self._pipe or self._open_pipe()
        while span.left:
            await self._drained(transport)  # nothing queued: what is spliced keeps its place
            moved = await span.into_pipe(pipe_w, min(span.left, self._pipe_size))
            self._check_open(transport)  # its socket may be gone while we waited
            flags = _SPLICE | _SPLICE_MORE if span.left else _SPLICE
            while moved:
                try:
                    moved -= os.splice(pipe_r, self._fd, moved, flags=flags)
                except BlockingIOError:  # the client's socket is full: queue the rest
                    transport.write(_read_exactly(pipe_r, moved))
                    moved = 0
        self._pending = _CRLF  # one writev fewer a part: it goes with the next chunk
        self._count(size, size + len(size_line) + len(_CRLF))
        await self._writer.drain()

    async def _drained(self, transport: asyncio.Transport) -> None:
        """Until the transport has sent all it holds (not only down to its high-water mark,
        where aiohttp's ``drain`` stops waiting)."""
        if transport.get_write_buffer_size():
            low, high = transport.get_write_buffer_limits()
            transport.set_write_buffer_limits(high=0)  # paused until empty
            try:
                await self._writer.drain()
            finally:
                if not transport.is_closing():
                    transport.set_write_buffer_limits(high=high, low=low)

    def _check_open(self, transport: asyncio.Transport) -> None:
        # Checked right before each write to its descriptor: once closed, the number may be
        # another file's.
        if transport.is_closing():
            raise ConnectionResetError("the client went away")

    def _send(
        self, transport: asyncio.Transport, pieces: tuple[Piece, ...], *, more: bool = False
    ) -> None:
        """``pieces`` to the socket at once if nothing is queued, else queued behind.
        ``more``: a span's bytes follow at once (MSG_MORE: sent with them, not as a segment of
        their own that wakes the client for a few kB)."""
        if self._pending:
            pieces = (self._pending, *pieces)
            self._pending = b""
        sent = 0
        if not transport.get_write_buffer_size():
            try:
                if more:
                    sent = self._more_sock().sendmsg(pieces, (), socket.MSG_MORE)
                else:
                    sent = os.writev(self._fd, pieces)
            except (BlockingIOError, InterruptedError):
                sent = 0
        for rest in _after(pieces, sent):
            transport.write(rest)

    def _more_sock(self) -> socket.socket:
        """The client's socket as a socket object of our own, for ``sendmsg`` (asyncio's
        wrapper refuses it): a duplicate made for the first span, closed with the writer."""
        if self._sock is None:
            self._sock = socket.socket(fileno=os.dup(self._fd))
        return self._sock

    def _open_pipe(self) -> tuple[int, int]:
        pipe_r, pipe_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pipe = (pipe_r, pipe_w)
        # A lower /proc/sys/fs/pipe-max-size refuses it: the default 64 kB will do.
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe_w, fcntl.F_SETPIPE_SZ, _PIPE_SIZE)
        self._pipe_size = fcntl.fcntl(pipe_w, fcntl.F_GETPIPE_SZ)
        return self._pipe

    def _count(self, body: int, framed: int) -> None:
        writer = self._writer
        writer.output_size += framed  # the access log's byte count
        if writer.on_body_write is not None:  # the metrics' (as aiohttp's writer tells it)
            writer.on_body_write(body, writer.output_size)


def _read_exactly(fd: int, size: int) -> bytes:
    """``size`` bytes a pipe holds already (never waits)."""
    out = bytearray()
    while len(out) < size:
        out += os.read(fd, size - len(out))
    return bytes(out)


def _after(pieces: tuple[Piece, ...], skip: int) -> Iterator[Piece]:
    """``pieces`` without their first ``skip`` bytes (and without empty ones)."""
    for piece in pieces:
        if skip >= len(piece):
            skip -= len(piece)
            continue
        yield piece[skip:] if skip else piece
        skip = 0
