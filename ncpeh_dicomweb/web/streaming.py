"""The one way a multipart/related answer is streamed: instances, frames, bulk data.

The first event is pulled before the headers go out, so an upstream 404/406/502/504 still
gets its own status; after that a failure cuts the connection without the closing boundary,
so a truncated body never looks whole. How the stream ended is recorded on the request
(:data:`STREAM_OUTCOME`) for audit and metrics.

An answer the backend knows whole before its first byte, every part a local file that goes
out as stored (a :class:`~ncpeh_dicomweb.backends.base.FileAnswer`), is sent with a
Content-Length, each file by ``sendfile`` (read and written where the transport is TLS).
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing, contextmanager
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Literal

from aiohttp import web

from ..backends.base import BodySpan, FileAnswer, FilePart, PartHead, RetrieveEvent
from ..backends.dimse.instances import file_chunks
from ..dicomweb import multipart
from ..errors import GatewayError, NotFound, TooManyRequests
from .chunked import ChunkWriter
from .forwarded import client_address
from .keys import (
    ACTIVE_STREAMS,
    CLIENT_CERTIFICATE,
    CLIENT_STREAMS,
    PRINCIPAL,
    SETTINGS,
    abort_connection,
)

__all__ = ["STREAM_OUTCOME", "StreamOutcome", "stream_parts"]

log = logging.getLogger(__name__)

StreamOutcome = Literal["complete", "client-gone", "cut"]
STREAM_OUTCOME: web.RequestKey[StreamOutcome] = web.RequestKey("ncpeh.stream_outcome")
PEEK_BYTES = 64 * 1024
_SEND_BUFFER = 2 << 20  # holds a DICOM file's header (the patient and study) in practice


async def stream_parts(
    request: web.Request,
    events: AsyncGenerator[RetrieveEvent, None],
    *,
    content_type: Callable[[str], str],
    part_type: str,
    what: str,
    headers: Mapping[str, str] | None = None,
    peek: Callable[[bytes], None] | None = None,
    as_stored: Callable[[str], bool] | None = None,
    sent: Callable[[int], None] | None = None,
) -> web.StreamResponse:
    """Stream ``events`` (a PartHead, its body chunks, the next PartHead...) as one
    ``multipart/related`` response whose Content-Type is ``content_type(boundary)``.

    A part without a ``content-type`` header gets ``part_type``. ``what`` names the resource
    in logs (no patient data); ``headers`` are added to the response's (a ``Warning``).
    ``peek`` is called once with the head of the first part's body (up to :data:`PEEK_BYTES`,
    what the audit reads the patient from), nothing being held back from the client for it.
    ``as_stored(syntax)``: whether a part stored in that syntax goes out unchanged; given, an
    answer of local files all going out unchanged is sent whole (Content-Length, sendfile),
    ``sent`` told of the bytes that bypass aiohttp's writer. Closes ``events`` in every case.
    """
    shape = _Shape(content_type, part_type, what, headers or {}, peek)
    async with aclosing(events):
        with _client_share(request):
            first = await anext(events, None)
            if first is None:
                raise NotFound("nothing found", detail={"resource": what})
            answer = _sendable(first, as_stored)
            if answer is None:
                return await _stream(request, shape, first, events)
            return await _claimed(request, shape, answer, events, sent)


@dataclass(frozen=True, slots=True)
class _Shape:
    """What a multipart answer looks like, whichever way it is sent (see stream_parts)."""

    content_type: Callable[[str], str]
    part_type: str
    what: str
    headers: Mapping[str, str]
    peek: Callable[[bytes], None] | None

    def response(self, boundary: str) -> web.StreamResponse:
        return web.StreamResponse(
            headers={**self.headers, "Content-Type": self.content_type(boundary)}
        )

    def part_header(self, boundary: str, headers: Mapping[str, str], first: bool) -> bytes:
        return _part_header(boundary, tuple(headers.items()), self.part_type, first)


# A study's parts mostly carry the same headers (type, size): each distinct head is made once.
@lru_cache(maxsize=256)
def _part_header(
    boundary: str, headers: tuple[tuple[str, str], ...], part_type: str, first: bool
) -> bytes:
    named = dict(headers)
    named.setdefault("content-type", part_type)
    return multipart.part_header(boundary, _titled(named), first=first)


async def _claimed(
    request: web.Request,
    shape: _Shape,
    answer: FileAnswer,
    events: AsyncGenerator[RetrieveEvent, None],
    sent: Callable[[int], None] | None,
) -> web.StreamResponse:
    """A FileAnswer taken: sent whole if it is all the backend has to say, else streamed."""
    release = answer.claim()  # the backend's stream ends at the next ask
    try:
        after = await anext(events, None)
        if after is None:
            return await _send_files(request, shape, answer.parts, sent)
        # More followed (a wrapper joined several answers): all of it streamed.
        async with aclosing(_replayed(answer.parts, after, events)) as rest:
            return await _stream(request, shape, await anext(rest), rest)
    finally:
        release()


def _sendable(first: RetrieveEvent, as_stored: Callable[[str], bool] | None) -> FileAnswer | None:
    if as_stored is None or not isinstance(first, PartHead) or first.answer is None:
        return None
    answer = first.answer
    return answer if all(as_stored(part.syntax) for part in answer.parts) else None


async def _replayed(
    parts: Sequence[FilePart], after: RetrieveEvent, events: AsyncGenerator[RetrieveEvent, None]
) -> AsyncGenerator[RetrieveEvent, None]:
    """A claimed answer's parts read from their files, then ``after`` and the rest."""
    for part in parts:
        yield PartHead(part.headers)
        async with aclosing(file_chunks(part.path, part.size)) as chunks:
            async for chunk in chunks:
                yield chunk
    yield after
    async for event in events:
        yield event


