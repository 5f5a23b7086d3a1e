"""Response helpers shared by the handlers."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson
from aiohttp import web

__all__ = ["json_response", "warning_value"]

_AGENT = "ncpeh-dicomweb"


def warning_value(text: str) -> str:
    """A ``Warning: 299`` header value (RFC 7234 5.5, as PS3.18 8.3.3.1 uses it)."""
    quoted = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'299 {_AGENT} "{quoted}"'


def json_response(
    body: Any, *, content_type: str, status: int = 200, warnings: Iterable[str] = ()
) -> web.Response:
    response = web.Response(body=orjson.dumps(body), status=status, content_type=content_type)
    for text in warnings:
        response.headers.add("Warning", warning_value(text))
    return response
