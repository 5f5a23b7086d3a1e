"""Whole-body GETs (searches, metadata) over kept-alive plain-HTTP connections to one PACS.

A search is a small request and a small answer, and its cost is the PACS's work plus what each
hop adds: aiohttp's client builds a request object, a response object, a stream reader, a
timer and a connection wrapper per GET, about a fifth of a search's CPU in the gateway. Here a
GET is its request bytes written to an idle connection and its answer read by its framing
(:class:`.http_stream.Body`), nothing more.

Connections are kept (up to ``max_connections`` at once, the idle ones most recent first)
while the PACS keeps them: one it closed, one idle for longer than its ``Keep-Alive: timeout``
said, or one that sent something unasked is not used again. A GET on a kept connection that
the PACS closes before answering (it may close an idle connection at any time, RFC 9112 9.6)
is made once more on a new one: a GET is safe to repeat (RFC 9110 9.2.2). A connection whose
answer was not read to its end (an error, a timeout, a cancelled request) is closed.

Plain ``http://`` only; an ``https://`` site keeps aiohttp's client.
"""

from __future__ import annotations

import asyncio
import re
import time
import zlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import lru_cache

from ..errors import BackendError, BackendTimeout
from .http_stream import Body, Connection, connect, content_length, read_head, request_bytes

__all__ = ["Answer", "KeepAliveClient"]

_IDLE_MOST = 30.0  # seconds a connection is kept idle when the PACS names no timeout
_IDLE_MARGIN = 0.25  # seconds before the PACS's own keep-alive timeout that we stop using it
_KEEP_ALIVE_TIMEOUT = re.compile(r"timeout\s*=\s*(\d+)", re.IGNORECASE)
_NO_BODY = frozenset({204, 304})


@dataclass(frozen=True, slots=True)
class Answer:
    """A response: its status, headers (lower-case names) and whole body, decoded."""

    status: int
    headers: Mapping[str, str]
    body: bytes


class _Stale(Exception):
    """A kept connection closed before any byte of an answer: the GET may be made again."""