async def _stream(
    request: web.Request,
    shape: _Shape,
    first: RetrieveEvent,
    events: AsyncGenerator[RetrieveEvent, None],
) -> web.StreamResponse:
    boundary = multipart.new_boundary()
    response = shape.response(boundary)

    async def body() -> None:
        with ChunkWriter(request, response) as out:
            await _write(out, shape, boundary, first, events)
        await response.write_eof()

    return await _serve(request, response, shape.what, body)


async def _send_files(
    request: web.Request,
    shape: _Shape,
    parts: Sequence[FilePart],
    sent: Callable[[int], None] | None,
) -> web.StreamResponse:
    """The whole answer at once: its exact length first, then each part's head and file."""
    boundary = multipart.new_boundary()
    heads = [shape.part_header(boundary, p.headers, first=n == 0) for n, p in enumerate(parts)]
    tail = multipart.closing_delimiter(boundary, empty=False)
    response = shape.response(boundary)
    response.content_length = sum(map(len, heads)) + sum(p.size for p in parts) + len(tail)

    async def body() -> None:
        if shape.peek is not None:
            shape.peek(await asyncio.to_thread(_head_of, parts[0].path))
        for head, part in zip(heads, parts, strict=True):
            await response.write(head)
            await _send_file(request, part)
            request.writer.output_size += part.size  # the access log's byte count
            if sent is not None:
                sent(part.size)
        await response.write(tail)
        await response.write_eof()

    return await _serve(request, response, shape.what, body)


def _head_of(path: Path) -> bytes:
    with path.open("rb") as file:
        return file.read(PEEK_BYTES)


