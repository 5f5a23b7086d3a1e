"""The application factory: routes, middlewares, and the backends' lifetime."""

from __future__ import annotations

import asyncio
import os
from collections import Counter
from collections.abc import AsyncIterator, Callable

from aiohttp import web
from prometheus_client import Counter as MetricCounter

from .backends.base import Backend
from .backends.dicomweb import DicomWebBackend
from .backends.dimse.backend import DimseBackend
from .backends.rejections import RejectionFilter
from .config import DicomWebSite, Settings, Site
from .imaging.pool import ImagingPool
from .metrics import GatewayMetrics, MeteredBackend
from .state import open_store
from .web import (
    fhir,
    fhir_patient,
    fhir_selection,
    health,
    metrics,
    pixels,
    qido,
    selection_retrieve,
    viewer,
    wado,
)
from .web.after_answer import AFTER_ANSWER, after_answer_context
from .web.audit import add_request_id, audit_context, audit_middleware
from .web.auth import auth_middlewares, authenticator_for
from .web.cors import add_cors_headers, cors_middleware
from .web.keys import (
    ACTIVE_STREAMS,
    BACKENDS,
    CLIENT_STREAMS,
    IMAGING_POOL,
    METADATA_CACHE,
    SETTINGS,
    STORE,
)
from .web.metadata_cache import MetadataCache
from .web.metrics import METRICS, metrics_context, metrics_middleware
from .web.middleware import error_middleware
from .web.server import add_server_header
from .web.tls import client_certificate_middlewares

__all__ = ["create_app"]

# Where each site's DICOMweb root is mounted: the default site, and any site by id.
_PREFIXES = ("/dicom-web", "/site/{site}/dicom-web")
# Metadata kept for repeat loads: at most this many bytes of JSON, each entry this many seconds.
_METADATA_BYTES = 128 << 20
_METADATA_TTL = 60.0


def create_app(settings: Settings) -> web.Application:
    # aiohttp refuses longer request lines itself, with a bare 400: let ours (414) speak first.
    line = settings.limits.max_query_string + 4096
    authenticator = authenticator_for(settings)
    app = web.Application(
        # Outermost first: metrics (times and counts every answer, as sent) → errors
        # (renders every refusal in the route's form) → client certificate (web/tls.py: only
        # when asked; the audit reads it) → audit (every data request, refused ones included,
        # with its request id) → cors (answers preflights, before any token is asked) → auth
        # (token and scope; off without a key source).
        middlewares=[
            metrics_middleware,
            error_middleware,
            *client_certificate_middlewares(settings),
            audit_middleware,
            cors_middleware,
            *auth_middlewares(settings, authenticator),
        ],
        handler_args={"max_line_size": line, "max_field_size": 16384},
    )
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics()
    app[BACKENDS] = {}
    app[ACTIVE_STREAMS] = set[asyncio.BaseTransport]()
    app[CLIENT_STREAMS] = Counter()
    app[METADATA_CACHE] = MetadataCache(max_bytes=_METADATA_BYTES, ttl=_METADATA_TTL)
    app.cleanup_ctx.append(audit_context)  # first in, last out: the last requests are recorded
    app.cleanup_ctx.append(after_answer_context)  # closed just before the trail: all written
    app.cleanup_ctx.append(_backends)
    app.cleanup_ctx.append(metrics_context)  # after the backends: publishes before they close
    app.cleanup_ctx.append(_imaging_pool)
    if authenticator is not None:
        app.on_cleanup.append(lambda _: authenticator.close())
    app.on_shutdown.append(_cut_streams)
    app.on_response_prepare.append(_answer_headers)
    for prefix in _PREFIXES:
        app.add_routes(qido.routes(prefix))
        app.add_routes(wado.routes(prefix))
        app.add_routes(pixels.routes(prefix))
        app.add_routes(selection_retrieve.routes(prefix))
    for prefix in ("/fhir", "/site/{site}/fhir"):
        app.add_routes(fhir.routes(prefix))
        app.add_routes(fhir_patient.routes(prefix))
        app.add_routes(fhir_selection.fhir_routes(prefix))
    app.add_routes(fhir.vendor_routes())
    app.cleanup_ctx.append(_state)
    app.add_routes(health.routes())
    app.add_routes(metrics.routes())
    app.add_routes(viewer.routes(settings))  # OHIF at /viewer/, if configured
    return app


async def _answer_headers(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``, as one hook (each is a coroutine per answer): CORS, the
    request id, and our ``Server`` header (no Python or aiohttp versions)."""
    add_cors_headers(request, response)
    add_request_id(request, response)
    add_server_header(request, response)


async def _cut_streams(app: web.Application) -> None:
    """At a stop (the server no longer accepts): let the retrievals under way finish, for up
    to ``[server] shutdown_grace`` seconds, then cut what is left, so that a stalled client
    cannot hold the process (a cut stream never looks whole: the connection is reset)."""
    streams: set[asyncio.BaseTransport] = app[ACTIVE_STREAMS]
    deadline = asyncio.get_running_loop().time() + app[SETTINGS].shutdown_grace
    # Polled: the set is the streams' own bookkeeping, and this runs once, at the stop.
    while streams and asyncio.get_running_loop().time() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    for transport in tuple(streams):
        transport.abort()  # type: ignore[attr-defined]


async def _backends(app: web.Application) -> AsyncIterator[None]:
    backends: dict[str, Backend] = app[BACKENDS]
    try:
        requests = app[METRICS].backend_requests
        for site in app[SETTINGS].sites:
            backends[site.id] = _backend(site, requests, app[AFTER_ANSWER].now_waiting)
        yield
    finally:
        for backend in backends.values():
            await backend.close()
        backends.clear()


async def _state(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    store = await open_store(settings.state_path, settings.database_url)
    app[STORE] = store
    try:
        yield
    finally:
        await store.close()


async def _imaging_pool(app: web.Application) -> AsyncIterator[None]:
    # Decoding and rendering use every core they get; a few queued jobs smooth bursts.
    pool = ImagingPool(workers=min(4, os.cpu_count() or 1), queue=32)
    app[IMAGING_POOL] = pool
    try:
        yield
    finally:
        await asyncio.to_thread(pool.close)


def _backend(site: Site, requests: MetricCounter, waiting: Callable[[], None]) -> Backend:
    direct: Backend
    if isinstance(site, DicomWebSite):
        # The after-answer lane runs while a search waits for the PACS (web/after_answer.py).
        direct = DicomWebBackend.create(site, waiting=waiting)
    else:
        direct = DimseBackend.create(site)
    # Counted next to the PACS: what the IOCM filter answers itself never reached it.
    inner = MeteredBackend(direct, site.id, requests)
    if not site.iocm:
        return inner
    # IHE IOCM: what the PACS's rejection notes reject (and the notes) is never served; the
    # notes are read from start-up on, in the background.
    iocm = RejectionFilter(inner, refresh_seconds=site.iocm_refresh_seconds)
    iocm.warm_up()
    return iocm