class KeepAliveClient:
    """GETs of whole answers from one ``host:port``, over at most ``max_connections``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        max_connections: int,
        connect_timeout: float,
        total_timeout: float,
        max_body: int,
        on_sent: Callable[[], None] | None = None,
    ) -> None:
        """``on_sent`` is called each time a request has gone and its answer is awaited (the
        app runs its after-answer bookkeeping then: web/after_answer.py)."""
        self._host, self._port = host, port
        self._on_sent = on_sent
        self._netloc = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        self._slots = asyncio.Semaphore(max_connections)
        self._connect_timeout = connect_timeout
        self._total_timeout = total_timeout
        self._max_body = max_body
        self._idle: list[tuple[Connection, float]] = []  # (connection, usable until)
        self._busy: set[Connection] = set()  # closed by close() too: none outlives the client
        self._closed = False
        self.opened = 0  # connections made (a test of reuse reads it)

    async def get(self, target: str, headers: Mapping[str, str]) -> Answer:
        """GET ``target`` (a path and query); the whole exchange, waiting for a free
        connection included, within ``total_timeout`` seconds (a :class:`BackendTimeout`)."""
        if self._closed:
            raise BackendError("the gateway is closing its PACS connections")
        request = request_bytes(target, self._netloc, headers)
        try:
            async with asyncio.timeout(self._total_timeout), self._slots:
                kept = self._take_idle()
                if kept is not None:
                    try:
                        return await self._exchange(kept, request)
                    except _Stale:
                        pass
                fresh = await self._open()
                try:
                    return await self._exchange(fresh, request)
                except _Stale:
                    raise BackendError("the PACS closed the connection without answering") from None
        except TimeoutError:
            raise BackendTimeout("the PACS did not answer in time") from None

    async def close(self) -> None:
        self._closed = True
        for connection in (*(c for c, _ in self._idle), *self._busy):
            connection.close()  # a GET under way on a busy one fails (502)
        self._idle.clear()
        self._busy.clear()

    def _take_idle(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            connection, until = self._idle.pop()
            if until > now and connection.still_open():
                return connection
            connection.close()
        return None

    async def _open(self) -> Connection:
        # No timeout of its own for each read: get() bounds the whole exchange.
        connection = await connect(self._host, self._port, self._connect_timeout, None)
        connection.keep_watch()  # registered once for its life: no peek, no (un)registering
        self.opened += 1
        return connection

    async def _exchange(self, connection: Connection, request: bytes) -> Answer:
        """One request and its answer on ``connection``, kept for the next if it may be."""
        done = False
        self._busy.add(connection)
        try:
            try:
                await connection.send(request)
                if self._on_sent is not None:
                    self._on_sent()
                first = await connection.recv()
            except BackendTimeout:
                raise
            except BackendError:
                raise _Stale from None
            if not first:
                raise _Stale
            status, headers, rest = await read_head(connection, first)
            while 100 <= status < 200 and status != 101:  # interim answers (RFC 9110 15.2)
                status, headers, rest = await read_head(connection, bytes(rest))
            body, overran = b"", bool(rest)
            if status not in _NO_BODY:
                body, overran = await self._body(connection, headers, rest)
            done = True
        finally:
            self._busy.discard(connection)
            if not done:
                connection.close()
        reusable = None if overran else self._keep_for(status, headers)
        if reusable is None:
            connection.close()
        else:
            connection.rest()
            self._idle.append((connection, reusable))
        coding = headers.get("content-encoding", "")
        return Answer(status, headers, _decoded(body, coding, self._max_body))

    async def _body(
        self, connection: Connection, headers: Mapping[str, str], rest: bytearray
    ) -> tuple[bytes, bool]:
        """The body, and whether anything came after it (the connection is then not kept)."""
        size = content_length(headers)
        if size > self._max_body:
            raise BackendError("the PACS's answer is larger than the gateway accepts")
        if 0 <= size <= len(rest):  # the common answer: all of it came with its head
            return bytes(rest[:size]), len(rest) > size
        body = Body(connection, headers, bytes(rest))
        pieces: list[bytes | bytearray] = []
        size = 0
        async for piece in body:
            size += len(piece)
            if size > self._max_body:
                raise BackendError("the PACS's answer is larger than the gateway accepts")
            pieces.append(piece)
        whole = pieces[0] if len(pieces) == 1 and isinstance(pieces[0], bytes) else b"".join(pieces)
        return whole, body.overran

    def _keep_for(self, status: int, headers: Mapping[str, str]) -> float | None:
        """Until when (monotonic) the connection may be used again; None: close it."""
        if self._closed or "close" in headers.get("connection", "").lower():
            return None
        framed = (
            status in _NO_BODY  # ends with its head
            or "content-length" in headers
            or "chunked" in headers.get("transfer-encoding", "").lower()
        )
        if not framed:  # read until the connection's end: it has ended
            return None
        idle = _idle_for(headers.get("keep-alive", ""))
        return time.monotonic() + idle if idle > 0 else None


@lru_cache(maxsize=64)  # a PACS sends the same Keep-Alive with every answer
def _idle_for(keep_alive: str) -> float:
    """How long a connection may stay idle, by the PACS's ``Keep-Alive`` header (RFC 2068
    19.7.1.1) less a margin; at most :data:`_IDLE_MOST`."""
    if match := _KEEP_ALIVE_TIMEOUT.search(keep_alive):
        return min(_IDLE_MOST, int(match[1]) - _IDLE_MARGIN)
    return _IDLE_MOST


def _decoded(body: bytes, coding: str, most: int) -> bytes:
    """The body without its content coding: none is asked for, but gzip and deflate are
    undone if a PACS applies them anyway (at most ``most`` bytes of it)."""
    coding = coding.strip().lower()
    if coding in ("", "identity"):
        return body
    if coding in ("gzip", "x-gzip"):
        kinds = [16 + zlib.MAX_WBITS]
    elif coding == "deflate":
        kinds = [zlib.MAX_WBITS, -zlib.MAX_WBITS]  # zlib-wrapped, or raw as some servers send
    else:
        raise BackendError(f"the PACS sent a body in an unknown coding ({coding})")
    for wbits in kinds:
        try:
            return _inflated(body, wbits, most)
        except zlib.error:
            continue
    raise BackendError("the PACS sent a body that does not decode")


def _inflated(data: bytes, wbits: int, most: int) -> bytes:
    """``data`` inflated whole: every gzip member (RFC 1952 2.2), at most ``most`` bytes; a
    stream cut short or followed by other bytes is a zlib.error."""
    out = bytearray()
    while True:
        inflater = zlib.decompressobj(wbits)
        out += inflater.decompress(data, most + 1 - len(out))
        if len(out) > most or inflater.unconsumed_tail:
            raise BackendError("the PACS's answer is larger than the gateway accepts")
        if not inflater.eof:
            raise zlib.error("the stream is cut short")
        data = inflater.unused_data
        if not data:
            return bytes(out)
        if wbits != 16 + zlib.MAX_WBITS:
            raise zlib.error("bytes after the stream")
