"""Cross-origin resource sharing (the Fetch standard's CORS protocol) for browser viewers on
another origin: preflights answered, the allowed origin echoed, the headers a viewer reads
exposed. Origins come from configuration (``server.cors_origins``); none by default."""

from __future__ import annotations

from aiohttp import web
from aiohttp.typedefs import Handler

from ..errors import Forbidden
from .keys import SETTINGS

__all__ = ["add_cors_headers", "cors_middleware"]

_METHODS = "GET, HEAD, POST, OPTIONS"
# Response headers a DICOMweb or FHIR client reads beyond the CORS-safelisted ones.
_EXPOSED = "Content-Location, ETag, Last-Modified, Warning, Retry-After, WWW-Authenticate"
_PREFLIGHT_CACHE = "600"


def _allowed(request: web.Request) -> str | None:
    """The request's Origin if configuration allows it, else None."""
    origin = request.headers.get("Origin")
    allowed = request.app[SETTINGS].cors_origins
    if origin is None or not allowed:
        return None
    if "*" in allowed or origin.lower() in allowed:
        return origin
    return None


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answers a preflight (OPTIONS with Access-Control-Request-Method) itself."""
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return await handler(request)
    if _allowed(request) is None:
        raise Forbidden("this origin may not call the gateway", detail={"cors": "origin"})
    headers = {
        "Access-Control-Allow-Methods": _METHODS,
        "Access-Control-Max-Age": _PREFLIGHT_CACHE,
    }
    wanted = request.headers.get("Access-Control-Request-Headers")
    if wanted:
        headers["Access-Control-Allow-Headers"] = wanted
    return web.Response(status=204, headers=headers)


def add_cors_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Every answer to an allowed origin, streamed ones included (the app's
    ``on_response_prepare`` hook calls it)."""
    if not request.app[SETTINGS].cors_origins:
        return
    response.headers.add("Vary", "Origin")
    origin = _allowed(request)
    if origin is None:
        return
    response.headers["Access-Control-Allow-Origin"] = origin
    if request.method != "OPTIONS":
        response.headers["Access-Control-Expose-Headers"] = _EXPOSED
