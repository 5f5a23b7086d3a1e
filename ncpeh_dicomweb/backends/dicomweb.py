"""A PACS reached over DICOMweb (PS3.18), streamed through an aiohttp client.

Foreign faults (aiohttp, upstream statuses) are mapped to our error tree here, once.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import orjson
import yarl

from ..config import DicomWebSite
from ..dicomweb import multipart
from ..dicomweb.attributes import Level
from ..dicomweb.dicomjson import UrlRewriter, rewrite_urls, with_pixel_data_uris
from ..dicomweb.matching import loosen_for_upstream, matches_all, unchecked_keys
from ..dicomweb.part10 import NEED_MORE, transfer_syntax_of
from ..dicomweb.query import QidoQuery, encode_query, to_params
from ..dicomweb.uids import is_valid_uid
from ..errors import (
    BackendBusy,
    BackendError,
    BackendTimeout,
    BackendUnreachable,
    GatewayError,
    NotFound,
    UpstreamRejected,
)
from .base import BodySpan, DicomJson, PartHead, RetrieveEvent, Scope, SearchResult, Target
from .http_keepalive import KeepAliveClient
from .http_stream import Body, stream_get
from .instance_files import InstanceFiles
from .relational import child_query, lower_keys, page, parent_uids, restrict_to

__all__ = ["DicomWebBackend"]

log = logging.getLogger(__name__)

_UPSTREAM_BUFFER = 4 << 20  # bytes read ahead from the PACS per response (bounded)
_DATA = (bytes, memoryview)  # a part's bytes among the events (a tuple: no union per test)
_SPAN_MIN = 64 * 1024  # a part's body left at least this long is offered as a BodySpan
_AFTER_SPAN_READ = 4096  # a part's head and its File Meta, what labelling needs
_STREAM_RECV = 1 << 20  # the most one socket read of a retrieve takes (asyncio's is 256 kB)
# Instances kept on disk for pixel work (frames, bulk data, rendered, transcoding).
_INSTANCE_FILES_BYTES = 1 << 30
# Upstream searches the gateway must finish itself (relational, loosened) fetch at most this
# many candidates; a Warning says when the cap was reached.
_CANDIDATES = 10_000
_JSON_MOST = 512 << 20  # the longest search or metadata answer taken from the PACS
# Part headers of the upstream that are passed on to the client (after URL rewriting).
_PART_HEADERS = ("content-type", "content-length", "content-location", "content-description")


class DicomWebBackend:
    """:class:`~ncpeh_dicomweb.backends.base.Backend` over a DICOMweb origin server."""

    def __init__(
        self,
        site: DicomWebSite,
        session: aiohttp.ClientSession,
        stream_session: aiohttp.ClientSession | None = None,
        *,
        waiting: Callable[[], None] | None = None,
    ) -> None:
        """``waiting`` is called when a search or metadata request has gone to the PACS and
        its answer is awaited: a moment the app uses for its after-answer bookkeeping."""
        self._site = site
        self._root = site.url
        self._session = session
        # Retrieves hold a connection for as long as a study streams: they get a pool of
        # their own, so that searches never wait (and time out) behind max_connections streams.
        self._stream_session = stream_session or session
        self._roots = (site.url, *site.url_aliases)
        self._headers: dict[str, str] = {}
        if site.auth == "bearer" and site.token:
            self._headers["Authorization"] = f"Bearer {site.token}"
        self._auth = (
            aiohttp.BasicAuth(site.username, site.password or "")
            if site.auth == "basic" and site.username
            else None
        )
        self._search_timeout = aiohttp.ClientTimeout(
            total=site.search_timeout, connect=site.connect_timeout
        )
        # No total for retrieves: a large study may take minutes; silence is what times out.
        self._stream_timeout = aiohttp.ClientTimeout(
            total=None, connect=site.connect_timeout, sock_read=site.read_timeout
        )
        self._files = InstanceFiles(site.id, _INSTANCE_FILES_BYTES)
        # Retrieves over plain HTTP read their bodies straight from the socket (http_stream).
        self._raw_streams = stream_session is not None and site.url.startswith("http://")
        # ...and searches and metadata go over kept-alive connections of our own.
        self._keepalive: KeepAliveClient | None = None
        self._origin = ""
        if self._raw_streams:
            origin = urlsplit(site.url)
            self._origin = f"{origin.scheme}://{origin.netloc}"
            self._keepalive = KeepAliveClient(
                origin.hostname or "",
                origin.port or 80,
                max_connections=site.max_connections,
                connect_timeout=site.connect_timeout,
                total_timeout=site.search_timeout,
                max_body=_JSON_MOST,
                on_sent=waiting,
            )
        self._stream_slots = asyncio.Semaphore(site.max_connections)
        self._requests = 0  # HTTP requests made to the PACS (the cost of a FHIR search)

    @classmethod
    def create(
        cls, site: DicomWebSite, *, waiting: Callable[[], None] | None = None
    ) -> DicomWebBackend:
        def session() -> aiohttp.ClientSession:
            connector = aiohttp.TCPConnector(limit=site.max_connections, limit_per_host=0)
            return aiohttp.ClientSession(
                connector=connector,
                auto_decompress=True,
                raise_for_status=False,
                # The PACS keeps sending while the client drains what came before: the default
                # 64 kB buffer paused the upstream at every write, halving a retrieve's speed.
                read_bufsize=_UPSTREAM_BUFFER,
            )

        return cls(site, session(), session(), waiting=waiting)

    # ------------------------------------------------------------------ search

    async def search(self, query: QidoQuery, scope: Scope, base_url: str) -> SearchResult:
        warnings: list[str] = list(query.warnings)
        if query.limit == 0:  # many servers read limit=0 as "no limit"; PS3.18 means none
            return SearchResult([], tuple(warnings))
        lower = lower_keys(query)
        if lower:
            children = await self._matches(child_query(query, lower), scope, warnings)
            parents = parent_uids(children, query.level, warnings)
            batches = restrict_to(query, lower, parents)
            datasets = [d for b in batches for d in await self._matches(b, scope, warnings)]
            if len(batches) > 1:
                datasets = page(datasets, query)
        else:
            datasets = await self._matches(query, scope, warnings)
        rewrite_urls(datasets, UrlRewriter(self._roots, base_url))
        return SearchResult(datasets, tuple(warnings))

    async def _matches(
        self, query: QidoQuery, scope: Scope, warnings: list[str]
    ) -> list[DicomJson]:
        """One upstream search; keys the PACS cannot receive as they are go up loosened."""
        loosened = {k: w for k in query.keys if (w := loosen_for_upstream(k)) is not None}
        if not loosened:
            found = await self._qido(query, scope, warnings)
        else:
            wide = replace(
                query, keys=tuple(loosened.get(k, k) for k in query.keys), limit=None, offset=0
            )
            candidates = await self._qido(wide, scope, warnings)
            found = page([d for d in candidates if matches_all(d, loosened)], query)
        for key in unchecked_keys(found, query):
            note = f"the PACS does not return {key.name}: matches on it could not be checked"
            if note not in warnings:
                warnings.append(note)
        return found

    async def _qido(self, query: QidoQuery, scope: Scope, warnings: list[str]) -> list[DicomJson]:
        body = await self._get_json(f"{self._root}/{_qido_target(query, scope)}")
        if query.limit is None and len(body) >= _CANDIDATES:
            warnings.append(
                f"the search was narrowed to the first {_CANDIDATES} candidates the PACS "
                "returned; matches beyond them may be missing"
            )
        return body

    # ------------------------------------------------------------------ metadata

    async def metadata(self, target: Target, base_url: str) -> list[DicomJson]:
        url = f"{self._root}/{target.path()}/metadata"
        body = await self._get_json(url)
        rewrite_urls(body, UrlRewriter(self._roots, base_url))
        return with_pixel_data_uris(body, base_url)

    async def _get_json(self, url: str) -> list[DicomJson]:
        """A DICOM JSON array from the PACS (an empty 204 counts as no match)."""
        status, raw = await self._fetch(url, "application/dicom+json")
        if status == 204:
            return []
        try:
            body = orjson.loads(raw) if raw.strip() else []
        except orjson.JSONDecodeError:
            raise BackendError("the PACS answered with malformed JSON") from None
        if not isinstance(body, list) or not all(isinstance(d, dict) for d in body):
            raise BackendError("the PACS answered with JSON that is not DICOM JSON")
        return body

    # ------------------------------------------------------------------ retrieve

    async def retrieve(self, target: Target, base_url: str) -> AsyncGenerator[RetrieveEvent, None]:
        url = f"{self._root}/{target.path()}"
        rewrite = UrlRewriter(self._roots, base_url)
        async with self._stream(url, _AS_STORED) as (content_type, chunks):
            try:
                boundary = multipart.boundary_from_content_type(content_type)
            except multipart.MultipartError:
                raise BackendError(
                    "the PACS answered a retrieve without a multipart body"
                ) from None
            reader = multipart.MultipartReader(boundary)
            labeler = _PartLabeler()
            try:
                async for chunk in chunks:
                    out = [
                        e for event in _events(reader, chunk, rewrite) for e in labeler.feed(event)
                    ]
                    # The rest of a long part's body, once labelled, stays in the socket for
                    # the web layer to splice to the client (read if it cannot); the part's
                    # bytes of this read go with it, in one chunk.
                    left = reader.body_remaining
                    span = None
                    if left >= _SPAN_MIN and not labeler.holding and isinstance(chunks, Body):
                        start = len(out)
                        while start and not isinstance(out[start - 1], PartHead):
                            start -= 1
                        prefix = [e for e in out[start:] if isinstance(e, _DATA)]
                        span = chunks.span(left, prefix)
                        if span is not None:
                            reader.skip_body(left)
                            del out[start:]
                    for event in out:
                        yield event
                    if span is not None:
                        yield span
                        await span.drop()  # what its taker left
                    if isinstance(chunks, Body):
                        # After a span, only the next part's head is needed before its own.
                        chunks.read_size = _AFTER_SPAN_READ if span else _STREAM_RECV
                reader.finish()
                for labeled in labeler.finish():
                    yield labeled
            except multipart.MultipartError as exc:
                raise BackendError(f"the PACS sent a broken multipart stream: {exc}") from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _map_client_error(exc) from None

    @asynccontextmanager
    async def _stream(
        self, url: str, accept: str
    ) -> AsyncIterator[tuple[str, Body | AsyncIterator[bytes]]]:
        """A retrieve's Content-Type and body, buffer by buffer as the socket gave them.

        Over plain HTTP the body is read by :mod:`.http_stream` (no copy, no parser per
        read), one connection per retrieve within ``max_connections``; over HTTPS by aiohttp.
        """
        if not self._raw_streams:
            async with self._request(url, accept, stream=True) as resp:
                _read_in_large_buffers(resp)
                yield resp.headers.get("Content-Type", ""), _chunks_of(resp)
            return
        headers = {**self._headers, "Accept": accept}
        if self._auth is not None:
            headers["Authorization"] = self._auth.encode()
        self._requests += 1
        site = self._site
        try:
            async with asyncio.timeout(site.connect_timeout):
                await self._stream_slots.acquire()
        except TimeoutError:
            raise BackendBusy(
                "every connection to the PACS is busy", headers={"Retry-After": "5"}
            ) from None
        try:
            async with stream_get(
                url, headers, connect_timeout=site.connect_timeout, read_timeout=site.read_timeout
            ) as resp:
                if resp.status >= 300:
                    raise _map_status(resp.status, resp.headers.get("retry-after"))
                yield resp.headers.get("content-type", ""), resp.body
        finally:
            self._stream_slots.release()

    def pacs_frames(
        self, target: Target, numbers: Sequence[int], base_url: str
    ) -> AsyncGenerator[RetrieveEvent, None] | None:
        if self._files.has(target):
            return None  # read from the local copy: no PACS round trip
        return self._pacs_frames(target, numbers, base_url)

    async def _pacs_frames(
        self, target: Target, numbers: Sequence[int], base_url: str
    ) -> AsyncGenerator[RetrieveEvent, None]:
        frames = ",".join(map(str, numbers))
        url = f"{self._root}/{target.path()}/frames/{frames}"
        rewrite = UrlRewriter(self._roots, base_url)
        async with self._request(url, _FRAMES_AS_STORED, stream=True) as resp:
            outer = resp.headers.get("Content-Type", "")
            try:
                reader = multipart.MultipartReader(multipart.boundary_from_content_type(outer))
            except multipart.MultipartError:
                raise BackendError("the PACS answered frames without a multipart body") from None
            try:
                async for chunk in _chunks_of(resp):
                    for event in _events(reader, chunk, rewrite):
                        yield (
                            _labelled_frame(event, outer) if isinstance(event, PartHead) else event
                        )
                reader.finish()
            except multipart.MultipartError as exc:
                raise BackendError(f"the PACS sent a broken multipart stream: {exc}") from None
            except (aiohttp.ClientError, TimeoutError) as exc:
                raise _map_client_error(exc) from None

    def instance_file(self, target: Target) -> AbstractAsyncContextManager[Path]:
        return self._files.open(target, lambda: self.retrieve(target, ""))

    # ------------------------------------------------------------------ plumbing

    async def ping(self) -> None:
        await self._fetch(f"{self._root}/studies?limit=1", "application/dicom+json")

    async def _fetch(self, url: str, accept: str) -> tuple[int, bytes]:
        """A search's or metadata's status and whole body: over a kept-alive connection of
        our own (http_keepalive) for plain HTTP, else aiohttp's."""
        if self._keepalive is None:
            async with self._request(url, accept) as resp:
                return resp.status, await resp.read()
        self._requests += 1
        headers = {**self._headers, "Accept": accept}
        if self._auth is not None:
            headers["Authorization"] = self._auth.encode()
        answer = await self._keepalive.get(url[len(self._origin) :] or "/", headers)
        if answer.status >= 300:
            raise _map_status(answer.status, answer.headers.get("retry-after"))
        return answer.status, answer.body

    def stats(self) -> dict[str, int]:
        cache = self._files.stats
        return {
            "instance_fetches": self._files.fetches,
            "pacs_requests": self._requests,
            "shared": self._files.joins,
            "cache_entries": cache.entries,
            "cache_bytes": cache.bytes,
            "cache_hits": cache.hits,
            "cache_misses": cache.misses,
            "cache_evictions": cache.evictions,
        }

    async def close(self) -> None:
        await self._files.close()
        if self._keepalive is not None:
            await self._keepalive.close()
        await self._session.close()
        if self._stream_session is not self._session:
            await self._stream_session.close()

    @asynccontextmanager
    async def _request(
        self,
        url: str,
        accept: str,
        *,
        stream: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One GET; ``stream``: a retrieve (its own pool, no total timeout), else a search or
        metadata request (the search timeout)."""
        headers = {**self._headers, "Accept": accept}
        self._requests += 1
        # encoded=True: yarl would otherwise re-quote `^` as %5E, which Orthanc never decodes.
        target = yarl.URL(url, encoded=True)
        session = self._stream_session if stream else self._session
        try:
            async with session.get(
                target,
                headers=headers,
                auth=self._auth,
                timeout=self._stream_timeout if stream else self._search_timeout,
                allow_redirects=False,
            ) as resp:
                if resp.status >= 300:
                    raise _map_status(resp.status, resp.headers.get("Retry-After"))
                yield resp
        except GatewayError:
            raise
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _map_client_error(exc) from None


async def _chunks_of(resp: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """A body as the socket gave it: no joins or splits, no copies."""
    async for chunk, _ in resp.content.iter_chunks():
        yield chunk


def _read_in_large_buffers(resp: aiohttp.ClientResponse) -> None:
    """Lets the socket reads of a retrieve take up to 1 MB at once instead of 256 kB.

    Every read costs the same Python (the client's parser, its timers, our generators) and a
    wake-up whatever its size: four times fewer of them cut a DICOMweb retrieve's CPU by a
    fifth. asyncio's selector transport reads ``max_size`` bytes per call (3.11 to 3.13);
    a transport without that attribute (uvloop, TLS) is left as it is.
    """
    connection = resp.connection
    transport = connection.transport if connection is not None else None
    if transport is not None and isinstance(getattr(transport, "max_size", None), int):
        transport.max_size = max(transport.max_size, _STREAM_RECV)  # type: ignore[attr-defined]


# ---------------------------------------------------------------------- pure helpers


def _events(
    reader: multipart.MultipartReader, chunk: bytes | bytearray, rewrite: UrlRewriter
) -> Iterator[RetrieveEvent]:
    for event in reader.feed(chunk):
        if isinstance(event, multipart.PartData):
            yield event.data
        elif isinstance(event, multipart.PartStart):
            headers = {k: v for k, v in event.headers.items() if k in _PART_HEADERS and v.isascii()}
            if "content-location" in headers:
                location = rewrite(headers.pop("content-location"))
                if location is not None:
                    headers["content-location"] = location
            yield PartHead(headers)


class _PartLabeler:
    """Gives each part the Content-Type of the transfer syntax it really carries.

    Orthanc labels parts plain ``application/dicom``; the File Meta Information at the head
    of each part says which syntax it is (PS3.18 8.7.3.5.2).
    """

    _LOOK_AHEAD = 64 * 1024
    _USUAL_META = 2048  # a File Meta group is a few hundred bytes: copied, not the body

    def __init__(self) -> None:
        self._head: PartHead | None = None
        self._held: list[bytes | memoryview] = []

    def feed(self, event: RetrieveEvent) -> list[RetrieveEvent]:
        if isinstance(event, PartHead):
            out = self._release(None)
            self._head = event
            return out
        if self._head is None:
            return [event]
        if isinstance(event, BodySpan):  # not sent while a head is held; labelled as Orthanc did
            return [*self._release(None), event]
        self._held.append(event)
        first = self._held[0] if len(self._held) == 1 else b"".join(self._held)
        try:
            syntax = transfer_syntax_of(bytes(first[: self._USUAL_META]))
            if syntax == NEED_MORE and len(first) > self._USUAL_META:
                syntax = transfer_syntax_of(bytes(first[: self._LOOK_AHEAD]))
        except ValueError:
            raise BackendError("the PACS sent a part that is not a DICOM file") from None
        if syntax == NEED_MORE and len(first) < self._LOOK_AHEAD:
            self._held = [first]
            return []
        return self._release(syntax or None)

    @property
    def holding(self) -> bool:
        """A part's head is held until its first bytes say its syntax."""
        return self._head is not None

    def finish(self) -> list[RetrieveEvent]:
        return self._release(None)

    def _release(self, syntax: str | None) -> list[RetrieveEvent]:
        if self._head is None:
            return []
        headers = dict(self._head.headers)
        if syntax is not None:
            headers["content-type"] = f"application/dicom; transfer-syntax={syntax}"
        out: list[RetrieveEvent] = [PartHead(headers), *self._held]
        self._head = None
        self._held = []
        return out


_AS_STORED = 'multipart/related; type="application/dicom"; transfer-syntax=*'
_FRAMES_AS_STORED = "multipart/related; type=application/octet-stream; transfer-syntax=*"


def _labelled_frame(head: PartHead, outer: str) -> PartHead:
    """A frame part labelled ``media; transfer-syntax=UID`` (PS3.18 8.7.3.3.2), from its own
    Content-Type or, failing that, the response's ``type`` parameter, where Orthanc puts the
    syntax (``type="image/jp2; transfer-syntax=..."``). A part whose syntax cannot be told is
    refused: the client would not know how to decode it."""
    headers = dict(head.headers)
    for value in (
        headers.get("content-type", ""),
        multipart.parse_content_type(outer)[1].get("type", ""),
    ):
        media, params = multipart.parse_content_type(value)
        syntax = params.get("transfer-syntax", "")
        if media and is_valid_uid(syntax):
            headers["content-type"] = f"{media}; transfer-syntax={syntax}"
            return PartHead(headers)
    raise BackendError("the PACS sent a frame without saying its transfer syntax")


# Viewers and clients repeat their searches (paging, polling): each is encoded once.
@lru_cache(maxsize=256)  # as many as web/qido.py keeps parsed
def _qido_target(query: QidoQuery, scope: Scope) -> str:
    """The upstream path and query string of a search (below the site's root)."""
    path = _qido_path(query.level, scope)
    params = to_params(query)
    if query.limit is None:
        params.append(("limit", str(_CANDIDATES)))
    return f"{path}?{encode_query(params)}" if params else path


def _qido_path(level: Level, scope: Scope) -> str:
    prefix = ""
    if scope.study:
        prefix = f"studies/{scope.study}/"
        if scope.series:
            prefix += f"series/{scope.series}/"
    return (
        prefix
        + {Level.STUDY: "studies", Level.SERIES: "series", Level.INSTANCE: "instances"}[level]
    )


# Upstream HTTP status → our error. The PACS's 4xx about the request keep their meaning;
# anything that says the gateway itself is misconfigured or the PACS failed is a 502.
_STATUS_MAP: dict[int, tuple[type[GatewayError], str]] = {
    400: (UpstreamRejected, "the PACS rejected the request as malformed"),
    404: (NotFound, "no such study, series or instance"),
    406: (UpstreamRejected, "the PACS cannot provide the requested media type or transfer syntax"),
    410: (UpstreamRejected, "the requested data is no longer available"),
    413: (UpstreamRejected, "the request is too large for the PACS"),
    401: (BackendError, "the PACS refused the gateway's credentials"),
    403: (BackendError, "the PACS refused the gateway access"),
    429: (BackendBusy, "the PACS is busy"),
    503: (BackendBusy, "the PACS is busy"),
    504: (BackendTimeout, "the PACS timed out"),
}


def _seconds_or_date(value: str | None) -> str:
    """A Retry-After the client may see: delay-seconds or an HTTP-date, nothing else."""
    if value and (
        value.isdigit() or re.fullmatch(r"[A-Za-z]{3}, \d\d [A-Za-z]{3} \d{4} [\d:]{8} GMT", value)
    ):
        return value
    return "5"


def _map_status(status: int, retry_after: str | None) -> GatewayError:
    cls, message = _STATUS_MAP.get(status, (BackendError, f"the PACS failed (HTTP {status})"))
    detail = {"pacs_status": status}
    if cls is UpstreamRejected:
        return UpstreamRejected(status, message, detail=detail)
    if cls is BackendBusy:
        return BackendBusy(
            message, detail=detail, headers={"Retry-After": _seconds_or_date(retry_after)}
        )
    return cls(message, detail=detail)


def _map_client_error(exc: BaseException) -> GatewayError:
    if isinstance(exc, TimeoutError | asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return BackendTimeout("the PACS did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return BackendUnreachable("the PACS cannot be reached")
    if isinstance(exc, aiohttp.ClientPayloadError | aiohttp.ServerDisconnectedError):
        return BackendError("the PACS closed the connection in the middle of an answer")
    return BackendError(f"the PACS connection failed ({type(exc).__name__})")
