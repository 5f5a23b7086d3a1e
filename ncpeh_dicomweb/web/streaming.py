"""The one way a multipart/related answer is streamed: instances, frames, bulk data.

The first event is pulled before the headers go out, so an upstream 404/406/502/504 still
gets its own status; after that a failure cuts the connection without the closing boundary,
so a truncated body never looks whole. How the stream ended is recorded on the request
(:data:`STREAM_OUTCOME`) for audit and metrics.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Iterator, Mapping
from contextlib import aclosing, contextmanager
from typing import Literal

from aiohttp import web

from ..backends.base import PartHead, RetrieveEvent
from ..dicomweb import multipart
from ..errors import GatewayError, NotFound, TooManyRequests
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
STREAM_OUTCOME = "ncpeh.stream_outcome"
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
) -> web.StreamResponse:
    """Stream ``events`` (a PartHead, its body chunks, the next PartHead...) as one
    ``multipart/related`` response whose Content-Type is ``content_type(boundary)``.

    A part without a ``content-type`` header gets ``part_type``. ``what`` names the resource
    in logs (no patient data); ``headers`` are added to the response's (a ``Warning``).
    ``peek`` is called once with the head of the first part's body (up to :data:`PEEK_BYTES`,
    what the audit reads the patient from), nothing being held back from the client for it.
    Closes ``events`` in every case.
    """
    async with aclosing(events):
        with _client_share(request):
            return await _stream(request, events, content_type, part_type, what, headers, peek)


async def _stream(
    request: web.Request,
    events: AsyncGenerator[RetrieveEvent, None],
    content_type: Callable[[str], str],
    part_type: str,
    what: str,
    headers: Mapping[str, str] | None,
    peek: Callable[[bytes], None] | None,
) -> web.StreamResponse:
    first = await anext(events, None)
    if first is None:
        raise NotFound("nothing found", detail={"resource": what})
    boundary = multipart.new_boundary()
    response = web.StreamResponse(
        headers={**(headers or {}), "Content-Type": content_type(boundary)}
    )
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
            await _write(response, boundary, part_type, first, events, peek)
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
    response: web.StreamResponse,
    boundary: str,
    part_type: str,
    first: RetrieveEvent,
    events: AsyncGenerator[RetrieveEvent, None],
    peek: Callable[[bytes], None] | None,
) -> None:
    parts = 0
    head: list[bytes] = []  # the first part's first chunks, for ``peek``
    held = 0
    event: RetrieveEvent | None = first
    while event is not None:
        if peek is not None and (parts > 1 or held >= PEEK_BYTES):
            peek(b"".join(head)[:PEEK_BYTES])
            peek, head = None, []
        if isinstance(event, PartHead):
            headers = dict(event.headers)
            headers.setdefault("content-type", part_type)
            await response.write(
                multipart.part_header(boundary, _titled(headers), first=parts == 0)
            )
            parts += 1
        else:
            if peek is not None and parts == 1:
                head.append(event)
                held += len(event)
            await response.write(event)
        event = await anext(events, None)
    if peek is not None:
        peek(b"".join(head)[:PEEK_BYTES])
    await response.write(multipart.closing_delimiter(boundary, empty=parts == 0))
    await response.write_eof()


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
