"""``/metrics`` (Prometheus text format, public) and what feeds it from the HTTP side.

Requests are labelled by the route's template (``/dicom-web/studies/{study}``), never the path:
no UID reaches a label, and the number of series stays bounded; methods outside the standard
few are ``other``, requests no route matched ``unmatched``.

:func:`metrics_middleware` (outermost) sends each answer itself before returning, as aiohttp
would right after the middlewares, so that its time and bytes are measured whole; body bytes
are counted as aiohttp's writer takes them (``on_body_write``: a multipart stream's every
chunk, a cut stream's as far as it went).

The counters the app's objects already keep (backends' ``stats()``, caches, the audit trail,
streams under way) are published by :func:`publish`: at each scrape, in the scraped process;
with several workers, also every :data:`PUBLISH_SECONDS` in each, so any worker's ``/metrics``
shows the others' too, at most that old.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler
from prometheus_client.aiohttp import make_aiohttp_handler

from ..metrics import GatewayMetrics
from ..metrics.mirror import APP, AUDIT_SINK_STATS, AUDIT_STATS, SITE_STATS
from .audit import AUDIT_TRAIL
from .keys import ACTIVE_STREAMS, BACKENDS, METADATA_CACHE
from .streaming import STREAM_OUTCOME

__all__ = [
    "METRICS",
    "PUBLISH_SECONDS",
    "add_body_bytes",
    "metrics_context",
    "metrics_middleware",
    "publish",
    "route_of",
    "routes",
]

METRICS = web.AppKey("metrics", GatewayMetrics)
PUBLISH_SECONDS = 1.0

_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})


class _Tally:
    __slots__ = ("bytes",)

    def __init__(self) -> None:
        self.bytes = 0

    def add(self, size: int, _output_size: int = 0) -> None:
        self.bytes += size


_TALLY = web.RequestKey("ncpeh.body_bytes", _Tally)


def add_body_bytes(request: web.Request, size: int) -> None:
    """Count body bytes a handler sent past aiohttp's writer (``sendfile``, ``splice``)."""
    tally = request.get(_TALLY)
    if tally is not None:
        tally.add(size)


def route_of(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return "unmatched" if resource is None else resource.canonical


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    metrics = request.app[METRICS]
    tally = request[_TALLY] = _Tally()
    request.writer.on_body_write = tally.add
    started = time.perf_counter()
    status = 500
    response: web.StreamResponse | None = None
    try:
        response = await handler(request)
        status = response.status
        await _send(request, response)
        return response
    except web.HTTPException as exc:  # redirects: errors are answers by now (error_middleware)
        status = exc.status
        raise
    except asyncio.CancelledError:
        status = 499  # the client closed the connection before the answer (nginx's code)
        raise
    finally:
        route = route_of(request)
        method = request.method if request.method in _METHODS else "other"
        sent = tally.bytes or (0 if response is None else _sendfile_bytes(request, response))
        metrics.observe(route, method, status, time.perf_counter() - started, sent)
        outcome = request.get(STREAM_OUTCOME)
        if isinstance(outcome, str):
            metrics.streams.labels(route, outcome).inc()


async def _send(request: web.Request, response: web.StreamResponse) -> None:
    """Send the answer now; aiohttp's own ``prepare`` and ``write_eof`` after this do nothing."""
    try:
        await response.prepare(request)
        await response.write_eof()
    except ConnectionError:
        pass  # the client left; aiohttp meets it again right after and handles it as usual


def _sendfile_bytes(request: web.Request, response: web.StreamResponse) -> int:
    """A file aiohttp sent with ``sendfile`` (the viewer's files): the kernel copied it, the
    writer never saw it; its Content-Length is what was sent."""
    if (
        isinstance(response, web.FileResponse)
        and request.method != "HEAD"
        and response.status in (200, 206)
    ):
        return response.content_length or 0
    return 0


def publish(app: web.Application) -> None:
    """Copy the counters the app's objects keep into the metrics (see the module docstring)."""
    mirror = app[METRICS].mirror
    for site, backend in app[BACKENDS].items():
        mirror.update_all(SITE_STATS, backend.stats(), (site,))
    trail = app.get(AUDIT_TRAIL)
    if trail is not None:
        mirror.update_all(AUDIT_STATS, trail.stats())
        for sink in trail.sinks:
            mirror.update_all(AUDIT_SINK_STATS, sink.stats(), (sink.name,))
    cache = app[METADATA_CACHE]
    current = {
        "streams": len(app[ACTIVE_STREAMS]),
        "metadata_hits": cache.hits,
        "metadata_misses": cache.misses,
    }
    mirror.update_all(APP, current)


async def metrics_context(app: web.Application) -> AsyncIterator[None]:
    """With several workers, each publishes its counters every PUBLISH_SECONDS, and once more
    at the end (the last second's counts are not lost)."""
    task = None
    if app[METRICS].multiprocess_dir is not None:
        task = asyncio.create_task(_publish_every(app, PUBLISH_SECONDS), name="metrics")
    try:
        yield
    finally:
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            publish(app)


async def _publish_every(app: web.Application, seconds: float) -> None:
    while True:
        await asyncio.sleep(seconds)
        publish(app)


async def scrape(request: web.Request) -> web.StreamResponse:
    publish(request.app)  # this worker's figures exact; the others' as last published
    export = make_aiohttp_handler(request.app[METRICS].registry)
    return await export(request)


def routes() -> list[web.RouteDef]:
    return [web.get("/metrics", scrape)]
