"""Liveness and readiness for orchestrators; they name no internal address."""

from __future__ import annotations

import asyncio
import os

from aiohttp import web

from ..errors import GatewayError
from .keys import BACKENDS

__all__ = ["routes"]


async def live(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def ready(request: web.Request) -> web.Response:
    backends = request.app[BACKENDS]

    async def check(site: str) -> tuple[str, str]:
        try:
            await backends[site].ping()
        except GatewayError as exc:
            return site, exc.code
        return site, "ok"

    results = dict(await asyncio.gather(*(check(s) for s in backends)))
    ok = all(v == "ok" for v in results.values())
    return web.json_response(
        {"status": "ok" if ok else "degraded", "sites": results}, status=200 if ok else 503
    )


async def stats(request: web.Request) -> web.Response:
    """Per-site counters (DIMSE operations, cache use) of the process that answers (its
    ``pid``: one of several workers); numbers only, no patient data."""
    backends = request.app[BACKENDS]
    sites = {site: b.stats() for site, b in backends.items()}
    return web.json_response({"pid": os.getpid(), "sites": sites})


def routes() -> list[web.RouteDef]:
    return [
        web.get("/health/live", live),
        web.get("/health/ready", ready),
        web.get("/health/stats", stats),
    ]