async def _send_file(request: web.Request, part: FilePart) -> None:
    """One part's file after the head just written, by ``sendfile`` (asyncio reads and
    writes it instead where the transport cannot: TLS)."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ConnectionResetError("the client went away")
    with part.path.open("rb") as file:
        _check_size(file, part)
        try:
            await asyncio.get_running_loop().sendfile(transport, file, 0, part.size)
        except OSError as exc:
            if transport.is_closing():  # the client left, or the shutdown cut the stream
                raise ConnectionResetError("the client went away") from exc
            raise


def _check_size(file: BinaryIO, part: FilePart) -> None:
    # A shorter file (replaced meanwhile) would break the promised length: cut, not garble.
    if os.fstat(file.fileno()).st_size < part.size:
        raise OSError(f"a cached file shrank below {part.size} bytes")


async def _serve(
    request: web.Request,
    response: web.StreamResponse,
    what: str,
    body: Callable[[], Awaitable[None]],
) -> web.StreamResponse:
    """Headers, then ``body`` (not for HEAD); how it ended recorded on the request."""
    streams = request.app[ACTIVE_STREAMS]
    transport = request.transport
    outcome: StreamOutcome = "cut"
    try:
        if transport is not None:
            streams.add(transport)
            # A deeper send buffer than asyncio's 64 kB: fewer drains, each write larger, so
            # the upstream read and the client's receive overlap (bounded, per stream).
            transport.set_write_buffer_limits(high=_SEND_BUFFER)
        await response.prepare(request)  # the client may be gone already (a viewer's prefetch)
        if request.method == "HEAD":
            # RFC 9110 9.3.2: the headers a GET would get, no body (it has no framing:
            # written, it would be read as the next response); the retrieve stops here.
            await response.write_eof()
        else:
            await body()
        outcome = "complete"
    except ConnectionError:
        outcome = "client-gone"
        log.info("client went away during %s", what)
    except Exception as exc:
        # Headers are gone: cut the connection so the truncated body never looks whole.
        reason = exc.message if isinstance(exc, GatewayError) else type(exc).__name__
        if not isinstance(exc, GatewayError):
            log.exception("%s failed", what)
        log.warning("%s cut short: %s", what, reason)
        abort_connection(request)
    finally:
        request[STREAM_OUTCOME] = outcome
        if transport is not None:
            streams.discard(transport)
    return response


async def _write(
    out: ChunkWriter,
    shape: _Shape,
    boundary: str,
    first: RetrieveEvent,
    events: AsyncGenerator[RetrieveEvent, None],
) -> None:
    peek = shape.peek
    parts = 0
    head: list[bytes | memoryview] = []  # the first part's first chunks, for ``peek``
    held = 0
    part_header = b""  # goes out in one chunk with the body's first piece
    event: RetrieveEvent | None = first
    while event is not None:
        if peek is not None and (parts > 1 or held >= PEEK_BYTES):
            peek(b"".join(head)[:PEEK_BYTES])
            peek, head = None, []
        if isinstance(event, PartHead):
            if part_header:
                await out.write(part_header)
            part_header = shape.part_header(boundary, event.headers, first=parts == 0)
            parts += 1
        elif isinstance(event, BodySpan):
            if peek is not None:  # the head of the first part: what came before, the prefix
                peek(b"".join((*head, *event.prefix))[:PEEK_BYTES])
                peek, head = None, []
            await out.write_span(part_header, event)
            part_header = b""
        else:
            if peek is not None and parts == 1:
                head.append(event)
                held += len(event)
            if part_header:
                await out.write(part_header, event)
                part_header = b""
            else:
                await out.write(event)
        event = await anext(events, None)
    if peek is not None:
        peek(b"".join(head)[:PEEK_BYTES])
    await out.write(part_header, multipart.closing_delimiter(boundary, empty=parts == 0))


@contextmanager
def _client_share(request: web.Request) -> Iterator[None]:
    """One of the client's concurrent retrievals, or 429 when it has its share streaming
    already (checked before the PACS is asked anything)."""
    streams = request.app[CLIENT_STREAMS]
    limit = request.app[SETTINGS].limits.max_streams_per_client
    client = _client_of(request)
    if streams[client] >= limit:
        raise TooManyRequests(
            f"more than {limit} retrievals at once from one client",
            detail={"limit": limit},
            headers={"Retry-After": "1"},
        )
    streams[client] += 1
    try:
        yield
    finally:
        streams[client] -= 1
        if streams[client] <= 0:
            del streams[client]


def _client_of(request: web.Request) -> str:
    principal = request.get(PRINCIPAL)
    if principal is not None and (principal.client_id or principal.subject):
        return f"token:{principal.client_id or principal.subject}"
    certificate = request.get(CLIENT_CERTIFICATE)
    if certificate is not None:
        return f"certificate:{certificate.client_id or certificate.subject}"
    proxies = request.app[SETTINGS].trusted_proxies
    return f"address:{client_address(request.remote, request.headers, proxies)}"


def _titled(headers: dict[str, str]) -> dict[str, str]:
    return {"-".join(w.capitalize() for w in k.split("-")): v for k, v in headers.items()}
