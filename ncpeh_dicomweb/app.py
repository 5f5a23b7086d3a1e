"""The application factory: routes, middlewares, and the backends' lifetime."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from aiohttp import web

from .backends.base import Backend
from .backends.dicomweb import DicomWebBackend
from .backends.dimse.backend import DimseBackend
from .config import DicomWebSite, Settings, Site
from .web import health, qido, wado
from .web.keys import ACTIVE_STREAMS, BACKENDS, SETTINGS
from .web.middleware import error_middleware

__all__ = ["create_app"]

# Where each site's DICOMweb root is mounted: the default site, and any site by id.
_PREFIXES = ("/dicom-web", "/site/{site}/dicom-web")


def create_app(settings: Settings) -> web.Application:
    # aiohttp refuses longer request lines itself, with a bare 400: let ours (414) speak first.
    line = settings.limits.max_query_string + 4096
    app = web.Application(
        middlewares=[error_middleware],
        handler_args={"max_line_size": line, "max_field_size": 16384},
    )
    app[SETTINGS] = settings
    app[BACKENDS] = {}
    app[ACTIVE_STREAMS] = set[asyncio.BaseTransport]()
    app.cleanup_ctx.append(_backends)
    app.on_shutdown.append(_cut_streams)
    for prefix in _PREFIXES:
        app.add_routes(qido.routes(prefix))
        app.add_routes(wado.routes(prefix))
    app.add_routes(health.routes())
    return app


async def _cut_streams(app: web.Application) -> None:
    streams: set[asyncio.BaseTransport] = app[ACTIVE_STREAMS]
    for transport in tuple(streams):
        transport.abort()  # type: ignore[attr-defined]


async def _backends(app: web.Application) -> AsyncIterator[None]:
    backends: dict[str, Backend] = app[BACKENDS]
    try:
        for site in app[SETTINGS].sites:
            backends[site.id] = _backend(site)
        yield
    finally:
        for backend in backends.values():
            await backend.close()
        backends.clear()


def _backend(site: Site) -> Backend:
    if isinstance(site, DicomWebSite):
        return DicomWebBackend.create(site)
    return DimseBackend.create(site)
